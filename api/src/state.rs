//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use finpool_store::Store;

use crate::auth::TokenLifetimes;
pub use crate::auth::limit::RateLimit;
use crate::auth::revocation::Revocations;
use crate::streams::StreamSlots;

pub use finpool_ports::{InventorySource, LogSource};

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The longest max runtime a job may ask for.
    pub max_runtime_cap: Duration,
    /// Requests per caller (tenant, or operator/regulator subject); `None`:
    /// unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Requests per source address from callers without a valid token
    /// (anonymous methods, failed authentications); `None`: unlimited.
    pub anonymous_rate_limit: Option<RateLimit>,
    /// The most jobs a tenant may have pending at once.
    pub pending_cap: u32,
    /// The most watch and log streams one caller (a tenant's callers
    /// together) may have open.
    pub streams_per_caller: u32,
    /// The most streams open on this server, all callers together.
    pub streams_total: u32,
    /// The longest token lifetime accepted, per role.
    pub token_lifetimes: TokenLifetimes,
    /// Metering interval, billing period and settle delay.
    pub billing: finpool_billing::BillingConfig,
    /// How often the audit log's checkpoint is signed (when it grew).
    pub audit_checkpoint_every: Duration,
}

/// The default cap on a tenant's pending jobs.
pub const DEFAULT_PENDING_CAP: u32 = 10_000;

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_runtime_cap: Duration::from_secs(7 * 24 * 3600),
            rate_limit: Some(RateLimit::default()),
            anonymous_rate_limit: Some(RateLimit::ANONYMOUS),
            pending_cap: DEFAULT_PENDING_CAP,
            streams_per_caller: crate::streams::DEFAULT_STREAMS_PER_CALLER,
            streams_total: crate::streams::DEFAULT_STREAMS_TOTAL,
            token_lifetimes: TokenLifetimes::default(),
            billing: finpool_billing::BillingConfig::default(),
            audit_checkpoint_every: crate::audit::CHECKPOINT_EVERY,
        }
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub inventory: Arc<dyn InventorySource>,
    pub logs: Arc<dyn LogSource>,
    pub config: ApiConfig,
    /// Suspended tenants and revoked subjects, shared with the auth layer.
    pub revocations: Arc<Revocations>,
    /// Open streams per caller.
    pub streams: Arc<StreamSlots>,
    /// Set when the server begins to shut down: open streams end then, so
    /// that graceful shutdown does not wait on idle clients.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Requests by method and code, submit latency.
    pub metrics: finpool_telemetry::Metrics,
    /// Mutations and denied attempts, queued for the audit log's writer.
    pub audit: crate::audit::AuditLog,
}

impl ApiState {
    pub fn new(
        store: Store,
        inventory: Arc<dyn InventorySource>,
        logs: Arc<dyn LogSource>,
        config: ApiConfig,
    ) -> Self {
        let streams = StreamSlots::new(config.streams_per_caller, config.streams_total);
        Self {
            store,
            inventory,
            logs,
            config,
            revocations: Arc::default(),
            streams,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            metrics: finpool_telemetry::Metrics::new(),
            audit: crate::audit::AuditLog::new(),
        }
    }

    /// Signs the audit log with `key` (see [`crate::audit::load_or_create_key`]).
    pub fn with_audit_key(self, key: finpool_audit::Signer) -> Self {
        self.audit.set_signer(key);
        self
    }

    /// Records into the process's metrics (shared with its scheduler, in
    /// standalone mode).
    pub fn with_metrics(mut self, metrics: finpool_telemetry::Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}
