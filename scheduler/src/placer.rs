//! Finding the best place for one task: run the filters over every node and
//! card, enumerate the feasible choices, and keep the best-scored one.
//! Ties go to the lowest node index, then the lowest card, so the result is
//! deterministic.

use finpool_domain::GpuRequest;

use crate::cluster::{
    Allocation, Choice, ClassIdx, GpuState, MAX_GPUS_PER_NODE, NodeIdx, NodeState,
};
use crate::plugins::{Ctx, Policy};
use crate::task::Task;

/// Where a task goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub node: NodeIdx,
    pub class: Option<ClassIdx>,
    pub choice: Choice,
    pub score: f64,
}

impl Placement {
    pub fn allocation(&self, task: &Task) -> Allocation {
        Allocation {
            node: self.node,
            choice: self.choice,
            tenant: task.tenant,
            cpu_milli: task.cpu_milli,
            memory_mib: task.memory_mib,
            model: task.model,
        }
    }
}

impl Policy {
    /// The best placement for `task` on the cluster as it is, or `None`
    /// when nothing passes the filters.
    pub fn place(&self, ctx: &Ctx<'_>, task: &Task) -> Option<Placement> {
        let mut best: Option<Placement> = None;
        for i in 0..ctx.cluster.nodes.len() {
            if let Some(p) = self.best_on_node(ctx, task, i as NodeIdx)
                && best.is_none_or(|b| p.score > b.score)
            {
                best = Some(p);
            }
        }
        best
    }

    /// The best choice on one node, or `None` if the node cannot take the task.
    pub fn best_on_node(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node_index: NodeIdx,
    ) -> Option<Placement> {
        // A node has at most one choice per card (or per class, or one
        // without GPUs): small nodes need small buffers.
        if ctx.cluster.nodes[node_index as usize].gpus.len() <= SMALL_NODE {
            self.best_on_node_within::<SMALL_NODE>(ctx, task, node_index)
        } else {
            self.best_on_node_within::<MAX_GPUS_PER_NODE>(ctx, task, node_index)
        }
    }

    /// [`Policy::best_on_node`] for a node with at most `N` choices.
    fn best_on_node_within<const N: usize>(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node_index: NodeIdx,
    ) -> Option<Placement> {
        let node = &ctx.cluster.nodes[node_index as usize];
        if !self.filters.iter().all(|f| f.node(ctx, task, node)) {
            return None;
        }
        let mut choices = [Choice::NO_GPU; N];
        let mut classes = [None; N];
        let mut n = 0;
        self.for_each_choice(ctx, task, node, |class, choice| {
            choices[n] = choice;
            classes[n] = class;
            n += 1;
        });
        if n == 0 {
            return None;
        }
        let mut scores = [0.0f64; N];
        self.score_node(ctx, task, node_index, &choices[..n], &mut scores[..n]);
        let mut best = 0;
        for i in 1..n {
            if scores[i] > scores[best] {
                best = i;
            }
        }
        Some(Placement {
            node: node_index,
            class: classes[best],
            choice: choices[best],
            score: scores[best],
        })
    }

    /// Whether the task may go on the node: what [`Policy::best_on_node`]
    /// would find something for, without scoring.
    pub fn fits_on_node(&self, ctx: &Ctx<'_>, task: &Task, node_index: NodeIdx) -> bool {
        let node = &ctx.cluster.nodes[node_index as usize];
        if !self.filters.iter().all(|f| f.node(ctx, task, node)) {
            return false;
        }
        let mut any = false;
        self.for_each_choice(ctx, task, node, |_, _| any = true);
        any
    }

    /// Calls `visit` with every choice of cards on `node` that passes the
    /// filters. Whole-GPU tasks get one choice per class (idle cards of a
    /// class are interchangeable but for the model they hold: those with
    /// the task's model first, then the lowest); a share gets one
    /// choice per card with room, skipping cards identical to one already
    /// offered (they would score the same, and the lower index wins ties).
    pub fn for_each_choice(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: &NodeState,
        mut visit: impl FnMut(Option<ClassIdx>, Choice),
    ) {
        let milli = task.milli_per_gpu();
        let memory = match task.gpu {
            GpuRequest::Share { memory_mib, .. } => Some(memory_mib),
            _ => None,
        };
        let choice_ok = |class: ClassIdx, choice: Choice| {
            self.filters
                .iter()
                .all(|f| f.choice(ctx, task, node, class, choice))
        };
        match task.gpu {
            GpuRequest::None => visit(None, Choice::NO_GPU),
            GpuRequest::Whole { count } => {
                let mut classes = node.classes.intersect(task.classes).0;
                while classes != 0 {
                    let class = classes.trailing_zeros() as ClassIdx;
                    classes &= classes - 1;
                    let mut mask = 0u64;
                    let mut found = 0;
                    // Cards already holding the task's model first (they
                    // skip a load), then the lowest.
                    let holds_model =
                        |gpu: &GpuState| task.model.is_some() && gpu.resident_model == task.model;
                    for warm in [true, false] {
                        for (i, gpu) in node.gpus.iter().enumerate() {
                            if found < count
                                && gpu.class == class
                                && holds_model(gpu) == warm
                                && (task.model.is_some() || !warm)
                                && self.filters.iter().all(|f| f.gpu(ctx, task, node, gpu))
                            {
                                mask |= 1 << i;
                                found += 1;
                            }
                        }
                    }
                    let choice = Choice {
                        gpus: mask,
                        milli,
                        memory_mib: memory,
                        slice: None,
                    };
                    if found == count && choice_ok(class, choice) {
                        visit(Some(class), choice);
                    }
                }
            }
            GpuRequest::Share { memory_mib, .. } => {
                for (i, gpu) in node.gpus.iter().enumerate() {
                    if node.gpus[..i]
                        .iter()
                        .any(|earlier| same_state(earlier, gpu))
                        || !self.filters.iter().all(|f| f.gpu(ctx, task, node, gpu))
                    {
                        continue;
                    }
                    let choice = if task.mig {
                        // The smallest free slice that holds the share.
                        let Some((s, slice)) = gpu
                            .slices
                            .iter()
                            .enumerate()
                            .filter(|(_, sl)| {
                                !sl.taken && sl.milli >= milli && sl.memory_mib >= memory_mib
                            })
                            .min_by_key(|(s, sl)| (sl.milli, sl.memory_mib, *s))
                        else {
                            continue;
                        };
                        Choice {
                            gpus: 1 << i,
                            milli: slice.milli,
                            memory_mib: Some(slice.memory_mib),
                            slice: Some(s as u8),
                        }
                    } else {
                        Choice {
                            gpus: 1 << i,
                            milli,
                            memory_mib: memory,
                            slice: None,
                        }
                    };
                    if choice_ok(gpu.class, choice) {
                        visit(Some(gpu.class), choice);
                    }
                }
            }
        }
    }
}

/// Nodes with at most this many cards are placed with small buffers.
const SMALL_NODE: usize = 8;

/// Two cards in the same state (all but their index).
fn same_state(a: &GpuState, b: &GpuState) -> bool {
    a.class == b.class
        && a.memory_mib == b.memory_mib
        && a.used_milli == b.used_milli
        && a.used_memory_mib == b.used_memory_mib
        && a.owner == b.owner
        && a.jobs == b.jobs
        && a.slices == b.slices
        && a.resident_model == b.resident_model
}
