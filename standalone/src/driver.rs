//! The standalone scheduling loop: a thin driver around the scheduler
//! library. Each cycle reads the store, builds a snapshot, calls `decide`,
//! records the admissions, stops the preempted jobs, and hands admitted
//! jobs to the executor. A cycle runs when a job changes state, and at
//! least every couple of seconds (quota changes, for instance, are not job
//! events).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{Inventory, JobId, JobState, Name, Tenant, TenantId, Timestamp};
use finpool_scheduler::{Policy, QueuedJob, RunningJob, Snapshot, decide};
use finpool_store::{Change, RunRecord, Store, StoreError};
use tokio::sync::watch;

use crate::executor::{Executor, StopKind};

/// The longest a cycle waits without a job event.
const IDLE_TICK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Assumed for jobs that set no max runtime (reservations need an end).
    pub default_max_runtime: Duration,
    /// How fast past borrowing is forgotten in the fair-share order.
    pub fair_share_half_life: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            default_max_runtime: Duration::from_secs(24 * 3600),
            fair_share_half_life: Duration::from_secs(
                finpool_scheduler::tenants::DEFAULT_FAIR_SHARE_HALF_LIFE_S,
            ),
        }
    }
}

pub struct Driver {
    pub store: Store,
    pub inventory: Arc<Inventory>,
    pub executor: Executor,
    pub policy: Arc<Policy>,
    pub config: DriverConfig,
    /// Jobs told to stop for preemption, until they leave Running.
    preempting: HashSet<JobId>,
    /// The base model last started on each card.
    resident: BTreeMap<(String, u32), Name>,
    /// Base models each node has fetched since start, beyond its inventory.
    cached: BTreeMap<String, BTreeSet<String>>,
    /// The reservation the last cycle made for a waiting multi-GPU job.
    reservation: Option<finpool_scheduler::Reservation>,
    /// For jobs started by preemption, the jobs they displaced.
    displaced: std::collections::HashMap<JobId, Vec<JobId>>,
}

/// What one cycle did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CycleReport {
    pub queued: usize,
    pub admitted: usize,
    pub preempted: usize,
    pub started: usize,
}

impl Driver {
    pub fn new(
        store: Store,
        inventory: Arc<Inventory>,
        executor: Executor,
        policy: Arc<Policy>,
        config: DriverConfig,
    ) -> Self {
        Self {
            store,
            inventory,
            executor,
            policy,
            config,
            preempting: HashSet::new(),
            resident: BTreeMap::new(),
            cached: BTreeMap::new(),
            displaced: std::collections::HashMap::new(),
            reservation: None,
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.store.subscribe();
        loop {
            match self.cycle().await {
                Ok(report) if report.admitted + report.preempted > 0 => {
                    tracing::debug!(?report, "scheduling cycle")
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

    pub async fn cycle(&mut self) -> Result<CycleReport, StoreError> {
        let now = Timestamp::now();
        let jobs = self.store.active_jobs().await?;
        let tenants = self.store.all_tenants().await?;
        let models = self.store.list_models().await?;
        let still_running: HashSet<JobId> = jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .map(|j| j.id)
            .collect();
        self.preempting.retain(|id| still_running.contains(id));
        let active: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        self.displaced.retain(|id, _| active.contains(id));
        let mut running = Vec::new();
        let mut queue = Vec::new();
        let mut to_start = Vec::new();
        for job in &jobs {
            match (job.state, &job.placement) {
                (JobState::Admitted | JobState::Running, Some(placement)) => {
                    if self.preempting.contains(&job.id) {
                        continue;
                    }
                    running.push(RunningJob {
                        id: job.id,
                        tenant: job.tenant_id.clone(),
                        placement: placement.clone(),
                        cpu_milli: job.spec.resources.cpu_milli,
                        memory_mib: job.spec.resources.memory_mib,
                        priority: job.spec.priority,
                        started_at: (job.state == JobState::Running).then_some(job.updated_at),
                        min_runtime_ms: job.spec.min_runtime_ms.unwrap_or(0),
                        max_runtime_ms: job.spec.max_runtime_ms,
                        model: job.spec.model.clone(),
                        displaced: self.displaced.get(&job.id).cloned().unwrap_or_default(),
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
                    max_runtime_ms: job.spec.max_runtime_ms,
                }),
                _ => {}
            }
        }
        let mut report = CycleReport {
            queued: queue.len(),
            ..Default::default()
        };
        if !queue.is_empty() {
            let half_life = self.config.fair_share_half_life;
            let since = Timestamp(now.0 - 8 * half_life.as_millis() as i64);
            let runs = self.store.runs_since(since).await?;
            let snapshot = Snapshot {
                now,
                classes: self.inventory.classes.clone(),
                nodes: self.nodes_with_caches(),
                usage: recent_borrowing(&runs, &tenants, now, half_life),
                tenants,
                models,
                running,
                resident: self.resident.clone(),
                workload: None,
                default_max_runtime_ms: self.config.default_max_runtime.as_millis() as u64,
                reservation: self.reservation.clone(),
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
            for a in outcome.admitted.iter().filter(|a| !a.waits_for.is_empty()) {
                self.displaced.insert(a.job, a.waits_for.clone());
            }
            for p in &outcome.preempted {
                tracing::info!(job = %p.job, for_job = %p.for_job, reason = %p.reason, "preempting");
                self.preempting.insert(p.job);
                self.executor
                    .stop(p.job, StopKind::Preempt, p.reason.clone())
                    .await;
                report.preempted += 1;
            }
            let changes = outcome
                .admitted
                .iter()
                .map(|a| {
                    let how = match (a.within_guarantee, a.waits_for.is_empty()) {
                        (true, true) => " (within guarantee)".to_owned(),
                        (true, false) => format!(
                            " (within guarantee, reclaimed from {} job(s))",
                            a.waits_for.len()
                        ),
                        (false, true) => " (borrowing idle capacity)".to_owned(),
                        (false, false) => {
                            format!(" (preempting {} lower-priority job(s))", a.waits_for.len())
                        }
                    };
                    let mut change = Change::new(
                        JobState::Admitted,
                        format!("admitted to {}{how}", a.placement.node),
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
            self.reservation = outcome.reservation.clone();
            let mut reasons: Vec<_> = outcome
                .waiting
                .into_iter()
                .map(|w| (w.job, w.reason))
                .collect();
            if let Some(r) = &outcome.reservation {
                for (job, reason) in reasons.iter_mut() {
                    if *job == r.job {
                        *reason = format!("waiting: node {} reserved from {}", r.node, r.at);
                    }
                }
            }
            self.store.set_waiting_reasons(&reasons).await?;
        }
        report.started = to_start.len();
        for job in to_start {
            if let (Some(model), Some(placement)) = (&job.spec.model, &job.placement) {
                for g in &placement.gpus {
                    self.resident
                        .insert((placement.node.clone(), g.index), model.clone());
                }
                self.cached
                    .entry(placement.node.clone())
                    .or_default()
                    .insert(model.to_string());
            }
            self.executor.start(job).await;
        }
        Ok(report)
    }

    /// The inventory's nodes, with the models they fetched since start.
    fn nodes_with_caches(&self) -> Vec<finpool_domain::Node> {
        let mut nodes = self.inventory.nodes.clone();
        for node in &mut nodes {
            if let Some(extra) = self.cached.get(&node.name) {
                for m in extra {
                    if !node.models.contains(m) {
                        node.models.push(m.clone());
                    }
                }
            }
        }
        nodes
    }
}

/// Per tenant and class: how much it held above its guarantee lately, as
/// an exponentially decayed average (milli-GPU) with the given half-life.
pub fn recent_borrowing(
    runs: &[RunRecord],
    tenants: &[Tenant],
    now: Timestamp,
    half_life: Duration,
) -> BTreeMap<TenantId, BTreeMap<String, f64>> {
    let lambda = std::f64::consts::LN_2 / half_life.as_secs_f64().max(1e-3);
    let mut held: BTreeMap<&TenantId, BTreeMap<&str, f64>> = BTreeMap::new();
    for run in runs {
        let end = run.ended_at.unwrap_or(now).min(now);
        let ago_end = now.millis_since(end) as f64 / 1000.0;
        let ago_start = now.millis_since(run.started_at) as f64 / 1000.0;
        // The run's weight in the decayed average: the integral of
        // λ·e^{-λ·age} over the ages it ran.
        let weight = (-lambda * ago_end).exp() - (-lambda * ago_start).exp();
        for g in &run.placement.gpus {
            *held
                .entry(&run.tenant)
                .or_default()
                .entry(&g.class)
                .or_default() += weight * g.milli as f64;
        }
    }
    tenants
        .iter()
        .filter_map(|t| {
            let classes = held.get(&t.id)?;
            let borrowed: BTreeMap<String, f64> = classes
                .iter()
                .map(|(class, avg)| {
                    let guaranteed = t.quota(class).guaranteed as f64 * 1000.0;
                    (class.to_string(), (avg - guaranteed).max(0.0))
                })
                .collect();
            Some((t.id.clone(), borrowed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use finpool_domain::{GpuAssignment, IsolationLevel, Placement, Quota};

    #[test]
    fn recent_borrowing_decays_with_the_half_life() {
        let tenant = Tenant {
            id: Name::parse("t", "alpha").unwrap(),
            display_name: "a".into(),
            quotas: [(
                "A".to_owned(),
                Quota {
                    guaranteed: 1,
                    limit: 4,
                    lending_limit: None,
                },
            )]
            .into(),
            weight: 1,
            isolation: IsolationLevel::SharedWithinTenant,
            created_at: Timestamp(0),
        };
        let card = |i| GpuAssignment {
            index: i,
            uuid: String::new(),
            class: "A".into(),
            milli: 1000,
            memory_mib: 0,
            mig_slice: None,
        };
        let run = |start: i64, end: Option<i64>| RunRecord {
            tenant: tenant.id.clone(),
            placement: Placement {
                node: "n".into(),
                gpus: vec![card(0), card(1), card(2)],
            },
            started_at: Timestamp(start),
            ended_at: end.map(Timestamp),
        };
        let hour = 3_600_000;
        let now = Timestamp(100 * hour);
        // Three cards held forever: an average of 3000, 2000 above the guarantee.
        let steady = recent_borrowing(
            &[run(0, None)],
            std::slice::from_ref(&tenant),
            now,
            Duration::from_secs(3600),
        );
        assert!((steady[&tenant.id]["A"] - 2000.0).abs() < 1.0);
        // Held only until one half-life ago: half the weight remains.
        let past = recent_borrowing(
            &[run(0, Some(99 * hour))],
            std::slice::from_ref(&tenant),
            now,
            Duration::from_secs(3600),
        );
        assert!((past[&tenant.id]["A"] - 500.0).abs() < 1.0, "{past:?}");
    }
}
