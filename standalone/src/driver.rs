//! The standalone scheduling loop: the shared cycle's shell over this
//! runtime's ports. Jobs come from the store ([`StoreJobs`]) and run as
//! local processes ([`LocalRuntime`]). A cycle runs when a job changes
//! state, and at least every couple of seconds (quota changes, for
//! instance, are not job events).

use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{Inventory, Job, JobId, Timestamp};
use finpool_ports::{PortError, Runtime, Shell};
use finpool_scheduler::{CycleConfig, LocalityConfig, Policy, Stop};
use finpool_store::Store;
use finpool_store::StoreJobs;
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
        StoreJobs::new(store),
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
            _ = shutdown.changed() => {
                if let Err(e) = driver.save_memory().await {
                    tracing::warn!(error = %e, "could not store the scheduler's memory on shutdown");
                }
                return;
            }
            _ = events.recv() => {
                // Let a burst of changes land, then take them all in one cycle.
                tokio::time::sleep(Duration::from_millis(10)).await;
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(IDLE_TICK) => {}
        }
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
