-- Pending jobs per tenant, kept by triggers, so the submit path checks the
-- pending cap with one indexed read instead of counting the queue.
CREATE TABLE tenant_pending (
    tenant_id TEXT PRIMARY KEY,
    pending   INTEGER NOT NULL
);

INSERT INTO tenant_pending (tenant_id, pending)
    SELECT tenant_id, COUNT(*) FROM jobs WHERE state = 'pending' GROUP BY tenant_id;

CREATE TRIGGER jobs_pending_on_insert AFTER INSERT ON jobs WHEN NEW.state = 'pending'
BEGIN
    INSERT INTO tenant_pending (tenant_id, pending) VALUES (NEW.tenant_id, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET pending = pending + 1;
END;

CREATE TRIGGER jobs_pending_on_update AFTER UPDATE OF state ON jobs
    WHEN (OLD.state = 'pending') <> (NEW.state = 'pending')
BEGIN
    INSERT INTO tenant_pending (tenant_id, pending)
        VALUES (NEW.tenant_id, CASE WHEN NEW.state = 'pending' THEN 1 ELSE -1 END)
        ON CONFLICT (tenant_id) DO UPDATE SET pending = pending + excluded.pending;
END;

CREATE TRIGGER jobs_pending_on_delete AFTER DELETE ON jobs WHEN OLD.state = 'pending'
BEGIN
    UPDATE tenant_pending SET pending = pending - 1 WHERE tenant_id = OLD.tenant_id;
END;
