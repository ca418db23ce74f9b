//! Filters every policy shares. Each checks one rule.

use finpool_domain::GpuRequest;

use super::{Ctx, Filter, QuotaBound};
use crate::cluster::{Choice, ClassIdx, GpuState, NodeState};
use crate::task::Task;

/// The node has the CPU and memory the task asks for, and enough GPUs.
pub struct NodeResources;

impl Filter for NodeResources {
    fn name(&self) -> &'static str {
        "NodeResources"
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

    fn node(&self, _ctx: &Ctx<'_>, task: &Task, node: &NodeState) -> bool {
        task.gpu == GpuRequest::None || !node.classes.intersect(task.classes).is_empty()
    }

    fn gpu(&self, _ctx: &Ctx<'_>, task: &Task, _node: &NodeState, gpu: &GpuState) -> bool {
        task.classes.contains(gpu.class) && gpu.memory_mib >= task.min_gpu_memory_mib
    }
}

/// The card has room: idle for a whole-GPU task; enough free milli and
/// memory for a share.
pub struct GpuCapacity;

impl Filter for GpuCapacity {
    fn name(&self) -> &'static str {
        "GpuCapacity"
    }

    fn gpu(&self, _ctx: &Ctx<'_>, task: &Task, _node: &NodeState, gpu: &GpuState) -> bool {
        match task.gpu {
            GpuRequest::None => false,
            GpuRequest::Whole { .. } => gpu.is_idle(),
            GpuRequest::Share { milli, memory_mib } => {
                gpu.free_milli() >= milli && gpu.free_memory_mib() >= memory_mib
            }
        }
    }
}

/// Never time-slice a card between two tenants.
pub struct TenantIsolation;

impl Filter for TenantIsolation {
    fn name(&self) -> &'static str {
        "TenantIsolation"
    }

    fn gpu(&self, _ctx: &Ctx<'_>, task: &Task, _node: &NodeState, gpu: &GpuState) -> bool {
        gpu.owner.is_none() || gpu.owner == task.tenant
    }
}

/// The tenant stays within its quota on the class: the cards it would hold
/// after this choice are at most its guarantee or its limit, as the pass asks.
pub struct QuotaLimit;

impl QuotaLimit {
    /// Cards this choice would newly take for the tenant.
    pub fn newly_held(node: &NodeState, choice: Choice) -> u32 {
        choice
            .positions()
            .filter(|&i| node.gpus[i].owner.is_none())
            .count() as u32
    }
}

impl Filter for QuotaLimit {
    fn name(&self) -> &'static str {
        "QuotaLimit"
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
        let quota = ctx.tenants.quota(tenant, class);
        let bound = match ctx.bound {
            QuotaBound::Unbounded => return true,
            QuotaBound::Guaranteed => quota.guaranteed,
            QuotaBound::Limit => quota.limit,
        };
        ctx.cluster.held_gpus(tenant, class) + Self::newly_held(node, choice) <= bound
    }
}
