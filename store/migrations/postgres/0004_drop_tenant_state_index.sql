-- The pending cap now reads tenant_pending (0003); this index only cost writes.
DROP INDEX jobs_by_tenant_state;
