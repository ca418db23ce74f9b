//! Best-fit, the classic packing baseline.

use crate::cluster::{Choice, NodeIdx};
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// Best-fit: leave the chosen node, then the chosen card, with as little
/// free GPU as possible; among equals, as little free CPU.
pub struct BestFit;

impl Scorer for BestFit {
    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        let node = &ctx.cluster.nodes[node as usize];
        let taken = choice.gpu_count() as u64 * choice.milli as u64;
        let node_free_after = node.free_gpu_milli() - taken;
        let card_free_after: u64 = choice
            .positions()
            .map(|i| (node.gpus[i].free_milli() - choice.milli) as u64)
            .sum();
        let cpu_free_after = node.free_cpu_milli().saturating_sub(task.cpu_milli) as f64
            / node.cpu_milli.max(1) as f64;
        -(node_free_after as f64) / 1000.0
            - card_free_after as f64 / 100_000.0
            - cpu_free_after / 1000.0
    }
}
