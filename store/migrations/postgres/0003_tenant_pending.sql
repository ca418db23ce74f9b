-- Pending jobs per tenant, kept by a trigger, so the submit path checks the
-- pending cap with one indexed read instead of counting the queue.
CREATE TABLE tenant_pending (
    tenant_id TEXT PRIMARY KEY,
    pending   BIGINT NOT NULL
);

INSERT INTO tenant_pending (tenant_id, pending)
    SELECT tenant_id, COUNT(*) FROM jobs WHERE state = 'pending' GROUP BY tenant_id;

CREATE FUNCTION finpool_count_pending() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta BIGINT := 0;
    tenant TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        tenant := NEW.tenant_id;
        IF NEW.state = 'pending' THEN delta := 1; END IF;
    ELSIF TG_OP = 'UPDATE' THEN
        tenant := NEW.tenant_id;
        IF OLD.state = 'pending' AND NEW.state <> 'pending' THEN delta := -1;
        ELSIF OLD.state <> 'pending' AND NEW.state = 'pending' THEN delta := 1;
        END IF;
    ELSE
        tenant := OLD.tenant_id;
        IF OLD.state = 'pending' THEN delta := -1; END IF;
    END IF;
    IF delta <> 0 THEN
        INSERT INTO tenant_pending (tenant_id, pending) VALUES (tenant, delta)
            ON CONFLICT (tenant_id) DO UPDATE SET pending = tenant_pending.pending + EXCLUDED.pending;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_pending AFTER INSERT OR UPDATE OF state OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION finpool_count_pending();
