//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{Inventory, Job};
use finpool_store::Store;

pub use crate::auth::limit::RateLimit;
use futures::stream::BoxStream;
use tonic::Status;

/// Where the pool's hardware comes from (NVML, a pool file, Kubernetes nodes).
pub trait InventorySource: Send + Sync + 'static {
    fn inventory(&self) -> Arc<Inventory>;
}

/// A fixed inventory.
impl InventorySource for Arc<Inventory> {
    fn inventory(&self) -> Arc<Inventory> {
        self.clone()
    }
}

/// Where a job's output can be read (local files, pod logs).
#[async_trait::async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// The job's output so far; with `follow`, then new output until the job ends.
    async fn open(
        &self,
        job: &Job,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<Vec<u8>, Status>>, Status>;
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The longest max runtime a job may ask for.
    pub max_runtime_cap: Duration,
    /// Requests per caller (tenant, or operator/regulator subject); `None`:
    /// unlimited.
    pub rate_limit: Option<RateLimit>,
    /// The most jobs a tenant may have pending at once.
    pub pending_cap: u32,
}

/// The default cap on a tenant's pending jobs.
pub const DEFAULT_PENDING_CAP: u32 = 10_000;

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_runtime_cap: Duration::from_secs(7 * 24 * 3600),
            rate_limit: Some(RateLimit::default()),
            pending_cap: DEFAULT_PENDING_CAP,
        }
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub inventory: Arc<dyn InventorySource>,
    pub logs: Arc<dyn LogSource>,
    pub config: ApiConfig,
}
