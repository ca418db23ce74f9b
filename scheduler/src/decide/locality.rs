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

use finpool_domain::{GpuRequest, JobId, Timestamp};

use crate::cluster::{GpuState, ModelDemand, ModelIdx, NodeState};
use crate::snapshot::{Built, QueuedJob, Snapshot};
use crate::task::{ModelFit, Task};
use crate::wait::WaitReason;

/// Sets each job's [`ModelFit`] and the cycle's model demand; returns the
/// reason each job that may hold out would be given.
pub(super) fn mark_model_waits(
    snapshot: &Snapshot,
    built: &mut Built,
    jobs: &mut [(&QueuedJob, Task)],
) -> HashMap<JobId, WaitReason> {
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
    let mut hints = HashMap::new();
    let locality = &snapshot.locality;
    if !locality.enabled {
        return hints;
    }
    let free_by = card_free_times(built, snapshot.now);
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
    let mut warm: HashMap<ModelIdx, Vec<(u32, usize)>> = HashMap::new();
    for (n, node) in built.cluster.nodes.iter().enumerate() {
        for (g, gpu) in node.gpus.iter().enumerate() {
            if let Some(m) = gpu.resident_model {
                warm.entry(m).or_default().push((n as u32, g));
            }
        }
    }
    // When each warm card is next free for the queue: older jobs of its
    // model are served first, each for its max runtime.
    let mut next_free: HashMap<(u32, usize), Timestamp> = HashMap::new();
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
        let model = &snapshot.models[m as usize];
        let load_ms = locality
            .load_ms
            .get(model.name.as_str())
            .copied()
            .unwrap_or(0);
        let limit_ms = (load_ms as f64 * locality.wait_factor).round() as u64;
        let held_ms = locality.held_ms.get(&job.id).copied().unwrap_or(0);
        if held_ms >= limit_ms {
            continue; // ModelFit::Any: it has held out long enough.
        }
        let horizon = Timestamp(snapshot.now.0.saturating_add(load_ms as i64));
        // The warm card that frees for this job soonest, after the older
        // jobs of its model queued for the same cards.
        let mut best: Option<((u32, usize), Timestamp)> = None;
        for &(n, g) in warm.get(&m).map_or(&[][..], |v| v.as_slice()) {
            let node = &built.cluster.nodes[n as usize];
            let gpu = &node.gpus[g];
            if gang || !node_could_run(node, task) || !card_could_run(gpu, task) {
                continue;
            }
            let mut at = match next_free.get(&(n, g)) {
                Some(at) => *at,
                None if card_has_room(gpu, task) => snapshot.now,
                None => match free_by.get(&(n, g)) {
                    Some(at) => *at,
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
            next_free.insert(card, Timestamp(at.0.saturating_add(runtime)));
        }
        let model_name = model.name.to_string();
        match best {
            Some((card, at)) => {
                task.model_fit = ModelFit::Warm;
                hints.insert(
                    job.id,
                    WaitReason::WarmCard {
                        model: model_name,
                        node: built.cluster.nodes[card.0 as usize].name.clone(),
                        free_by: at,
                        limit_ms,
                    },
                );
            }
            None => {
                task.model_fit = ModelFit::Balanced;
                hints.insert(
                    job.id,
                    WaitReason::ModelBalance {
                        model: model_name,
                        limit_ms,
                    },
                );
            }
        }
    }
    hints
}

/// When each busy card frees at the latest: the last max-runtime end of
/// the jobs on it (now, for jobs past it).
fn card_free_times(built: &Built, now: Timestamp) -> HashMap<(u32, usize), Timestamp> {
    let mut out: HashMap<(u32, usize), Timestamp> = HashMap::new();
    for h in &built.held {
        for a in &h.pieces {
            for g in a.choice.positions() {
                let at = out.entry((a.node, g)).or_insert(now);
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
