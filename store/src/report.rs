//! What the regulator's report reads beyond billing and the history: GPU
//! time per metering interval (for its charts), jobs that ran, charges of
//! closed periods, whether a range is closed, and the frozen figures of a
//! closed range's report.

use crate::backend::{with_read_pool, with_write_pool};
use crate::{Store, StoreError};

/// A tenant's GPU time of one class and kind (`gpu_used`,
/// `gpu_held_idle`) in one metering interval, in milli-GPU-ms.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IntervalUsage {
    pub interval_start: i64,
    pub tenant_id: String,
    pub gpu_class: String,
    pub kind: String,
    pub quantity: i64,
}

impl Store {
    /// GPU time per interval starting in `[from, to)`, per tenant, class
    /// and kind. The order is the index's, so the scan streams.
    pub async fn gpu_usage_by_interval(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<IntervalUsage>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT interval_start, tenant_id, gpu_class, kind, CAST(SUM(quantity) AS BIGINT) AS quantity \
                 FROM usage_events WHERE interval_start >= $1 AND interval_start < $2 \
                 AND kind IN ('gpu_used', 'gpu_held_idle') \
                 GROUP BY interval_start, tenant_id, gpu_class, kind \
                 ORDER BY interval_start, tenant_id, gpu_class, kind",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        }))
    }

    /// The pool's GPU capacity (milli-GPU-ms, all classes) per interval
    /// starting in `[from, to)`.
    pub async fn capacity_by_interval(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT interval_start, \
                 CAST(SUM(cards * 1000 * (interval_end - interval_start)) AS BIGINT) \
                 FROM metering_capacity WHERE interval_start >= $1 AND interval_start < $2 \
                 GROUP BY interval_start ORDER BY interval_start",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Per tenant, the jobs that ran during `[from, to)`.
    pub async fn jobs_run_between(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, COUNT(DISTINCT job_id) FROM job_runs \
                 WHERE started_at < $2 AND (ended_at IS NULL OR ended_at > $1) \
                 GROUP BY tenant_id ORDER BY tenant_id",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Per tenant, what the invoices of periods inside `[from, to)` charge.
    pub async fn charges_between(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, CAST(SUM(total_fen) AS BIGINT) FROM invoices \
                 WHERE period_start >= $1 AND period_end <= $2 \
                 GROUP BY tenant_id ORDER BY tenant_id",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Whether closed billing periods cover all of `[from, to)`.
    pub async fn is_closed_range(&self, from: i64, to: i64) -> Result<bool, StoreError> {
        let covered: Option<i64> = with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar(
                "SELECT CAST(SUM(end_ms - start_ms) AS BIGINT) FROM billing_periods \
                 WHERE closed_at IS NOT NULL AND start_ms >= $1 AND end_ms <= $2",
            )
            .bind(from)
            .bind(to)
            .fetch_one(pool)
            .await?
        });
        Ok(to > from && covered == Some(to - from))
    }

    /// The figures of a closed range's report, as first made.
    pub async fn period_report(&self, from: i64, to: i64) -> Result<Option<String>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar("SELECT figures FROM period_reports WHERE from_ms = $1 AND to_ms = $2")
                .bind(from)
                .bind(to)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Keeps a closed range's figures; the first ones kept stay (a
    /// concurrent second save changes nothing). Returns what is kept.
    pub async fn save_period_report(
        &self,
        from: i64,
        to: i64,
        figures: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO period_reports (from_ms, to_ms, figures, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (from_ms, to_ms) DO NOTHING",
            )
            .bind(from)
            .bind(to)
            .bind(figures)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(self
            .period_report(from, to)
            .await?
            .unwrap_or_else(|| figures.to_owned()))
    }
}

impl Store {
    /// Denied attempts recorded in the audit log during `[from, to)`, per
    /// outcome (`denied:NOT_FOUND`, `denied:PERMISSION_DENIED`, …).
    pub async fn audit_denied_between(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT outcome, COUNT(*) FROM audit_log \
                 WHERE at >= $1 AND at < $2 AND outcome LIKE 'denied:%' \
                 GROUP BY outcome ORDER BY outcome",
            )
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?
        }))
    }
}
