//! The scheduling cycle every driver runs: standalone, the simulators, the
//! benches and the in-cluster scheduler. Pure, like the rest of the crate:
//! plain inputs and a clock value in, a [`Plan`] out.
//!
//! One cycle:
//! 1. forgets jobs that are gone ([`DurableMemory::prune`]);
//! 2. decays fair-share borrowing to now ([`fair_share`]), once;
//! 3. learns the workload from new arrivals, the one way every driver does;
//! 4. assembles the [`Snapshot`] (less the jobs being preempted, plus the
//!    models nodes have fetched and the cards' resident models);
//! 5. decides ([`crate::decide`]);
//! 6. remembers what must outlive the cycle and turns the outcome into a
//!    plan: admissions to record, jobs to start (a preemptor once its
//!    victims are gone), jobs to stop with grace, and why the rest wait.

pub mod fair_share;
pub mod load_time;
pub mod memory;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use finpool_domain::{BaseModel, GpuClass, JobId, Name, Node, Tenant, Timestamp};

use crate::decide::{self, Admission, Preemption, Reservation};
use crate::plugins::Policy;
use crate::plugins::workload::OnlineWorkload;
use crate::snapshot::{
    EXPLAINED_PER_CYCLE, LocalityInputs, QueuedJob, RunningJob, Snapshot, SnapshotError,
};
use crate::wait::WaitReason;
pub use memory::{DurableMemory, SoftJson, VolatileMemory};

/// How a driver's cycle behaves; the same for every driver of one pool.
#[derive(Debug, Clone)]
pub struct CycleConfig {
    /// Assumed for jobs that set no max runtime (reservations and warm-card
    /// waits need an end).
    pub default_max_runtime_ms: u64,
    /// How fast past borrowing is forgotten in the fair-share order.
    pub fair_share_half_life_ms: u64,
    /// SIGTERM to SIGKILL for a preempted job.
    pub stop_grace_ms: u64,
    pub locality: LocalityConfig,
    /// A pool without tenants (simulated traces): placement only.
    pub tenantless: bool,
    /// Learn the workload from arrivals (fragmentation-aware scorers use it).
    pub learn_workload: bool,
    /// How many waiting jobs get a precise reason per cycle.
    pub explain_limit: usize,
    /// Which borrowing job goes first among tenants of equal fair share.
    pub borrow_order: crate::decide::BorrowOrder,
    /// How often memory that decisions need not act on at once and that
    /// nobody reads (fair share, hold clocks, measured load times) is
    /// saved; stores in between write it as last saved. See
    /// [`Cycle::take_dirty`].
    pub memory_checkpoint_ms: u64,
}

/// Saving soft memory at most this often bounds what a crash loses: 30 s
/// of fair-share history (under 0.2% of any tenant's average with a 3 h
/// half-life) and of hold clocks. A pool of thousands of tenants would
/// otherwise store all of their averages every cycle.
pub const DEFAULT_MEMORY_CHECKPOINT_MS: u64 = 30_000;

impl Default for CycleConfig {
    fn default() -> Self {
        Self {
            default_max_runtime_ms: 24 * 3_600_000,
            fair_share_half_life_ms: crate::tenants::DEFAULT_FAIR_SHARE_HALF_LIFE_S * 1000,
            stop_grace_ms: 10_000,
            locality: LocalityConfig::default(),
            tenantless: false,
            learn_workload: true,
            explain_limit: EXPLAINED_PER_CYCLE,
            borrow_order: crate::decide::BorrowOrder::default(),
            memory_checkpoint_ms: DEFAULT_MEMORY_CHECKPOINT_MS,
        }
    }
}

/// Base-model locality: see `decide::locality`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalityConfig {
    pub enabled: bool,
    /// How many of its model's load times a job may hold out for a card
    /// that holds the model (or for balance between models).
    pub wait_factor: f64,
    /// Disk-to-card bandwidth, for models with no registered or measured
    /// load time: load time = size ÷ bandwidth.
    pub node_bandwidth_mib_s: u64,
}

/// A conservative NVMe-to-GPU rate: 2 GiB/s.
pub const DEFAULT_NODE_BANDWIDTH_MIB_S: u64 = 2048;

impl Default for LocalityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            wait_factor: 1.0,
            node_bandwidth_mib_s: DEFAULT_NODE_BANDWIDTH_MIB_S,
        }
    }
}

/// A cycle's plain inputs: the pool and its jobs, as the driver sees them.
#[derive(Debug, Clone, Default)]
pub struct CycleInputs {
    pub now: Timestamp,
    pub classes: Vec<GpuClass>,
    /// The inventory's nodes, shared (see [`Snapshot::nodes`]).
    pub nodes: Arc<Vec<Node>>,
    pub tenants: Vec<Tenant>,
    pub models: Vec<BaseModel>,
    /// Jobs waiting to be admitted.
    pub queued: Vec<QueuedJob>,
    /// Jobs holding resources: admitted (`started_at: None`) or running,
    /// including those being preempted. Their `displaced` lists are the
    /// cycle's to fill.
    pub holding: Vec<RunningJob>,
}

/// A running job to stop, with grace, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub preemption: Preemption,
    /// SIGTERM to SIGKILL.
    pub grace_ms: u64,
}

/// What one cycle asks its driver to do, in this order: record the
/// admissions, stop the preempted jobs, start the ready ones, store the
/// waiting reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub admit: Vec<Admission>,
    pub stop: Vec<Stop>,
    /// Admitted jobs to start now: new admissions that displaced no one,
    /// and earlier ones whose victims are gone.
    pub start: Vec<JobId>,
    pub waiting: Vec<(JobId, WaitReason)>,
    pub reservation: Option<Reservation>,
    /// Inconsistencies between the jobs and the inventory.
    pub warnings: Vec<String>,
}

/// The cycle and its memory.
pub struct Cycle {
    pub config: CycleConfig,
    policy: Policy,
    durable: DurableMemory,
    volatile: VolatileMemory,
    /// Memory a decision acts on (preemptions, displaced-by records, the
    /// reservation), or that people read (the cards' models and the nodes'
    /// cached models, in the node listing), changed since the driver last
    /// stored it.
    dirty: bool,
    /// Other durable memory (saved at checkpoints) changed since the last
    /// checkpoint.
    soft_dirty: bool,
    /// When the last checkpoint was stored.
    saved_at: Option<Timestamp>,
    /// The soft memory as of the last checkpoint, written again by the
    /// stores between checkpoints (see [`SoftJson`]).
    soft_json: Option<SoftJson>,
    /// The next store is a checkpoint: it writes the soft memory as it is.
    checkpoint: bool,
    /// The last cycle's clock.
    now: Timestamp,
}

impl Cycle {
    pub fn new(config: CycleConfig, policy: Policy) -> Self {
        Self::restore(config, policy, DurableMemory::default())
    }

    /// A cycle that goes on from stored memory (after a restart or a
    /// leader change).
    pub fn restore(config: CycleConfig, policy: Policy, mut durable: DurableMemory) -> Self {
        // Card memory is rebuilt (see `VolatileMemory`); so is its view.
        let dirty = !std::mem::take(&mut durable.resident).is_empty();
        let volatile = VolatileMemory {
            workload: config
                .learn_workload
                .then(crate::plugins::Policy::finpool_workload),
            ..VolatileMemory::default()
        };
        Self {
            config,
            policy,
            durable,
            volatile,
            dirty,
            soft_dirty: false,
            saved_at: None,
            soft_json: None,
            checkpoint: false,
            now: Timestamp(0),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What the driver stores.
    pub fn durable(&self) -> &DurableMemory {
        &self.durable
    }

    /// The driver could not carry out these stops (its store failed before
    /// it sent them): forget them, so that the next cycle decides again
    /// rather than counting the victims' cards as free.
    pub fn forget_stops(&mut self, stops: &[Stop]) {
        for s in stops {
            self.durable.preempting.remove(&s.preemption.job);
        }
        self.dirty = true;
    }

    /// Whether the driver should store the durable memory now: memory a
    /// decision acts on changed (stored before the plan is carried out),
    /// or other memory changed and the last checkpoint is a checkpoint
    /// interval old. Between checkpoints a store writes the soft memory as
    /// last checkpointed (see [`Cycle::stored_memory`]).
    pub fn take_dirty(&mut self) -> bool {
        let checkpoint_due = self.soft_dirty
            && self
                .saved_at
                .is_none_or(|at| self.now.millis_since(at) >= self.config.memory_checkpoint_ms);
        if !(self.dirty || checkpoint_due) {
            return false;
        }
        self.dirty = false;
        if checkpoint_due {
            self.soft_dirty = false;
            self.saved_at = Some(self.now);
            self.checkpoint = true;
        }
        true
    }

    /// Whether any memory changed since the last store, checkpoint or not
    /// (a driver that stops stores it then, soft memory as it is).
    pub fn take_unsaved(&mut self) -> bool {
        let unsaved = self.dirty || self.soft_dirty;
        self.checkpoint |= self.soft_dirty;
        self.dirty = false;
        self.soft_dirty = false;
        unsaved
    }

    /// The durable memory as the driver stores it, after
    /// [`Cycle::take_dirty`] or [`Cycle::take_unsaved`] said to: what
    /// decisions act on as it is now, the soft memory as of the last
    /// checkpoint (this one, if it is due).
    pub fn stored_memory(&mut self) -> serde_json::Result<String> {
        let soft = match self.soft_json.take() {
            Some(soft) if !self.checkpoint => soft,
            _ => self.durable.soft_json()?,
        };
        self.checkpoint = false;
        let json = self.durable.to_json_with(&soft);
        self.soft_json = Some(soft);
        json
    }

    /// Replaces the learner (simulations of policies with their own).
    pub fn set_workload_learner(&mut self, learner: Option<OnlineWorkload>) {
        self.volatile.workload = learner;
    }

    /// A runtime measured loading `model` on `node`.
    pub fn record_load(&mut self, node: &str, model: &str, took_ms: u64) {
        self.soft_dirty = true;
        self.durable
            .load_times
            .entry(model.to_owned())
            .or_default()
            .entry(node.to_owned())
            .or_default()
            .add(took_ms);
    }

    /// The load time the cycle assumes for `model`.
    pub fn load_time_ms(&self, model: &BaseModel) -> u64 {
        load_time::load_time_ms(
            model,
            &self.durable.load_times,
            self.config.locality.node_bandwidth_mib_s,
        )
    }

    pub fn run(&mut self, inputs: CycleInputs) -> Result<Plan, SnapshotError> {
        let CycleInputs {
            now,
            classes,
            mut nodes,
            tenants,
            models,
            mut queued,
            mut holding,
        } = inputs;
        let queued_ids: crate::JobSet = queued.iter().map(|j| j.id).collect();
        let holding_ids: crate::JobSet = holding.iter().map(|j| j.id).collect();
        self.now = now;
        let pruned = self.durable.prune(&queued_ids, &holding_ids);
        self.dirty |= pruned.decisions;
        self.soft_dirty |= pruned.hold_clocks;
        self.volatile
            .observed
            .retain(|id| queued_ids.contains(id) || holding_ids.contains(id));

        // A tenant-less pool has no fair share to keep; otherwise only the
        // cycle's tenants' borrowing is read.
        let usage = if self.config.tenantless {
            BTreeMap::new()
        } else {
            let half_life = self.config.fair_share_half_life_ms;
            tenants
                .iter()
                .filter_map(|t| {
                    let per_class =
                        self.durable
                            .fair_share
                            .view_of(t.id.as_str(), now, half_life)?;
                    Some((t.id.clone(), per_class))
                })
                .collect()
        };

        // Copied only if some node fetched models the inventory does not list.
        let fetched_any = nodes
            .iter()
            .any(|n| self.durable.cached.contains_key(&n.name));
        let nodes_to_extend = if fetched_any {
            Arc::make_mut(&mut nodes).as_mut_slice()
        } else {
            &mut []
        };
        for node in nodes_to_extend {
            if let Some(extra) = self.durable.cached.get(&node.name) {
                // A node may have fetched every model the pool has: a set,
                // not a scan of its list per model.
                let listed: std::collections::BTreeSet<&String> = node.models.iter().collect();
                let fetched: Vec<String> = extra
                    .iter()
                    .filter(|m| !listed.contains(m))
                    .cloned()
                    .collect();
                node.models.extend(fetched);
            }
        }
        // The jobs being stopped hold their cards until they are gone, but
        // are not the decision's to place: they stay out of the snapshot.
        // (Moved, not cloned: a full pool holds many jobs.)
        let stopping: Vec<RunningJob> = holding
            .extract_if(.., |j| self.durable.preempting.contains_key(&j.id))
            .collect();
        let mut running = holding;
        for j in &mut running {
            j.displaced = self
                .durable
                .displaced
                .get(&j.id)
                .cloned()
                .unwrap_or_default();
        }
        for clock in self.durable.held_back.values_mut() {
            self.soft_dirty |= clock.tick(now);
        }
        let load_ms = models
            .iter()
            .map(|m| (m.name.to_string(), self.load_time_ms(m)))
            .collect();
        let mut snapshot = Snapshot {
            now,
            classes,
            nodes,
            tenants,
            models,
            running,
            resident: self.volatile.resident.clone(),
            usage,
            workload: None,
            default_max_runtime_ms: self.config.default_max_runtime_ms,
            reservation: self.durable.reservation.clone(),
            tenantless: self.config.tenantless,
            locality: LocalityInputs {
                enabled: self.config.locality.enabled,
                load_ms,
                held_ms: self
                    .durable
                    .held_back
                    .iter()
                    .map(|(id, c)| (*id, c.held_ms))
                    .collect(),
                wait_factor: self.config.locality.wait_factor,
            },
            explain_limit: self.config.explain_limit,
            borrow_order: self.config.borrow_order,
        };
        let mut built = snapshot.build()?;
        if let Some(learner) = self.volatile.workload.as_mut() {
            // Arrivals in the order they came, each seen once.
            queued.sort_by_key(|j| (j.submitted_at, j.id));
            for job in &queued {
                if self.volatile.observed.insert(job.id)
                    && let Ok(task) = built.task_for(job, &snapshot.models, self.config.tenantless)
                {
                    learner.observe(&task);
                }
            }
            snapshot.workload = Some(learner.model().clone());
        }
        let outcome = decide::decide_built(
            &snapshot,
            &mut built,
            &queued,
            &self.policy,
            &mut self.volatile.engine,
        );
        // Fair share counts what is held from now on: admissions included.
        if !self.config.tenantless {
            let held = snapshot.running.iter().chain(&stopping);
            self.remember_borrowing(now, &snapshot.tenants, &queued, held, &outcome);
        }
        // The admitted jobs' models (few of a long queue are admitted, and
        // most cycles of a busy pool admit none).
        let models_of: BTreeMap<JobId, Name> = if outcome.admitted.is_empty() {
            BTreeMap::new()
        } else {
            let admitted: crate::JobSet = outcome.admitted.iter().map(|a| a.job).collect();
            queued
                .into_iter()
                .filter(|j| admitted.contains(&j.id))
                .filter_map(|j| Some((j.id, j.model?)))
                .collect()
        };
        let holding = snapshot.running.iter().chain(&stopping);
        Ok(self.plan(now, &models_of, holding, outcome))
    }

    /// Fair share counts what is held from now until the next cycle: the
    /// holding jobs and this cycle's admissions.
    fn remember_borrowing<'h>(
        &mut self,
        now: Timestamp,
        tenants: &[Tenant],
        queued: &[QueuedJob],
        held: impl Iterator<Item = &'h RunningJob>,
        outcome: &decide::Outcome,
    ) {
        // The admitted jobs' tenants (few of a long queue are admitted, and
        // most cycles of a busy pool admit none).
        let placed: rustc_hash::FxHashMap<JobId, &finpool_domain::Placement> = outcome
            .admitted
            .iter()
            .map(|a| (a.job, &a.placement))
            .collect();
        let looked_up = if placed.is_empty() { &[][..] } else { queued };
        let admitted = looked_up
            .iter()
            .filter_map(|j| Some((j.tenant.as_str(), *placed.get(&j.id)?)));
        let held_after = held
            .map(|j| (j.tenant.as_str(), &j.placement))
            .chain(admitted);
        let borrowing = fair_share::borrowing(tenants, held_after);
        if self
            .durable
            .fair_share
            .advance(now, borrowing, self.config.fair_share_half_life_ms)
        {
            self.soft_dirty = true;
        }
    }

    /// Remembers what must outlive the cycle; turns the outcome into a plan.
    fn plan<'h>(
        &mut self,
        now: Timestamp,
        models_of: &BTreeMap<JobId, Name>,
        holding: impl Iterator<Item = &'h RunningJob> + Clone,
        outcome: decide::Outcome,
    ) -> Plan {
        for id in &outcome.held_back {
            self.durable.held_back.entry(*id).or_default().since = Some(now);
            self.soft_dirty = true;
        }
        for p in &outcome.preempted {
            self.durable.preempting.insert(p.job, now);
            self.dirty = true;
        }
        for a in &outcome.admitted {
            if !a.waits_for.is_empty() {
                self.durable.displaced.insert(a.job, a.waits_for.clone());
                self.dirty = true;
            }
        }
        if self.durable.reservation != outcome.reservation {
            self.durable.reservation = outcome.reservation.clone();
            self.dirty = true;
        }
        // A job's model is loaded on its cards as it starts; the node keeps
        // the weights on disk.
        for a in &outcome.admitted {
            if let Some(model) = models_of.get(&a.job) {
                for g in &a.placement.gpus {
                    self.volatile
                        .resident
                        .insert((a.placement.node.clone(), g.index), model.clone());
                    let before = self
                        .durable
                        .resident
                        .entry(a.placement.node.clone())
                        .or_default()
                        .insert(g.index, model.to_string());
                    self.dirty |= before.as_deref() != Some(model.as_str());
                }
                self.dirty |= self
                    .durable
                    .cached
                    .entry(a.placement.node.clone())
                    .or_default()
                    .insert(model.to_string());
            }
        }
        // A preemptor starts once none of its victims is still stopping
        // (a victim requeued and admitted again does not hold it back).
        let victims_gone = |job: &JobId, durable: &DurableMemory| {
            durable
                .displaced
                .get(job)
                .is_none_or(|v| v.iter().all(|v| !durable.preempting.contains_key(v)))
        };
        let mut start: Vec<JobId> = holding
            .clone()
            .filter(|j| j.started_at.is_none() && !self.durable.preempting.contains_key(&j.id))
            .map(|j| j.id)
            .filter(|id| victims_gone(id, &self.durable))
            .collect();
        start.extend(
            outcome
                .admitted
                .iter()
                .filter(|a| a.waits_for.is_empty())
                .map(|a| a.job),
        );
        let mut waiting: Vec<(JobId, WaitReason)> = outcome
            .waiting
            .into_iter()
            .map(|w| (w.job, w.reason))
            .collect();
        for j in holding.filter(|j| j.started_at.is_none()) {
            if let Some(v) = self.durable.displaced.get(&j.id)
                && !victims_gone(&j.id, &self.durable)
            {
                waiting.push((j.id, WaitReason::AwaitingVictims { victims: v.len() }));
            }
        }
        Plan {
            stop: outcome
                .preempted
                .into_iter()
                .map(|preemption| Stop {
                    preemption,
                    grace_ms: self.config.stop_grace_ms,
                })
                .collect(),
            admit: outcome.admitted,
            start,
            waiting,
            reservation: outcome.reservation,
            warnings: outcome.warnings,
        }
    }
}
