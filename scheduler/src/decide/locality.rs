//! Base-model locality: which cards a job with a base model may take this
//! decision ([`ModelFit`]), and the reason it gets if it holds out.
//!
//! A card keeps the last model it ran in memory; running the model
//! anywhere else first loads it, which takes the model's load time. So a
//! job may hold out for a *warm* card, but only while that is the quicker
//! way to start:
//!
//! - It waits for a warm card only if that card could run it (class, card
//!   memory, isolation, tenant) and is expected to free for it within the
//!   model's load time: by the max runtimes of the jobs on it, and of the
//!   older jobs of its model that the card will serve first (oldest first,
//!   each to the warm card that frees soonest).
//! - Otherwise it may load its model on an empty card, or evict a model
//!   less in demand than its own ([`ModelFit::Balanced`]).
//! - Holding out is bounded: once it has been held back for its model's
//!   load time (times the wait factor) while a card it could use was free,
//!   it takes any card ([`ModelFit::Any`]). The cycle keeps that clock
//!   ([`crate::cycle`]), so no job waits longer than its model's load time
//!   plus one cycle with a usable card idle, and none waits forever. A job
//!   whose model is on no card counts the time later jobs took the cards
//!   it declined too: in a busy pool it loads after one load time.

use std::collections::HashMap;

use finpool_domain::{GpuRequest, Timestamp};

use crate::JobMap;
use crate::cluster::{Cluster, GpuState, ModelDemand, ModelIdx, NodeState};
use crate::snapshot::{Built, QueuedJob, Snapshot};
use crate::task::{ModelFit, Task};
use crate::wait::WaitReason;

/// Why a job may hold out for its model, kept small: few of the jobs it is
/// worked out for end up held back and told ([`Hint::reason`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Hint {
    /// A warm card (node, GPU position) frees for it by `free_by`.
    Warm {
        model: ModelIdx,
        node: u32,
        free_by: Timestamp,
        limit_ms: u64,
    },
    /// It may load only onto an empty card or a model in less demand.
    Balance { model: ModelIdx, limit_ms: u64 },
}

impl Hint {
    pub(super) fn reason(self, snapshot: &Snapshot, cluster: &Cluster) -> WaitReason {
        let model_name = |m: ModelIdx| snapshot.models[m as usize].name.to_string();
        match self {
            Self::Warm {
                model,
                node,
                free_by,
                limit_ms,
            } => WaitReason::WarmCard {
                model: model_name(model),
                node: cluster.nodes[node as usize].name.clone(),
                free_by,
                limit_ms,
            },
            Self::Balance { model, limit_ms } => WaitReason::ModelBalance {
                model: model_name(model),
                limit_ms,
            },
        }
    }
}

/// Sets each job's [`ModelFit`] and the cycle's model demand; returns why
/// each job that may hold out would wait.
pub(super) fn mark_model_waits(
    snapshot: &Snapshot,
    built: &mut Built,
    jobs: &mut [(&QueuedJob, Task)],
) -> JobMap<Hint> {
    let models = snapshot.models.len();
    let mut demand: Vec<ModelDemand> = built
        .cluster
        .resident_counts(models)
        .into_iter()
        .map(|resident| ModelDemand {
            queued: 0,
            resident,
        })
        .collect();
    for (_, task) in jobs.iter() {
        if let Some(d) = task.model.and_then(|m| demand.get_mut(m as usize)) {
            d.queued += 1;
        }
    }
    built.cluster.model_demand = demand;
    let mut hints = JobMap::default();
    let locality = &snapshot.locality;
    if !locality.enabled {
        return hints;
    }
    let cards = Cards::of(built);
    let free_by = card_free_times(built, &cards, snapshot.now);
    // When each node's running jobs have all ended, by their max runtimes.
    let mut node_free_by: HashMap<u32, Timestamp> = HashMap::new();
    for h in &built.held {
        let at = node_free_by.entry(h.node).or_insert(snapshot.now);
        *at = (*at).max(h.ends_by);
    }
    // Oldest first: each job's turn at its model's warm cards.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| (jobs[i].0.submitted_at, jobs[i].0.id));
    // The warm cards of each model, found once.
    let mut warm: Vec<Vec<(u32, usize)>> = vec![Vec::new(); models];
    for (n, node) in built.cluster.nodes.iter().enumerate() {
        for (g, gpu) in node.gpus.iter().enumerate() {
            if let Some(v) = gpu.resident_model.and_then(|m| warm.get_mut(m as usize)) {
                v.push((n as u32, g));
            }
        }
    }
    // Each model's load time, looked up once.
    let load_of: Vec<u64> = snapshot
        .models
        .iter()
        .map(|m| locality.load_ms.get(m.name.as_str()).copied().unwrap_or(0))
        .collect();
    // When each warm card is next free for the queue: older jobs of its
    // model are served first, each for its max runtime.
    let mut next_free: Vec<Option<Timestamp>> = vec![None; cards.len()];
    for i in order {
        let (job, task) = &mut jobs[i];
        let Some(m) = task.model.filter(|m| (*m as usize) < models) else {
            continue;
        };
        if task.gpu == GpuRequest::None {
            continue;
        }
        // Gangs are not matched to warm cards one by one: they load.
        let gang = task.gpu.gpu_count() > 1;
        let load_ms = load_of[m as usize];
        let limit_ms = (load_ms as f64 * locality.wait_factor).round() as u64;
        let held_ms = locality.held_ms.get(&job.id).copied().unwrap_or(0);
        if held_ms >= limit_ms {
            continue; // ModelFit::Any: it has held out long enough.
        }
        let horizon = Timestamp(snapshot.now.0.saturating_add(load_ms as i64));
        // The warm card that frees for this job soonest, after the older
        // jobs of its model queued for the same cards.
        let mut best: Option<((u32, usize), Timestamp)> = None;
        for &(n, g) in &warm[m as usize] {
            let node = &built.cluster.nodes[n as usize];
            let gpu = &node.gpus[g];
            if gang || !node_could_run(node, task) || !card_could_run(gpu, task) {
                continue;
            }
            let card = cards.at(n, g);
            let mut at = match next_free[card] {
                Some(at) => at,
                None if card_has_room(gpu, task) => snapshot.now,
                None => match free_by[card] {
                    Some(at) => at,
                    None => continue,
                },
            };
            // The node's CPU and memory must free too.
            if node.free_cpu_milli() < task.cpu_milli || node.free_memory_mib() < task.memory_mib {
                at = at.max(node_free_by.get(&n).copied().unwrap_or(snapshot.now));
            }
            if at <= horizon && best.is_none_or(|(_, b)| at < b) {
                best = Some(((n, g), at));
            }
        }
        if let Some((card, at)) = best {
            let runtime = job
                .max_runtime_ms
                .unwrap_or(snapshot.default_max_runtime_ms) as i64;
            next_free[cards.at(card.0, card.1)] = Some(Timestamp(at.0.saturating_add(runtime)));
        }
        let hint = match best {
            Some((card, at)) => {
                task.model_fit = ModelFit::Warm;
                Hint::Warm {
                    model: m,
                    node: card.0,
                    free_by: at,
                    limit_ms,
                }
            }
            None => {
                task.model_fit = ModelFit::Balanced;
                Hint::Balance { model: m, limit_ms }
            }
        };
        hints.insert(job.id, hint);
    }
    hints
}

/// The pool's cards, numbered node by node (a slice per node).
struct Cards {
    first: Vec<usize>,
    len: usize,
}

impl Cards {
    fn of(built: &Built) -> Self {
        let mut first = Vec::with_capacity(built.cluster.nodes.len());
        let mut len = 0;
        for node in &built.cluster.nodes {
            first.push(len);
            len += node.gpus.len();
        }
        Self { first, len }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Card `g` of node `n`.
    fn at(&self, n: u32, g: usize) -> usize {
        self.first[n as usize] + g
    }
}

/// When each busy card frees at the latest: the last max-runtime end of
/// the jobs on it (now, for jobs past it).
fn card_free_times(built: &Built, cards: &Cards, now: Timestamp) -> Vec<Option<Timestamp>> {
    let mut out = vec![None; cards.len()];
    for h in &built.held {
        for a in &h.pieces {
            for g in a.choice.positions() {
                let at = out[cards.at(a.node, g)].get_or_insert(now);
                *at = (*at).max(h.ends_by);
            }
        }
    }
    out
}

fn node_could_run(node: &NodeState, task: &Task) -> bool {
    node.cpu_milli >= task.cpu_milli
        && node.memory_mib >= task.memory_mib
        && node.gpus.len() as u32 >= task.gpu.gpu_count()
}

/// The card could run the task once free: class, memory, partitioning.
fn card_could_run(gpu: &GpuState, task: &Task) -> bool {
    if !task.classes.contains(gpu.class) || gpu.memory_mib < task.min_gpu_memory_mib {
        return false;
    }
    match task.gpu {
        GpuRequest::None => false,
        GpuRequest::Whole { .. } => !gpu.is_mig(),
        GpuRequest::Share { .. } => task.mig == gpu.is_mig(),
    }
}

/// The card could take the task now (its tenant permitting).
fn card_has_room(gpu: &GpuState, task: &Task) -> bool {
    let tenant_ok = gpu.is_mig() || gpu.owner.is_none() || gpu.owner == task.tenant;
    tenant_ok
        && match task.gpu {
            GpuRequest::None => false,
            GpuRequest::Whole { .. } => gpu.is_idle(),
            GpuRequest::Share { milli, memory_mib } if task.mig => gpu
                .slices
                .iter()
                .any(|s| !s.taken && s.milli >= milli && s.memory_mib >= memory_mib),
            GpuRequest::Share { milli, memory_mib } => {
                gpu.free_milli() >= milli && gpu.free_memory_mib() >= memory_mib
            }
        }
}
