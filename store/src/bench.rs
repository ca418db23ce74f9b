//! The database's own durable insert rate, as a baseline for the submit
//! benchmark: single-row INSERTs, each its own committed transaction, one
//! after another, with the store's durability settings.

use std::time::Instant;

use crate::backend::Backend;
use crate::{Store, StoreError};

impl Store {
    /// Inserts `rows` rows one by one into a scratch table (created and
    /// dropped here) and returns rows per second. Meant for a scratch
    /// database: it adds and removes a table.
    pub async fn raw_insert_rate(&self, rows: usize) -> Result<f64, StoreError> {
        macro_rules! run {
            ($pool:expr) => {{
                sqlx::query("DROP TABLE IF EXISTS finpool_bench_raw")
                    .execute($pool)
                    .await?;
                sqlx::query(
                    "CREATE TABLE finpool_bench_raw (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, spec TEXT NOT NULL)",
                )
                .execute($pool)
                .await?;
                // About the size of a stored job spec.
                let spec = "x".repeat(400);
                let started = Instant::now();
                for i in 0..rows {
                    sqlx::query(
                        "INSERT INTO finpool_bench_raw (id, tenant_id, spec) VALUES ($1, $2, $3)",
                    )
                    .bind(format!("row-{i}"))
                    .bind("bench")
                    .bind(&spec)
                    .execute($pool)
                    .await?;
                }
                let seconds = started.elapsed().as_secs_f64();
                sqlx::query("DROP TABLE finpool_bench_raw")
                    .execute($pool)
                    .await?;
                Ok(rows as f64 / seconds.max(1e-9))
            }};
        }
        match self.backend() {
            Backend::Sqlite { write, .. } => run!(write),
            Backend::Postgres(pool) => run!(pool),
        }
    }
}
