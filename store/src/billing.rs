//! Billing's tables: usage events metered from `job_runs`, the capacity
//! metered beside them, the price book, billing periods, the journal and
//! invoices. The arithmetic is `finpool-billing`'s; this module reads its
//! inputs and persists its outputs.
//!
//! Metering is idempotent: a pass recomputes the events of every interval
//! from its progress mark up to the last settled interval and inserts them
//! with `ON CONFLICT DO NOTHING`, then moves the mark. A crash anywhere in
//! a pass loses nothing (the next pass redoes it) and counts nothing twice
//! (the ids are the same).

use std::collections::BTreeMap;

use finpool_billing::invoice::invoice_id;
use finpool_billing::ledger::EntryKind;
use finpool_billing::{
    Aggregate, BillingConfig, CardShare, Invoice, InvoiceLine, JournalEntry, Kind, Period, Posting,
    Price, PriceBook, Run, UsageEvent,
};
use finpool_domain::{Inventory, Placement};

use crate::backend::{Placeholders, with_read_pool, with_write_pool};
use crate::error::corrupt;
use crate::{Store, StoreError};

/// The pool's cards of one class, as metered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityClass {
    pub class: String,
    pub cards: u32,
    pub card_memory_mib: u64,
}

/// Cards per class in an inventory (MIG cards count as whole cards).
pub fn capacity_of(inventory: &Inventory) -> Vec<CapacityClass> {
    inventory
        .classes
        .iter()
        .map(|c| CapacityClass {
            class: c.name.clone(),
            cards: inventory
                .nodes
                .iter()
                .flat_map(|n| &n.gpus)
                .filter(|g| g.class == c.name)
                .count() as u32,
            card_memory_mib: c.memory_mib,
        })
        .collect()
}

/// What a metering pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeterReport {
    /// The intervals metered: `[from, to)`.
    pub from: i64,
    pub to: i64,
    pub runs: usize,
    /// Events computed, and how many of them were new.
    pub events: usize,
    pub inserted: u64,
}

/// A tenant's metered quantity of one class and kind over a time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant: String,
    /// Empty for CPU and memory.
    pub class: String,
    pub kind: Kind,
    /// In [`Kind::unit`]s.
    pub quantity: i64,
}

/// A class's metered capacity over a time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityRow {
    pub class: String,
    /// Milli-GPU-ms: cards × 1000 × the metered intervals' length.
    pub capacity: i64,
    /// Metered intervals in the range.
    pub intervals: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRecord {
    pub price: Price,
    pub set_at: i64,
    pub set_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRecord {
    pub period: Period,
    pub label: String,
    pub closed_at: Option<i64>,
    pub closed_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRecord {
    pub invoice: Invoice,
    /// The charge entry (none for an invoice of 0 fen).
    pub entry_id: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub entry: JournalEntry,
    pub posted_at: i64,
    pub posted_by: String,
}

/// What closing a period did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReport {
    pub period: PeriodRecord,
    pub invoices: usize,
    pub total_fen: i64,
    /// It was closed before: nothing was posted now.
    pub already_closed: bool,
}

fn billing_error(e: finpool_billing::BillingError) -> StoreError {
    match e {
        finpool_billing::BillingError::Invalid { field, reason } => {
            StoreError::InvalidArgument { field, reason }
        }
        other => StoreError::Conflict(other.to_string()),
    }
}

/// A refusal by the frozen-period triggers reads as a conflict.
fn frozen(e: sqlx::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("billing period is closed") {
        StoreError::Conflict(
            "the billing period is closed: post a correction into an open period".into(),
        )
    } else {
        e.into()
    }
}

#[derive(sqlx::FromRow)]
struct RunRow {
    job_id: String,
    attempt: i64,
    tenant_id: String,
    node: String,
    placement: String,
    started_at: i64,
    ended_at: Option<i64>,
    spec: String,
    isolation: String,
}

#[derive(serde::Deserialize)]
struct SpecResources {
    resources: Resources,
}

#[derive(serde::Deserialize)]
struct Resources {
    cpu_milli: u64,
    memory_mib: u64,
}

impl RunRow {
    fn into_run(self) -> Result<Run, StoreError> {
        let placement: Placement =
            serde_json::from_str(&self.placement).map_err(|e| corrupt("run placement", e))?;
        let spec: SpecResources =
            serde_json::from_str(&self.spec).map_err(|e| corrupt("job spec", e))?;
        Ok(Run {
            job_id: self.job_id,
            attempt: self.attempt,
            tenant: self.tenant_id,
            exclusive_cards: self.isolation != finpool_domain::IsolationLevel::Mig.as_str(),
            node: self.node,
            gpus: placement
                .gpus
                .iter()
                .map(|g| CardShare {
                    index: g.index,
                    class: g.class.clone(),
                    milli: g.milli,
                    memory_mib: g.memory_mib,
                    mig: g.mig_slice.is_some(),
                })
                .collect(),
            cpu_milli: spec.resources.cpu_milli,
            memory_mib: spec.resources.memory_mib,
            started_at: self.started_at,
            ended_at: self.ended_at,
        })
    }
}

macro_rules! select_runs {
    ($where:literal) => {
        concat!(
            "SELECT r.job_id, r.attempt, r.tenant_id, r.node, r.placement, r.started_at, r.ended_at, \
             j.spec, t.isolation FROM job_runs r JOIN jobs j ON j.id = r.job_id \
             JOIN tenants t ON t.id = r.tenant_id WHERE ",
            $where
        )
    };
}

/// Events per INSERT statement (11 parameters each).
const EVENTS_PER_STATEMENT: usize = 500;
/// Events per transaction.
const EVENTS_PER_TRANSACTION: usize = 50_000;
/// Intervals per metering chunk (a week of hours): bounds memory, and the
/// progress mark moves after each.
const INTERVALS_PER_CHUNK: i64 = 168;

/// Inserts a journal entry and its postings in `$tx`, then checks in the
/// same transaction that the stored postings sum to zero.
macro_rules! insert_entry {
    ($tx:ident, $entry:expr, $now:expr, $by:expr) => {{
        let entry: &JournalEntry = $entry;
        entry.validate().map_err(billing_error)?;
        sqlx::query(
            "INSERT INTO journal_entries (id, idempotency_key, period_start, tenant_id, kind, reference, memo, posted_at, posted_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&entry.id)
        .bind(&entry.idempotency_key)
        .bind(entry.period_start)
        .bind(entry.tenant.as_deref())
        .bind(entry.kind.as_str())
        .bind(entry.reference.as_deref())
        .bind(&entry.memo)
        .bind($now)
        .bind($by)
        .execute(&mut *$tx)
        .await
        .map_err(frozen)?;
        for (seq, p) in entry.postings.iter().enumerate() {
            sqlx::query("INSERT INTO postings (entry_id, seq, account, amount_fen) VALUES ($1, $2, $3, $4)")
                .bind(&entry.id)
                .bind(seq as i64)
                .bind(&p.account)
                .bind(p.amount_fen)
                .execute(&mut *$tx)
                .await
                .map_err(frozen)?;
        }
        let sum: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(amount_fen) AS BIGINT) FROM postings WHERE entry_id = $1",
        )
        .bind(&entry.id)
        .fetch_one(&mut *$tx)
        .await?;
        if sum.unwrap_or(0) != 0 {
            return Err(StoreError::Conflict(format!(
                "journal entry {} does not balance ({} fen)",
                entry.id,
                sum.unwrap_or(0)
            )));
        }
    }};
}

impl Store {
    /// Every run that overlaps `[from, to)`, as billing reads it.
    pub async fn billing_runs(&self, from: i64, to: i64) -> Result<Vec<Run>, StoreError> {
        let rows: Vec<RunRow> = with_read_pool!(self.backend(), pool => {
            let mut open: Vec<RunRow> = sqlx::query_as(select_runs!(
                "r.ended_at IS NULL AND r.started_at < $1"
            ))
            .bind(to)
            .fetch_all(pool)
            .await?;
            let ended: Vec<RunRow> = sqlx::query_as(select_runs!(
                "r.ended_at > $1 AND r.started_at < $2"
            ))
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?;
            open.extend(ended);
            open
        });
        rows.into_iter().map(RunRow::into_run).collect()
    }

    /// Where metering has got to: every interval before it is metered.
    pub async fn metered_until(&self) -> Result<Option<i64>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar("SELECT metered_until FROM metering_progress WHERE id = 1")
                .fetch_optional(pool)
                .await?
        }))
    }

    /// One metering pass: every interval from the progress mark (at first,
    /// the start of the billing period of the first run) up to the last one
    /// settled at `now`.
    pub async fn meter(
        &self,
        config: &BillingConfig,
        capacity: &[CapacityClass],
        now: i64,
    ) -> Result<MeterReport, StoreError> {
        let target = config.meterable_until(now);
        let from = match self.metered_until().await? {
            Some(w) => w,
            None => {
                let first: Option<i64> = with_read_pool!(self.backend(), pool => {
                    sqlx::query_scalar("SELECT MIN(started_at) FROM job_runs")
                        .fetch_one(pool)
                        .await?
                });
                // From the start of the billing period of the first run (or
                // of now), so that every period metered has its whole
                // capacity on record.
                let start = config
                    .period
                    .period_containing(first.unwrap_or(target).min(target))
                    .map_err(billing_error)?
                    .start;
                config.interval.floor(start)
            }
        };
        let mut report = MeterReport {
            from,
            to: from,
            ..Default::default()
        };
        let chunk = INTERVALS_PER_CHUNK * config.interval.millis();
        let mut at = from;
        // Each chunk's runs are read while the chunk before is written:
        // the read pool and the writer are separate connections.
        let mut runs = if at < target {
            self.billing_runs(at, (at + chunk).min(target)).await?
        } else {
            Vec::new()
        };
        while at < target {
            let end = (at + chunk).min(target);
            let next_end = (end + chunk).min(target);
            let (r, next) =
                tokio::join!(self.meter_loaded(config, capacity, at, end, &runs), async {
                    if end < target {
                        self.billing_runs(end, next_end).await
                    } else {
                        Ok(Vec::new())
                    }
                });
            let r = r?;
            runs = next?;
            report.to = end;
            report.runs += r.runs;
            report.events += r.events;
            report.inserted += r.inserted;
            at = end;
        }
        if from == target {
            self.advance_metering(target).await?;
        }
        Ok(report)
    }

    /// Meters `[from, to)` (aligned to the interval) from `job_runs`, and
    /// moves the progress mark to `to` if it was at or past `from`. Safe
    /// to repeat: the events are the same and inserted once.
    pub async fn meter_range(
        &self,
        config: &BillingConfig,
        capacity: &[CapacityClass],
        from: i64,
        to: i64,
    ) -> Result<MeterReport, StoreError> {
        let runs = self.billing_runs(from, to).await?;
        self.meter_loaded(config, capacity, from, to, &runs).await
    }

    /// [`Store::meter_range`] with the runs that overlap `[from, to)`
    /// already read.
    async fn meter_loaded(
        &self,
        config: &BillingConfig,
        capacity: &[CapacityClass],
        from: i64,
        to: i64,
        runs: &[Run],
    ) -> Result<MeterReport, StoreError> {
        let len = config.interval.millis();
        if !config.interval.is_aligned(from) || !config.interval.is_aligned(to) || to < from {
            return Err(StoreError::InvalidArgument {
                field: "range".into(),
                reason: format!(
                    "{}..{} must be whole metering intervals ({} s)",
                    finpool_billing::rfc3339(from),
                    finpool_billing::rfc3339(to),
                    len / 1000
                ),
            });
        }
        // The capacity of each interval, recorded once: the first pass
        // over an interval records the inventory it saw.
        let mut rows: Vec<(i64, &CapacityClass)> = Vec::new();
        let mut s = from;
        while s < to {
            rows.extend(capacity.iter().map(|c| (s, c)));
            s += len;
        }
        let placeholders = self.backend().placeholders();
        with_write_pool!(self.backend(), pool => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(EVENTS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO metering_capacity (interval_start, interval_end, gpu_class, cards, card_memory_mib) \
                     VALUES {} ON CONFLICT DO NOTHING",
                    placeholders.rows(chunk.len(), 5, "")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (start, c) in chunk {
                    q = q
                        .bind(*start)
                        .bind(*start + len)
                        .bind(c.class.as_str())
                        .bind(c.cards as i64)
                        .bind(c.card_memory_mib as i64);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        #[derive(sqlx::FromRow)]
        struct Mem {
            interval_start: i64,
            gpu_class: String,
            card_memory_mib: i64,
        }
        let mems: Vec<Mem> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT interval_start, gpu_class, card_memory_mib FROM metering_capacity \
                 WHERE interval_start >= $1 AND interval_start < $2",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        });
        let mut memory: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
        for m in mems {
            memory
                .entry(m.interval_start)
                .or_default()
                .insert(m.gpu_class, m.card_memory_mib as u64);
        }
        let default_memory: BTreeMap<String, u64> = capacity
            .iter()
            .map(|c| (c.class.clone(), c.card_memory_mib))
            .collect();
        let events =
            finpool_billing::meter_range(runs, &memory, &default_memory, from, to, config.interval)
                .map_err(billing_error)?;
        let inserted = self.insert_usage_events(&events).await?;
        self.advance_metering_from(from, to).await?;
        tracing::debug!(
            from = %finpool_billing::rfc3339(from),
            to = %finpool_billing::rfc3339(to),
            runs = runs.len(),
            events = events.len(),
            inserted,
            "metered"
        );
        Ok(MeterReport {
            from,
            to,
            runs: runs.len(),
            events: events.len(),
            inserted,
        })
    }

    async fn advance_metering(&self, to: i64) -> Result<(), StoreError> {
        with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO metering_progress (id, metered_until) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET metered_until = excluded.metered_until \
                 WHERE metering_progress.metered_until < excluded.metered_until",
            )
            .bind(to)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Moves the mark to `to` when `[from, to)` continues what is metered
    /// (or nothing is yet).
    async fn advance_metering_from(&self, from: i64, to: i64) -> Result<(), StoreError> {
        match self.metered_until().await? {
            Some(w) if w < from => Ok(()),
            _ => self.advance_metering(to).await,
        }
    }

    /// Inserts usage events, each once: an id already stored is skipped.
    /// Returns how many were new.
    pub async fn insert_usage_events(&self, events: &[UsageEvent]) -> Result<u64, StoreError> {
        let mut inserted = 0;
        let placeholders = self.backend().placeholders();
        // In id order: writers inserting overlapping events in different
        // orders wait on each other's uncommitted ids, and PostgreSQL
        // aborts one as a deadlock; taking ids in one order cannot cycle.
        let mut events: Vec<&UsageEvent> = events.iter().collect();
        events.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        for batch in events.chunks(EVENTS_PER_TRANSACTION) {
            with_write_pool!(self.backend(), pool => {
                let mut tx = pool.begin().await?;
                for chunk in batch.chunks(EVENTS_PER_STATEMENT) {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_events_sql(placeholders, chunk.len())));
                    for e in chunk {
                        q = q
                            .bind(e.id.as_str())
                            .bind(e.tenant.as_str())
                            .bind(e.job_id.as_deref())
                            .bind(e.attempt)
                            .bind(e.node.as_str())
                            .bind(e.gpu_index.map(|i| i as i64))
                            .bind(e.class.as_str())
                            .bind(e.kind.as_str())
                            .bind(e.interval_start)
                            .bind(e.interval_end)
                            .bind(e.quantity);
                    }
                    inserted += q.execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
            });
        }
        Ok(inserted)
    }

    /// Per tenant, class and kind: the usage metered in intervals starting
    /// in `[from, to)`; one tenant's, or everyone's.
    pub async fn usage_between(
        &self,
        from: i64,
        to: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            tenant_id: String,
            gpu_class: String,
            kind: String,
            quantity: i64,
        }
        let rows: Vec<Row> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, gpu_class, kind, CAST(SUM(quantity) AS BIGINT) AS quantity \
                 FROM usage_events WHERE interval_start >= $1 AND interval_start < $2 \
                 AND ($3 = '' OR tenant_id = $3) \
                 GROUP BY tenant_id, gpu_class, kind ORDER BY tenant_id, gpu_class, kind",
            )
            .bind(from)
            .bind(to)
            .bind(tenant.unwrap_or(""))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(UsageRow {
                    kind: Kind::parse("kind", &r.kind).map_err(|e| corrupt("usage kind", e))?,
                    tenant: r.tenant_id,
                    class: r.gpu_class,
                    quantity: r.quantity,
                })
            })
            .collect()
    }

    /// Per class, the capacity metered in intervals starting in
    /// `[from, to)`.
    pub async fn capacity_between(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<CapacityRow>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            gpu_class: String,
            capacity: i64,
            intervals: i64,
        }
        let rows: Vec<Row> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT gpu_class, CAST(SUM(cards * 1000 * (interval_end - interval_start)) AS BIGINT) AS capacity, \
                 COUNT(*) AS intervals FROM metering_capacity \
                 WHERE interval_start >= $1 AND interval_start < $2 GROUP BY gpu_class ORDER BY gpu_class",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| CapacityRow {
                class: r.gpu_class,
                capacity: r.capacity,
                intervals: r.intervals,
            })
            .collect())
    }

    /// Adds a price version. The same price set again is a no-op; another
    /// rate for the same class, kind and start is refused (prices are never
    /// edited), as is a start inside a closed period.
    pub async fn set_price(
        &self,
        config: &BillingConfig,
        price: &Price,
        by: &str,
        now: i64,
    ) -> Result<PriceRecord, StoreError> {
        price.validate(config.interval).map_err(billing_error)?;
        let closed_until: Option<i64> = with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar("SELECT MAX(end_ms) FROM billing_periods WHERE closed_at IS NOT NULL")
                .fetch_one(pool)
                .await?
        });
        if let Some(end) = closed_until
            && price.effective_from < end
        {
            return Err(StoreError::InvalidArgument {
                field: "effective_from".into(),
                reason: format!(
                    "{} is in a closed billing period; prices may start from {}",
                    finpool_billing::rfc3339(price.effective_from),
                    finpool_billing::rfc3339(end)
                ),
            });
        }
        with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO prices (gpu_class, kind, effective_from, rate_fen, set_at, set_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(price.class.as_str())
            .bind(price.kind.as_str())
            .bind(price.effective_from)
            .bind(price.rate_fen)
            .bind(now)
            .bind(by)
            .execute(pool)
            .await?;
        });
        let stored = self
            .prices()
            .await?
            .into_iter()
            .find(|p| {
                p.price.class == price.class
                    && p.price.kind == price.kind
                    && p.price.effective_from == price.effective_from
            })
            .ok_or_else(|| StoreError::Database("price not stored".into()))?;
        if stored.price.rate_fen != price.rate_fen {
            return Err(StoreError::AlreadyExists(format!(
                "a price for {}/{} from {} ({} fen; prices are never edited: set a new version with a later effective_from)",
                if price.class.is_empty() {
                    "-"
                } else {
                    &price.class
                },
                price.kind,
                finpool_billing::rfc3339(price.effective_from),
                stored.price.rate_fen
            )));
        }
        tracing::info!(class = %price.class, kind = %price.kind, rate_fen = price.rate_fen,
            effective_from = %finpool_billing::rfc3339(price.effective_from), by, "price set");
        Ok(stored)
    }

    /// Every price version, by class, kind and start.
    pub async fn prices(&self) -> Result<Vec<PriceRecord>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            gpu_class: String,
            kind: String,
            effective_from: i64,
            rate_fen: i64,
            set_at: i64,
            set_by: String,
        }
        let rows: Vec<Row> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT gpu_class, kind, effective_from, rate_fen, set_at, set_by FROM prices \
                 ORDER BY gpu_class, kind, effective_from",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(PriceRecord {
                    price: Price {
                        class: r.gpu_class,
                        kind: Kind::parse("kind", &r.kind).map_err(|e| corrupt("price kind", e))?,
                        effective_from: r.effective_from,
                        rate_fen: r.rate_fen,
                    },
                    set_at: r.set_at,
                    set_by: r.set_by,
                })
            })
            .collect()
    }

    /// Every billing period on record (closed, or open with postings).
    pub async fn periods(&self) -> Result<Vec<PeriodRecord>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            start_ms: i64,
            end_ms: i64,
            label: String,
            closed_at: Option<i64>,
            closed_by: String,
        }
        let rows: Vec<Row> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT start_ms, end_ms, label, closed_at, closed_by FROM billing_periods ORDER BY start_ms",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| PeriodRecord {
                period: Period {
                    start: r.start_ms,
                    end: r.end_ms,
                },
                label: r.label,
                closed_at: r.closed_at,
                closed_by: r.closed_by,
            })
            .collect())
    }

    async fn period_record(&self, start: i64) -> Result<Option<PeriodRecord>, StoreError> {
        Ok(self
            .periods()
            .await?
            .into_iter()
            .find(|p| p.period.start == start))
    }

    /// Closes a period: its usage × the price book becomes one invoice and
    /// one charge entry per tenant, and the period is frozen, all in one
    /// transaction. Metering must have reached the period's end (meter
    /// first). Closing a closed period again changes nothing.
    pub async fn close_period(
        &self,
        config: &BillingConfig,
        period: Period,
        by: &str,
        now: i64,
    ) -> Result<CloseReport, StoreError> {
        if let Some(p) = self.period_record(period.start).await?
            && p.closed_at.is_some()
        {
            if p.period != period {
                return Err(StoreError::Conflict(format!(
                    "period {} is on record as {}..{}",
                    p.label,
                    finpool_billing::rfc3339(p.period.start),
                    finpool_billing::rfc3339(p.period.end)
                )));
            }
            let invoices = self.invoices(None, Some(period.start)).await?;
            return Ok(CloseReport {
                period: p,
                invoices: invoices.len(),
                total_fen: invoices.iter().map(|i| i.invoice.total_fen).sum(),
                already_closed: true,
            });
        }
        if period.end > config.meterable_until(now) {
            return Err(StoreError::InvalidArgument {
                field: "period".into(),
                reason: format!(
                    "{} ends at {}; it can be closed once its last interval is metered, from {}",
                    period.label(),
                    finpool_billing::rfc3339(period.end),
                    finpool_billing::rfc3339(period.end + config.settle_ms)
                ),
            });
        }
        match self.metered_until().await? {
            Some(w) if w >= period.end => {}
            other => {
                return Err(StoreError::Conflict(format!(
                    "metering has reached {} only; meter up to {} before closing {}",
                    other.map_or("nothing".into(), finpool_billing::rfc3339),
                    finpool_billing::rfc3339(period.end),
                    period.label()
                )));
            }
        }
        let book = PriceBook::new(self.prices().await?.into_iter().map(|p| p.price))
            .map_err(billing_error)?;
        let mut cuts = vec![period.start];
        cuts.extend(book.changes_within(period.start, period.end));
        let mut aggregates = Vec::new();
        for (i, &start) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).copied().unwrap_or(period.end);
            for row in self.usage_between(start, end, None).await? {
                aggregates.push(Aggregate {
                    tenant: row.tenant,
                    class: row.class,
                    kind: row.kind,
                    segment_start: start,
                    quantity: row.quantity,
                });
            }
        }
        let invoices =
            finpool_billing::invoices(period, aggregates, &book).map_err(billing_error)?;
        let label = period.label();
        with_write_pool!(self.backend(), pool => {
            let mut tx = pool.begin().await?;
            let overlapping: Option<i64> = sqlx::query_scalar(
                "SELECT start_ms FROM billing_periods WHERE start_ms < $2 AND end_ms > $1 \
                 AND NOT (start_ms = $1 AND end_ms = $2) LIMIT 1",
            )
            .bind(period.start)
            .bind(period.end)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(other) = overlapping {
                return Err(StoreError::Conflict(format!(
                    "{label} overlaps the period from {} on record (was the period length changed?)",
                    finpool_billing::rfc3339(other)
                )));
            }
            sqlx::query(
                "INSERT INTO billing_periods (start_ms, end_ms, label) VALUES ($1, $2, $3) \
                 ON CONFLICT (start_ms) DO NOTHING",
            )
            .bind(period.start)
            .bind(period.end)
            .bind(&label)
            .execute(&mut *tx)
            .await?;
            for invoice in &invoices {
                let entry = JournalEntry::charge(invoice);
                if let Some(entry) = &entry {
                    insert_entry!(tx, entry, now, by);
                }
                sqlx::query(
                    "INSERT INTO invoices (id, tenant_id, period_start, period_end, total_fen, entry_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&invoice.id)
                .bind(&invoice.tenant)
                .bind(period.start)
                .bind(period.end)
                .bind(invoice.total_fen)
                .bind(entry.as_ref().map(|e| e.id.as_str()))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(frozen)?;
                for (seq, line) in invoice.lines.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO invoice_lines (invoice_id, seq, gpu_class, kind, quantity, rate_fen, \
                         rate_effective_from, amount_fen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&invoice.id)
                    .bind(seq as i64)
                    .bind(&line.class)
                    .bind(line.kind.as_str())
                    .bind(line.quantity)
                    .bind(line.rate_fen)
                    .bind(line.rate_effective_from)
                    .bind(line.amount_fen)
                    .execute(&mut *tx)
                    .await
                    .map_err(frozen)?;
                }
            }
            let closed = sqlx::query(
                "UPDATE billing_periods SET closed_at = $2, closed_by = $3 WHERE start_ms = $1 AND closed_at IS NULL",
            )
            .bind(period.start)
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await
            .map_err(frozen)?;
            if closed.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!("{label} was closed concurrently")));
            }
            tx.commit().await?;
        });
        let total_fen = invoices.iter().map(|i| i.total_fen).sum();
        tracing::info!(period = %label, invoices = invoices.len(), total_fen, by, "billing period closed");
        Ok(CloseReport {
            period: self
                .period_record(period.start)
                .await?
                .ok_or_else(|| StoreError::Database("closed period not stored".into()))?,
            invoices: invoices.len(),
            total_fen,
            already_closed: false,
        })
    }

    /// Posts a correction: an adjustment entry into the open period
    /// holding `entry.period_start`, naming the entry it corrects. The
    /// same idempotency key posted again returns the entry first posted.
    pub async fn post_adjustment(
        &self,
        config: &BillingConfig,
        entry: &JournalEntry,
        by: &str,
        now: i64,
    ) -> Result<JournalRecord, StoreError> {
        entry.validate().map_err(billing_error)?;
        if entry.kind != EntryKind::Adjustment {
            return Err(StoreError::InvalidArgument {
                field: "kind".into(),
                reason: "only adjustments are posted by hand; charges come from closing a period"
                    .into(),
            });
        }
        if let Some(existing) = self.journal_entry_by_key(&entry.idempotency_key).await? {
            return Ok(existing);
        }
        let period = config
            .period
            .period_containing(entry.period_start)
            .map_err(billing_error)?;
        if period.start != entry.period_start {
            return Err(StoreError::InvalidArgument {
                field: "period_start".into(),
                reason: format!(
                    "must start a billing period (the period holding it starts {})",
                    finpool_billing::rfc3339(period.start)
                ),
            });
        }
        let reference = entry.reference.clone().unwrap_or_default();
        with_write_pool!(self.backend(), pool => {
            let mut tx = pool.begin().await?;
            let found: Option<String> =
                sqlx::query_scalar("SELECT id FROM journal_entries WHERE id = $1")
                    .bind(&reference)
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Err(StoreError::NotFound(format!("journal entry {reference}")));
            }
            sqlx::query(
                "INSERT INTO billing_periods (start_ms, end_ms, label) VALUES ($1, $2, $3) \
                 ON CONFLICT (start_ms) DO NOTHING",
            )
            .bind(period.start)
            .bind(period.end)
            .bind(period.label())
            .execute(&mut *tx)
            .await?;
            insert_entry!(tx, entry, now, by);
            tx.commit().await?;
        });
        tracing::info!(entry = %entry.id, reference = %reference, by, "adjustment posted");
        self.journal_entry_by_key(&entry.idempotency_key)
            .await?
            .ok_or_else(|| StoreError::Database("adjustment not stored".into()))
    }

    async fn journal_entry_by_key(&self, key: &str) -> Result<Option<JournalRecord>, StoreError> {
        Ok(self
            .journal_where(Some(key), None)
            .await?
            .into_iter()
            .next())
    }

    /// Journal entries with their postings: a period's (by its start), or
    /// all; one tenant's, or everyone's.
    pub async fn journal(
        &self,
        period_start: Option<i64>,
        tenant: Option<&str>,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        let mut all = self.journal_where(None, period_start).await?;
        if let Some(t) = tenant {
            all.retain(|e| e.entry.tenant.as_deref() == Some(t));
        }
        Ok(all)
    }

    async fn journal_where(
        &self,
        key: Option<&str>,
        period_start: Option<i64>,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Entry {
            id: String,
            idempotency_key: String,
            period_start: i64,
            tenant_id: Option<String>,
            kind: String,
            reference: Option<String>,
            memo: String,
            posted_at: i64,
            posted_by: String,
        }
        #[derive(sqlx::FromRow)]
        struct Line {
            entry_id: String,
            account: String,
            amount_fen: i64,
        }
        let (entries, lines): (Vec<Entry>, Vec<Line>) = with_read_pool!(self.backend(), pool => {
            let entries = sqlx::query_as(
                "SELECT id, idempotency_key, period_start, tenant_id, kind, reference, memo, posted_at, posted_by \
                 FROM journal_entries WHERE ($1 = '' OR idempotency_key = $1) AND ($2 < 0 OR period_start = $3) \
                 ORDER BY period_start, posted_at, id",
            )
            .bind(key.unwrap_or(""))
            .bind(if period_start.is_some() { 0i64 } else { -1 })
            .bind(period_start.unwrap_or(0))
            .fetch_all(pool)
            .await?;
            let lines = sqlx::query_as(
                "SELECT p.entry_id, p.account, p.amount_fen FROM postings p JOIN journal_entries e ON e.id = p.entry_id \
                 WHERE ($1 = '' OR e.idempotency_key = $1) AND ($2 < 0 OR e.period_start = $3) \
                 ORDER BY p.entry_id, p.seq",
            )
            .bind(key.unwrap_or(""))
            .bind(if period_start.is_some() { 0i64 } else { -1 })
            .bind(period_start.unwrap_or(0))
            .fetch_all(pool)
            .await?;
            (entries, lines)
        });
        let mut postings: BTreeMap<String, Vec<Posting>> = BTreeMap::new();
        for l in lines {
            postings.entry(l.entry_id).or_default().push(Posting {
                account: l.account,
                amount_fen: l.amount_fen,
            });
        }
        entries
            .into_iter()
            .map(|e| {
                Ok(JournalRecord {
                    entry: JournalEntry {
                        postings: postings.remove(&e.id).unwrap_or_default(),
                        id: e.id,
                        idempotency_key: e.idempotency_key,
                        period_start: e.period_start,
                        tenant: e.tenant_id,
                        kind: EntryKind::parse("kind", &e.kind)
                            .map_err(|x| corrupt("journal entry kind", x))?,
                        reference: e.reference,
                        memo: e.memo,
                    },
                    posted_at: e.posted_at,
                    posted_by: e.posted_by,
                })
            })
            .collect()
    }

    /// Each account's movement (Σ postings) in a period.
    pub async fn account_movements(
        &self,
        period_start: i64,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT p.account, CAST(SUM(p.amount_fen) AS BIGINT) FROM postings p \
                 JOIN journal_entries e ON e.id = p.entry_id WHERE e.period_start = $1 \
                 GROUP BY p.account ORDER BY p.account",
            )
            .bind(period_start)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Invoices: one tenant's or everyone's, of one period or all.
    pub async fn invoices(
        &self,
        tenant: Option<&str>,
        period_start: Option<i64>,
    ) -> Result<Vec<InvoiceRecord>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: String,
            tenant_id: String,
            period_start: i64,
            period_end: i64,
            total_fen: i64,
            entry_id: Option<String>,
            created_at: i64,
        }
        #[derive(sqlx::FromRow)]
        struct LineRow {
            invoice_id: String,
            gpu_class: String,
            kind: String,
            quantity: i64,
            rate_fen: i64,
            rate_effective_from: i64,
            amount_fen: i64,
        }
        let (rows, lines): (Vec<Row>, Vec<LineRow>) = with_read_pool!(self.backend(), pool => {
            let rows = sqlx::query_as(
                "SELECT id, tenant_id, period_start, period_end, total_fen, entry_id, created_at FROM invoices \
                 WHERE ($1 = '' OR tenant_id = $1) AND ($2 < 0 OR period_start = $3) \
                 ORDER BY period_start, tenant_id",
            )
            .bind(tenant.unwrap_or(""))
            .bind(if period_start.is_some() { 0i64 } else { -1 })
            .bind(period_start.unwrap_or(0))
            .fetch_all(pool)
            .await?;
            let lines = sqlx::query_as(
                "SELECT l.invoice_id, l.gpu_class, l.kind, l.quantity, l.rate_fen, l.rate_effective_from, l.amount_fen \
                 FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
                 WHERE ($1 = '' OR i.tenant_id = $1) AND ($2 < 0 OR i.period_start = $3) \
                 ORDER BY l.invoice_id, l.seq",
            )
            .bind(tenant.unwrap_or(""))
            .bind(if period_start.is_some() { 0i64 } else { -1 })
            .bind(period_start.unwrap_or(0))
            .fetch_all(pool)
            .await?;
            (rows, lines)
        });
        let mut by_invoice: BTreeMap<String, Vec<InvoiceLine>> = BTreeMap::new();
        for l in lines {
            by_invoice
                .entry(l.invoice_id)
                .or_default()
                .push(InvoiceLine {
                    class: l.gpu_class,
                    kind: Kind::parse("kind", &l.kind)
                        .map_err(|e| corrupt("invoice line kind", e))?,
                    quantity: l.quantity,
                    rate_fen: l.rate_fen,
                    rate_effective_from: l.rate_effective_from,
                    amount_fen: l.amount_fen,
                });
        }
        Ok(rows
            .into_iter()
            .map(|r| InvoiceRecord {
                invoice: Invoice {
                    lines: by_invoice.remove(&r.id).unwrap_or_default(),
                    id: r.id,
                    tenant: r.tenant_id,
                    period: Period {
                        start: r.period_start,
                        end: r.period_end,
                    },
                    total_fen: r.total_fen,
                },
                entry_id: r.entry_id,
                created_at: r.created_at,
            })
            .collect())
    }

    /// One invoice by id.
    pub async fn invoice(&self, id: &str) -> Result<InvoiceRecord, StoreError> {
        let tenant: Option<(String, i64)> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as("SELECT tenant_id, period_start FROM invoices WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        let (tenant, start) =
            tenant.ok_or_else(|| StoreError::NotFound(format!("invoice {id}")))?;
        self.invoices(Some(&tenant), Some(start))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("invoice {id}")))
    }

    /// The invoice id a tenant's invoice for a period has (or would have).
    pub fn invoice_id(tenant: &str, period: Period) -> String {
        invoice_id(tenant, period)
    }
}

fn insert_events_sql(placeholders: Placeholders, rows: usize) -> String {
    format!(
        "INSERT INTO usage_events (id, tenant_id, job_id, attempt, node, gpu_index, gpu_class, kind, \
         interval_start, interval_end, quantity) VALUES {} ON CONFLICT (id) DO NOTHING",
        placeholders.rows(rows, 11, "")
    )
}
