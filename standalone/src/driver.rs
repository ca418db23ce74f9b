//! The standalone scheduling loop: a thin driver around the scheduler
//! library. Each cycle reads the store, builds a snapshot, calls
//! `decide`, records the admissions, and hands admitted jobs to the
//! executor. A cycle runs when a job changes state, and at least every
//! couple of seconds (quota changes, for instance, are not job events).

use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{Inventory, JobState, Timestamp};
use finpool_scheduler::{Policy, QueuedJob, RunningJob, Snapshot, decide};
use finpool_store::{Change, Store, StoreError};
use tokio::sync::watch;

use crate::executor::Executor;

/// The longest a cycle waits without a job event.
const IDLE_TICK: Duration = Duration::from_secs(2);

pub struct Driver {
    pub store: Store,
    pub inventory: Arc<Inventory>,
    pub executor: Executor,
    pub policy: Arc<Policy>,
}

/// What one cycle did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CycleReport {
    pub queued: usize,
    pub admitted: usize,
    pub started: usize,
}

impl Driver {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.store.subscribe();
        loop {
            match self.cycle().await {
                Ok(report) if report.admitted > 0 => tracing::debug!(?report, "scheduling cycle"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scheduling cycle failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = events.recv() => {
                    // Let a burst of changes land, then take them all in one cycle.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    while events.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(IDLE_TICK) => {}
            }
        }
    }

    pub async fn cycle(&self) -> Result<CycleReport, StoreError> {
        let jobs = self.store.active_jobs().await?;
        let tenants = self.store.all_tenants().await?;
        let models = self.store.list_models().await?;
        let mut running = Vec::new();
        let mut queue = Vec::new();
        let mut to_start = Vec::new();
        for job in &jobs {
            match (job.state, &job.placement) {
                (JobState::Admitted | JobState::Running, Some(placement)) => {
                    running.push(RunningJob {
                        id: job.id,
                        tenant: job.tenant_id.clone(),
                        placement: placement.clone(),
                        cpu_milli: job.spec.resources.cpu_milli,
                        memory_mib: job.spec.resources.memory_mib,
                    });
                    if job.state == JobState::Admitted {
                        to_start.push(job.clone());
                    }
                }
                (JobState::Pending, _) => queue.push(QueuedJob {
                    id: job.id,
                    tenant: job.tenant_id.clone(),
                    priority: job.spec.priority,
                    submitted_at: job.created_at,
                    resources: job.spec.resources.clone(),
                    model: job.spec.model.clone(),
                }),
                _ => {}
            }
        }
        let mut report = CycleReport {
            queued: queue.len(),
            ..Default::default()
        };
        if !queue.is_empty() {
            let snapshot = Snapshot {
                now: Timestamp::now(),
                classes: self.inventory.classes.clone(),
                nodes: self.inventory.nodes.clone(),
                tenants,
                models,
                running,
                workload: None,
            };
            let policy = self.policy.clone();
            // Deciding is CPU work; keep it off the async workers.
            let outcome = tokio::task::spawn_blocking(move || decide(&snapshot, &queue, &policy))
                .await
                .map_err(|e| StoreError::Database(format!("scheduler task failed: {e}")))?
                .map_err(|e| StoreError::Database(format!("scheduler: {e}")))?;
            for warning in &outcome.warnings {
                tracing::warn!(%warning, "snapshot inconsistency");
            }
            let now = Timestamp::now();
            let changes = outcome
                .admitted
                .iter()
                .map(|a| {
                    let mut change = Change::new(
                        JobState::Admitted,
                        format!(
                            "admitted to {}{}",
                            a.placement.node,
                            if a.within_guarantee {
                                " (within guarantee)"
                            } else {
                                " (borrowing idle capacity)"
                            }
                        ),
                        now,
                    );
                    change.placement = Some(a.placement.clone());
                    (a.job, Some(JobState::Pending), change)
                })
                .collect();
            for result in self.store.transition_many(changes).await? {
                match result {
                    Ok(job) => {
                        report.admitted += 1;
                        to_start.push(job);
                    }
                    // Cancelled meanwhile, say; the next cycle sees it.
                    Err(e) => tracing::debug!(error = %e, "admission not recorded"),
                }
            }
            let reasons: Vec<_> = outcome
                .waiting
                .into_iter()
                .map(|w| (w.job, w.reason))
                .collect();
            self.store.set_waiting_reasons(&reasons).await?;
        }
        report.started = to_start.len();
        for job in to_start {
            self.executor.start(job).await;
        }
        Ok(report)
    }
}
