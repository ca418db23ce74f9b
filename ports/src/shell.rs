//! The shell every driver runs: one scheduling cycle over the three ports.
//! It holds no policy of its own: it loads, runs the pure
//! [`Cycle`], and carries out the [`Plan`] in a fixed order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use finpool_domain::{Inventory, JobId, Node, Timestamp};
use finpool_scheduler::{Cycle, CycleConfig, CycleInputs, DurableMemory, Plan, Policy};
use finpool_telemetry::{Metrics, TenantSnapshot};

use crate::{InventorySource, JobSource, PortError, Runtime};

/// What one cycle did, for logs, tests and simulators.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    pub queued: usize,
    pub admitted: usize,
    pub preempted: usize,
    pub started: usize,
    /// The plan, as decided (simulators and tests read it).
    pub plan: Plan,
}

pub struct Shell<S, R, I> {
    cycle: Cycle,
    pub source: S,
    pub runtime: R,
    pub inventory: I,
    /// The last save failed: try again even if nothing changed since.
    unsaved: bool,
    /// Where cycle durations, decisions and the tenants' state go, if
    /// anywhere (simulators run without).
    metrics: Option<Metrics>,
    /// The inventory the last cycle read, and its nodes as the cycle takes
    /// them: copied once per inventory, not once per cycle.
    nodes: Option<(Arc<Inventory>, Arc<Vec<Node>>)>,
}

impl<S, R, I> Shell<S, R, I>
where
    S: JobSource,
    R: Runtime<Job = S::Job>,
    I: InventorySource,
{
    /// A shell whose cycle goes on from the memory the source stored.
    pub async fn new(
        config: CycleConfig,
        policy: Policy,
        mut source: S,
        runtime: R,
        inventory: I,
    ) -> Result<Self, PortError> {
        let saved = source.load_memory().await?;
        let durable = match &saved {
            Some(json) => serde_json::from_str::<DurableMemory>(json).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "stored scheduler memory unreadable; starting afresh");
                DurableMemory::default()
            }),
            None => DurableMemory::default(),
        };
        Ok(Self {
            cycle: Cycle::restore(config, policy, durable),
            source,
            runtime,
            inventory,
            unsaved: false,
            metrics: None,
            nodes: None,
        })
    }

    /// Records every cycle in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn cycle_state(&self) -> &Cycle {
        &self.cycle
    }

    pub fn cycle_state_mut(&mut self) -> &mut Cycle {
        &mut self.cycle
    }

    /// One cycle at `now`.
    pub async fn run_cycle(&mut self, now: Timestamp) -> Result<CycleReport, PortError> {
        let began = Instant::now();
        let report = self.cycle_once(now).await?;
        if let Some(m) = &self.metrics {
            m.observe_cycle(
                began.elapsed(),
                report.admitted,
                report.preempted,
                report.plan.waiting.len(),
            );
            for stop in &report.plan.stop {
                m.preempted(stop.preemption.reason.code());
            }
        }
        Ok(report)
    }

    /// Stores whatever memory is unsaved, checkpointed memory included: a
    /// driver that stops calls this, so that a clean shutdown loses none.
    pub async fn save_memory(&mut self) -> Result<(), PortError> {
        if self.cycle.take_unsaved() || self.unsaved {
            self.store_memory().await?;
        }
        Ok(())
    }

    async fn store_memory(&mut self) -> Result<(), PortError> {
        let memory = self
            .cycle
            .stored_memory()
            .map_err(|e| PortError::new("scheduler memory", e))?;
        // Saved again next time if this fails.
        self.unsaved = true;
        self.source.save_memory(&memory).await?;
        self.unsaved = false;
        Ok(())
    }

    /// The inventory's nodes, shared with the last cycle's while the
    /// inventory is the same one.
    fn nodes_of(&mut self, inventory: &Arc<Inventory>) -> Arc<Vec<Node>> {
        match &self.nodes {
            Some((seen, nodes)) if Arc::ptr_eq(seen, inventory) => nodes.clone(),
            _ => {
                let nodes = Arc::new(inventory.nodes.clone());
                self.nodes = Some((inventory.clone(), nodes.clone()));
                nodes
            }
        }
    }

    async fn cycle_once(&mut self, now: Timestamp) -> Result<CycleReport, PortError> {
        for sample in self.runtime.take_load_samples() {
            self.cycle
                .record_load(&sample.node, &sample.model, sample.took_ms);
        }
        let view = self.source.load().await?;
        let inventory = self.inventory.inventory();
        let mut startable: HashMap<JobId, S::Job> = view
            .holding
            .iter()
            .filter(|(r, _)| r.started_at.is_none())
            .map(|(r, j)| (r.id, j.clone()))
            .collect();
        let inputs = CycleInputs {
            now,
            classes: inventory.classes.clone(),
            nodes: self.nodes_of(&inventory),
            tenants: view.tenants,
            models: view.models,
            queued: view.queued,
            holding: view.holding.into_iter().map(|(r, _)| r).collect(),
        };
        let queued = inputs.queued.len();
        if let Some(m) = &self.metrics {
            m.set_tenants(&tenant_snapshots(&inputs));
        }
        let plan = self
            .cycle
            .run(inputs)
            .map_err(|e| PortError::new("scheduler", e))?;
        for warning in &plan.warnings {
            tracing::warn!(%warning, "snapshot inconsistency");
        }
        // Memory first: a displaced-by record must exist before the
        // admission that depends on it is visible.
        if (self.cycle.take_dirty() || self.unsaved)
            && let Err(e) = self.store_memory().await
        {
            self.cycle.forget_stops(&plan.stop);
            return Err(e);
        }
        let mut report = CycleReport {
            queued,
            ..CycleReport::default()
        };
        // Stops before admissions: a victim's stop is never lost to a
        // store error on the admissions (those are decided again).
        for stop in &plan.stop {
            tracing::info!(job = %stop.preemption.job, for_job = %stop.preemption.for_job,
                reason = %stop.preemption, "preempting");
            self.runtime.stop(stop.preemption.job, stop).await;
            report.preempted += 1;
        }
        if !plan.admit.is_empty() {
            for (id, job) in self.source.admit(&plan.admit, now).await? {
                report.admitted += 1;
                startable.insert(id, job);
            }
        }
        for id in &plan.start {
            if let Some(job) = startable.get(id) {
                self.runtime.start(job).await;
                report.started += 1;
            }
        }
        if !plan.waiting.is_empty() {
            self.source.set_waiting(&plan.waiting).await?;
        }
        report.plan = plan;
        Ok(report)
    }
}

/// Pending jobs, and allocated against guaranteed GPUs per class, per
/// tenant, as the cycle's inputs show them.
fn tenant_snapshots(inputs: &CycleInputs) -> Vec<TenantSnapshot> {
    let mut pending: BTreeMap<&str, i64> = BTreeMap::new();
    for q in &inputs.queued {
        *pending.entry(q.tenant.as_str()).or_default() += 1;
    }
    // Thousandths of a GPU, per tenant and class.
    let mut milli: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for h in &inputs.holding {
        for g in &h.placement.gpus {
            *milli
                .entry((h.tenant.as_str(), g.class.as_str()))
                .or_default() += u64::from(g.milli);
        }
    }
    inputs
        .tenants
        .iter()
        .map(|t| {
            let id = t.id.as_str();
            let mut classes: BTreeMap<&str, (f64, f64)> = t
                .quotas
                .iter()
                .map(|(class, q)| (class.as_str(), (0.0, f64::from(q.guaranteed))))
                .collect();
            for ((tenant, class), m) in &milli {
                if *tenant == id {
                    classes.entry(class).or_default().0 = *m as f64 / 1000.0;
                }
            }
            TenantSnapshot {
                tenant: id.to_owned(),
                pending: pending.get(id).copied().unwrap_or(0),
                classes: classes
                    .into_iter()
                    .map(|(c, (a, g))| (c.to_owned(), a, g))
                    .collect(),
            }
        })
        .collect()
}
