use finpool_domain::JobId;
use finpool_scheduler::Stop;

/// A base model loaded onto a card, and how long it took: the cycle
/// learns load times from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSample {
    pub node: String,
    pub model: String,
    pub took_ms: u64,
}

/// Where jobs run.
#[async_trait::async_trait]
pub trait Runtime: Send {
    type Job: Send + Sync;

    /// Starts an admitted job; a no-op if it already runs.
    async fn start(&mut self, job: &Self::Job);

    /// Stops a job for preemption: SIGTERM (or its equivalent), then a
    /// hard stop after the grace period; the job goes back to the queue.
    async fn stop(&mut self, job: JobId, stop: &Stop);

    /// Model loads measured since the last call.
    fn take_load_samples(&mut self) -> Vec<LoadSample> {
        Vec::new()
    }
}
