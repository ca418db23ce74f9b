//! finpool's durable store: tenants, base models, jobs, their full history
//! and their runs, over SQLite (the embedded default) or PostgreSQL.
//!
//! Both backends run the same SQL text (`$N` parameters work in both) and
//! behave identically; only the migrations differ. Every write that a
//! caller is told about has been committed first.
//!
//! Submissions go through a group-commit writer: concurrent submits share
//! one transaction and one fsync, and each is acknowledged only after that
//! commit.

mod audit;
mod backend;
mod bench;
pub mod billing;
mod billing_bench;
mod catalog;
mod error;
mod events;
mod history;
mod job_source;
mod jobs;
mod report;
mod rows;
mod submit;
mod tenants;
pub mod testing;
mod usage;

pub use audit::StoredAudit;
pub use backend::StoreConfig;
pub use billing_bench::{BENCH_CARD_MIB, BenchSeed};
pub use catalog::CATALOG_TTL;
pub use error::StoreError;
pub use events::JobEvent;
pub use history::HistoryRow;
pub use job_source::StoreJobs;
pub use jobs::{Change, JobFilter, JobPage};
pub use report::IntervalUsage;
pub use usage::{ClassUsage, RunRecord, TenantUsage};

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use backend::Backend;

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    events: broadcast::Sender<JobEvent>,
    /// Running jobs someone asked to cancel, with the reason.
    cancels: broadcast::Sender<(finpool_domain::JobId, String)>,
    submits: mpsc::Sender<submit::Request>,
    catalog: catalog::Catalog,
    /// Held while appending to the audit log: one writer at a time.
    audit_writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend.kind())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let backend = Backend::connect(config).await?;
        backend.migrate().await?;
        let (events, _) = broadcast::channel(8192);
        let (cancels, _) = broadcast::channel(1024);
        let (submits, rx) = mpsc::channel(4096);
        let store = Self {
            inner: Arc::new(Inner {
                backend,
                events,
                cancels,
                submits,
                catalog: Default::default(),
                audit_writer: Default::default(),
            }),
        };
        submit::spawn_writer(store.clone(), rx);
        Ok(store)
    }

    /// "sqlite" or "postgres".
    pub fn backend_kind(&self) -> &'static str {
        self.inner.backend.kind()
    }

    /// Job state changes, as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.events.subscribe()
    }

    /// Running jobs whose cancel was asked, with the reason.
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<(finpool_domain::JobId, String)> {
        self.inner.cancels.subscribe()
    }

    fn publish(&self, event: JobEvent) {
        // No receiver is fine: nobody is watching.
        let _ = self.inner.events.send(event);
    }

    fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.backend().ping().await
    }
}
