//! The job history as reports read it: preemptions in a period, and the
//! whole history of jobs whose admission reclaimed cards (their waits).

use finpool_domain::{JobState, Placement, Timestamp};
use finpool_scheduler::RECLAIMED_MARKER;

use crate::backend::with_read_pool;
use crate::{Store, StoreError};

/// One state change of one job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryRow {
    pub job_id: String,
    pub tenant_id: String,
    /// As [`JobState::as_str`] writes it.
    pub to_state: String,
    pub at: i64,
    pub reason: String,
    /// The job's placement (JSON), where it has one.
    pub placement: Option<String>,
}

impl HistoryRow {
    /// The GPU class of the job's placement.
    pub fn class(&self) -> Option<String> {
        let p: Placement = serde_json::from_str(self.placement.as_deref()?).ok()?;
        p.gpus.first().map(|g| g.class.clone())
    }
}

impl Store {
    /// Preemptions recorded in `[from, to)`: (at, reason).
    pub async fn preemptions_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT at, reason FROM job_events \
                 WHERE to_state = $3 AND at >= $1 AND at < $2 ORDER BY at",
            )
            .bind(from.0)
            .bind(to.0)
            .bind(JobState::Preempted.as_str())
            .fetch_all(pool)
            .await?
        }))
    }

    /// The history, up to `to`, of every job admitted by reclaiming cards
    /// before `to` and whose wait may reach into `[from, to)`: ordered by
    /// job, then time.
    pub async fn reclaim_histories(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let marker = format!("%{RECLAIMED_MARKER}%");
        Ok(with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT e.job_id, j.tenant_id, e.to_state, e.at, e.reason, j.placement \
                 FROM job_events e JOIN jobs j ON j.id = e.job_id \
                 WHERE e.at < $2 AND e.job_id IN ( \
                     SELECT job_id FROM job_events \
                     WHERE to_state = $4 AND reason LIKE $3 AND at < $2 \
                 ) AND e.job_id IN ( \
                     SELECT job_id FROM job_events WHERE at >= $1 AND at < $2 \
                     UNION SELECT id FROM jobs WHERE state = $4 \
                 ) \
                 ORDER BY e.job_id, e.seq",
            )
            .bind(from.0)
            .bind(to.0)
            .bind(marker)
            .bind(JobState::Admitted.as_str())
            .fetch_all(pool)
            .await?
        }))
    }
}
