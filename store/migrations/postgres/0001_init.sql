-- finpool schema, PostgreSQL flavour. Times are UTC milliseconds since the epoch.
CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    weight        BIGINT NOT NULL,
    isolation     TEXT NOT NULL,
    quotas        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE models (
    name               TEXT PRIMARY KEY,
    size_mib           BIGINT NOT NULL,
    min_gpu_memory_mib BIGINT NOT NULL,
    registered_at      BIGINT NOT NULL
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    name             TEXT NOT NULL,
    idempotency_key  TEXT,
    spec             TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    exit_code        INTEGER,
    placement        TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, created_at DESC, id DESC);
CREATE INDEX jobs_by_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE job_events (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    seq         BIGINT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_runs (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    attempt     BIGINT NOT NULL,
    tenant_id   TEXT NOT NULL,
    node        TEXT NOT NULL,
    placement   TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX job_runs_by_tenant ON job_runs (tenant_id, started_at);

-- job_events is append-only: row triggers for UPDATE/DELETE and a
-- statement trigger for TRUNCATE (row triggers do not fire on TRUNCATE).
CREATE FUNCTION finpool_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER job_events_no_update BEFORE UPDATE OR DELETE ON job_events
    FOR EACH ROW EXECUTE FUNCTION finpool_append_only();
CREATE TRIGGER job_events_no_truncate BEFORE TRUNCATE ON job_events
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_append_only();
