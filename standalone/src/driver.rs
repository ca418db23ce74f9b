//! The standalone scheduling loop: the shared cycle's shell over this
//! runtime's ports. Jobs come from the store ([`StoreJobs`]) and run as
//! local processes ([`LocalRuntime`]). A cycle runs when a job changes
//! state, and at least every couple of seconds (quota changes, for
//! instance, are not job events).

use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{Inventory, Job, JobId, JobState, Timestamp};
use finpool_ports::{JobSource, JobView, PortError, Runtime, Shell};
use finpool_scheduler::{
    Admission, CycleConfig, LocalityConfig, Policy, QueuedJob, RunningJob, Stop, WaitReason,
};
use finpool_store::{Change, Store};
use tokio::sync::watch;

use crate::executor::{Executor, StopKind};

/// The longest a cycle waits without a job event.
pub const IDLE_TICK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Assumed for jobs that set no max runtime (reservations need an end).
    pub default_max_runtime: Duration,
    /// How fast past borrowing is forgotten in the fair-share order.
    pub fair_share_half_life: Duration,
    /// SIGTERM to SIGKILL, for preempted jobs.
    pub stop_grace: Duration,
    pub locality: LocalityConfig,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            default_max_runtime: Duration::from_secs(24 * 3600),
            fair_share_half_life: Duration::from_secs(
                finpool_scheduler::tenants::DEFAULT_FAIR_SHARE_HALF_LIFE_S,
            ),
            stop_grace: Duration::from_secs(10),
            locality: LocalityConfig::default(),
        }
    }
}

impl DriverConfig {
    pub fn cycle(&self) -> CycleConfig {
        CycleConfig {
            default_max_runtime_ms: self.default_max_runtime.as_millis() as u64,
            fair_share_half_life_ms: self.fair_share_half_life.as_millis() as u64,
            stop_grace_ms: self.stop_grace.as_millis() as u64,
            locality: self.locality,
            ..CycleConfig::default()
        }
    }
}

/// The standalone shell.
pub type Driver = Shell<StoreJobs, LocalRuntime, Arc<Inventory>>;

/// Builds the standalone shell; its cycle goes on from the memory the
/// store holds.
pub async fn driver(
    store: Store,
    inventory: Arc<Inventory>,
    executor: Executor,
    policy: Policy,
    config: &DriverConfig,
) -> Result<Driver, PortError> {
    Shell::new(
        config.cycle(),
        policy,
        StoreJobs { store },
        LocalRuntime { executor },
        inventory,
    )
    .await
}

/// Runs cycles until shutdown.
pub async fn run(mut driver: Driver, mut shutdown: watch::Receiver<bool>) {
    let mut events = driver.source.store.subscribe();
    loop {
        match driver.run_cycle(Timestamp::now()).await {
            Ok(report) if report.admitted + report.preempted > 0 => {
                tracing::debug!(
                    queued = report.queued,
                    admitted = report.admitted,
                    preempted = report.preempted,
                    started = report.started,
                    "scheduling cycle"
                )
            }
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

/// Jobs from the store; admissions and reasons recorded there, and the
/// cycle's memory too.
pub struct StoreJobs {
    pub store: Store,
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

/// Jobs run as local processes by the executor.
pub struct LocalRuntime {
    pub executor: Executor,
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    type Job = Job;

    async fn start(&mut self, job: &Job) {
        self.executor.start(job.clone()).await;
    }

    async fn stop(&mut self, job: JobId, stop: &Stop) {
        self.executor
            .stop(job, StopKind::Preempt, stop.preemption.to_string())
            .await;
    }
}
