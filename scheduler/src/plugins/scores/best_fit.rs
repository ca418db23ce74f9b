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

/// Best-fit as the FGD authors' simulator scores it (their `BestFit`
/// baseline): the node left with the least CPU and GPU, each over the
/// largest node's capacity and weighted half, on the kube-scheduler's
/// integer 0..=100 scale, so that near-equal nodes tie (and ties go to the
/// lowest node, as in their scheduler). Within the node, a share goes on
/// the fullest card it fits, as their GPU allocator puts it.
pub struct KubeBestFit;

impl Scorer for KubeBestFit {
    fn name(&self) -> &'static str {
        "BestFit"
    }

    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        let (max_cpu, max_gpu) = ctx.cluster.largest_node();
        let node = &ctx.cluster.nodes[node as usize];
        let taken = choice.gpu_count() as u64 * choice.milli as u64;
        let gpu_left = (node.free_gpu_milli() - taken) as f64 / max_gpu.max(1) as f64;
        let cpu_left =
            node.free_cpu_milli().saturating_sub(task.cpu_milli) as f64 / max_cpu.max(1) as f64;
        let node_score = ((1.0 - 0.5 * cpu_left - 0.5 * gpu_left) * 100.0).floor();
        // Below one integer step: the card, never the node.
        let card_left: u64 = choice
            .positions()
            .map(|i| (node.gpus[i].free_milli() - choice.milli) as u64)
            .sum();
        node_score - card_left as f64 / 1e7
    }
}
