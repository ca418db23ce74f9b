//! The placement policies a simulation can compare.

use finpool_scheduler::Policy;
use finpool_scheduler::plugins::workload::{OnlineWorkload, Weighting, WorkloadModel};

/// Which policy a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// finpool's production placement policy.
    Finpool,
    /// FGD, with the trace's typical task shapes (the paper's setting).
    Fgd,
    BestFit,
    Random,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [Self::Finpool, Self::Fgd, Self::BestFit, Self::Random];

    pub fn name(self) -> &'static str {
        match self {
            Self::Finpool => "finpool",
            Self::Fgd => "fgd",
            Self::BestFit => "bestfit",
            Self::Random => "random",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == value)
    }

    /// The policy, and the workload model its driver keeps up to date.
    /// `trace_model` is the FGD paper's model, read from the trace.
    pub fn build(self, seed: u64, trace_model: &WorkloadModel) -> (Policy, Option<OnlineWorkload>) {
        match self {
            Self::Finpool => (Policy::finpool(), Some(Policy::finpool_workload())),
            Self::Fgd => (Policy::fgd(trace_model.clone()), None),
            Self::BestFit => (Policy::best_fit(), None),
            Self::Random => (Policy::random(seed), None),
        }
    }
}

/// The FGD paper's workload model: the shapes covering 95% of the trace's
/// tasks, weighted by how often they occur. Its task resources are CPU and
/// GPU only, so memory is left out of the shapes.
pub fn paper_model(tasks: &[finpool_scheduler::Task]) -> WorkloadModel {
    let shapes: Vec<finpool_scheduler::Task> = tasks
        .iter()
        .map(|t| finpool_scheduler::Task {
            memory_mib: 0,
            ..*t
        })
        .collect();
    WorkloadModel::from_tasks(&shapes, 0.95, Weighting::Count)
}
