-- Revocation (0006):
-- * an operator may suspend a tenant: its tokens are refused and its jobs
--   are not admitted until it is resumed (NULL: not suspended);
-- * a per-subject not-before: tokens issued before it are refused.
ALTER TABLE tenants ADD COLUMN suspended_at BIGINT;
ALTER TABLE tenants ADD COLUMN suspended_reason TEXT NOT NULL DEFAULT '';
CREATE TABLE token_revocations (
    subject     TEXT PRIMARY KEY,
    not_before  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
