//! CPU and memory stranding: GPU left unusable for want of CPU or memory.

use crate::cluster::Choice;
use crate::plugins::workload::{Companion, FreeTotals};
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// Keep nodes' CPU and memory in step with their free GPU: score the
/// decrease in GPU stranded for want of CPU or memory (see
/// [`FreeTotals::stranded`]), with the companion ratios of the workload the
/// driver learned. CPU-only work thus goes where CPU is plentiful or where
/// the GPUs are already taken.
pub struct CpuStranding {
    /// Scales the learned CPU and memory per milli-GPU.
    pub ratio_scale: f64,
    /// Average stranding over each GPU shape's own ratio, rather than
    /// stranding at the workload's average ratio.
    pub per_shape: bool,
}

impl Scorer for CpuStranding {
    fn score(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: crate::cluster::NodeIdx,
        choice: Choice,
    ) -> f64 {
        let mut out = [0.0];
        self.score_node(ctx, task, node, &[choice], &mut out);
        out[0]
    }

    fn score_node(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: crate::cluster::NodeIdx,
        choices: &[Choice],
        out: &mut [f64],
    ) {
        let Some(mut companion) = ctx.workload.companion() else {
            out.iter_mut().for_each(|s| *s = 0.0);
            return;
        };
        companion.cpu_per_milli *= self.ratio_scale;
        companion.memory_per_milli *= self.ratio_scale;
        let node = &ctx.cluster.nodes[node as usize];
        if self.per_shape {
            let stranded = |totals: &FreeTotals| -> f64 {
                let mut total = 0.0;
                let mut weights = 0.0;
                for (shape, w) in &ctx.workload.shapes {
                    if shape.gpus == 0 {
                        continue;
                    }
                    let d = shape.demand_milli() as f64;
                    let c = Companion {
                        cpu_per_milli: shape.cpu_milli as f64 / d * self.ratio_scale,
                        memory_per_milli: shape.memory_mib as f64 / d * self.ratio_scale,
                    };
                    total += w * totals.stranded(c);
                    weights += w;
                }
                if weights > 0.0 { total / weights } else { 0.0 }
            };
            let before =
                ctx.remembered(|| stranded(&FreeTotals::after(node, Choice::NO_GPU, 0, 0)));
            for (choice, score) in choices.iter().zip(out.iter_mut()) {
                *score = before
                    - stranded(&FreeTotals::after(
                        node,
                        *choice,
                        task.cpu_milli,
                        task.memory_mib,
                    ));
            }
            return;
        }
        let before =
            ctx.remembered(|| FreeTotals::after(node, Choice::NO_GPU, 0, 0).stranded(companion));
        for (choice, score) in choices.iter().zip(out) {
            let after = FreeTotals::after(node, *choice, task.cpu_milli, task.memory_mib)
                .stranded(companion);
            *score = before - after;
        }
    }
}
