use finpool_domain::{BaseModel, JobId, Tenant};
use finpool_scheduler::{Admission, QueuedJob, RunningJob, WaitReason};

/// A port failed: the store is unreachable, say. The cycle is retried.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{port}: {reason}")]
    Failed { port: &'static str, reason: String },
}

impl PortError {
    pub fn new(port: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Failed {
            port,
            reason: reason.to_string(),
        }
    }
}

/// The active jobs as a source sees them. `J` is what its runtime needs to
/// start a job (the whole job for local processes, an id for a simulator).
#[derive(Debug, Clone)]
pub struct JobView<J> {
    pub tenants: Vec<Tenant>,
    pub models: Vec<BaseModel>,
    pub queued: Vec<QueuedJob>,
    /// Admitted or running, with what starting it takes.
    pub holding: Vec<(RunningJob, J)>,
}

/// Where jobs come from, and where the cycle's decisions are recorded.
#[async_trait::async_trait]
pub trait JobSource: Send {
    type Job: Send + Sync + Clone;

    async fn load(&mut self) -> Result<JobView<Self::Job>, PortError>;

    /// Records admissions (Pending → Admitted with the placement); returns
    /// those that took (a job cancelled meanwhile does not), each with
    /// what its start needs.
    async fn admit(
        &mut self,
        admissions: &[Admission],
        now: finpool_domain::Timestamp,
    ) -> Result<Vec<(JobId, Self::Job)>, PortError>;

    /// Records why queued jobs wait (code and text), where that changed.
    async fn set_waiting(&mut self, reasons: &[(JobId, WaitReason)]) -> Result<(), PortError>;

    /// The cycle's durable memory, as last saved (JSON), if any.
    async fn load_memory(&mut self) -> Result<Option<String>, PortError>;

    async fn save_memory(&mut self, memory: &str) -> Result<(), PortError>;
}
