//! One scheduling cycle: admit, place, reclaim and reserve, on a snapshot.
//!
//! The order of admission:
//!
//! 1. **Guarantees first.** Jobs that keep their tenant within its
//!    guarantee go first, by priority then age. If no room is left for one,
//!    the scheduler reclaims: it preempts work other tenants hold *above*
//!    their guarantees (lowest priority first, then the most recently
//!    started, once each has run its minimum runtime).
//! 2. **Then fair share of what is idle.** Tenants borrow idle capacity up
//!    to their limit, in weighted dominant-resource-fair order over GPU
//!    classes: the tenant borrowing least (lately and now, per unit of
//!    weight) goes next. Borrowing comes from unguaranteed capacity and
//!    from idle guarantees, each lender giving at most its lending limit.
//! 3. **Within a tenant**, by priority then age; a higher-priority job may
//!    preempt the same tenant's lower-priority work.
//! 4. **Gangs.** Multi-GPU jobs are placed all or nothing. When one cannot
//!    start, it gets a reservation: the node and time at which it surely
//!    can (as running jobs reach their max runtime). Later jobs may use that
//!    node only if they end before then, so a stream of small jobs cannot
//!    starve a large one.
//!
//! Preemption never cycles: a victim's tenant stays at or above its
//! guarantee, so its requeued job borrows and can never reclaim; a victim of
//! a higher-priority job of its own tenant cannot preempt that job back.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use finpool_domain::{GpuRequest, JobId, MILLI_PER_GPU, Placement, Timestamp};

use crate::cluster::{ClassIdx, Cluster, ModelDemand, NodeIdx, TenantIdx};
use crate::engine::{Engine, Request};
use crate::plugins::fragmentation::{Weighting, WorkloadModel};
use crate::plugins::{Policy, QuotaBound};
use crate::snapshot::{Built, Held, QueuedJob, Snapshot, SnapshotError};
use crate::task::{ModelFit, Task};
use crate::tenants::{Budget, TenantBook, budget_part, budgets};

/// A job the cycle admitted, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub job: JobId,
    pub placement: Placement,
    /// Admitted within the tenant's guarantee (rather than borrowing).
    pub within_guarantee: bool,
    /// Jobs preempted to make room: start once they are gone.
    pub waits_for: Vec<JobId>,
}

/// A running job to stop and requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub job: JobId,
    /// Why, for the job's history.
    pub reason: String,
    /// The job it makes room for.
    pub for_job: JobId,
}

/// Where and when a blocked multi-GPU job will surely start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub job: JobId,
    pub node: String,
    pub at: Timestamp,
}

/// A job left in the queue, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub job: JobId,
    pub reason: String,
}

/// What one cycle decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub admitted: Vec<Admission>,
    pub preempted: Vec<Preemption>,
    pub reservation: Option<Reservation>,
    pub waiting: Vec<Waiting>,
    /// Inconsistencies between the snapshot's jobs and its inventory.
    pub warnings: Vec<String>,
}

/// How many waiting jobs get a precise reason per cycle; the rest are
/// simply "queued". Explaining costs a placement attempt each.
const EXPLAINED_PER_CYCLE: usize = 256;

/// Admits, places, preempts and reserves. Pure and deterministic: the same
/// snapshot, queue and policy give the same outcome.
pub fn decide(
    snapshot: &Snapshot,
    queue: &[QueuedJob],
    policy: &Policy,
) -> Result<Outcome, SnapshotError> {
    let mut built = snapshot.build()?;
    let mut outcome = Outcome {
        warnings: std::mem::take(&mut built.warnings),
        ..Outcome::default()
    };
    let mut jobs: Vec<(&QueuedJob, Task)> = Vec::with_capacity(queue.len());
    for job in queue {
        match built.task_for(job, &snapshot.models) {
            Ok(task) => jobs.push((job, task)),
            Err(reason) => outcome.waiting.push(Waiting {
                job: job.id,
                reason,
            }),
        }
    }
    mark_model_waits(snapshot, policy, &mut built, &mut jobs);
    // Within a tenant: priority, then age (then id, for a total order).
    jobs.sort_by(|(a, _), (b, _)| {
        b.priority
            .cmp(&a.priority)
            .then(a.submitted_at.cmp(&b.submitted_at))
            .then(a.id.cmp(&b.id))
    });
    // Without a workload from the driver, learn it from what is queued.
    let workload = snapshot.workload.clone().unwrap_or_else(|| {
        WorkloadModel::from_tasks(jobs.iter().map(|(_, t)| t), 0.95, Weighting::Demand)
    });
    let mut planner = Planner::new(snapshot, &mut built, policy, &workload, outcome);
    // A reservation stands while its job still waits, so that later
    // arrivals (even within their guarantees) cannot take its node.
    if let Some(r) = &snapshot.reservation
        && jobs.iter().any(|(j, _)| j.id == r.job)
        && let Some(node) = planner.built.node_index(&r.node)
    {
        planner.reservation = Some((r.job, node, r.at));
    }
    planner.run(jobs);
    Ok(planner.finish())
}

/// Base-model demand for the cycle, and delay scheduling: a job whose
/// model is resident on some card holds out for such a card for the
/// policy's warm wait, then loads it only where that balances models'
/// demand, until its balance wait ends too.
fn mark_model_waits(
    snapshot: &Snapshot,
    policy: &Policy,
    built: &mut Built,
    jobs: &mut [(&QueuedJob, Task)],
) {
    let mut demand: Vec<ModelDemand> = built
        .cluster
        .resident_counts(snapshot.models.len())
        .into_iter()
        .map(|resident| ModelDemand {
            queued: 0,
            resident,
        })
        .collect();
    for (_, task) in jobs.iter() {
        if let Some(d) = task.model.and_then(|m| demand.get_mut(m as usize)) {
            d.queued += 1;
        }
    }
    // Oldest first, each job's place among those waiting for its model.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| (jobs[i].0.submitted_at, jobs[i].0.id));
    let mut ahead = vec![0u32; demand.len()];
    for i in order {
        let (job, task) = &mut jobs[i];
        let Some(m) = task.model.filter(|m| (*m as usize) < demand.len()) else {
            continue;
        };
        let model = demand[m as usize];
        let rank = ahead[m as usize];
        ahead[m as usize] += 1;
        let waited = snapshot.now.0.saturating_sub(job.submitted_at.0);
        task.model_fit = if task.gpu == GpuRequest::None {
            ModelFit::Any
        } else if model.resident > 0
            && (waited < policy.warm_wait_ms as i64 || rank < model.resident)
        {
            // A warm card is coming soon: one is due to it, or it has not
            // yet waited as long as a load would take.
            ModelFit::Warm
        } else if model.resident > 0 || waited < policy.balance_wait_ms as i64 {
            ModelFit::Balanced
        } else {
            ModelFit::Any
        };
    }
    built.cluster.model_demand = demand;
}

/// Identifies placement attempts that must fail alike within a cycle: the
/// same task (tenant included) and priority under the same bound and
/// reservation. See [`Planner::admit`].
type AttemptKey = (Task, i32, Option<NodeIdx>);

struct Planner<'a> {
    snapshot: &'a Snapshot,
    built: &'a Built,
    engine: Engine<'a>,
    tenants: TenantBook,
    workload: &'a WorkloadModel,
    /// Jobs holding resources: running ones, then those admitted this cycle.
    held: Vec<Held>,
    /// Per held job: preempted this cycle.
    released: Vec<bool>,
    /// Per held job: admitted this cycle (never a victim this cycle).
    fresh: Vec<bool>,
    budgets: Vec<Budget>,
    capacity: Vec<u64>,
    /// Recent borrowing per tenant and class (decayed average, milli-GPU).
    recent: Vec<Vec<f64>>,
    reservation: Option<(JobId, NodeIdx, Timestamp)>,
    outcome: Outcome,
    now: Timestamp,
    /// Borrowing attempts that failed since the last preemption.
    failed: HashSet<AttemptKey>,
    /// Jobs some held job displaced (they may not preempt it back).
    displacers: HashSet<JobId>,
}

impl<'a> Planner<'a> {
    fn new(
        snapshot: &'a Snapshot,
        built: &'a mut Built,
        policy: &'a Policy,
        workload: &'a WorkloadModel,
        outcome: Outcome,
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
        let recent = (0..tenants.len())
            .map(|t| {
                let usage = snapshot
                    .usage
                    .iter()
                    .find(|(id, _)| id.as_str() == tenants.names[t])
                    .map(|(_, u)| u);
                cluster
                    .classes
                    .iter()
                    .map(|c| usage.and_then(|u| u.get(&c.name)).copied().unwrap_or(0.0))
                    .collect()
            })
            .collect();
        let n = held.len();
        let displacers = held
            .iter()
            .flat_map(|h| h.displaced.iter().copied())
            .collect();
        Self {
            snapshot,
            built,
            engine: Engine::new(policy, cluster),
            tenants,
            workload,
            released: vec![false; n],
            fresh: vec![false; n],
            held,
            budgets,
            capacity,
            recent,
            reservation: None,
            outcome,
            now: snapshot.now,
            failed: HashSet::new(),
            displacers,
        }
    }

    fn cluster(&self) -> &Cluster {
        self.engine.cluster()
    }

    fn run(&mut self, jobs: Vec<(&QueuedJob, Task)>) {
        // 1. Within guarantees, in priority order.
        let mut rest = Vec::with_capacity(jobs.len());
        for (job, task) in jobs {
            if self.fits_guarantee(&task) && self.admit(job, &task, QuotaBound::Guaranteed) {
                continue;
            }
            rest.push((job, task));
        }
        // 2. Borrowing, in weighted fair order across tenants.
        let mut queues: BTreeMap<TenantIdx, std::collections::VecDeque<(&QueuedJob, Task)>> =
            BTreeMap::new();
        for (job, task) in rest {
            let t = task.tenant.expect("queued jobs have tenants");
            queues.entry(t).or_default().push_back((job, task));
        }
        // Equal shares go oldest head job first (then tenant, for a total
        // order), so that tenants borrowing nothing yet are served FIFO.
        let head_age = |q: &std::collections::VecDeque<(&QueuedJob, Task)>| {
            q.front()
                .map_or(Timestamp(i64::MAX), |(j, _)| j.submitted_at)
        };
        let mut heap: BinaryHeap<(Reverse<Share>, Reverse<Timestamp>, Reverse<TenantIdx>)> = queues
            .iter()
            .map(|(&t, q)| (Reverse(self.share(t)), Reverse(head_age(q)), Reverse(t)))
            .collect();
        let mut waiting = Vec::new();
        while let Some((_, _, Reverse(t))) = heap.pop() {
            let Some(queue) = queues.get_mut(&t) else {
                continue;
            };
            let Some((job, task)) = queue.pop_front() else {
                continue;
            };
            if !self.admit(job, &task, QuotaBound::Limit) {
                waiting.push((job, task));
            }
            if !queues[&t].is_empty() {
                heap.push((
                    Reverse(self.share(t)),
                    Reverse(head_age(&queues[&t])),
                    Reverse(t),
                ));
            }
        }
        for (i, (job, task)) in waiting.into_iter().enumerate() {
            let reason = self.explain(job, &task, i);
            self.outcome.waiting.push(Waiting {
                job: job.id,
                reason,
            });
        }
    }

    /// Whether the task could run within its tenant's guarantee on some
    /// class it may use.
    fn fits_guarantee(&self, task: &Task) -> bool {
        let Some(t) = task.tenant else { return false };
        let need = match task.gpu {
            GpuRequest::None => return true,
            GpuRequest::Whole { count } => count as u64 * MILLI_PER_GPU as u64,
            GpuRequest::Share { milli, .. } => milli as u64,
        };
        (0..self.cluster().classes.len()).any(|c| {
            let c = c as ClassIdx;
            task.classes.contains(c)
                && self.cluster().held_milli(t, c) + need
                    <= self.tenants.quota(t, c).guaranteed as u64 * MILLI_PER_GPU as u64
        })
    }

    /// Weighted dominant share of borrowing: recent plus current, per
    /// class capacity, divided by weight (see [`Share`]).
    fn share(&self, t: TenantIdx) -> Share {
        let mut dominant: f64 = 0.0;
        for (c, capacity) in self.capacity.iter().enumerate() {
            if *capacity == 0 {
                continue;
            }
            let (borrowed, _) = budget_part(
                self.tenants.quota(t, c as ClassIdx),
                self.cluster().held_milli(t, c as ClassIdx),
            );
            let recent = self
                .recent
                .get(t as usize)
                .and_then(|r| r.get(c))
                .copied()
                .unwrap_or(0.0);
            dominant = dominant.max((recent + borrowed as f64) / *capacity as f64);
        }
        Share((dominant * 1000.0 / self.tenants.weight(t).max(1) as f64) as u64)
    }

    /// Per class, the most the tenant may hold under the borrowing budget.
    fn caps(&self, t: TenantIdx) -> Vec<u64> {
        self.budgets
            .iter()
            .enumerate()
            .map(|(c, b)| {
                let quota = self.tenants.quota(t, c as ClassIdx);
                let g = quota.guaranteed as u64 * MILLI_PER_GPU as u64;
                let held = self.cluster().held_milli(t, c as ClassIdx);
                let lend = quota
                    .lending_limit
                    .map_or(g, |l| l as u64 * MILLI_PER_GPU as u64);
                // g(h) = max(-lend, h - g) is the tenant's net draw on the
                // budget; it may grow by the budget's slack, and always up
                // to its own guarantee.
                let draw = (held as i64 - g as i64).max(-(lend as i64));
                let slack = b.lendable.saturating_sub(b.borrowed) as i64;
                (g as i64 + draw + slack).max(g as i64) as u64
            })
            .collect()
    }

    /// Applies an allocation, keeping budgets in step.
    fn apply(&mut self, a: &crate::cluster::Allocation) {
        self.recharge(a.tenant, |engine| engine.apply(a));
    }

    fn release(&mut self, a: &crate::cluster::Allocation) {
        self.recharge(a.tenant, |engine| engine.release(a));
    }

    fn recharge(&mut self, tenant: Option<TenantIdx>, change: impl FnOnce(&mut Engine<'a>)) {
        let Some(t) = tenant else {
            change(&mut self.engine);
            return;
        };
        let classes = self.budgets.len();
        let before: Vec<(u64, u64)> = (0..classes)
            .map(|c| {
                budget_part(
                    self.tenants.quota(t, c as ClassIdx),
                    self.cluster().held_milli(t, c as ClassIdx),
                )
            })
            .collect();
        change(&mut self.engine);
        for (c, (b0, l0)) in before.into_iter().enumerate() {
            let (b1, l1) = budget_part(
                self.tenants.quota(t, c as ClassIdx),
                self.cluster().held_milli(t, c as ClassIdx),
            );
            let budget = &mut self.budgets[c];
            budget.borrowed = budget.borrowed + b1 - b0;
            budget.lendable = budget.lendable + l1 - l0;
        }
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
    fn admit(&mut self, job: &QueuedJob, task: &Task, bound: QuotaBound) -> bool {
        let t = task.tenant.expect("queued jobs have tenants");
        let caps = (bound == QuotaBound::Limit).then(|| self.caps(t));
        let avoid = self.avoid_for(job);
        let key = (bound == QuotaBound::Limit && !self.displacers.contains(&job.id)).then_some((
            *task,
            job.priority,
            avoid,
        ));
        if key.as_ref().is_some_and(|k| self.failed.contains(k)) {
            return false;
        }
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
            self.failed.insert(key);
        }
        admitted
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
        if let Some(done) = self.preempt_for(job, task, bound, caps, avoid, &victims_ok) {
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
            if let Some(done) = self.preempt_for(job, task, bound, None, avoid, &same_tenant) {
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

    /// The node a job must avoid: the reservation's, unless the job ends
    /// before the reservation begins (or is the reserved job).
    fn avoid_for(&self, job: &QueuedJob) -> Option<NodeIdx> {
        let (reserved, node, at) = self.reservation?;
        if reserved == job.id {
            return None;
        }
        let runtime = job
            .max_runtime_ms
            .unwrap_or(self.snapshot.default_max_runtime_ms) as i64;
        (self.now.0.saturating_add(runtime) > at.0).then_some(node)
    }

    /// May this held job be preempted now?
    fn preemptible(&self, v: &Held) -> bool {
        let i = self.held.iter().position(|h| h.id == v.id).expect("held");
        !self.released[i]
            && !self.fresh[i]
            && v.started_at
                .is_some_and(|s| self.now.0 >= s.0.saturating_add(v.min_runtime_ms as i64))
    }

    /// Whether the victim's tenant stays at or above its guarantee on every
    /// class the victim holds, once the victim is gone.
    fn keeps_guarantee(&self, v: &Held) -> bool {
        let Some(s) = v.tenant else { return true };
        let mut freed: HashMap<ClassIdx, u64> = HashMap::new();
        for a in &v.pieces {
            let node = &self.cluster().nodes[a.node as usize];
            for i in a.choice.positions() {
                let gpu = &node.gpus[i];
                let amount = match a.choice.slice {
                    Some(sl) => gpu.slices[sl as usize].milli as u64,
                    // A time-shared card frees only if this is its last job.
                    None if gpu.jobs == 1 => MILLI_PER_GPU as u64,
                    None => 0,
                };
                *freed.entry(gpu.class).or_default() += amount;
            }
        }
        freed.into_iter().all(|(c, amount)| {
            let g = self.tenants.quota(s, c).guaranteed as u64 * MILLI_PER_GPU as u64;
            self.cluster().held_milli(s, c).saturating_sub(amount) >= g
        })
    }

    /// Finds the node where preempting the fewest eligible victims (lowest
    /// priority first, then most recently started) lets the job fit, and
    /// does it. `None` when no preemption helps.
    fn preempt_for(
        &mut self,
        job: &QueuedJob,
        task: &Task,
        bound: QuotaBound,
        caps: Option<&[u64]>,
        avoid: Option<NodeIdx>,
        eligible: &dyn Fn(&Self, &Held) -> bool,
    ) -> Option<bool> {
        let mut by_node: BTreeMap<NodeIdx, Vec<usize>> = BTreeMap::new();
        for (i, h) in self.held.iter().enumerate() {
            if Some(h.node) != avoid && eligible(self, h) {
                by_node.entry(h.node).or_default().push(i);
            }
        }
        if by_node.is_empty() {
            return None;
        }
        // (victims, summed priority, node) of the best plan.
        let mut best: Option<(usize, i64, NodeIdx, Vec<usize>)> = None;
        for (node, mut victims) in by_node {
            victims.sort_by(|&a, &b| {
                let (a, b) = (&self.held[a], &self.held[b]);
                a.priority
                    .cmp(&b.priority)
                    .then(b.started_at.cmp(&a.started_at))
                    .then(a.id.cmp(&b.id))
            });
            let mut taken = Vec::new();
            let mut fits = false;
            for v in victims {
                // Reclaim may not take another tenant below its guarantee.
                if self.held[v].tenant != task.tenant
                    && !self.keeps_guarantee(&self.held[v].clone())
                {
                    continue;
                }
                for a in self.held[v].pieces.clone() {
                    self.release(&a);
                }
                taken.push(v);
                if self.fits_on(node, task, bound, caps) {
                    fits = true;
                    break;
                }
            }
            for &v in taken.iter().rev() {
                for a in self.held[v].pieces.clone() {
                    self.apply(&a);
                }
            }
            if fits {
                let cost = (
                    taken.len(),
                    taken.iter().map(|&v| self.held[v].priority as i64).sum(),
                    node,
                );
                if best.as_ref().is_none_or(|b| cost < (b.0, b.1, b.2)) {
                    best = Some((cost.0, cost.1, cost.2, taken));
                }
            }
        }
        let (_, _, node, victims) = best?;
        for &v in &victims {
            for a in self.held[v].pieces.clone() {
                self.release(&a);
            }
            self.released[v] = true;
        }
        let placement = {
            let mut ctx =
                crate::plugins::Ctx::new(self.cluster(), &self.tenants, bound, self.workload);
            ctx.caps = caps;
            self.engine_policy().best_on_node(&ctx, task, node)
        }
        .expect("the plan was checked to fit");
        let reason = match bound {
            QuotaBound::Guaranteed
                if victims.iter().any(|&v| self.held[v].tenant != task.tenant) =>
            {
                format!(
                    "preempted: tenant {} reclaims its guaranteed GPUs for job {}",
                    job.tenant, job.id
                )
            }
            _ => format!(
                "preempted by higher-priority job {} of the same tenant",
                job.id
            ),
        };
        let ids: Vec<JobId> = victims.iter().map(|&v| self.held[v].id).collect();
        for id in &ids {
            self.outcome.preempted.push(Preemption {
                job: *id,
                reason: reason.clone(),
                for_job: job.id,
            });
        }
        self.commit(job, task, &placement, bound == QuotaBound::Guaranteed, ids);
        Some(true)
    }

    fn engine_policy(&self) -> &'a Policy {
        self.engine.policy()
    }

    fn fits_on(&self, node: NodeIdx, task: &Task, bound: QuotaBound, caps: Option<&[u64]>) -> bool {
        let mut ctx = crate::plugins::Ctx::new(self.cluster(), &self.tenants, bound, self.workload);
        ctx.caps = caps;
        self.engine_policy()
            .best_on_node(&ctx, task, node)
            .is_some()
    }

    /// Records an admission and charges it.
    fn commit(
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

    /// The earliest time some node will surely have room for a whole-GPU
    /// task, as held jobs reach their max runtimes: (node, time).
    fn earliest_start(&self, task: &Task) -> Option<(NodeIdx, Timestamp)> {
        let GpuRequest::Whole { count } = task.gpu else {
            return None;
        };
        let cluster = self.cluster();
        let mut best: Option<(Timestamp, NodeIdx)> = None;
        for (n, node) in cluster.nodes.iter().enumerate() {
            let usable =
                |g: &crate::cluster::GpuState| !g.is_mig() && task.classes.contains(g.class);
            if (node.gpus.iter().filter(|g| usable(g)).count() as u32) < count
                || node.cpu_milli < task.cpu_milli
                || node.memory_mib < task.memory_mib
            {
                continue;
            }
            let mut idle = node
                .gpus
                .iter()
                .filter(|g| usable(g) && g.is_idle())
                .count() as u32;
            let mut cpu = node.free_cpu_milli();
            let mut memory = node.free_memory_mib();
            let mut at = self.now;
            let mut ends: Vec<&Held> = self
                .held
                .iter()
                .enumerate()
                .filter(|(i, h)| h.node == n as NodeIdx && !self.released[*i])
                .map(|(_, h)| h)
                .collect();
            ends.sort_by_key(|h| (h.ends_by, h.id));
            let mut ready = idle >= count && cpu >= task.cpu_milli && memory >= task.memory_mib;
            for h in ends {
                if ready {
                    break;
                }
                at = at.max(h.ends_by);
                for a in &h.pieces {
                    cpu += a.cpu_milli;
                    memory += a.memory_mib;
                    for i in a.choice.positions() {
                        let g = &node.gpus[i];
                        // Counting a shared card when any of its jobs ends is
                        // optimistic only for cards shared by several jobs.
                        if usable(g) && a.choice.slice.is_none() && g.jobs >= 1 {
                            idle += 1;
                        }
                    }
                }
                ready = idle >= count && cpu >= task.cpu_milli && memory >= task.memory_mib;
            }
            if ready && best.is_none_or(|(t, _)| at < t) {
                best = Some((at, n as NodeIdx));
            }
        }
        best.map(|(at, n)| (n, at))
    }

    fn explain(&mut self, job: &QueuedJob, task: &Task, i: usize) -> String {
        if let Some((reserved, node, at)) = self.reservation
            && reserved == job.id
        {
            return format!(
                "waiting: node {} reserved from {}",
                self.cluster().nodes[node as usize].name,
                at
            );
        }
        if i >= EXPLAINED_PER_CYCLE {
            return "queued".to_owned();
        }
        let request = Request::new(&self.tenants, QuotaBound::Unbounded, self.workload, 0);
        let any_card = Task {
            model_fit: ModelFit::Any,
            ..*task
        };
        if task.model_fit != ModelFit::Any && self.engine.place(&request, &any_card).is_some() {
            return format!(
                "waiting up to {} s for a card that holds its model, or whose model is less in demand",
                self.engine_policy().balance_wait_ms / 1000
            );
        }
        if self.engine.place(&request, &any_card).is_some() {
            "waiting: tenant quota limit or borrowing budget reached".to_owned()
        } else {
            "waiting: no node has room".to_owned()
        }
    }

    fn finish(mut self) -> Outcome {
        self.outcome.reservation = self.reservation.map(|(job, node, at)| Reservation {
            job,
            node: self.cluster().nodes[node as usize].name.clone(),
            at,
        });
        self.outcome
    }
}

/// A weighted dominant share, in whole thousandths of the pool per unit
/// of weight. Coarse on purpose (as Kueue's): tenants whose borrowing
/// differs by less than a thousandth of the pool are equals, served by the
/// age of their work, so a trace of past usage does not push a light
/// tenant behind every newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Share(u64);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use finpool_domain::{
        Gpu, GpuClass, GpuRequest, IsolationLevel, Name, Node, Quota, Resources, Tenant, Timestamp,
    };

    use super::*;
    use crate::snapshot::RunningJob;

    fn tenant(id: &str, class: &str, guaranteed: u32, limit: u32) -> Tenant {
        Tenant {
            id: Name::parse("id", id).unwrap(),
            display_name: id.into(),
            quotas: [(
                class.to_owned(),
                Quota {
                    guaranteed,
                    limit,
                    lending_limit: None,
                },
            )]
            .into(),
            weight: 1,
            isolation: IsolationLevel::SharedWithinTenant,
            created_at: Timestamp(0),
        }
    }

    fn node(name: &str, class: &str, gpus: u32) -> Node {
        Node {
            name: name.into(),
            labels: BTreeMap::new(),
            cpu_milli: 64_000,
            memory_mib: 512_000,
            gpus: (0..gpus)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{name}-{i}"),
                    class: class.into(),
                    memory_mib: 81_920,
                    mig: vec![],
                })
                .collect(),
            models: vec![],
        }
    }

    fn snapshot(nodes: Vec<Node>, tenants: Vec<Tenant>) -> Snapshot {
        Snapshot {
            now: Timestamp(0),
            classes: vec![
                GpuClass {
                    name: "A100".into(),
                    memory_mib: 81_920,
                },
                GpuClass {
                    name: "L4".into(),
                    memory_mib: 24_576,
                },
            ],
            nodes,
            tenants,
            models: vec![],
            running: vec![],
            workload: None,
            default_max_runtime_ms: 3_600_000,
            ..Default::default()
        }
    }

    fn job(n: u128, tenant: &str, gpu: GpuRequest) -> QueuedJob {
        QueuedJob {
            id: JobId(uuid::Uuid::from_u128(n)),
            tenant: Name::parse("t", tenant).unwrap(),
            priority: 0,
            submitted_at: Timestamp(n as i64),
            resources: Resources {
                gpu,
                gpu_classes: vec![],
                cpu_milli: 1000,
                memory_mib: 1024,
            },
            model: None,
            max_runtime_ms: None,
        }
    }

    fn ids(o: &Outcome) -> Vec<u128> {
        o.admitted.iter().map(|a| a.job.0.as_u128()).collect()
    }

    #[test]
    fn work_over_the_limit_waits() {
        let snap = snapshot(
            vec![node("n0", "A100", 8)],
            vec![tenant("alpha", "A100", 1, 2)],
        );
        let queue: Vec<_> = (1..=3)
            .map(|i| job(i, "alpha", GpuRequest::Whole { count: 1 }))
            .collect();
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        assert_eq!(ids(&o), vec![1, 2]);
        assert_eq!(o.waiting.len(), 1);
        assert_eq!(
            o.waiting[0].reason,
            "waiting: tenant quota limit or borrowing budget reached"
        );
        assert!(o.admitted[0].within_guarantee && !o.admitted[1].within_guarantee);
    }

    #[test]
    fn guaranteed_work_is_admitted_before_borrowing() {
        // Two cards. beta borrows first in submit order, but alpha's job is
        // within its guarantee, so it goes first.
        let snap = snapshot(
            vec![node("n0", "A100", 2)],
            vec![tenant("alpha", "A100", 2, 2), tenant("beta", "A100", 0, 2)],
        );
        let queue = vec![
            job(1, "beta", GpuRequest::Whole { count: 1 }),
            job(2, "beta", GpuRequest::Whole { count: 1 }),
            job(3, "alpha", GpuRequest::Whole { count: 2 }),
        ];
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        assert_eq!(ids(&o), vec![3]);
    }

    #[test]
    fn allowed_classes_are_honoured() {
        let mut t = tenant("alpha", "A100", 4, 4);
        t.quotas.insert(
            "L4".into(),
            Quota {
                guaranteed: 4,
                limit: 4,
                lending_limit: None,
            },
        );
        let snap = snapshot(vec![node("a", "A100", 4), node("l", "L4", 4)], vec![t]);
        let mut j = job(1, "alpha", GpuRequest::Whole { count: 2 });
        j.resources.gpu_classes = vec!["L4".into()];
        let o = decide(&snap, &[j], &Policy::finpool()).unwrap();
        assert_eq!(o.admitted[0].placement.node, "l");
        assert!(o.admitted[0].placement.gpus.iter().all(|g| g.class == "L4"));
    }

    #[test]
    fn shares_pack_within_a_tenant_and_never_across() {
        let snap = snapshot(
            vec![node("n0", "A100", 2)],
            vec![tenant("alpha", "A100", 1, 1), tenant("beta", "A100", 1, 1)],
        );
        let share = GpuRequest::Share {
            milli: 300,
            memory_mib: 1000,
        };
        let queue = vec![
            job(1, "alpha", share),
            job(2, "beta", share),
            job(3, "alpha", share),
            job(4, "beta", share),
        ];
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        assert_eq!(o.admitted.len(), 4);
        let card = |n: u128| {
            o.admitted
                .iter()
                .find(|a| a.job.0.as_u128() == n)
                .unwrap()
                .placement
                .gpus[0]
                .index
        };
        assert_eq!(card(1), card(3), "alpha's shares share alpha's card");
        assert_eq!(card(2), card(4));
        assert_ne!(card(1), card(2), "alpha and beta never share a card");
    }

    #[test]
    fn running_jobs_are_counted() {
        let mut snap = snapshot(
            vec![node("n0", "A100", 2)],
            vec![tenant("alpha", "A100", 2, 2)],
        );
        let first = decide(
            &snap,
            &[job(1, "alpha", GpuRequest::Whole { count: 2 })],
            &Policy::finpool(),
        )
        .unwrap();
        snap.running = vec![RunningJob {
            id: first.admitted[0].job,
            tenant: Name::parse("t", "alpha").unwrap(),
            placement: first.admitted[0].placement.clone(),
            cpu_milli: 1000,
            memory_mib: 1024,
            priority: 0,
            started_at: Some(Timestamp(0)),
            min_runtime_ms: 0,
            max_runtime_ms: None,
            model: None,
            displaced: vec![],
        }];
        let o = decide(
            &snap,
            &[job(2, "alpha", GpuRequest::Whole { count: 1 })],
            &Policy::finpool(),
        )
        .unwrap();
        assert!(o.admitted.is_empty());
        assert_eq!(o.admitted.len() + o.waiting.len(), 1);
    }

    #[test]
    fn placements_carry_card_uuids() {
        let snap = snapshot(
            vec![node("n0", "A100", 2)],
            vec![tenant("alpha", "A100", 2, 2)],
        );
        let o = decide(
            &snap,
            &[job(1, "alpha", GpuRequest::Whole { count: 1 })],
            &Policy::finpool(),
        )
        .unwrap();
        assert_eq!(o.admitted[0].placement.gpus[0].uuid, "GPU-n0-0");
    }

    fn tenant_q(
        id: &str,
        class: &str,
        guaranteed: u32,
        limit: u32,
        lending: Option<u32>,
        weight: u32,
    ) -> Tenant {
        let mut t = tenant(id, class, guaranteed, limit);
        t.quotas.get_mut(class).unwrap().lending_limit = lending;
        t.weight = weight;
        t
    }

    fn running(
        n: u128,
        tenant: &str,
        node: &str,
        cards: &[u32],
        priority: i32,
        started_min_ago: i64,
    ) -> RunningJob {
        RunningJob {
            id: JobId(uuid::Uuid::from_u128(n)),
            tenant: Name::parse("t", tenant).unwrap(),
            placement: finpool_domain::Placement {
                node: node.into(),
                gpus: cards
                    .iter()
                    .map(|i| finpool_domain::GpuAssignment {
                        index: *i,
                        uuid: String::new(),
                        class: "A100".into(),
                        milli: 1000,
                        memory_mib: 81_920,
                        mig_slice: None,
                    })
                    .collect(),
            },
            cpu_milli: 1000,
            memory_mib: 1024,
            priority,
            started_at: Some(Timestamp(-started_min_ago * 60_000)),
            min_runtime_ms: 0,
            max_runtime_ms: Some(3_600_000),
            model: None,
            displaced: vec![],
        }
    }

    #[test]
    fn a_tenant_under_its_guarantee_reclaims_borrowed_cards() {
        let mut snap = snapshot(
            vec![node("n0", "A100", 4)],
            vec![
                tenant_q("alpha", "A100", 2, 4, None, 1),
                tenant_q("beta", "A100", 0, 4, None, 1),
            ],
        );
        // beta borrows all four cards: priorities 0, 0, 1, 0, started 40, 30, 20, 10 minutes ago.
        snap.running = vec![
            running(101, "beta", "n0", &[0], 0, 40),
            running(102, "beta", "n0", &[1], 0, 30),
            running(103, "beta", "n0", &[2], 1, 20),
            running(104, "beta", "n0", &[3], 0, 10),
        ];
        let queue = vec![
            job(1, "alpha", GpuRequest::Whole { count: 1 }),
            job(2, "alpha", GpuRequest::Whole { count: 1 }),
        ];
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        // Lowest priority first, then most recently started: 104, then 102.
        let victims: Vec<u128> = o.preempted.iter().map(|p| p.job.0.as_u128()).collect();
        assert_eq!(victims, vec![104, 102]);
        assert!(
            o.preempted[0]
                .reason
                .contains("reclaims its guaranteed GPUs")
        );
        assert_eq!(o.admitted.len(), 2);
        assert!(
            o.admitted
                .iter()
                .all(|a| a.within_guarantee && a.waits_for.len() == 1)
        );
    }

    #[test]
    fn reclaim_honours_minimum_runtime_and_victim_guarantees() {
        let mut snap = snapshot(
            vec![node("n0", "A100", 3)],
            vec![
                tenant_q("alpha", "A100", 1, 3, None, 1),
                tenant_q("beta", "A100", 2, 3, None, 1),
            ],
        );
        // beta holds 3 (guarantee 2), all started within their minimum runtime.
        snap.running = (0..3)
            .map(|i| {
                let mut r = running(101 + i as u128, "beta", "n0", &[i], 0, 3 - i as i64);
                r.min_runtime_ms = 10 * 60_000;
                r
            })
            .collect();
        let queue = vec![job(1, "alpha", GpuRequest::Whole { count: 1 })];
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        assert!(o.preempted.is_empty(), "{:?}", o.preempted);
        assert!(o.admitted.is_empty());
        // Once the minimum runtimes have passed, one job goes (the most
        // recently started), and only one: beta keeps its guarantee of 2.
        for r in &mut snap.running {
            r.min_runtime_ms = 0;
        }
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        assert_eq!(
            o.preempted
                .iter()
                .map(|p| p.job.0.as_u128())
                .collect::<Vec<_>>(),
            vec![103]
        );
        let two = vec![
            queue[0].clone(),
            job(2, "alpha", GpuRequest::Whole { count: 1 }),
        ];
        assert_eq!(
            decide(&snap, &two, &Policy::finpool())
                .unwrap()
                .preempted
                .len(),
            1
        );
    }

    #[test]
    fn higher_priority_preempts_lower_within_a_tenant() {
        let mut snap = snapshot(
            vec![node("n0", "A100", 2)],
            vec![tenant_q("alpha", "A100", 2, 2, None, 1)],
        );
        snap.running = vec![
            running(101, "alpha", "n0", &[0], 0, 30),
            running(102, "alpha", "n0", &[1], 5, 30),
        ];
        let mut urgent = job(1, "alpha", GpuRequest::Whole { count: 1 });
        urgent.priority = 10;
        let o = decide(&snap, &[urgent], &Policy::finpool()).unwrap();
        assert_eq!(
            o.preempted
                .iter()
                .map(|p| p.job.0.as_u128())
                .collect::<Vec<_>>(),
            vec![101]
        );
        assert!(o.preempted[0].reason.contains("higher-priority job"));
        // A low-priority job cannot do the same.
        let o = decide(
            &snap,
            &[job(2, "alpha", GpuRequest::Whole { count: 1 })],
            &Policy::finpool(),
        )
        .unwrap();
        assert!(o.preempted.is_empty());
    }

    #[test]
    fn lenders_lend_at_most_their_lending_limit() {
        // Four cards, all guaranteed to alpha, which lends at most one.
        let snap = snapshot(
            vec![node("n0", "A100", 4)],
            vec![
                tenant_q("alpha", "A100", 4, 4, Some(1), 1),
                tenant_q("beta", "A100", 0, 4, None, 1),
            ],
        );
        let queue: Vec<_> = (1..=3)
            .map(|i| job(i, "beta", GpuRequest::Whole { count: 1 }))
            .collect();
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        assert_eq!(o.admitted.len(), 1, "beta borrows one card only");
    }

    #[test]
    fn idle_capacity_goes_by_weight() {
        let snap = snapshot(
            vec![node("n0", "A100", 8)],
            vec![
                tenant_q("light", "A100", 0, 8, None, 1),
                tenant_q("heavy", "A100", 0, 8, None, 3),
            ],
        );
        let mut queue = Vec::new();
        for i in 0..8 {
            queue.push(job(100 + i, "light", GpuRequest::Whole { count: 1 }));
            queue.push(job(200 + i, "heavy", GpuRequest::Whole { count: 1 }));
        }
        let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
        let heavy = o
            .admitted
            .iter()
            .filter(|a| a.job.0.as_u128() >= 200)
            .count();
        assert_eq!((heavy, o.admitted.len() - heavy), (6, 2), "3:1 by weight");
    }

    #[test]
    fn a_blocked_gang_reserves_a_node_and_only_short_jobs_backfill() {
        let mut snap = snapshot(
            vec![node("n0", "A100", 8)],
            vec![tenant_q("alpha", "A100", 0, 16, None, 1)],
        );
        // Seven cards busy, ending 10..70 minutes from now (max runtime 1 h).
        snap.running = (0..7)
            .map(|i| running(100 + i as u128, "alpha", "n0", &[i], 0, 50 - 10 * i as i64))
            .collect();
        let mut gang = job(1, "alpha", GpuRequest::Whole { count: 8 });
        gang.priority = 1;
        let mut long = job(2, "alpha", GpuRequest::Whole { count: 1 });
        long.max_runtime_ms = Some(3 * 3_600_000);
        let mut short = job(3, "alpha", GpuRequest::Whole { count: 1 });
        short.max_runtime_ms = Some(60_000);
        let o = decide(&snap, &[gang, long, short], &Policy::finpool()).unwrap();
        let r = o.reservation.expect("the gang reserves the node");
        assert_eq!(r.job.0.as_u128(), 1);
        assert_eq!(
            r.at,
            Timestamp(70 * 60_000),
            "when the last running job must end"
        );
        let admitted: Vec<u128> = o.admitted.iter().map(|a| a.job.0.as_u128()).collect();
        assert_eq!(
            admitted,
            vec![3],
            "only the job ending before the reservation backfills"
        );
    }
}
