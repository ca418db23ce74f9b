//! The planner: one decision's working state (the indexed pool, the jobs
//! holding resources, the quota budgets) and the admission of one job.
//! Ordering, quota accounting, preemption, backfill and explanations are
//! each in their own file, as further `impl Planner` blocks.

use std::collections::{HashMap, HashSet};

use finpool_domain::{GpuRequest, JobId, MILLI_PER_GPU, Timestamp};

use super::explain::infeasible;
use super::locality::Hint;
use super::preempt::Victims;
use super::{Admission, Outcome, Reservation};
use crate::JobMap;
use crate::cluster::{Cluster, NodeIdx, NodeState};
use crate::engine::{Engine, EngineCache, Request, ScoreInputs};
use crate::plugins::workload::WorkloadModel;
use crate::plugins::{Policy, QuotaBound};
use crate::snapshot::{Built, Held, QueuedJob, Snapshot};
use crate::task::{ModelFit, Task};
use crate::tenants::{Budget, TenantBook, budgets};

/// Identifies placement attempts that must fail alike within a cycle: the
/// same task (tenant included) and priority under the same bound and
/// reservation. See [`Planner::admit`].
type AttemptKey = (Task, i32, Option<NodeIdx>);

pub(super) struct Planner<'a> {
    pub(super) snapshot: &'a Snapshot,
    pub(super) built: &'a Built,
    pub(super) engine: Engine<'a>,
    pub(super) tenants: TenantBook,
    pub(super) workload: &'a WorkloadModel,
    /// Jobs holding resources: running ones, then those admitted this cycle.
    pub(super) held: Vec<Held>,
    /// Per held job: preempted this cycle.
    pub(super) released: Vec<bool>,
    /// Per held job: admitted this cycle (never a victim this cycle).
    pub(super) fresh: Vec<bool>,
    /// Each held job's position in `held`: preemption asks of every
    /// candidate victim, and a scan made that quadratic in running jobs.
    pub(super) held_at: JobMap<usize>,
    /// Per tenant, its held jobs' positions in `held`, in order.
    pub(super) held_of: Vec<Vec<usize>>,
    pub(super) budgets: Vec<Budget>,
    pub(super) capacity: Vec<u64>,
    /// Recent borrowing per tenant and class (decayed average, milli-GPU).
    pub(super) recent: Vec<Vec<f64>>,
    pub(super) reservation: Option<(JobId, NodeIdx, Timestamp)>,
    pub(super) outcome: Outcome,
    pub(super) now: Timestamp,
    /// Borrowing attempts that failed since the last preemption, and
    /// whether the job held out for its model while another card could
    /// take it (a job that fails alike holds out alike).
    pub(super) failed: HashMap<AttemptKey, bool, rustc_hash::FxBuildHasher>,
    /// Jobs some held job displaced (they may not preempt it back).
    pub(super) displacers: HashSet<JobId>,
    /// The reason each job that may hold out for its model would get.
    pub(super) locality_hints: JobMap<Hint>,
    /// Jobs that held out for their model though another card could take
    /// them: (job, its task on any card, bound, node to avoid).
    pub(super) holding_out: Vec<(JobId, Task, QuotaBound, Option<NodeIdx>)>,
    /// Per task shape (of no tenant, on any card): whether it fits no node
    /// of the pool even empty. Capacity does not change within a decision.
    never_fits: HashMap<Task, bool, rustc_hash::FxBuildHasher>,
    /// One node of each distinct capacity, made when first asked: what
    /// [`infeasible`] reads, in a pool of thousands of alike nodes.
    node_kinds: Option<Cluster>,
}

impl<'a> Planner<'a> {
    pub(super) fn new(
        snapshot: &'a Snapshot,
        built: &'a mut Built,
        policy: &'a Policy,
        workload: &'a WorkloadModel,
        outcome: Outcome,
        locality_hints: JobMap<Hint>,
        cache: &mut EngineCache,
    ) -> Self {
        let tenants = std::mem::take(&mut built.tenants);
        let cluster = std::mem::take(&mut built.cluster);
        let held = std::mem::take(&mut built.held);
        let budgets = budgets(&cluster, &tenants);
        let classes = cluster.classes.len();
        let capacity = (0..classes)
            .map(|c| {
                cluster
                    .nodes
                    .iter()
                    .flat_map(|n| &n.gpus)
                    .filter(|g| g.class as usize == c)
                    .count() as u64
                    * MILLI_PER_GPU as u64
            })
            .collect();
        let usage_of: HashMap<&str, _> = snapshot
            .usage
            .iter()
            .map(|(id, u)| (id.as_str(), u))
            .collect();
        let recent = (0..tenants.len())
            .map(|t| {
                let usage = usage_of.get(tenants.names[t].as_str());
                cluster
                    .classes
                    .iter()
                    .map(|c| usage.and_then(|u| u.get(&c.name)).copied().unwrap_or(0.0))
                    .collect()
            })
            .collect();
        let inputs = ScoreInputs {
            workload: workload.clone(),
            tenants: tenants.clone(),
            classes: cluster.classes.clone(),
            model_demand: cluster.model_demand.clone(),
            models: snapshot.models.iter().map(|m| m.name.to_string()).collect(),
            nodes: cluster.nodes.len(),
        };
        let mut held_of = vec![Vec::new(); tenants.len()];
        for (i, h) in held.iter().enumerate() {
            if let Some(v) = h.tenant.and_then(|t| held_of.get_mut(t as usize)) {
                v.push(i);
            }
        }
        let n = held.len();
        let displacers = held
            .iter()
            .flat_map(|h| h.displaced.iter().copied())
            .collect();
        Self {
            snapshot,
            built,
            engine: Engine::resume(policy, cluster, cache, inputs),
            tenants,
            workload,
            released: vec![false; n],
            fresh: vec![false; n],
            held_at: held.iter().enumerate().map(|(i, h)| (h.id, i)).collect(),
            held_of,
            held,
            budgets,
            capacity,
            recent,
            reservation: None,
            outcome,
            now: snapshot.now,
            failed: HashMap::default(),
            displacers,
            locality_hints,
            holding_out: Vec::new(),
            never_fits: HashMap::default(),
            node_kinds: None,
        }
    }

    /// Whether `task` fits no node of the pool even were it empty: no
    /// placement, preemption or reservation can start it, so none is
    /// tried (a reclaim would look at every running job in vain).
    fn never_fits(&mut self, task: &Task) -> bool {
        let shape = Task {
            tenant: None,
            model_fit: ModelFit::Any,
            ..*task
        };
        if let Some(&never) = self.never_fits.get(&shape) {
            return never;
        }
        let kinds = self
            .node_kinds
            .get_or_insert_with(|| node_kinds(self.engine.cluster()));
        let never = infeasible(kinds, &shape).is_err();
        self.never_fits.insert(shape, never);
        never
    }

    pub(super) fn cluster(&self) -> &Cluster {
        self.engine.cluster()
    }

    /// Tries to admit one job under `bound`: placement, then preemption
    /// (reclaim within guarantees, or within the tenant by priority), then
    /// a reservation if it is a gang that must wait.
    ///
    /// Within a cycle the pool only fills up, caps only tighten and victims
    /// only become fewer, until a preemption frees something. So while
    /// borrowing, an attempt that failed fails again for the same task,
    /// priority and reservation: long queues of alike jobs cost one
    /// attempt, not one each. (Reclaim is left out: a victim's tenant may
    /// gain work during the cycle, which can make the victim eligible.)
    pub(super) fn admit(&mut self, job: &QueuedJob, task: &Task, bound: QuotaBound) -> bool {
        let t = task.tenant.expect("queued jobs have tenants");
        let avoid = self.avoid_for(job);
        let key = (bound == QuotaBound::Limit && !self.displacers.contains(&job.id)).then_some((
            *task,
            job.priority,
            avoid,
        ));
        if let Some(held) = key.as_ref().and_then(|k| self.failed.get(k)) {
            if *held {
                let any_card = Task {
                    model_fit: ModelFit::Any,
                    ..*task
                };
                self.holding_out.push((job.id, any_card, bound, avoid));
            }
            return false;
        }
        if self.never_fits(task) || (bound == QuotaBound::Limit && self.cannot_borrow(job, task)) {
            if let Some(key) = key {
                self.failed.insert(key, false);
            }
            return false;
        }
        let holding_out = self.holding_out.len();
        let caps = (bound == QuotaBound::Limit).then(|| self.caps(t));
        let admitted = self.try_admit(job, task, bound, caps.as_deref(), avoid);
        let preempted = admitted
            && self
                .outcome
                .admitted
                .last()
                .is_some_and(|a| !a.waits_for.is_empty());
        if preempted {
            self.failed.clear();
        } else if !admitted && let Some(key) = key {
            self.failed
                .insert(key, self.holding_out.len() > holding_out);
        }
        admitted
    }

    /// Whether a borrowing attempt surely fails as [`Self::try_admit`]
    /// would, with nothing to record: every card is in full use (no GPU
    /// task fits, none holds out), the tenant holds nothing of lower
    /// priority to preempt, and no reservation is left to make for a gang.
    /// In a busy pool most of a long queue stops here, at no cost per node.
    fn cannot_borrow(&self, job: &QueuedJob, task: &Task) -> bool {
        let Some(t) = task.tenant else { return false };
        let gang = matches!(task.gpu, GpuRequest::Whole { count } if count > 1);
        task.gpu != GpuRequest::None
            && self.cluster().every_card_full()
            && !(gang && self.reservation.is_none())
            && self
                .held_of
                .get(t as usize)
                .is_none_or(|held| held.iter().all(|&i| self.held[i].priority >= job.priority))
    }

    fn try_admit(
        &mut self,
        job: &QueuedJob,
        task: &Task,
        bound: QuotaBound,
        caps: Option<&[u64]>,
        avoid: Option<NodeIdx>,
    ) -> bool {
        let t = task.tenant.expect("queued jobs have tenants");
        let request = Request {
            tenants: &self.tenants,
            bound,
            caps,
            avoid_node: avoid,
            workload: self.workload,
            workload_epoch: 0,
        };
        if let Some(p) = self.engine.place(&request, task) {
            self.commit(job, task, &p, bound == QuotaBound::Guaranteed, Vec::new());
            if self.reservation.is_some_and(|(r, _, _)| r == job.id) {
                self.reservation = None;
            }
            return true;
        }
        // A job holding out for its model waits while it could run
        // elsewhere; otherwise it is like any other job from here on.
        let task = &if task.model_fit != ModelFit::Any {
            let any_card = Task {
                model_fit: ModelFit::Any,
                ..*task
            };
            if self.engine.place(&request, &any_card).is_some() {
                self.holding_out.push((job.id, any_card, bound, avoid));
                return false;
            }
            any_card
        } else {
            *task
        };
        // Reclaim is for GPU guarantees: CPU-only work never triggers it.
        let gpu_job = task.gpu != GpuRequest::None;
        let victims_ok = |planner: &Self, v: &Held| -> bool {
            let kind = match bound {
                // Reclaim: other tenants' GPU work above their guarantees.
                QuotaBound::Guaranteed => {
                    gpu_job
                        && v.tenant.is_some_and(|s| s != t)
                        && v.pieces.iter().any(|a| a.choice.gpus != 0)
                }
                // Priority: the same tenant's less important work.
                _ => v.tenant == Some(t) && v.priority < job.priority,
            };
            kind && planner.preemptible(v) && !v.displaced.contains(&job.id)
        };
        let victims = Victims {
            // Priority preemption takes only the tenant's own work.
            only: (bound != QuotaBound::Guaranteed).then_some(t),
            eligible: &victims_ok,
        };
        // (A CPU-only job within its guarantee has no victim to look for.)
        if (gpu_job || bound != QuotaBound::Guaranteed)
            && let Some(done) = self.preempt_for(job, task, bound, caps, avoid, victims)
        {
            return done;
        }
        // Same-tenant priority preemption also applies inside guarantees.
        if bound == QuotaBound::Guaranteed {
            let same_tenant = |planner: &Self, v: &Held| -> bool {
                v.tenant == Some(t)
                    && v.priority < job.priority
                    && planner.preemptible(v)
                    && !v.displaced.contains(&job.id)
            };
            let victims = Victims {
                only: Some(t),
                eligible: &same_tenant,
            };
            if let Some(done) = self.preempt_for(job, task, bound, None, avoid, victims) {
                return done;
            }
        }
        if self.reservation.is_none()
            && matches!(task.gpu, GpuRequest::Whole { count } if count > 1)
            && let Some((node, at)) = self.earliest_start(task)
        {
            self.reservation = Some((job.id, node, at));
        }
        false
    }

    /// Records an admission and charges it.
    pub(super) fn commit(
        &mut self,
        job: &QueuedJob,
        task: &Task,
        p: &crate::placer::Placement,
        within_guarantee: bool,
        waits_for: Vec<JobId>,
    ) {
        let placement = self
            .built
            .to_domain(self.cluster(), p, &self.snapshot.nodes);
        let allocation = p.allocation(task);
        self.apply(&allocation);
        let runtime = job
            .max_runtime_ms
            .unwrap_or(self.snapshot.default_max_runtime_ms) as i64;
        self.held_at.insert(job.id, self.held.len());
        if let Some(v) = task.tenant.and_then(|t| self.held_of.get_mut(t as usize)) {
            v.push(self.held.len());
        }
        self.held.push(Held {
            id: job.id,
            tenant: task.tenant,
            pieces: vec![allocation],
            node: p.node,
            priority: job.priority,
            started_at: None,
            min_runtime_ms: 0,
            ends_by: Timestamp(self.now.0.saturating_add(runtime)),
            displaced: Vec::new(),
        });
        self.released.push(false);
        self.fresh.push(true);
        self.outcome.admitted.push(Admission {
            job: job.id,
            placement,
            within_guarantee,
            waits_for,
        });
    }

    /// The outcome; the engine's indexes go back to `cache` for the next
    /// decision.
    pub(super) fn finish(mut self, cache: &mut EngineCache) -> Outcome {
        self.outcome.reservation = self.reservation.map(|(job, node, at)| Reservation {
            job,
            node: self.cluster().nodes[node as usize].name.clone(),
            at,
        });
        self.engine.keep(cache);
        self.outcome
    }

    /// Placement alone, for tenant-less pools (simulated traces): no
    /// quotas, no preemption, no reservations.
    ///
    /// Here the pool only fills up within a decision, so a task that
    /// reads no base model and found no place finds none again: the
    /// jobs of its shape that follow are not tried.
    pub(super) fn place_only(&mut self, job: &QueuedJob, task: &Task) -> bool {
        let key = (task.model.is_none()).then_some((*task, 0, None));
        if self.never_fits(task) || key.is_some_and(|k| self.failed.contains_key(&k)) {
            return false;
        }
        let request = Request::new(&self.tenants, QuotaBound::Unbounded, self.workload, 0);
        if let Some(p) = self.engine.place(&request, task) {
            self.commit(job, task, &p, true, Vec::new());
            return true;
        }
        if let Some(key) = key {
            self.failed.insert(key, false);
            return false;
        }
        if task.model_fit != ModelFit::Any {
            let any_card = Task {
                model_fit: ModelFit::Any,
                ..*task
            };
            if self.engine.place(&request, &any_card).is_some() {
                self.holding_out
                    .push((job.id, any_card, QuotaBound::Unbounded, None));
            }
        }
        false
    }
}

/// A pool with one node of each distinct capacity in `cluster` (CPU,
/// memory, and each card's class, memory and MIG slices): whether a task
/// fits some node when empty reads nothing else.
fn node_kinds(cluster: &Cluster) -> Cluster {
    // Nodes of equal CPU, memory and card count, by index; a node joins
    // the kinds only if its cards differ from those of every earlier one.
    // (Compared in place: this runs every decision over every node.)
    let mut seen: rustc_hash::FxHashMap<(u64, u64, usize), Vec<usize>> = Default::default();
    let same_cards = |a: &NodeState, b: &NodeState| {
        a.gpus.iter().zip(&b.gpus).all(|(x, y)| {
            x.class == y.class
                && x.memory_mib == y.memory_mib
                && x.slices.len() == y.slices.len()
                && x.slices
                    .iter()
                    .zip(&y.slices)
                    .all(|(s, t)| (s.milli, s.memory_mib) == (t.milli, t.memory_mib))
        })
    };
    let mut kinds = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let alike = seen
            .entry((n.cpu_milli, n.memory_mib, n.gpus.len()))
            .or_default();
        if !alike.iter().any(|&j| same_cards(&cluster.nodes[j], n)) {
            alike.push(i);
            kinds.push(n.clone());
        }
    }
    Cluster::new(cluster.classes.clone(), kinds)
}
