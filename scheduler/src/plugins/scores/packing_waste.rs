//! Packing waste: free card share that no mix of typical shapes can fill.

use finpool_domain::MILLI_PER_GPU;

use crate::cluster::{Choice, ClassIdx};
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// Pack cards so they can still be filled: score the decrease in the
/// node's unfillable GPU over the workload the driver learned. A partly
/// used card wastes what no combination of typical shapes can take
/// ([`WorkloadModel::unfillable`]), or all its free share once the node
/// lacks the CPU or memory for even the smallest typical share. Unlike
/// fragmentation, which looks one task ahead, this looks at every later
/// task that could share the card.
pub struct PackingWaste;

impl Scorer for PackingWaste {
    fn score(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: crate::cluster::NodeIdx,
        choice: Choice,
    ) -> f64 {
        let model = ctx.workload;
        let node = &ctx.cluster.nodes[node as usize];
        let fed = |cpu: u64, memory: u64| {
            model
                .smallest_share
                .is_none_or(|(c, m)| cpu >= c && memory >= m)
        };
        let fed_before = fed(node.free_cpu_milli(), node.free_memory_mib());
        let fed_after = fed(
            node.free_cpu_milli().saturating_sub(task.cpu_milli),
            node.free_memory_mib().saturating_sub(task.memory_mib),
        );
        let waste = |class: ClassIdx, free: u32, fed: bool| -> u32 {
            match free {
                MILLI_PER_GPU.. => 0,
                _ if !fed => free,
                _ => model.unfillable(class, free),
            }
        };
        node.gpus
            .iter()
            .enumerate()
            .map(|(i, gpu)| {
                let free = gpu.free_milli();
                let taken = if choice.gpus & (1 << i) != 0 {
                    choice.milli
                } else {
                    0
                };
                waste(gpu.class, free, fed_before) as f64
                    - waste(gpu.class, free - taken, fed_after) as f64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClassIdx, ClassSet};
    use crate::plugins::workload::testing::{node, shape};
    use crate::plugins::workload::{Shape, WorkloadModel};
    use finpool_domain::GpuRequest;

    fn share_shape(milli: u32, cpu: u64, classes: ClassSet) -> Shape {
        Shape {
            classes,
            ..shape(milli, 1, cpu)
        }
    }

    /// A pool whose nodes are given as (class, free CPU, per-card used milli).
    fn pool(nodes: &[(ClassIdx, u64, &[u32])]) -> crate::cluster::Cluster {
        let classes = ["A", "B"]
            .iter()
            .map(|n| crate::cluster::ClassInfo {
                name: (*n).into(),
                memory_mib: 16_000,
            })
            .collect();
        let nodes = nodes
            .iter()
            .map(|(class, cpu, used)| {
                let mut n = node(used);
                n.cpu_milli = *cpu;
                n.gpus.iter_mut().for_each(|g| g.class = *class);
                n.classes = ClassSet::single(*class);
                n
            })
            .collect();
        crate::cluster::Cluster::new(classes, nodes)
    }

    fn packing_score(
        c: &crate::cluster::Cluster,
        model: &WorkloadModel,
        task: &Task,
        node: u32,
        choice: Choice,
    ) -> f64 {
        use crate::plugins::Scorer;
        let tenants = crate::tenants::TenantBook::default();
        let ctx =
            crate::plugins::Ctx::new(c, &tenants, crate::plugins::QuotaBound::Unbounded, model);
        PackingWaste.score(&ctx, task, node, choice)
    }

    fn on_card(gpu: usize, milli: u32) -> Choice {
        Choice {
            gpus: 1 << gpu,
            milli,
            memory_mib: Some(0),
            slice: None,
        }
    }

    #[test]
    fn unfillable_counts_only_the_shapes_allowed_on_the_class() {
        // 470m shares may run on class A only; whole GPUs anywhere.
        let model = WorkloadModel::of_shapes(vec![
            (share_shape(470, 1000, ClassSet::single(0)), 0.5),
            (share_shape(1000, 1000, ClassSet::ALL), 0.5),
        ]);
        assert_eq!(model.unfillable(0, 530), 60, "530 takes one 470 on A");
        assert_eq!(model.unfillable(1, 530), 530, "nothing fills 530 on B");
        assert_eq!(model.unfillable(0, 1000), 0);
        assert_eq!(model.smallest_share, Some((1000, 0)));
    }

    #[test]
    fn packing_waste_pairs_shares_and_keeps_cpu_for_them() {
        let model = WorkloadModel::of_shapes(vec![
            (share_shape(470, 1000, ClassSet::ALL), 0.5),
            (share_shape(1000, 1000, ClassSet::ALL), 0.5),
        ]);
        // A 470m share beside another wastes nothing new; on an idle card
        // it leaves 60m that nothing can take.
        let c = pool(&[(0, 8000, &[470, 0])]);
        let task = Task::new(
            GpuRequest::Share {
                milli: 470,
                memory_mib: 0,
            },
            1000,
            0,
        );
        assert_eq!(packing_score(&c, &model, &task, 0, on_card(0, 470)), 0.0);
        assert_eq!(packing_score(&c, &model, &task, 0, on_card(1, 470)), -60.0);

        // CPU-only work that leaves a node too little CPU for any share
        // strands its half-used card: all 530m free becomes waste.
        let c = pool(&[(0, 1500, &[470, 0]), (0, 8000, &[470, 0])]);
        let cpu_only = Task::new(GpuRequest::None, 1000, 0);
        assert_eq!(
            packing_score(&c, &model, &cpu_only, 0, Choice::NO_GPU),
            -470.0
        );
        assert_eq!(packing_score(&c, &model, &cpu_only, 1, Choice::NO_GPU), 0.0);
    }
}
