-- The pending-job cap counts a tenant's pending jobs at every submit batch.
CREATE INDEX jobs_by_tenant_state ON jobs (tenant_id, state);
