//! Base-model locality as a score.

use crate::cluster::{Choice, ModelDemand, ModelIdx, NodeIdx};
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

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
