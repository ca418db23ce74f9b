//! The standalone pool: one process holding the API, the scheduler loop,
//! the executor and the store, over a GPU inventory from NVML or a pool
//! file. This is what `finpool up` and `finpool demo` run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use finpool_api::{ApiState, SigningKey};
use finpool_domain::Inventory;
use finpool_scheduler::Policy;
use finpool_store::{Store, StoreConfig, StoreError};
use finpool_telemetry::{Metrics, Readiness};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::datadir::{self, DataDirError, DataDirLock};
use crate::driver::{self, DriverConfig};
use crate::executor::{Executor, ExecutorConfig};
use crate::inventory::{self, Origin, PoolFileError};
use crate::logs::FileLogs;
use crate::reconcile::{self, Reconciled};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};

#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    /// Holds the database, the signing key, job logs and the model cache.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// A pool file; without one, NVML, then the built-in example pool.
    pub pool_file: Option<PathBuf>,
    /// A PostgreSQL URL; without one, SQLite in the data dir.
    pub database_url: Option<String>,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace: Duration,
    /// For jobs that set no max runtime.
    pub default_max_runtime: Duration,
    /// How fast past borrowing is forgotten in the fair-share order.
    pub fair_share_half_life: Duration,
    /// The API's limits: max runtime cap, rate limits, pending cap,
    /// streams per caller, token lifetimes.
    pub api: finpool_api::ApiConfig,
    /// Extra token keys (a JWKS file) and the issuer their tokens carry.
    pub jwks: Option<(PathBuf, String)>,
    /// Whether the scheduling loop runs (benchmarks of the API alone turn
    /// it off; jobs then stay pending).
    pub schedule: bool,
    /// Base-model locality: on or off, the wait factor, node bandwidth.
    pub locality: finpool_scheduler::LocalityConfig,
    /// How jobs are isolated from the server and each other.
    pub sandbox: SandboxConfig,
    /// Where `/metrics` (and the probes) are served, apart from the API
    /// port: per-tenant figures are for the pool's operators.
    pub metrics_addr: Option<SocketAddr>,
    /// How often usage is metered (see `api.billing` for the intervals).
    pub meter_every: Duration,
}

impl StandaloneConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            pool_file: None,
            database_url: None,
            stop_grace: Duration::from_secs(10),
            default_max_runtime: Duration::from_secs(24 * 3600),
            fair_share_half_life: Duration::from_secs(
                finpool_scheduler::tenants::DEFAULT_FAIR_SHARE_HALF_LIFE_S,
            ),
            api: finpool_api::ApiConfig::default(),
            jwks: None,
            schedule: true,
            locality: finpool_scheduler::LocalityConfig::default(),
            sandbox: SandboxConfig::default(),
            metrics_addr: None,
            meter_every: Duration::from_secs(300),
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        match &self.database_url {
            Some(url) => StoreConfig::from_url(url),
            None => StoreConfig::Sqlite(self.data_dir.join("finpool.db")),
        }
    }

    /// The executor's settings, with the sandbox the host was found to
    /// offer (`None`: jobs run unsandboxed).
    pub fn executor_config(&self, sandbox: Option<Arc<Sandbox>>) -> ExecutorConfig {
        ExecutorConfig {
            jobs_dir: self.data_dir.join("jobs"),
            model_cache_dir: self.data_dir.join("models"),
            stop_grace: self.stop_grace,
            default_max_runtime: self.default_max_runtime,
            sandbox,
        }
    }
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Key(#[from] finpool_api::auth::AuthError),
    #[error("reading the JWKS file {path}: {source}")]
    Jwks {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Inventory(#[from] PoolFileError),
    #[error("inventory: {0}")]
    Snapshot(#[from] finpool_scheduler::SnapshotError),
    #[error("scheduler: {0}")]
    Scheduler(finpool_ports::PortError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started pool.
pub struct RunningPool {
    /// Where the API listens (with the real port when 0 was asked).
    pub addr: SocketAddr,
    pub inventory: Arc<Inventory>,
    pub origin: Origin,
    pub store: Store,
    /// What start-up reconciliation did.
    pub reconciled: Reconciled,
    /// How jobs are sandboxed, in words.
    pub sandbox: String,
    /// Where `/metrics` is served, if anywhere (the real port when 0 was asked).
    pub metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    driver: JoinHandle<()>,
    executor: Executor,
    /// The data dir's lock, released when the pool is dropped.
    _lock: DataDirLock,
}

/// Starts a pool: opens the store, settles jobs a previous server left
/// running, then starts the executor, the scheduling loop and the API.
pub async fn start(mut config: StandaloneConfig) -> Result<RunningPool, StartError> {
    let lock = datadir::open(&config.data_dir, config.database_url.is_none())?;
    // The port opens before the key is written: a client that sees the key
    // (`finpool up & finpool token issue …`) finds the port open, and its
    // connection waits in the backlog until the API serves.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let sandbox = Sandbox::prepare(&config.sandbox, &config.data_dir)?.map(Arc::new);
    let sandbox_status = match &sandbox {
        Some(s) => s.describe(),
        None => format!(
            "off (--sandbox {}): jobs run as the server's user",
            config.sandbox.mode
        ),
    };
    tracing::info!(sandbox = %sandbox_status, "job sandbox");
    // The lifetimes first: `token issue` reads them once it sees the key.
    config.api.token_lifetimes.save(&config.data_dir)?;
    let key = SigningKey::load_or_create(&config.data_dir)?;
    let audit_key = finpool_api::audit::load_or_create_key(&config.data_dir)?;
    let fd_streams = stream_budget();
    if fd_streams < config.api.streams_total {
        tracing::info!(
            streams = fd_streams,
            "open streams capped at half the file descriptors this process may hold"
        );
        config.api.streams_total = fd_streams;
    }
    let mut verifier = key.verifier();
    if let Some((path, issuer)) = &config.jwks {
        let text = std::fs::read_to_string(path).map_err(|source| StartError::Jwks {
            path: path.clone(),
            source,
        })?;
        let keys = verifier.add_jwks(&text, issuer)?;
        tracing::info!(keys, path = %path.display(), issuer, "JWKS keys loaded");
    }
    let store = Store::open(&config.store_config()).await?;
    let (inventory, origin) = inventory::discover(config.pool_file.as_deref())?;
    let inventory = Arc::new(inventory);
    // Fail early on an inventory the scheduler cannot take.
    finpool_scheduler::Snapshot {
        classes: inventory.classes.clone(),
        nodes: inventory.nodes.clone().into(),
        ..Default::default()
    }
    .build()?;
    tracing::info!(nodes = inventory.nodes.len(), gpus = inventory.gpu_count(), %origin,
        database = store.backend_kind(), "pool inventory loaded");
    let reconciled = reconcile::after_restart(&store, sandbox.as_deref()).await?;

    let executor_config = config.executor_config(sandbox);
    let executor = Executor::spawn(store.clone(), executor_config.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let metrics = Metrics::new();
    let driver = driver::driver(
        store.clone(),
        inventory.clone(),
        executor.clone(),
        Policy::finpool(),
        &DriverConfig {
            default_max_runtime: config.default_max_runtime,
            fair_share_half_life: config.fair_share_half_life,
            stop_grace: config.stop_grace,
            locality: config.locality,
        },
    )
    .await
    .map_err(StartError::Scheduler)?
    .with_metrics(metrics.clone());
    let driver = if config.schedule {
        tokio::spawn(driver::run(driver, shutdown_rx.clone()))
    } else {
        tracing::warn!("the scheduling loop is off: jobs stay pending");
        tokio::spawn(async {})
    };

    let state = ApiState::new(
        store.clone(),
        Arc::new(inventory.clone()),
        Arc::new(FileLogs {
            store: store.clone(),
            config: executor_config,
        }),
        config.api.clone(),
    )
    .with_metrics(metrics.clone())
    .with_audit_key(audit_key);
    let metrics_addr = match config.metrics_addr {
        Some(wanted) => {
            let listener =
                TcpListener::bind(wanted)
                    .await
                    .map_err(|source| StartError::Listen {
                        addr: wanted,
                        source,
                    })?;
            let bound = listener.local_addr().map_err(|source| StartError::Listen {
                addr: wanted,
                source,
            })?;
            let readiness = Readiness::default();
            readiness.set(true);
            let mut stop = shutdown_rx.clone();
            tokio::spawn(finpool_telemetry::serve(
                listener,
                metrics.clone(),
                readiness,
                async move {
                    let _ = stop.changed().await;
                },
            ));
            Some(bound)
        }
        None => None,
    };
    tokio::spawn(meter_loop(
        store.clone(),
        inventory.clone(),
        config.api.billing,
        config.meter_every,
        shutdown_rx.clone(),
    ));
    let mut stop = shutdown_rx;
    let server = tokio::spawn(finpool_api::server::serve(
        listener,
        state,
        verifier,
        async move {
            let _ = stop.changed().await;
        },
    ));
    tracing::info!(%addr, "finpool API listening");
    Ok(RunningPool {
        addr,
        inventory,
        origin,
        store,
        reconciled,
        sandbox: sandbox_status,
        metrics_addr,
        shutdown,
        server,
        driver,
        executor,
        _lock: lock,
    })
}

impl RunningPool {
    /// Stops the API and the scheduler, then stops running jobs (each
    /// recorded per its restart policy).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.driver.await;
        self.executor.shutdown().await;
        match self.server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "API server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "API server task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// Meters usage every `every` (and once at start) until shutdown: each
/// pass recomputes the intervals from the store's progress mark to the last
/// settled one and inserts their events once (see `finpool_store::billing`).
async fn meter_loop(
    store: Store,
    inventory: Arc<finpool_domain::Inventory>,
    config: finpool_billing::BillingConfig,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let capacity = finpool_store::billing::capacity_of(&inventory);
    loop {
        match store
            .meter(&config, &capacity, finpool_domain::Timestamp::now().0)
            .await
        {
            Ok(r) if r.inserted > 0 => tracing::info!(
                to = %finpool_billing::rfc3339(r.to), events = r.events, inserted = r.inserted,
                "usage metered"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "metering pass failed; retrying next pass"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How many streams the process's file descriptors allow: the soft limit
/// is raised to the hard one (as servers do), and streams may take half,
/// leaving the rest to other requests, the store and jobs' logs.
fn stream_budget() -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return u32::MAX;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return u32::MAX;
    }
    u32::try_from(limit.rlim_cur / 2)
        .unwrap_or(u32::MAX)
        .max(16)
}
