//! The store as the scheduling cycle's job source: jobs and tenants are
//! loaded from it, and admissions, waiting reasons and the cycle's memory
//! recorded in it. Standalone and the in-cluster scheduler share it.

use finpool_domain::{Job, JobId, JobState, Timestamp};
use finpool_ports::{JobSource, JobView, PortError};
use finpool_scheduler::{Admission, QueuedJob, RunningJob, WaitReason};

use crate::{Change, Store};

/// Jobs from the store; admissions and reasons recorded there, and the
/// cycle's memory too.
pub struct StoreJobs {
    pub store: Store,
}

impl StoreJobs {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn port(e: impl std::fmt::Display) -> PortError {
    PortError::new("store", e)
}

#[async_trait::async_trait]
impl JobSource for StoreJobs {
    type Job = Job;

    async fn load(&mut self) -> Result<JobView<Job>, PortError> {
        let jobs = self.store.active_jobs().await.map_err(port)?;
        let tenants = self.store.all_tenants().await.map_err(port)?;
        let models = self.store.list_models().await.map_err(port)?;
        let mut queued = Vec::new();
        let mut holding = Vec::new();
        for job in jobs {
            match (job.state, &job.placement) {
                (JobState::Admitted | JobState::Running, Some(placement)) => {
                    let running = RunningJob {
                        id: job.id,
                        tenant: job.tenant_id.clone(),
                        placement: placement.clone(),
                        cpu_milli: job.spec.resources.cpu_milli,
                        memory_mib: job.spec.resources.memory_mib,
                        priority: job.spec.priority,
                        // This run's start (a requeued job has had others).
                        started_at: (job.state == JobState::Running).then_some(job.updated_at),
                        min_runtime_ms: job.spec.min_runtime_ms.unwrap_or(0),
                        max_runtime_ms: job.spec.max_runtime_ms,
                        model: job.spec.model.clone(),
                        displaced: Vec::new(),
                    };
                    holding.push((running, job));
                }
                (JobState::Pending, _) => queued.push(QueuedJob::of(&job)),
                _ => {}
            }
        }
        Ok(JobView {
            tenants,
            models,
            queued,
            holding,
        })
    }

    async fn admit(
        &mut self,
        admissions: &[Admission],
        now: Timestamp,
    ) -> Result<Vec<(JobId, Job)>, PortError> {
        let changes = admissions
            .iter()
            .map(|a| {
                let mut change = Change::new(JobState::Admitted, a.describe(), now);
                change.placement = Some(a.placement.clone());
                (a.job, Some(JobState::Pending), change)
            })
            .collect();
        let mut admitted = Vec::new();
        for result in self.store.transition_many(changes).await.map_err(port)? {
            match result {
                Ok(job) => admitted.push((job.id, job)),
                // Cancelled meanwhile, say; the next cycle sees it.
                Err(e) => tracing::debug!(error = %e, "admission not recorded"),
            }
        }
        Ok(admitted)
    }

    async fn set_waiting(&mut self, reasons: &[(JobId, WaitReason)]) -> Result<(), PortError> {
        let rows: Vec<(JobId, &str, String)> = reasons
            .iter()
            .map(|(id, r)| (*id, r.code(), r.to_string()))
            .collect();
        self.store.set_waiting_reasons(&rows).await.map_err(port)
    }

    async fn load_memory(&mut self) -> Result<Option<String>, PortError> {
        self.store.load_scheduler_memory().await.map_err(port)
    }

    async fn save_memory(&mut self, memory: &str) -> Result<(), PortError> {
        self.store
            .save_scheduler_memory(memory, Timestamp::now())
            .await
            .map_err(port)
    }
}
