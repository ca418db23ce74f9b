//! A placement request, in the scheduler's indexed terms.

use finpool_domain::GpuRequest;

use crate::cluster::{ClassSet, ModelIdx, TenantIdx};

/// What one job (or one simulated pod) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Task {
    /// The owning tenant; `None` in tenant-less simulations.
    pub tenant: Option<TenantIdx>,
    pub gpu: GpuRequest,
    /// GPU classes the task may use.
    pub classes: ClassSet,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// The least memory a card needs (for the job's base model).
    pub min_gpu_memory_mib: u64,
    /// The base model the job runs.
    pub model: Option<ModelIdx>,
    /// The tenant isolates shares in hardware: shares go on MIG slices.
    pub mig: bool,
    /// Which cards the task may load its base model on.
    pub model_fit: ModelFit,
}

/// Which cards a task with a base model may take, given that a card holds
/// one model in memory and loading another evicts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ModelFit {
    /// Any card.
    #[default]
    Any,
    /// Only cards already holding the model (delay scheduling: the job
    /// waits a while for one rather than pay a load).
    Warm,
    /// Cards holding the model, empty cards, and cards whose model is less
    /// in demand than this one's would be after taking the card: models
    /// trade cards only towards balance, so loads do not churn.
    Balanced,
}

impl Task {
    /// A task with only resource needs, any class, no tenant.
    pub fn new(gpu: GpuRequest, cpu_milli: u64, memory_mib: u64) -> Self {
        Self {
            tenant: None,
            gpu,
            classes: ClassSet::ALL,
            cpu_milli,
            memory_mib,
            min_gpu_memory_mib: 0,
            model: None,
            mig: false,
            model_fit: ModelFit::Any,
        }
    }

    /// Milli-GPU the task needs on each card it gets.
    pub fn milli_per_gpu(&self) -> u32 {
        match self.gpu {
            GpuRequest::None => 0,
            GpuRequest::Whole { .. } => finpool_domain::MILLI_PER_GPU,
            GpuRequest::Share { milli, .. } => milli,
        }
    }
}
