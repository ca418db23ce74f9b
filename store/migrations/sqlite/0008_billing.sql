-- Billing (0008): usage events metered in fixed intervals, the capacity
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

-- Append-only: no UPDATE or DELETE, ever.
CREATE TRIGGER usage_events_no_update BEFORE UPDATE ON usage_events
BEGIN SELECT RAISE(ABORT, 'usage_events is append-only'); END;
CREATE TRIGGER usage_events_no_delete BEFORE DELETE ON usage_events
BEGIN SELECT RAISE(ABORT, 'usage_events is append-only'); END;
CREATE TRIGGER metering_capacity_no_update BEFORE UPDATE ON metering_capacity
BEGIN SELECT RAISE(ABORT, 'metering_capacity is append-only'); END;
CREATE TRIGGER metering_capacity_no_delete BEFORE DELETE ON metering_capacity
BEGIN SELECT RAISE(ABORT, 'metering_capacity is append-only'); END;
CREATE TRIGGER prices_no_update BEFORE UPDATE ON prices
BEGIN SELECT RAISE(ABORT, 'prices are never edited: set a new version'); END;
CREATE TRIGGER prices_no_delete BEFORE DELETE ON prices
BEGIN SELECT RAISE(ABORT, 'prices are never edited: set a new version'); END;
CREATE TRIGGER journal_entries_no_update BEFORE UPDATE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'journal_entries is append-only'); END;
CREATE TRIGGER journal_entries_no_delete BEFORE DELETE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'journal_entries is append-only'); END;
CREATE TRIGGER postings_no_update BEFORE UPDATE ON postings
BEGIN SELECT RAISE(ABORT, 'postings is append-only'); END;
CREATE TRIGGER postings_no_delete BEFORE DELETE ON postings
BEGIN SELECT RAISE(ABORT, 'postings is append-only'); END;
CREATE TRIGGER invoices_no_update BEFORE UPDATE ON invoices
BEGIN SELECT RAISE(ABORT, 'invoices is append-only'); END;
CREATE TRIGGER invoices_no_delete BEFORE DELETE ON invoices
BEGIN SELECT RAISE(ABORT, 'invoices is append-only'); END;
CREATE TRIGGER invoice_lines_no_update BEFORE UPDATE ON invoice_lines
BEGIN SELECT RAISE(ABORT, 'invoice_lines is append-only'); END;
CREATE TRIGGER invoice_lines_no_delete BEFORE DELETE ON invoice_lines
BEGIN SELECT RAISE(ABORT, 'invoice_lines is append-only'); END;

-- A closed period is frozen: nothing is posted into it, and it is never
-- reopened, changed or removed.
CREATE TRIGGER billing_periods_frozen BEFORE UPDATE ON billing_periods
WHEN OLD.closed_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'billing period is closed'); END;
CREATE TRIGGER billing_periods_only_close BEFORE UPDATE ON billing_periods
WHEN NEW.start_ms <> OLD.start_ms OR NEW.end_ms <> OLD.end_ms OR NEW.closed_at IS NULL
BEGIN SELECT RAISE(ABORT, 'a billing period only changes by closing'); END;
CREATE TRIGGER billing_periods_no_delete BEFORE DELETE ON billing_periods
BEGIN SELECT RAISE(ABORT, 'billing periods are never deleted'); END;
CREATE TRIGGER journal_entries_open_period BEFORE INSERT ON journal_entries
WHEN EXISTS (SELECT 1 FROM billing_periods WHERE start_ms = NEW.period_start AND closed_at IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'billing period is closed'); END;
CREATE TRIGGER postings_open_period BEFORE INSERT ON postings
WHEN EXISTS (SELECT 1 FROM journal_entries e JOIN billing_periods p ON p.start_ms = e.period_start
             WHERE e.id = NEW.entry_id AND p.closed_at IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'billing period is closed'); END;
CREATE TRIGGER invoices_open_period BEFORE INSERT ON invoices
WHEN EXISTS (SELECT 1 FROM billing_periods WHERE start_ms = NEW.period_start AND closed_at IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'billing period is closed'); END;
CREATE TRIGGER invoice_lines_open_period BEFORE INSERT ON invoice_lines
WHEN EXISTS (SELECT 1 FROM invoices i JOIN billing_periods p ON p.start_ms = i.period_start
             WHERE i.id = NEW.invoice_id AND p.closed_at IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'billing period is closed'); END;
