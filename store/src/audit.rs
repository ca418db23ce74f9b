//! The audit log: entries appended in one numbered, signed sequence, and
//! the signed checkpoints over it. Both tables are append-only (triggers
//! refuse UPDATE and DELETE, and TRUNCATE on PostgreSQL).
//!
//! Appends are serialised: within a process by a lock in the store, and
//! across processes sharing a PostgreSQL database by a transaction-scoped
//! advisory lock taken before the last seq is read (on SQLite, the
//! transaction takes the write lock first: `BEGIN IMMEDIATE`). Numbers are therefore gapless and never given
//! twice, and the primary key would refuse a duplicate anyway.

use finpool_audit::{Entry, EntryError, SignedCheckpoint, SignedEntry, Signer};

use crate::backend::{Backend, with_read_pool, with_write_pool};
use crate::{Store, StoreError};

/// The advisory lock key PostgreSQL writers of the audit log take
/// (`audit_lg` in ASCII).
const AUDIT_LOCK_KEY: i64 = 0x6175_6469_745f_6c67;

/// Columns per audit row, and rows per INSERT (well under either
/// backend's limit on bound parameters).
const COLUMNS: usize = 12;
const ROWS_PER_INSERT: usize = 400;

/// One stored entry: its number, canonical bytes and signature. Only the
/// canonical bytes count; the query columns beside them are not read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudit {
    pub seq: u64,
    pub canonical: Vec<u8>,
    pub signature: Vec<u8>,
}

impl StoredAudit {
    /// The entry its canonical bytes hold.
    pub fn entry(&self) -> Result<Entry, EntryError> {
        Entry::from_canonical(&self.canonical)
    }

    /// Its line in an export (`finpool audit export`).
    pub fn export_line(&self) -> String {
        SignedEntry::line_from_stored(self.seq, &self.canonical, &self.signature)
    }
}

/// The entries numbered from `first`, with their canonical bytes, signed.
/// Signing costs tens of microseconds an entry: the task yields between
/// slices, so a large batch does not hold a runtime thread.
async fn sign_all(entries: &[Entry], first: u64, signer: &Signer) -> Vec<(Vec<u8>, SignedEntry)> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if i > 0 && i % 64 == 0 {
            tokio::task::yield_now().await;
        }
        let mut e = e.clone();
        e.seq = first + i as u64;
        let signed = e.sign(signer);
        out.push((signed.entry.canonical(), signed));
    }
    out
}

impl Store {
    /// Appends `entries` (their `seq` is ignored) after the last one,
    /// signing each with `signer`, in one transaction. Returns the first
    /// and last seq given, or `None` for no entries.
    pub async fn append_audit(
        &self,
        entries: &[Entry],
        signer: &Signer,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let _one_writer = self.inner.audit_writer.lock().await;
        // Signing takes longer than the INSERT: it is done before the
        // write lock is taken, numbered after the last seq as this
        // process sees it, and done again in the transaction only if
        // another process appended meanwhile.
        let seen = self.audit_size().await?;
        let mut signed = sign_all(entries, seen + 1, signer).await;
        let placeholders = self.backend().placeholders();
        macro_rules! run {
            ($begin:expr, $postgres:expr) => {{
                let mut tx = $begin.await?;
                if $postgres {
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(AUDIT_LOCK_KEY)
                        .execute(&mut *tx)
                        .await?;
                }
                let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
                    .fetch_one(&mut *tx)
                    .await?;
                let first = last as u64 + 1;
                if last as u64 != seen {
                    signed = sign_all(entries, first, signer).await;
                }
                for chunk in signed.chunks(ROWS_PER_INSERT) {
                    let sql = format!(
                        "INSERT INTO audit_log (seq, at, actor, role, tenant, action, target, \
                         request_id, outcome, canonical, leaf_hash, signature) VALUES {}",
                        placeholders.rows(chunk.len(), COLUMNS, "")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (canonical, s) in chunk {
                        let e = &s.entry;
                        q = q
                            .bind(e.seq as i64)
                            .bind(e.at_ms)
                            .bind(e.actor.clone())
                            .bind(e.role.clone())
                            .bind(e.tenant.clone())
                            .bind(e.action.clone())
                            .bind(e.target.clone())
                            .bind(e.request_id.clone())
                            .bind(e.outcome.to_string())
                            .bind(canonical.clone())
                            .bind(finpool_audit::merkle::leaf_hash(canonical).to_vec())
                            .bind(s.signature.to_vec());
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(Some((first, first + entries.len() as u64 - 1)))
            }};
        }
        match self.backend() {
            // IMMEDIATE: the write lock before the last seq is read, so a
            // second process on the file waits instead of forking the log.
            Backend::Sqlite { write, .. } => run!(write.begin_with("BEGIN IMMEDIATE"), false),
            Backend::Postgres(pool) => run!(pool.begin(), true),
        }
    }

    /// Entries after `after` (exclusive), in order, at most `limit`.
    pub async fn audit_since(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredAudit>, StoreError> {
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT seq, canonical, signature FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(seq, canonical, signature)| StoredAudit {
                seq: seq as u64,
                canonical,
                signature,
            })
            .collect())
    }

    /// The highest seq appended (0 for an empty log).
    pub async fn audit_size(&self) -> Result<u64, StoreError> {
        let last: i64 = with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
                .fetch_one(pool)
                .await?
        });
        Ok(last as u64)
    }

    /// The checkpoint over the most entries (the latest of those).
    pub async fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StoreError> {
        let text: Option<String> = with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar(
                "SELECT text FROM audit_checkpoints ORDER BY tree_size DESC, id DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await?
        });
        text.map(|t| {
            SignedCheckpoint::parse(&t).map_err(|e| crate::error::corrupt("audit checkpoint", e))
        })
        .transpose()
    }

    /// Records a signed checkpoint.
    pub async fn save_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<(), StoreError> {
        let head = &checkpoint.checkpoint;
        with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO audit_checkpoints (tree_size, root, timestamp, key_id, text) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(head.tree_size as i64)
            .bind(head.root_hex())
            .bind(head.timestamp_ms)
            .bind(&head.key_id)
            .bind(checkpoint.to_text())
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}
