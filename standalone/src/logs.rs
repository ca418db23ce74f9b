//! Job logs from the files the executor writes, with follow mode.

use std::io::SeekFrom;
use std::time::Duration;

use finpool_domain::Job;
use finpool_ports::{LogError, LogSource, LogStream};
use finpool_store::Store;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::executor::ExecutorConfig;

const CHUNK: usize = 64 * 1024;
const POLL: Duration = Duration::from_millis(200);

pub struct FileLogs {
    pub store: Store,
    pub config: ExecutorConfig,
}

#[async_trait::async_trait]
impl LogSource for FileLogs {
    async fn open(&self, job: &Job, follow: bool) -> Result<LogStream, LogError> {
        let path = self.config.log_path(job.id);
        let store = self.store.clone();
        let id = job.id;
        let mut finished = job.state.is_terminal();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut offset = 0u64;
            let mut buf = vec![0u8; CHUNK];
            loop {
                // Read everything written so far.
                if let Ok(mut file) = tokio::fs::File::open(&path).await {
                    if file.seek(SeekFrom::Start(offset)).await.is_err() {
                        return;
                    }
                    loop {
                        match file.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                offset += n as u64;
                                if tx.send(Ok(buf[..n].to_vec())).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(LogError::Io(e.to_string()))).await;
                                return;
                            }
                        }
                    }
                }
                if !follow || finished {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
                // One more full read after the job ends, then stop.
                finished = match store.get_job(id).await {
                    Ok(job) => job.state.is_terminal(),
                    Err(_) => false,
                };
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
