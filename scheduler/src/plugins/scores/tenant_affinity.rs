//! Tenant affinity: a tenant's shares pack onto its own cards.

use crate::cluster::{Choice, NodeIdx};
use crate::plugins::filters::QuotaLimit;
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// Pack a tenant's fractional jobs onto cards it already holds, so it
/// takes (and is charged for) as few cards as possible.
pub struct TenantAffinity;

impl Scorer for TenantAffinity {
    fn score(&self, ctx: &Ctx<'_>, task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        if task.tenant.is_none() || choice.gpus == 0 {
            return 0.0;
        }
        let node = &ctx.cluster.nodes[node as usize];
        -(QuotaLimit::newly_held(node, choice) as f64)
    }
}
