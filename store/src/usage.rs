//! Metered GPU time, from job runs.

use std::collections::BTreeMap;

use finpool_domain::{JobState, Placement, TenantId, Timestamp};

use crate::backend::with_read_pool;
use crate::error::corrupt;
use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassUsage {
    /// Milli-GPU-seconds: 1000 is one GPU for one second.
    pub gpu_milli_seconds: u64,
    /// Cards of the class the tenant's running jobs hold now.
    pub gpus_in_use: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantUsage {
    pub classes: BTreeMap<String, ClassUsage>,
    pub jobs_total: u64,
    pub jobs_running: u64,
    pub jobs_pending: u64,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    placement: String,
    started_at: i64,
    ended_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct StateCount {
    state: String,
    n: i64,
}

impl Store {
    /// A tenant's GPU time so far (open runs count up to `now`).
    pub async fn tenant_usage(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<TenantUsage, StoreError> {
        let (runs, counts): (Vec<RunRow>, Vec<StateCount>) = with_read_pool!(self.backend(), pool => {
            let runs = sqlx::query_as(
                "SELECT placement, started_at, ended_at FROM job_runs WHERE tenant_id = $1",
            )
            .bind(tenant.as_str())
            .fetch_all(pool)
            .await?;
            let counts = sqlx::query_as(
                "SELECT state, COUNT(*) AS n FROM jobs WHERE tenant_id = $1 GROUP BY state",
            )
            .bind(tenant.as_str())
            .fetch_all(pool)
            .await?;
            (runs, counts)
        });
        let mut usage = TenantUsage::default();
        let mut cards_in_use: BTreeMap<String, std::collections::BTreeSet<(String, u32)>> =
            BTreeMap::new();
        for run in runs {
            let placement: Placement =
                serde_json::from_str(&run.placement).map_err(|e| corrupt("run placement", e))?;
            let end = run.ended_at.unwrap_or(now.0);
            let millis = end.saturating_sub(run.started_at).max(0) as u64;
            for gpu in &placement.gpus {
                let class = usage.classes.entry(gpu.class.clone()).or_default();
                // milli × ms / 1000 = milli-GPU-seconds, exact in integers
                // once summed per run.
                class.gpu_milli_seconds += gpu.milli as u64 * millis / 1000;
                if run.ended_at.is_none() {
                    cards_in_use
                        .entry(gpu.class.clone())
                        .or_default()
                        .insert((placement.node.clone(), gpu.index));
                }
            }
        }
        for (class, cards) in cards_in_use {
            usage.classes.entry(class).or_default().gpus_in_use = cards.len() as u32;
        }
        for c in counts {
            let n = c.n as u64;
            usage.jobs_total += n;
            match JobState::parse("state", &c.state).map_err(|e| corrupt("job state", e))? {
                JobState::Running => usage.jobs_running += n,
                JobState::Pending | JobState::Admitted | JobState::Preempted => {
                    usage.jobs_pending += n
                }
                _ => {}
            }
        }
        Ok(usage)
    }
}

/// One run of a job: what it held, from when to when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub tenant: TenantId,
    pub placement: Placement,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct RunRecordRow {
    tenant_id: String,
    placement: String,
    started_at: i64,
    ended_at: Option<i64>,
}

impl Store {
    /// Runs still going, or that ended after `since`.
    pub async fn runs_since(&self, since: Timestamp) -> Result<Vec<RunRecord>, StoreError> {
        let rows: Vec<RunRecordRow> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT tenant_id, placement, started_at, ended_at FROM job_runs \
                 WHERE ended_at IS NULL OR ended_at >= $1",
            )
            .bind(since.0)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(RunRecord {
                    tenant: finpool_domain::Name::parse("tenant_id", &r.tenant_id)
                        .map_err(|e| corrupt("run tenant", e))?,
                    placement: serde_json::from_str(&r.placement)
                        .map_err(|e| corrupt("run placement", e))?,
                    started_at: Timestamp(r.started_at),
                    ended_at: r.ended_at.map(Timestamp),
                })
            })
            .collect()
    }
}
