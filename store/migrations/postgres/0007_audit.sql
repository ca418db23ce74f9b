-- The audit log (0007): one row per mutation or denied attempt, numbered
-- from 1 with no gap. `canonical` holds the entry's canonical bytes (see
-- the finpool-audit crate): they are what is signed (`signature`, Ed25519)
-- and hashed into the Merkle tree (`leaf_hash`); never a jsonb rendering,
-- which reorders keys. The other columns repeat its fields for querying;
-- a reader trusts only `canonical`.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY CHECK (seq >= 1),
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    role        TEXT NOT NULL,
    tenant      TEXT,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    canonical   BYTEA NOT NULL,
    leaf_hash   BYTEA NOT NULL,
    signature   BYTEA NOT NULL
);
-- Signed tree heads, in the text form `finpool audit checkpoint` writes.
CREATE TABLE audit_checkpoints (
    id          BIGSERIAL PRIMARY KEY,
    tree_size   BIGINT NOT NULL,
    root        TEXT NOT NULL,
    timestamp   BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    text        TEXT NOT NULL
);
CREATE INDEX audit_checkpoints_size ON audit_checkpoints (tree_size, id);
-- Both are append-only: row triggers for UPDATE/DELETE and statement
-- triggers for TRUNCATE (row triggers do not fire on TRUNCATE). A
-- superuser can still drop them; the signed checkpoints that left the
-- database are what catches that.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION finpool_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_append_only();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION finpool_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION finpool_append_only();
