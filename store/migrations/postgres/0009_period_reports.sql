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
CREATE FUNCTION finpool_period_reports_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'period_reports is append-only';
END;
$$;
CREATE TRIGGER period_reports_no_change BEFORE UPDATE OR DELETE ON period_reports
    FOR EACH ROW EXECUTE FUNCTION finpool_period_reports_append_only();
CREATE TRIGGER period_reports_no_truncate BEFORE TRUNCATE ON period_reports
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_period_reports_append_only();
