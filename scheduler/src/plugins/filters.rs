//! Filters every policy shares. Each checks one rule.

use finpool_domain::{GpuRequest, MILLI_PER_GPU};

use super::{Ctx, Filter};
use crate::cluster::{Choice, ClassIdx, GpuState, ModelDemand, ModelIdx, NodeState};
use crate::task::{ModelFit, Task};

/// The node has the CPU and memory the task asks for, and enough GPUs.
pub struct NodeResources;

impl Filter for NodeResources {
    fn name(&self) -> &'static str {
        "NodeResources"
    }

    fn code(&self) -> &'static str {
        "InsufficientCpuMemoryOrGpus"
    }

    fn node(&self, _ctx: &Ctx<'_>, task: &Task, node: &NodeState) -> bool {
        node.free_cpu_milli() >= task.cpu_milli
            && node.free_memory_mib() >= task.memory_mib
            && node.gpus.len() as u32 >= task.gpu.gpu_count()
    }
}

/// The card is of a class the task allows, with memory for its model.
pub struct GpuClassAllowed;

impl Filter for GpuClassAllowed {
    fn name(&self) -> &'static str {
        "GpuClassAllowed"
    }

    fn code(&self) -> &'static str {
        "GpuClassOrMemory"
    }

    fn node(&self, _ctx: &Ctx<'_>, task: &Task, node: &NodeState) -> bool {
        task.gpu == GpuRequest::None || !node.classes.intersect(task.classes).is_empty()
    }

    fn gpu(&self, _ctx: &Ctx<'_>, task: &Task, _node: &NodeState, gpu: &GpuState) -> bool {
        task.classes.contains(gpu.class) && gpu.memory_mib >= task.min_gpu_memory_mib
    }
}

/// The card has room: idle (and not in MIG mode) for a whole-GPU task;
/// enough free milli and memory for a share; a free slice big enough for
/// a share of a tenant that isolates in hardware (MIG).
pub struct GpuCapacity;

impl Filter for GpuCapacity {
    fn name(&self) -> &'static str {
        "GpuCapacity"
    }

    fn code(&self) -> &'static str {
        "GpuBusy"
    }

    fn gpu(&self, _ctx: &Ctx<'_>, task: &Task, _node: &NodeState, gpu: &GpuState) -> bool {
        match task.gpu {
            GpuRequest::None => false,
            GpuRequest::Whole { .. } => !gpu.is_mig() && gpu.is_idle(),
            GpuRequest::Share { milli, memory_mib } if task.mig => gpu
                .slices
                .iter()
                .any(|s| !s.taken && s.milli >= milli && s.memory_mib >= memory_mib),
            GpuRequest::Share { milli, memory_mib } => {
                !gpu.is_mig() && gpu.free_milli() >= milli && gpu.free_memory_mib() >= memory_mib
            }
        }
    }
}

/// Never time-slice a card between two tenants. MIG slices are isolated in
/// hardware, so a MIG card may serve several tenants, one per slice.
pub struct TenantIsolation;

impl Filter for TenantIsolation {
    fn name(&self) -> &'static str {
        "TenantIsolation"
    }

    fn code(&self) -> &'static str {
        "HeldByAnotherTenant"
    }

    fn gpu(&self, _ctx: &Ctx<'_>, task: &Task, _node: &NodeState, gpu: &GpuState) -> bool {
        gpu.is_mig() || gpu.owner.is_none() || gpu.owner == task.tenant
    }
}

/// The tenant stays within its quota on the class: the cards it would hold
/// after this choice are at most its guarantee or its limit, as the pass asks.
pub struct QuotaLimit;

impl QuotaLimit {
    /// Milli-GPU this choice would newly take for the tenant: whole cards it
    /// does not hold yet, or the MIG slice's share.
    pub fn newly_held(node: &NodeState, choice: Choice) -> u64 {
        choice
            .positions()
            .map(|i| match choice.slice {
                Some(s) => node.gpus[i].slices[s as usize].milli as u64,
                None if node.gpus[i].owner.is_none() => MILLI_PER_GPU as u64,
                None => 0,
            })
            .sum()
    }
}

impl Filter for QuotaLimit {
    fn name(&self) -> &'static str {
        "QuotaLimit"
    }

    fn code(&self) -> &'static str {
        "QuotaExceeded"
    }

    fn choice(
        &self,
        ctx: &Ctx<'_>,
        task: &Task,
        node: &NodeState,
        class: ClassIdx,
        choice: Choice,
    ) -> bool {
        let Some(tenant) = task.tenant else {
            return true;
        };
        if choice.gpus == 0 {
            return true;
        }
        let Some(bound) = ctx.quota_bound_milli(tenant, class) else {
            return true;
        };
        ctx.cluster.held_milli(tenant, class) + Self::newly_held(node, choice) <= bound
    }
}

/// Keep off a node reserved for a job waiting for it (gang scheduling with
/// backfill): the driver sets the node in the context for tasks that would
/// still run when the reservation begins.
pub struct Reserved;

impl Filter for Reserved {
    fn name(&self) -> &'static str {
        "Reserved"
    }

    fn code(&self) -> &'static str {
        "ReservedForGang"
    }

    fn node(&self, ctx: &Ctx<'_>, _task: &Task, node: &NodeState) -> bool {
        match ctx.avoid_node {
            Some(n) => ctx
                .cluster
                .nodes
                .get(n as usize)
                .is_none_or(|reserved| !std::ptr::eq(reserved, node)),
            None => true,
        }
    }
}

/// Base models and cards: see [`ModelFit`]. Balance compares the models'
/// queued jobs per resident card, as the cycle began.
#[derive(Debug, Clone, Copy)]
pub struct ModelPlacement {
    /// How many times more queued jobs per card a model needs than the
    /// resident one before it may evict it. Above 1, so that two models
    /// near balance do not trade cards back and forth (each trade is two
    /// loads).
    pub balance_margin: u64,
}

/// The default [`ModelPlacement::balance_margin`], chosen on the GenAI
/// trace (see the README).
pub const DEFAULT_BALANCE_MARGIN: u64 = 4;

impl Default for ModelPlacement {
    fn default() -> Self {
        Self {
            balance_margin: DEFAULT_BALANCE_MARGIN,
        }
    }
}

impl ModelPlacement {
    /// May a job of `model` evict `other` from one card? Only if `model`,
    /// with that card, would still have `balance_margin` times as many
    /// queued jobs per card as `other` has now.
    pub fn may_evict(&self, demand: &[ModelDemand], model: ModelIdx, other: ModelIdx) -> bool {
        let (Some(m), Some(o)) = (demand.get(model as usize), demand.get(other as usize)) else {
            return true;
        };
        m.queued as u64 * o.resident.max(1) as u64
            >= self.balance_margin * o.queued as u64 * (m.resident as u64 + 1)
    }
}

impl Filter for ModelPlacement {
    fn name(&self) -> &'static str {
        "ModelPlacement"
    }

    fn code(&self) -> &'static str {
        "ModelLocality"
    }

    fn gpu(&self, ctx: &Ctx<'_>, task: &Task, _node: &NodeState, gpu: &GpuState) -> bool {
        let Some(model) = task.model else {
            return true;
        };
        match (task.model_fit, gpu.resident_model) {
            (ModelFit::Any, _) => true,
            (_, Some(m)) if m == model => true,
            (ModelFit::Warm, _) => false,
            (ModelFit::Balanced, None) => true,
            (ModelFit::Balanced, Some(other)) => {
                self.may_evict(&ctx.cluster.model_demand, model, other)
            }
        }
    }
}
