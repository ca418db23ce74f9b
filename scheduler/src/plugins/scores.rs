//! Scorers shared by the built-in policies.

use std::sync::atomic::{AtomicU64, Ordering};

use super::filters::QuotaLimit;
use super::{Ctx, Scorer};
use crate::cluster::{Choice, ModelDemand, ModelIdx, NodeIdx};
use crate::task::Task;

/// Best-fit: leave the chosen node, then the chosen card, with as little
/// free GPU as possible; among equals, as little free CPU.
pub struct BestFit;

impl Scorer for BestFit {
    fn name(&self) -> &'static str {
        "BestFit"
    }

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

/// Least-loaded: the node with the most free GPU (then CPU) left.
pub struct LeastLoaded;

impl Scorer for LeastLoaded {
    fn name(&self) -> &'static str {
        "LeastLoaded"
    }

    fn score(&self, ctx: &Ctx<'_>, _task: &Task, node: NodeIdx, _choice: Choice) -> f64 {
        let node = &ctx.cluster.nodes[node as usize];
        node.free_gpu_milli() as f64 / 1000.0
            + node.free_cpu_milli() as f64 / node.cpu_milli.max(1) as f64 / 1000.0
    }
}

/// Pack a tenant's fractional jobs onto cards it already holds, so it
/// takes (and is charged for) as few cards as possible.
pub struct TenantAffinity;

impl Scorer for TenantAffinity {
    fn name(&self) -> &'static str {
        "TenantAffinity"
    }

    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        if task.tenant.is_none() || choice.gpus == 0 {
            return 0.0;
        }
        let node = &ctx.cluster.nodes[node as usize];
        -(QuotaLimit::newly_held(node, choice) as f64)
    }
}

/// Run a job where its base model already is: resident in the chosen
/// cards' memory is best, cached on the node's disk next, else it must be
/// fetched. A card that must load the model evicts the one it holds, so
/// among those, prefer cards whose model is least wanted: empty ones, then
/// models with other copies and no queue. Scores in milli-GPU, per card,
/// so that locality weighs against fragmentation in the same unit.
pub struct ModelLocality {
    /// Worth of each chosen card that already holds the model.
    pub resident: f64,
    /// Worth of the node having the model on disk.
    pub cached: f64,
    /// Cost of evicting a model that queued jobs wait for, per card (less
    /// as the model has more copies).
    pub evict: f64,
}

impl ModelLocality {
    /// What losing one resident copy of `model` costs, 0..=1: the queued
    /// jobs per copy (up to one), halved unless it is the last copy.
    pub fn eviction_cost(demand: &[ModelDemand], model: ModelIdx) -> f64 {
        let Some(d) = demand.get(model as usize) else {
            return 0.0;
        };
        let per_copy = (d.queued as f64 / d.resident.max(1) as f64).min(1.0);
        if d.resident <= 1 {
            per_copy
        } else {
            per_copy / 2.0
        }
    }
}

impl Scorer for ModelLocality {
    fn name(&self) -> &'static str {
        "ModelLocality"
    }

    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        let Some(model) = task.model else { return 0.0 };
        let node = &ctx.cluster.nodes[node as usize];
        let mut score = 0.0;
        for i in choice.positions() {
            match node.gpus[i].resident_model {
                Some(m) if m == model => score += self.resident,
                Some(other) => {
                    score -= self.evict * Self::eviction_cost(&ctx.cluster.model_demand, other)
                }
                None => {}
            }
        }
        if node.has_model(model) {
            score += self.cached;
        }
        score
    }
}

/// Random-fit: every feasible choice gets a pseudo-random score from a
/// seeded generator, so a run is repeatable.
pub struct RandomFit {
    seed: u64,
    draws: AtomicU64,
}

impl RandomFit {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            draws: AtomicU64::new(0),
        }
    }
}

impl Scorer for RandomFit {
    fn name(&self) -> &'static str {
        "RandomFit"
    }

    fn cacheable(&self) -> bool {
        false
    }

    fn score(&self, _ctx: &Ctx<'_>, _task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        let x = splitmix64(self.seed ^ splitmix64(draw) ^ ((node as u64) << 32) ^ choice.gpus);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A small, fast, well-mixed hash (SplitMix64's finaliser).
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
