-- The audit log (0007): one row per mutation or denied attempt, numbered
-- from 1 with no gap. `canonical` holds the entry's canonical bytes (see
-- the finpool-audit crate): they are what is signed (`signature`, Ed25519)
-- and hashed into the Merkle tree (`leaf_hash`). The other columns repeat
-- its fields for querying; a reader trusts only `canonical`.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY CHECK (seq >= 1),
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    role        TEXT NOT NULL,
    tenant      TEXT,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    canonical   BLOB NOT NULL,
    leaf_hash   BLOB NOT NULL,
    signature   BLOB NOT NULL
);
-- Signed tree heads, in the text form `finpool audit checkpoint` writes.
CREATE TABLE audit_checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tree_size   INTEGER NOT NULL,
    root        TEXT NOT NULL,
    timestamp   INTEGER NOT NULL,
    key_id      TEXT NOT NULL,
    text        TEXT NOT NULL
);
CREATE INDEX audit_checkpoints_size ON audit_checkpoints (tree_size, id);
-- Both are append-only.
CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_checkpoints_append_only_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_append_only_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
