//! Least-loaded, the naive spreading baseline.

use crate::cluster::{Choice, NodeIdx};
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// Least-loaded: the node with the most free GPU (then CPU) left.
pub struct LeastLoaded;

impl Scorer for LeastLoaded {
    fn score(&self, ctx: &Ctx<'_>, _task: &Task, node: NodeIdx, _choice: Choice) -> f64 {
        let node = &ctx.cluster.nodes[node as usize];
        node.free_gpu_milli() as f64 / 1000.0
            + node.free_cpu_milli() as f64 / node.cpu_milli.max(1) as f64 / 1000.0
    }
}
