//! Scheduling as a pipeline of small plugins, in the manner of the
//! kube-scheduler framework: filters say whether a node, a card or a whole
//! choice of cards may take a task; scorers rank the choices that pass.
//! A [`Policy`] is a list of each.

pub mod filters;
pub mod scores;

use crate::cluster::{Choice, ClassIdx, Cluster, GpuState, NodeIdx, NodeState};
use crate::task::Task;
use crate::tenants::TenantBook;

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
}

/// Says whether a task may go somewhere. Each hook defaults to yes, so a
/// plugin implements only the levels it cares about.
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;

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
pub trait Scorer: Send + Sync {
    fn name(&self) -> &'static str;

    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64;

    /// Sees every arriving task, so a scorer can learn the workload.
    fn observe(&mut self, _task: &Task) {}
}

/// A named set of filters and weighted scorers.
pub struct Policy {
    pub name: String,
    pub filters: Vec<Box<dyn Filter>>,
    pub scorers: Vec<(Box<dyn Scorer>, f64)>,
}

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
        ]
    }

    pub fn new(name: impl Into<String>, scorers: Vec<(Box<dyn Scorer>, f64)>) -> Self {
        Self {
            name: name.into(),
            filters: Self::base_filters(),
            scorers,
        }
    }

    /// The policy standalone mode runs by default.
    pub fn production() -> Self {
        Self::new(
            "finpool",
            vec![
                (Box::new(scores::TenantAffinity) as Box<dyn Scorer>, 1.0),
                (Box::new(scores::BestFit), 1.0),
            ],
        )
    }

    /// Best-fit: the node and card left with the least free GPU.
    pub fn best_fit() -> Self {
        Self::new(
            "bestfit",
            vec![(Box::new(scores::BestFit) as Box<dyn Scorer>, 1.0)],
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

    /// Lets scorers learn from an arriving task.
    pub fn observe(&mut self, task: &Task) {
        for (s, _) in &mut self.scorers {
            s.observe(task);
        }
    }

    pub fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        self.scorers
            .iter()
            .map(|(s, w)| w * s.score(ctx, task, node, choice))
            .sum()
    }
}
