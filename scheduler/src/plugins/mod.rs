//! Scheduling as a pipeline of small plugins, in the manner of the
//! kube-scheduler framework: filters say whether a node, a card or a whole
//! choice of cards may take a task; scorers rank the choices that pass.
//! A [`Policy`] is a list of each.

pub mod filters;
pub mod scores;
pub mod workload;

use std::cell::OnceCell;

use crate::cluster::{Choice, ClassIdx, Cluster, GpuState, NodeIdx, NodeState};
use crate::task::Task;
use crate::tenants::TenantBook;
use workload::WorkloadModel;

/// How far a placement may take its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaBound {
    /// Only within the tenant's guaranteed GPUs.
    Guaranteed,
    /// Up to the tenant's limit (borrowing idle capacity).
    Limit,
    /// Quotas are not checked (tenant-less simulations).
    Unbounded,
}

/// What plugins may read while placing one task.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub cluster: &'a Cluster,
    pub tenants: &'a TenantBook,
    pub bound: QuotaBound,
    /// Per class, a further cap on what the task's tenant may hold (in
    /// milli-GPU): the pool's borrowing budget.
    pub caps: Option<&'a [u64]>,
    /// A node reserved for another job, which this task may not use.
    pub avoid_node: Option<NodeIdx>,
    /// The workload the driver has seen arrive (for fragmentation-aware
    /// scorers); empty when it has none.
    pub workload: &'a WorkloadModel,
    /// Set by a caller that scores many tasks on nodes in the same state
    /// (the placement engine): one cell per scorer, for the node being
    /// scored ([`Ctx::remembered`]).
    pub node_memo: Option<&'a [OnceCell<f64>]>,
    /// The cell of the scorer being called (set by [`Policy::score_node`]).
    pub memo: Option<&'a OnceCell<f64>>,
}

impl Ctx<'_> {
    /// A value a scorer derives from the node alone (its state, the
    /// workload, the scorer's own settings: never the task), computed once
    /// per node state when the caller keeps a memo. Fragmentation-aware
    /// scorers remember the node's fragmentation before the task here, so
    /// that the tasks of every shape scored on that state share it.
    pub fn remembered(&self, compute: impl FnOnce() -> f64) -> f64 {
        match self.memo {
            Some(cell) => *cell.get_or_init(compute),
            None => compute(),
        }
    }
}

impl<'a> Ctx<'a> {
    /// The most milli-GPU of `class` the tenant may hold under this
    /// context's bound and caps; `None` when quotas are not checked.
    pub fn quota_bound_milli(
        &self,
        tenant: crate::cluster::TenantIdx,
        class: ClassIdx,
    ) -> Option<u64> {
        let quota = self.tenants.quota(tenant, class);
        let gpus = match self.bound {
            QuotaBound::Unbounded => None,
            QuotaBound::Guaranteed => Some(quota.guaranteed),
            QuotaBound::Limit => Some(quota.limit),
        };
        let bound = gpus.map(|g| g as u64 * finpool_domain::MILLI_PER_GPU as u64);
        let cap = self.caps.and_then(|c| c.get(class as usize).copied());
        match (bound, cap) {
            (None, None) => None,
            (b, c) => Some(b.unwrap_or(u64::MAX).min(c.unwrap_or(u64::MAX))),
        }
    }

    pub fn new(
        cluster: &'a Cluster,
        tenants: &'a TenantBook,
        bound: QuotaBound,
        workload: &'a WorkloadModel,
    ) -> Self {
        Self {
            cluster,
            tenants,
            bound,
            caps: None,
            avoid_node: None,
            workload,
            node_memo: None,
            memo: None,
        }
    }
}

/// Says whether a task may go somewhere. Each hook defaults to yes, so a
/// plugin implements only the levels it cares about.
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;

    /// Why it refuses, as a stable code (kube-scheduler's filter status
    /// reason): reported with [`Filter::name`] when a job finds no room.
    fn code(&self) -> &'static str;

    /// May the task use this node at all?
    fn node(&self, _ctx: &Ctx<'_>, _task: &Task, _node: &NodeState) -> bool {
        true
    }

    /// May the task use this card?
    fn gpu(&self, _ctx: &Ctx<'_>, _task: &Task, _node: &NodeState, _gpu: &GpuState) -> bool {
        true
    }

    /// May the task take exactly these cards (all of `class`)?
    fn choice(
        &self,
        _ctx: &Ctx<'_>,
        _task: &Task,
        _node: &NodeState,
        _class: ClassIdx,
        _choice: Choice,
    ) -> bool {
        true
    }
}

/// Ranks a feasible choice: higher is better.
///
/// A score may depend on the task, the chosen node's state and the
/// context's inputs (workload, tenants), never on other nodes: that keeps
/// scoring a node independent of the rest of the pool.
pub trait Scorer: Send + Sync {
    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64;

    /// The plugin's name, for logs and the policy's description.
    fn name(&self) -> &'static str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }

    /// Whether the score is a pure function of the task, the node and the
    /// context, so that it can be remembered until the node changes.
    fn cacheable(&self) -> bool {
        true
    }

    /// Scores several choices on one node; override when work can be
    /// shared between them.
    fn score_node(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: NodeIdx,
        choices: &[Choice],
        out: &mut [f64],
    ) {
        for (choice, score) in choices.iter().zip(out) {
            *score = self.score(ctx, task, node, *choice);
        }
    }
}

/// A named set of filters and weighted scorers.
pub struct Policy {
    pub name: String,
    pub filters: Vec<Box<dyn Filter>>,
    pub scorers: Vec<(Box<dyn Scorer>, f64)>,
}

/// The weight of [`scores::PackingWaste`] in finpool's policy,
/// against fragmentation at 1 and CPU stranding at 2 (all in milli-GPU).
/// Chosen on the openb trace (see the README): from 5 to 10 it raises every
/// workload; from about 12 it starts to override fragmentation, and lone
/// shares hold cards open for partners that never come.
pub const PACKING_WASTE_WEIGHT: f64 = 8.0;

/// The weight of [`scores::ScarceCapacity`] in finpool's policy: its
/// fragmentation is in milli-GPU, as FGD's (weight 1) is, and its shapes'
/// weights already say how much each one matters.
pub const SCARCE_CAPACITY_WEIGHT: f64 = 1.0;

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field(
                "filters",
                &self.filters.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "scorers",
                &self
                    .scorers
                    .iter()
                    .map(|(p, w)| (p.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Policy {
    /// The filters every policy needs to be correct: capacity, classes,
    /// tenant isolation and quota.
    pub fn base_filters() -> Vec<Box<dyn Filter>> {
        vec![
            Box::new(filters::NodeResources),
            Box::new(filters::GpuClassAllowed),
            Box::new(filters::GpuCapacity),
            Box::new(filters::TenantIsolation),
            Box::new(filters::QuotaLimit),
            Box::new(filters::Reserved),
            Box::new(filters::ModelPlacement::default()),
        ]
    }

    pub fn new(name: impl Into<String>, scorers: Vec<(Box<dyn Scorer>, f64)>) -> Self {
        Self {
            name: name.into(),
            filters: Self::base_filters(),
            scorers,
        }
    }

    /// Best-fit as the FGD authors ran it (see [`scores::KubeBestFit`]).
    pub fn best_fit() -> Self {
        Self::new(
            "bestfit",
            vec![(Box::new(scores::KubeBestFit) as Box<dyn Scorer>, 1.0)],
        )
    }

    /// Random-fit, seeded so a run can be repeated.
    pub fn random(seed: u64) -> Self {
        Self::new(
            "random",
            vec![(
                Box::new(scores::RandomFit::new(seed)) as Box<dyn Scorer>,
                1.0,
            )],
        )
    }

    /// FGD as its authors ran it: a fixed workload model read from the
    /// trace, and the FGD score alone on the kube-scheduler's 0..=100
    /// scale (their scheduler profile disables every other score plugin).
    pub fn fgd(model: WorkloadModel) -> Self {
        Self::new(
            "fgd",
            vec![(
                Box::new(scores::Fgd {
                    model: Some(model),
                    scale: scores::FgdScale::KubeSigmoid,
                }) as Box<dyn Scorer>,
                1.0,
            )],
        )
    }

    /// finpool's placement policy: fragmentation over the workload learned
    /// online ([`Policy::finpool_workload`]), plus keeping each node's CPU
    /// and memory in step with its free GPU, plus packing cards so later
    /// shares can fill them, with best-fit to break ties;
    /// base-model locality (the waits themselves are the cycle's:
    /// `decide::locality`).
    pub fn finpool() -> Self {
        Self::new(
            "finpool",
            vec![
                (Box::new(scores::TenantAffinity) as Box<dyn Scorer>, 1.0),
                (
                    Box::new(scores::Fgd {
                        model: None,
                        scale: scores::FgdScale::Raw,
                    }),
                    1.0,
                ),
                (
                    Box::new(scores::CpuStranding {
                        ratio_scale: 1.0,
                        per_shape: false,
                    }),
                    2.0,
                ),
                (Box::new(scores::BestFit), 0.001),
                (Box::new(scores::PackingWaste), PACKING_WASTE_WEIGHT),
                (Box::new(scores::ScarceCapacity), SCARCE_CAPACITY_WEIGHT),
                (
                    Box::new(scores::ModelLocality {
                        resident: 2000.0,
                        cached: 200.0,
                        evict: 1000.0,
                    }),
                    1.0,
                ),
            ],
        )
    }

    /// Least-loaded: the node with the most free GPU, as a naive spreading
    /// scheduler does (a baseline).
    pub fn least_loaded() -> Self {
        Self::new(
            "least-loaded",
            vec![(Box::new(scores::LeastLoaded) as Box<dyn Scorer>, 1.0)],
        )
    }

    /// How finpool learns its workload model from arrivals.
    pub fn finpool_workload() -> workload::OnlineWorkload {
        workload::OnlineWorkload::new(0.95, workload::Weighting::Demand)
    }

    /// Whether every scorer's score can be remembered per node.
    pub fn cacheable(&self) -> bool {
        self.scorers.iter().all(|(s, _)| s.cacheable())
    }

    /// The weighted sum of every scorer, for each choice on one node.
    pub fn score_node(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: NodeIdx,
        choices: &[Choice],
        out: &mut [f64],
    ) {
        out.iter_mut().for_each(|s| *s = 0.0);
        let mut small = [0.0f64; 8];
        let mut large;
        let part = if choices.len() <= small.len() {
            &mut small[..choices.len()]
        } else {
            large = [0.0f64; crate::cluster::MAX_GPUS_PER_NODE];
            &mut large[..choices.len()]
        };
        for (i, (scorer, weight)) in self.scorers.iter().enumerate() {
            let ctx = Ctx {
                memo: ctx.node_memo.and_then(|m| m.get(i)),
                ..*ctx
            };
            scorer.score_node(&ctx, task, node, choices, part);
            for (total, p) in out.iter_mut().zip(part.iter()) {
                *total += weight * p;
            }
        }
    }
}
