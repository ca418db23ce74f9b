//! Scarcity-aware choice: keep capacity that only some work can use for
//! that work.

use crate::cluster::{Choice, NodeIdx};
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// The fragmentation gradient of FGD, over the *pinned* work only: the
/// shapes that can run on some kinds of node only, each weighted by how
/// much more it leans on its kinds than work that may go anywhere
/// ([`WorkloadModel::with_pressure`]). Taking a node's card, CPU or memory
/// so that a pinned shape no longer fits there costs the node's free GPU
/// times that weight; taking capacity that pinned work cannot use anyway
/// costs nothing. So work that may go anywhere leaves the scarce nodes
/// (a scarce card class, the few nodes with the memory for the largest
/// tasks) to the work that cannot.
///
/// [`WorkloadModel::with_pressure`]: crate::plugins::workload::WorkloadModel::with_pressure
pub struct ScarceCapacity;

impl Scorer for ScarceCapacity {
    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        let Some(pinned) = ctx.workload.pinned_work() else {
            return 0.0;
        };
        let node = &ctx.cluster.nodes[node as usize];
        ctx.remembered(|| pinned.fragmentation_now(node))
            - pinned.fragmentation_after(node, choice, task.cpu_milli, task.memory_mib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClassInfo, ClassSet, Cluster, GpuState, NodeState};
    use crate::plugins::workload::{Shape, WorkloadModel};
    use crate::plugins::{Ctx, QuotaBound};
    use crate::tenants::TenantBook;
    use finpool_domain::GpuRequest;

    fn node(class: u8) -> NodeState {
        NodeState::new(
            format!("n{class}"),
            64_000,
            256_000,
            (0..4).map(|i| GpuState::new(i, class, 0)).collect(),
        )
    }

    fn shape(classes: ClassSet) -> Shape {
        Shape {
            milli_per_gpu: 1000,
            gpus: 1,
            cpu_milli: 1000,
            memory_mib: 0,
            classes,
        }
    }

    #[test]
    fn fragmenting_a_node_for_pinned_work_costs_its_weight() {
        let classes = ["G2", "T4"]
            .map(|name| ClassInfo {
                name: name.into(),
                memory_mib: 0,
            })
            .to_vec();
        let cluster = Cluster::new(classes, vec![node(0), node(1)]);
        // 30% of GPU demand runs on T4 only: spread out it would claim 0.3
        // of each node, on T4 alone 0.3 x 8000 / 4000; its weight is 0.3.
        let model = WorkloadModel::of_shapes(vec![
            (shape(ClassSet::ALL), 0.7),
            (shape(ClassSet::single(1)), 0.3),
        ])
        .with_pressure(&cluster);
        let tenants = TenantBook::default();
        let ctx = Ctx::new(&cluster, &tenants, QuotaBound::Unbounded, &model);
        let two_cards = |cards| Choice {
            gpus: cards,
            milli: 1000,
            memory_mib: Some(0),
            slice: None,
        };
        let task = Task::new(GpuRequest::Whole { count: 2 }, 1000, 0);
        // On G2, T4 work could use none of it anyway: taking 2000 of it
        // lowers its fragmentation there by 2000, times 0.3.
        let g2 = ScarceCapacity.score(&ctx, &task, 0, two_cards(0b11));
        assert!((g2 - 600.0).abs() < 1e-9, "{g2}");
        // On T4 the two cards left still fit T4 work: no change.
        assert_eq!(ScarceCapacity.score(&ctx, &task, 1, two_cards(0b11)), 0.0);
        // A task that takes the node's CPU so T4 work no longer fits
        // fragments all 4000 free there.
        let hog = Task::new(GpuRequest::None, 64_000, 0);
        let cost = ScarceCapacity.score(&ctx, &hog, 1, Choice::NO_GPU);
        assert!((cost + 1200.0).abs() < 1e-9, "{cost}");
    }
}
