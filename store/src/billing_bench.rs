//! Scratch data for `finpool bench close`: many tenants' job runs over one
//! period, written straight into a scratch database, and the database's
//! raw insert rate of usage-event rows as the baseline.

use std::time::Instant;

use crate::backend::with_write_pool;
use crate::{Store, StoreError};

/// What [`Store::seed_billing_bench`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchSeed {
    pub tenants: usize,
    pub jobs: usize,
    /// Cards in the pool (8 per node), all of class `A100`.
    pub cards: u32,
}

/// Card memory of the bench pool's class.
pub const BENCH_CARD_MIB: u64 = 81_920;

/// A small deterministic generator (SplitMix64), to keep the store free of
/// a random-number dependency.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ROWS_PER_STATEMENT: usize = 400;
const ROWS_PER_TRANSACTION: usize = 50_000;

impl Store {
    /// Writes `tenants` tenants and `jobs` finished jobs with one run each,
    /// spread over `[from, to)`: 5 to 55 minutes long, 60% on a whole card,
    /// the rest a share by milli or memory. Meant for a scratch database.
    pub async fn seed_billing_bench(
        &self,
        tenants: usize,
        jobs: usize,
        from: i64,
        to: i64,
        seed: u64,
    ) -> Result<BenchSeed, StoreError> {
        let cards: u32 = 1000;
        let placeholders = self.backend().placeholders();
        let mut rng = Mix(seed);
        let tenant_ids: Vec<String> = (0..tenants).map(|t| format!("bench-{t:05}")).collect();
        for chunk in tenant_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO tenants (id, display_name, weight, isolation, quotas, created_at, updated_at) VALUES {}",
                placeholders.rows(
                    chunk.len(),
                    1,
                    ", 'bench', 1, 'shared-within-tenant', '{}', 0, 0"
                )
            );
            with_write_pool!(self.backend(), pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for t in chunk {
                    q = q.bind(t.as_str());
                }
                q.execute(pool).await?;
            });
        }
        let span = (to - from - 3_600_000).max(1) as u64;
        let mut done = 0;
        while done < jobs {
            let n = ROWS_PER_TRANSACTION.min(jobs - done);
            let mut rows = Vec::with_capacity(n);
            for j in done..done + n {
                let tenant = j % tenants.max(1);
                let start = from + rng.below(span) as i64;
                let len = (5 + rng.below(50)) as i64 * 60_000;
                // A tenant's cards: its own, so shares pack with its own jobs.
                let card = (tenant as u32 * 7 + rng.below(3) as u32) % cards;
                let (milli, memory) = if rng.below(10) < 6 {
                    (1000, BENCH_CARD_MIB)
                } else if rng.below(2) == 0 {
                    (250, 8_192)
                } else {
                    (0, 40_960)
                };
                let cpu = 1000 * (1 + rng.below(8));
                let mem = 1024 * (1 + rng.below(64));
                let placement = format!(
                    "{{\"node\":\"node-{:03}\",\"gpus\":[{{\"index\":{},\"uuid\":\"GPU-{}\",\"class\":\"A100\",\"milli\":{},\"memory_mib\":{}}}]}}",
                    card / 8,
                    card % 8,
                    card,
                    milli,
                    memory
                );
                let spec = format!(
                    "{{\"name\":\"job-{j}\",\"model\":null,\"command\":[\"python\",\"-m\",\"risk.var\",\"--portfolio\",\"p{j}\"],\"args\":[],\"env\":{{}},\
                     \"resources\":{{\"gpu\":{{\"whole\":{{\"count\":1}}}},\"gpu_classes\":[],\"cpu_milli\":{cpu},\"memory_mib\":{mem}}},\
                     \"priority\":0,\"max_runtime_ms\":null,\"min_runtime_ms\":null,\"idempotency_key\":null,\"labels\":{{}},\"restart_policy\":\"fail\"}}"
                );
                rows.push((
                    format!("00000000-0000-4000-8000-{j:012}"),
                    tenant_ids[tenant].clone(),
                    spec,
                    placement,
                    format!("node-{:03}", card / 8),
                    start,
                    start + len,
                ));
            }
            with_write_pool!(self.backend(), pool => {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let jobs_sql = format!(
                        "INSERT INTO jobs (id, tenant_id, spec, placement, created_at, updated_at, started_at, \
                         finished_at, name, state, reason, priority, attempts) VALUES {}",
                        placeholders.rows(chunk.len(), 8, ", 'bench', 'succeeded', 'done', 0, 1")
                    );
                    let runs_sql = format!(
                        "INSERT INTO job_runs (job_id, tenant_id, placement, node, started_at, ended_at, attempt) \
                         VALUES {}",
                        placeholders.rows(chunk.len(), 6, ", 1")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(jobs_sql));
                    for r in chunk {
                        q = q
                            .bind(r.0.as_str())
                            .bind(r.1.as_str())
                            .bind(r.2.as_str())
                            .bind(r.3.as_str())
                            .bind(r.5)
                            .bind(r.6)
                            .bind(r.5)
                            .bind(r.6);
                    }
                    q.execute(&mut *tx).await?;
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(runs_sql));
                    for r in chunk {
                        q = q
                            .bind(r.0.as_str())
                            .bind(r.1.as_str())
                            .bind(r.3.as_str())
                            .bind(r.4.as_str())
                            .bind(r.5)
                            .bind(r.6);
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            done += n;
        }
        Ok(BenchSeed {
            tenants,
            jobs,
            cards,
        })
    }

    /// The baseline: rows per second for inserting `rows` rows shaped like
    /// usage events (same columns, same batching and transaction size)
    /// into a scratch table with no index, no key and no conflict check.
    pub async fn raw_event_insert_rate(&self, rows: usize) -> Result<f64, StoreError> {
        with_write_pool!(self.backend(), pool => {
            sqlx::query("DROP TABLE IF EXISTS finpool_bench_events").execute(pool).await?;
            sqlx::query(
                "CREATE TABLE finpool_bench_events (id TEXT, tenant_id TEXT, job_id TEXT, attempt BIGINT, node TEXT, \
                 gpu_index BIGINT, gpu_class TEXT, kind TEXT, interval_start BIGINT, interval_end BIGINT, quantity BIGINT)",
            )
            .execute(pool)
            .await?;
        });
        let placeholders = self.backend().placeholders();
        let started = Instant::now();
        let mut done = 0;
        while done < rows {
            let n = ROWS_PER_TRANSACTION.min(rows - done);
            with_write_pool!(self.backend(), pool => {
                let mut tx = pool.begin().await?;
                let mut left = n;
                while left > 0 {
                    let k = left.min(500);
                    let sql = format!(
                        "INSERT INTO finpool_bench_events (id, tenant_id, job_id, attempt, node, gpu_index, gpu_class, kind, \
                         interval_start, interval_end, quantity) VALUES {}",
                        placeholders.rows(k, 11, "")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for i in 0..k {
                        let row = (done + n - left + i) as i64;
                        q = q
                            .bind(format!("{row:032x}"))
                            .bind("bench-00000")
                            .bind(format!("00000000-0000-4000-8000-{row:012}"))
                            .bind(1i64)
                            .bind("node-000")
                            .bind(None::<i64>)
                            .bind("A100")
                            .bind("gpu_used")
                            .bind(row * 3_600_000)
                            .bind(row * 3_600_000 + 3_600_000)
                            .bind(1_000_000i64);
                    }
                    q.execute(&mut *tx).await?;
                    left -= k;
                }
                tx.commit().await?;
            });
            done += n;
        }
        let seconds = started.elapsed().as_secs_f64();
        with_write_pool!(self.backend(), pool => {
            sqlx::query("DROP TABLE finpool_bench_events").execute(pool).await?;
        });
        Ok(rows as f64 / seconds.max(1e-9))
    }
}
