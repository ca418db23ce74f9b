//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use finpool_store::Store;

pub use crate::auth::limit::RateLimit;

pub use finpool_ports::{InventorySource, LogSource};

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
