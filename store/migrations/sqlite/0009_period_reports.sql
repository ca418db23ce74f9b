-- Regulator reports of closed periods (0009): the figures as first made
-- after the close, so that regenerating one gives the same bytes even if
-- the pool's nodes change later. Append-only.
CREATE TABLE period_reports (
    from_ms     BIGINT NOT NULL,
    to_ms       BIGINT NOT NULL,
    figures     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (from_ms, to_ms)
);
CREATE TRIGGER period_reports_no_update BEFORE UPDATE ON period_reports
BEGIN SELECT RAISE(ABORT, 'period_reports is append-only'); END;
CREATE TRIGGER period_reports_no_delete BEFORE DELETE ON period_reports
BEGIN SELECT RAISE(ABORT, 'period_reports is append-only'); END;
