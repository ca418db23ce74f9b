//! An in-memory pool behind the ports, so that every simulator runs the
//! same shell and cycle as the standalone pool: jobs live in a map instead
//! of a store, and "running" is a record with a simulated start time. The
//! simulator owns the clock: it submits arrivals, ends jobs when their
//! time is up, and calls [`SimPool::cycle`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use finpool_domain::{BaseModel, Inventory, JobId, Placement, Tenant, Timestamp};
use finpool_ports::{CycleReport, JobSource, JobView, LoadSample, PortError, Runtime, Shell};
use finpool_scheduler::{Admission, CycleConfig, Policy, QueuedJob, RunningJob, Stop, WaitReason};

/// A job holding resources in the simulated pool.
#[derive(Debug, Clone)]
pub struct Held {
    pub job: QueuedJob,
    pub placement: Placement,
    /// `None` while admitted but not started.
    pub started_at: Option<Timestamp>,
    /// Told to stop (preempted) at this time.
    pub stopping_since: Option<Timestamp>,
}

/// The simulated pool's jobs and what the runtime did, shared by the two
/// ports and the simulator.
#[derive(Debug, Default)]
pub struct SimState {
    pub now: Timestamp,
    /// Set with [`SimState::set_tenants`], which indexes them.
    tenants: Vec<Tenant>,
    tenant_index: TenantIndex,
    pub models: Vec<BaseModel>,
    pub queued: BTreeMap<JobId, QueuedJob>,
    pub held: BTreeMap<JobId, Held>,
    /// Jobs the runtime started since the simulator last looked.
    pub started: Vec<JobId>,
    /// Jobs the runtime was told to stop since the simulator last looked.
    pub stopped: Vec<(JobId, Stop)>,
    /// Model loads the simulator measured, for the cycle to learn from.
    pub loads: Vec<LoadSample>,
    /// Why each queued job waits, when `record_reasons` is set (a replay
    /// of thousands of queued jobs need not copy every reason every cycle).
    pub reasons: BTreeMap<JobId, WaitReason>,
    pub record_reasons: bool,
    pub memory: Option<String>,
}

/// Where each tenant is in [`SimState::tenants`], and those with a
/// guarantee: a cycle reads the few tenants it needs, not all of them.
#[derive(Debug, Default)]
struct TenantIndex {
    by_id: rustc_hash::FxHashMap<String, usize>,
    guaranteed: Vec<usize>,
}

impl SimState {
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    pub fn set_tenants(&mut self, tenants: Vec<Tenant>) {
        self.tenant_index = TenantIndex {
            by_id: tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.id.to_string(), i))
                .collect(),
            guaranteed: tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| t.quotas.values().any(|q| q.guaranteed > 0))
                .map(|(i, _)| i)
                .collect(),
        };
        self.tenants = tenants;
    }
}

type Shared = Arc<Mutex<SimState>>;

fn lock(state: &Shared) -> MutexGuard<'_, SimState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct SimJobs(Shared);
pub struct SimRuntime(Shared);

#[async_trait::async_trait]
impl JobSource for SimJobs {
    type Job = JobId;

    async fn load(&mut self) -> Result<JobView<JobId>, PortError> {
        let s = lock(&self.0);
        // The tenants a decision can depend on: those with jobs, and those
        // whose idle guarantees others may borrow. (A trace can name
        // thousands of tenants, few of them active at once.)
        let index = &s.tenant_index;
        let mut needed: Vec<usize> = s
            .queued
            .values()
            .map(|j| j.tenant.as_str())
            .chain(s.held.values().map(|h| h.job.tenant.as_str()))
            .filter_map(|t| index.by_id.get(t).copied())
            .chain(index.guaranteed.iter().copied())
            .collect();
        needed.sort_unstable();
        needed.dedup();
        let tenants = needed.into_iter().map(|i| s.tenants[i].clone()).collect();
        Ok(JobView {
            tenants,
            models: s.models.clone(),
            queued: s.queued.values().cloned().collect(),
            holding: s
                .held
                .values()
                .map(|h| {
                    let running = RunningJob {
                        id: h.job.id,
                        tenant: h.job.tenant.clone(),
                        placement: h.placement.clone(),
                        cpu_milli: h.job.resources.cpu_milli,
                        memory_mib: h.job.resources.memory_mib,
                        priority: h.job.priority,
                        started_at: h.started_at,
                        min_runtime_ms: 0,
                        max_runtime_ms: h.job.max_runtime_ms,
                        model: h.job.model.clone(),
                        displaced: Vec::new(),
                    };
                    (running, h.job.id)
                })
                .collect(),
        })
    }

    async fn admit(
        &mut self,
        admissions: &[Admission],
        _now: Timestamp,
    ) -> Result<Vec<(JobId, JobId)>, PortError> {
        let mut s = lock(&self.0);
        let mut out = Vec::with_capacity(admissions.len());
        for a in admissions {
            if let Some(job) = s.queued.remove(&a.job) {
                s.reasons.remove(&a.job);
                s.held.insert(
                    a.job,
                    Held {
                        job,
                        placement: a.placement.clone(),
                        started_at: None,
                        stopping_since: None,
                    },
                );
                out.push((a.job, a.job));
            }
        }
        Ok(out)
    }

    async fn set_waiting(&mut self, reasons: &[(JobId, WaitReason)]) -> Result<(), PortError> {
        let mut s = lock(&self.0);
        if !s.record_reasons {
            return Ok(());
        }
        for (id, reason) in reasons {
            // Only queued jobs keep a waiting reason (as the store does).
            if s.queued.contains_key(id) {
                s.reasons.insert(*id, reason.clone());
            }
        }
        Ok(())
    }

    async fn load_memory(&mut self) -> Result<Option<String>, PortError> {
        Ok(lock(&self.0).memory.clone())
    }

    async fn save_memory(&mut self, memory: &str) -> Result<(), PortError> {
        lock(&self.0).memory = Some(memory.to_owned());
        Ok(())
    }
}

#[async_trait::async_trait]
impl Runtime for SimRuntime {
    type Job = JobId;

    async fn start(&mut self, job: &JobId) {
        let mut s = lock(&self.0);
        let now = s.now;
        if let Some(h) = s.held.get_mut(job)
            && h.started_at.is_none()
        {
            h.started_at = Some(now);
            s.started.push(*job);
        }
    }

    async fn stop(&mut self, job: JobId, stop: &Stop) {
        let mut s = lock(&self.0);
        let now = s.now;
        if let Some(h) = s.held.get_mut(&job) {
            h.stopping_since = Some(now);
            s.stopped.push((job, stop.clone()));
        }
    }

    fn take_load_samples(&mut self) -> Vec<LoadSample> {
        std::mem::take(&mut lock(&self.0).loads)
    }
}

/// A simulated pool: the shared shell over in-memory ports.
pub struct SimPool {
    state: Shared,
    shell: Shell<SimJobs, SimRuntime, Arc<Inventory>>,
}

impl SimPool {
    pub fn new(config: CycleConfig, policy: Policy, inventory: Arc<Inventory>) -> Self {
        Self::with_state(config, policy, inventory, SimState::default())
    }

    /// A pool that goes on from `state` (its stored memory included), as a
    /// restarted driver does.
    pub fn with_state(
        config: CycleConfig,
        policy: Policy,
        inventory: Arc<Inventory>,
        state: SimState,
    ) -> Self {
        let state = Arc::new(Mutex::new(state));
        let shell = futures::executor::block_on(Shell::new(
            config,
            policy,
            SimJobs(state.clone()),
            SimRuntime(state.clone()),
            inventory,
        ))
        .expect("in-memory ports do not fail");
        Self { state, shell }
    }

    /// The pool's state, to submit, end and inspect jobs.
    pub fn state(&self) -> MutexGuard<'_, SimState> {
        lock(&self.state)
    }

    pub fn cycle_mut(&mut self) -> &mut finpool_scheduler::Cycle {
        self.shell.cycle_state_mut()
    }

    pub fn submit(&self, job: QueuedJob) {
        self.state().queued.insert(job.id, job);
    }

    /// Ends a job (done, or gone after being preempted); returns it.
    pub fn finish(&self, job: JobId) -> Option<Held> {
        self.state().held.remove(&job)
    }

    /// Puts a stopped job back in the queue (a preempted job's requeue).
    pub fn requeue(&self, job: JobId) {
        let mut s = self.state();
        if let Some(h) = s.held.remove(&job) {
            s.queued.insert(job, h.job);
        }
    }

    /// One scheduling cycle at `now`.
    pub fn cycle(&mut self, now: Timestamp) -> CycleReport {
        self.state().now = now;
        futures::executor::block_on(self.shell.run_cycle(now)).expect("in-memory ports do not fail")
    }

    /// Tears the pool down to its state (the memory the shell stored
    /// included), as a driver that stops does.
    pub fn into_state(self) -> SimState {
        drop(self.shell);
        Arc::try_unwrap(self.state)
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use finpool_domain::{Gpu, GpuClass, GpuRequest, Name, Node, Resources};
    use finpool_ports::InventorySource;

    use super::*;

    /// An inventory that changes between cycles, as a node joining does.
    #[derive(Clone)]
    struct Changing(Arc<Mutex<Arc<Inventory>>>);

    impl InventorySource for Changing {
        fn inventory(&self) -> Arc<Inventory> {
            lock_inventory(&self.0).clone()
        }
    }

    fn lock_inventory(m: &Mutex<Arc<Inventory>>) -> MutexGuard<'_, Arc<Inventory>> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pool_of(names: &[&str]) -> Arc<Inventory> {
        Arc::new(Inventory {
            classes: vec![GpuClass {
                name: "GPU".into(),
                memory_mib: 81_920,
            }],
            nodes: names
                .iter()
                .map(|n| Node {
                    name: (*n).into(),
                    labels: Default::default(),
                    cpu_milli: 8_000,
                    memory_mib: 65_536,
                    gpus: vec![Gpu {
                        index: 0,
                        uuid: String::new(),
                        class: "GPU".into(),
                        memory_mib: 81_920,
                        mig: vec![],
                    }],
                    models: vec![],
                })
                .collect(),
        })
    }

    fn one_gpu_job(n: u128) -> QueuedJob {
        QueuedJob {
            id: JobId(uuid::Uuid::from_u128(n)),
            tenant: Name::parse("tenant", "trace").expect("a valid name"),
            priority: 0,
            submitted_at: Timestamp(n as i64),
            resources: Resources {
                gpu: GpuRequest::Whole { count: 1 },
                gpu_classes: vec![],
                cpu_milli: 1_000,
                memory_mib: 1_024,
            },
            model: None,
            max_runtime_ms: None,
        }
    }

    /// The shell keeps the nodes it last read while the inventory is the
    /// same one; a new inventory is read afresh.
    #[test]
    fn a_node_that_joins_between_cycles_takes_work_at_the_next() {
        let inventory = Changing(Arc::new(Mutex::new(pool_of(&["node-a"]))));
        let state = Arc::new(Mutex::new(SimState::default()));
        let config = CycleConfig {
            tenantless: true,
            ..CycleConfig::default()
        };
        let mut shell = futures::executor::block_on(Shell::new(
            config,
            Policy::best_fit(),
            SimJobs(state.clone()),
            SimRuntime(state.clone()),
            inventory.clone(),
        ))
        .expect("in-memory ports do not fail");
        let mut cycle = |now: i64, job: QueuedJob| {
            lock(&state).queued.insert(job.id, job);
            futures::executor::block_on(shell.run_cycle(Timestamp(now)))
                .expect("in-memory ports do not fail")
                .plan
                .admit
                .iter()
                .map(|a| a.placement.node.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(cycle(1, one_gpu_job(1)), ["node-a"]);
        // The pool is full: the second job waits, cycle after cycle.
        assert!(cycle(2, one_gpu_job(2)).is_empty());
        assert!(cycle(3, one_gpu_job(3)).is_empty());
        *lock_inventory(&inventory.0) = pool_of(&["node-a", "node-b"]);
        assert_eq!(cycle(4, one_gpu_job(4)), ["node-b"]);
    }
}
