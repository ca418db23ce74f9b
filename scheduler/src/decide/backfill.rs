//! Gang reservations with backfill: a multi-GPU job that cannot start
//! reserves the node where it surely can soonest; later jobs may use that
//! node only if they end before then.

use finpool_domain::{GpuRequest, Timestamp};

use super::planner::Planner;
use crate::cluster::{GpuState, NodeIdx};
use crate::snapshot::{Held, QueuedJob};
use crate::task::Task;

impl Planner<'_> {
    /// The node a job must avoid: the reservation's, unless the job ends
    /// before the reservation begins (or is the reserved job).
    pub(super) fn avoid_for(&self, job: &QueuedJob) -> Option<NodeIdx> {
        let (reserved, node, at) = self.reservation?;
        if reserved == job.id {
            return None;
        }
        let runtime = job
            .max_runtime_ms
            .unwrap_or(self.snapshot.default_max_runtime_ms) as i64;
        (self.now.0.saturating_add(runtime) > at.0).then_some(node)
    }

    /// The earliest time some node will surely have room for a whole-GPU
    /// task, as held jobs reach their max runtimes: (node, time).
    pub(super) fn earliest_start(&self, task: &Task) -> Option<(NodeIdx, Timestamp)> {
        let GpuRequest::Whole { count } = task.gpu else {
            return None;
        };
        let cluster = self.cluster();
        // The jobs on each node, in `held` order.
        let mut on_node: Vec<Vec<&Held>> = vec![Vec::new(); cluster.nodes.len()];
        for (i, h) in self.held.iter().enumerate() {
            if !self.released[i]
                && let Some(jobs) = on_node.get_mut(h.node as usize)
            {
                jobs.push(h);
            }
        }
        let mut best: Option<(Timestamp, NodeIdx)> = None;
        for (n, node) in cluster.nodes.iter().enumerate() {
            let usable = |g: &GpuState| !g.is_mig() && task.classes.contains(g.class);
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
            let ends = &mut on_node[n];
            ends.sort_by_key(|h| (h.ends_by, h.id));
            let mut ready = idle >= count && cpu >= task.cpu_milli && memory >= task.memory_mib;
            for h in ends.iter() {
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
}
