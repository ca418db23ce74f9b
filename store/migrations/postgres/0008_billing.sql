-- Billing (0008), PostgreSQL flavour: usage events metered in fixed intervals, the capacity
-- metered beside them, the price book, billing periods, a double-entry
-- journal in fen, and invoices. Times are UTC milliseconds; money is
-- integer fen. Everything here is append-only; a closed period is frozen.

-- Metering reads the runs that end after (or are open at) where it starts.
CREATE INDEX job_runs_by_ended ON job_runs (ended_at, started_at);

-- One metered quantity. id = the interval start (12 hex digits, so ids
-- grow with time) + H(job, run, interval start, kind, class), or
-- + H(tenant, card, interval start) for held idle: inserted with ON CONFLICT
-- DO NOTHING, so metering again counts nothing twice.
CREATE TABLE usage_events (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    job_id          TEXT,
    attempt         BIGINT,
    node            TEXT NOT NULL,
    gpu_index       BIGINT,
    gpu_class       TEXT NOT NULL,        -- '' for cpu and memory
    kind            TEXT NOT NULL CHECK (kind IN ('gpu_used', 'gpu_held_idle', 'cpu', 'memory')),
    interval_start  BIGINT NOT NULL,
    interval_end    BIGINT NOT NULL,
    quantity        BIGINT NOT NULL CHECK (quantity > 0)
);
-- Covers the sums by period, tenant, class and kind.
CREATE INDEX usage_events_by_interval ON usage_events (interval_start, tenant_id, gpu_class, kind, quantity);

-- The pool's cards per class in each metered interval, and their memory.
CREATE TABLE metering_capacity (
    interval_start   BIGINT NOT NULL,
    interval_end     BIGINT NOT NULL,
    gpu_class        TEXT NOT NULL,
    cards            BIGINT NOT NULL CHECK (cards >= 0),
    card_memory_mib  BIGINT NOT NULL CHECK (card_memory_mib > 0),
    PRIMARY KEY (interval_start, gpu_class)
);

-- How far metering has gone (every interval before it is metered).
CREATE TABLE metering_progress (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    metered_until  BIGINT NOT NULL
);

-- Price versions: never edited; a new price is a new row.
CREATE TABLE prices (
    gpu_class       TEXT NOT NULL,         -- '' for cpu and memory
    kind            TEXT NOT NULL CHECK (kind IN ('gpu_used', 'gpu_held_idle', 'cpu', 'memory')),
    effective_from  BIGINT NOT NULL,
    rate_fen        BIGINT NOT NULL CHECK (rate_fen >= 0),
    set_at          BIGINT NOT NULL,
    set_by          TEXT NOT NULL,
    PRIMARY KEY (gpu_class, kind, effective_from)
);

CREATE TABLE billing_periods (
    start_ms    BIGINT PRIMARY KEY,
    end_ms      BIGINT NOT NULL CHECK (end_ms > start_ms),
    label       TEXT NOT NULL,
    closed_at   BIGINT,
    closed_by   TEXT NOT NULL DEFAULT ''
);

CREATE TABLE journal_entries (
    id               TEXT PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    period_start     BIGINT NOT NULL REFERENCES billing_periods(start_ms),
    tenant_id        TEXT,
    kind             TEXT NOT NULL CHECK (kind IN ('charge', 'adjustment')),
    reference        TEXT REFERENCES journal_entries(id),
    memo             TEXT NOT NULL,
    posted_at        BIGINT NOT NULL,
    posted_by        TEXT NOT NULL
);
CREATE INDEX journal_entries_by_period ON journal_entries (period_start, tenant_id);

-- Debits positive, credits negative; each entry's postings sum to zero
-- (checked by the store in the posting transaction).
CREATE TABLE postings (
    entry_id    TEXT NOT NULL REFERENCES journal_entries(id),
    seq         BIGINT NOT NULL,
    account     TEXT NOT NULL,
    amount_fen  BIGINT NOT NULL,
    PRIMARY KEY (entry_id, seq)
);
CREATE INDEX postings_by_account ON postings (account);

CREATE TABLE invoices (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    period_start  BIGINT NOT NULL REFERENCES billing_periods(start_ms),
    period_end    BIGINT NOT NULL,
    total_fen     BIGINT NOT NULL,
    entry_id      TEXT REFERENCES journal_entries(id),
    created_at    BIGINT NOT NULL,
    UNIQUE (tenant_id, period_start)
);

CREATE TABLE invoice_lines (
    invoice_id           TEXT NOT NULL REFERENCES invoices(id),
    seq                  BIGINT NOT NULL,
    gpu_class            TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    quantity             BIGINT NOT NULL,
    rate_fen             BIGINT NOT NULL,
    rate_effective_from  BIGINT NOT NULL,
    amount_fen           BIGINT NOT NULL,
    PRIMARY KEY (invoice_id, seq)
);

-- Append-only: no UPDATE, DELETE or TRUNCATE, ever.
CREATE FUNCTION finpool_billing_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER usage_events_no_change BEFORE UPDATE OR DELETE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER metering_capacity_no_change BEFORE UPDATE OR DELETE ON metering_capacity
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER metering_capacity_no_truncate BEFORE TRUNCATE ON metering_capacity
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER prices_no_change BEFORE UPDATE OR DELETE ON prices
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER prices_no_truncate BEFORE TRUNCATE ON prices
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER journal_entries_no_change BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER postings_no_change BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER invoices_no_change BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER invoice_lines_no_change BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();
CREATE TRIGGER billing_periods_no_truncate BEFORE TRUNCATE ON billing_periods
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_billing_append_only();

-- A closed period is frozen: nothing is posted into it, and it is never
-- reopened, changed or removed.
CREATE FUNCTION finpool_billing_period_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'billing periods are never deleted';
    END IF;
    IF OLD.closed_at IS NOT NULL THEN
        RAISE EXCEPTION 'billing period is closed';
    END IF;
    IF NEW.start_ms <> OLD.start_ms OR NEW.end_ms <> OLD.end_ms OR NEW.closed_at IS NULL THEN
        RAISE EXCEPTION 'a billing period only changes by closing';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER billing_periods_frozen BEFORE UPDATE OR DELETE ON billing_periods
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_period_guard();

CREATE FUNCTION finpool_billing_open_period() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    period BIGINT;
BEGIN
    IF TG_TABLE_NAME = 'postings' THEN
        SELECT period_start INTO period FROM journal_entries WHERE id = NEW.entry_id;
    ELSIF TG_TABLE_NAME = 'invoice_lines' THEN
        SELECT period_start INTO period FROM invoices WHERE id = NEW.invoice_id;
    ELSE
        period := NEW.period_start;
    END IF;
    IF EXISTS (SELECT 1 FROM billing_periods WHERE start_ms = period AND closed_at IS NOT NULL) THEN
        RAISE EXCEPTION 'billing period is closed';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER journal_entries_open_period BEFORE INSERT ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_open_period();
CREATE TRIGGER postings_open_period BEFORE INSERT ON postings
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_open_period();
CREATE TRIGGER invoices_open_period BEFORE INSERT ON invoices
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_open_period();
CREATE TRIGGER invoice_lines_open_period BEFORE INSERT ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION finpool_billing_open_period();
