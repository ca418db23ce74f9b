use finpool_domain::Job;
use futures::stream::BoxStream;

/// Why a job's output cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("reading the log: {0}")]
    Io(String),
}

/// A job's output, chunk by chunk.
pub type LogStream = BoxStream<'static, Result<Vec<u8>, LogError>>;

/// Where a job's output can be read (local files, pod logs).
#[async_trait::async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// The job's output so far; with `follow`, then new output until the job ends.
    async fn open(&self, job: &Job, follow: bool) -> Result<LogStream, LogError>;
}
