//! The agent's loop: discover the cards at start and every `--rediscover`,
//! sample them every `--sample-interval`, and apply the labels and
//! annotations of [`crate::publish`] to the Node (server-side apply, field
//! manager `finpool-agent`), while serving `/metrics`, `/healthz` and
//! `/readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use finpool_telemetry::{Metrics, Readiness};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use time::OffsetDateTime;

use crate::devices::{Card, DeviceError, Devices, NvmlDevices};
use crate::publish::{
    CardUsage, FIELD_MANAGER, Publication, USAGE_ANNOTATION, Usage, publish, usage_from_annotation,
};

/// Where the nodes cache base models (the operator's default too).
pub const DEFAULT_MODEL_CACHE: &str = "/var/lib/finpool/models";

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Node this agent describes (`spec.nodeName`).
    pub node_name: String,
    /// The model cache; its subdirectories name the cached models.
    pub model_cache: PathBuf,
    pub sample_interval: Duration,
    /// Checked at each sample, so it is rounded up to a sample interval.
    pub rediscover_interval: Duration,
    /// No GPU is an error (exit non-zero) rather than a warning.
    pub require_gpu: bool,
}

/// Opens the node's GPUs; called again after a failure, at each
/// rediscovery, so a driver that comes up late is found.
pub type Opener = Arc<dyn Fn() -> Result<Arc<dyn Devices>, DeviceError> + Send + Sync>;

/// The real GPUs, through NVML.
pub fn nvml_opener() -> Opener {
    Arc::new(|| NvmlDevices::init().map(|d| Arc::new(d) as Arc<dyn Devices>))
}

/// Fixed devices (tests, `--print` demos).
pub fn fixed_opener(devices: Arc<dyn Devices>) -> Opener {
    Arc::new(move || Ok(devices.clone()))
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--require-gpu: {0}")]
    NoGpu(DeviceError),
    #[error("--{flag}: must be longer than zero")]
    ZeroInterval { flag: &'static str },
    #[error("--node-name: must not be empty (set it, or NODE_NAME, to the pod's spec.nodeName)")]
    NoNodeName,
    #[error("--metrics-addr {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("applying the agent's labels and annotations to Node {node}: {source}")]
    Publish { node: String, source: kube::Error },
}

impl RunError {
    /// Whether the loop stops on it; a failed apply is retried at the
    /// next sample instead.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, RunError::Publish { .. })
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The labels and annotations were applied.
    Published,
    /// No GPU: nothing to publish.
    NoGpu,
}

/// The agent's state between rounds.
pub struct Agent {
    open: Opener,
    api: Api<Node>,
    settings: Settings,
    readiness: Readiness,
    devices: Option<Arc<dyn Devices>>,
    cards: Vec<Card>,
    discovered_at: Option<Instant>,
    warned_no_gpu: bool,
}

impl Agent {
    /// Checks `settings`; nothing is read or written before the first
    /// [`Agent::tick`].
    pub fn new(
        open: Opener,
        client: kube::Client,
        settings: Settings,
        readiness: Readiness,
    ) -> Result<Self, RunError> {
        if settings.node_name.trim().is_empty() {
            return Err(RunError::NoNodeName);
        }
        // A zero period would make tokio's interval panic.
        if settings.sample_interval.is_zero() {
            return Err(RunError::ZeroInterval {
                flag: "sample-interval",
            });
        }
        if settings.rediscover_interval.is_zero() {
            return Err(RunError::ZeroInterval { flag: "rediscover" });
        }
        Ok(Self {
            open,
            api: Api::all(client),
            settings,
            readiness,
            devices: None,
            cards: Vec::new(),
            discovered_at: None,
            warned_no_gpu: false,
        })
    }

    /// One round: rediscover if due, sample, apply. A failed apply is an
    /// error the loop logs and retries ([`RunError::is_fatal`] is false).
    pub async fn tick(&mut self) -> Result<Outcome, RunError> {
        let due = self
            .discovered_at
            .is_none_or(|at| at.elapsed() >= self.settings.rediscover_interval);
        if due {
            self.discover().await?;
        }
        let Some(devices) = self.devices.clone() else {
            return Ok(Outcome::NoGpu);
        };
        if self.cards.is_empty() {
            return Ok(Outcome::NoGpu);
        }
        let usage = match blocking(&devices, |d| d.sample()).await {
            Ok(samples) => Some(Usage {
                sampled_at: OffsetDateTime::now_utc(),
                samples,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "sampling the GPUs failed: publishing no usage");
                None
            }
        };
        let entries = read_model_cache_logged(&self.settings.model_cache).await;
        let publication = publish(&self.cards, usage.as_ref(), &entries);
        apply(&self.api, &self.settings.node_name, &publication)
            .await
            .map_err(|source| RunError::Publish {
                node: self.settings.node_name.clone(),
                source,
            })?;
        if !self.readiness.is_ready() {
            tracing::info!(
                node = %self.settings.node_name,
                gpus = self.cards.len(),
                "published the node's GPUs"
            );
        }
        self.readiness.set(true);
        Ok(Outcome::Published)
    }

    /// Rounds every sample interval until a fatal error.
    pub async fn run(mut self) -> Result<(), RunError> {
        let mut ticker = tokio::time::interval(self.settings.sample_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.tick().await {
                Ok(_) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "retrying at the next sample"),
            }
        }
    }

    async fn discover(&mut self) -> Result<(), RunError> {
        self.discovered_at = Some(Instant::now());
        let devices = match self.devices.clone() {
            Some(d) => d,
            None => {
                let open = self.open.clone();
                let opened = tokio::task::spawn_blocking(move || open())
                    .await
                    .map_err(|e| DeviceError::Worker(e.to_string()))
                    .and_then(|r| r);
                match opened {
                    Ok(d) => {
                        self.devices = Some(d.clone());
                        d
                    }
                    Err(e) => return self.no_gpu(e),
                }
            }
        };
        match blocking(&devices, |d| d.discover()).await {
            Ok(cards) if cards.is_empty() => self.no_gpu(DeviceError::NoGpus),
            Ok(cards) => {
                if cards != self.cards {
                    log_cards(&cards);
                }
                self.cards = cards;
                Ok(())
            }
            // Keep publishing what was found before; nothing found yet
            // is the no-GPU case.
            Err(e) if !self.cards.is_empty() => {
                tracing::warn!(error = %e, "rediscovery failed: publishing the cards found before");
                Ok(())
            }
            Err(e) => self.no_gpu(e),
        }
    }

    /// Without a GPU the agent only serves health (ready: it decided there
    /// is nothing to publish), says why once, and tries again at each
    /// rediscovery; with `--require-gpu` it stops.
    fn no_gpu(&mut self, reason: DeviceError) -> Result<(), RunError> {
        self.devices = None;
        self.cards.clear();
        if self.settings.require_gpu {
            return Err(RunError::NoGpu(reason));
        }
        if self.warned_no_gpu {
            tracing::debug!(reason = %reason, "still no GPU");
        } else {
            tracing::warn!(
                "no GPU, nothing to publish: {reason}; serving health only, looking again every {}s",
                self.settings.rediscover_interval.as_secs()
            );
            self.warned_no_gpu = true;
        }
        self.readiness.set(true);
        Ok(())
    }
}

fn log_cards(cards: &[Card]) {
    let products: std::collections::BTreeSet<&str> =
        cards.iter().map(|c| c.product.as_str()).collect();
    let mig = cards.iter().filter(|c| c.mig.enabled).count();
    let nvlinked = cards.iter().filter(|c| !c.nvlink_peers.is_empty()).count();
    tracing::info!(
        gpus = cards.len(),
        products = ?products,
        mig_enabled = mig,
        nvlinked,
        "discovered the node's GPUs"
    );
}

/// Runs a [`Devices`] call on a blocking thread: NVML talks to the driver.
async fn blocking<T: Send + 'static>(
    devices: &Arc<dyn Devices>,
    call: fn(&dyn Devices) -> Result<T, DeviceError>,
) -> Result<T, DeviceError> {
    let devices = devices.clone();
    tokio::task::spawn_blocking(move || call(devices.as_ref()))
        .await
        .map_err(|e| DeviceError::Worker(e.to_string()))?
}

/// Applies `publication` to Node `node_name`, owning exactly its keys.
pub async fn apply(
    api: &Api<Node>,
    node_name: &str,
    publication: &Publication,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        node_name,
        &params,
        &Patch::Apply(publication.apply_patch(node_name)),
    )
    .await?;
    Ok(())
}

/// The subdirectory names of the model cache (the models it holds, and
/// whatever else; [`publish`] keeps the valid model names). A missing
/// cache is an empty one.
pub fn read_model_cache(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        // Follows symlinks: a cache may link models in from elsewhere.
        if !entry.path().is_dir() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// [`read_model_cache`] off the async threads; a cache that cannot be
/// read is published as empty, with a warning.
async fn read_model_cache_logged(dir: &Path) -> Vec<String> {
    let owned = dir.to_owned();
    match tokio::task::spawn_blocking(move || read_model_cache(&owned)).await {
        Ok(Ok(names)) => names,
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "model cache unreadable: publishing no models");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "model cache reader failed: publishing no models");
            Vec::new()
        }
    }
}

/// Runs the agent and the health/metrics endpoint on `metrics_addr` until
/// `shutdown` completes or a fatal error.
pub async fn run(
    open: Opener,
    client: kube::Client,
    settings: Settings,
    metrics_addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let readiness = Readiness::default();
    let agent = Agent::new(open, client, settings, readiness.clone())?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|source| RunError::Serve {
            addr: metrics_addr,
            source,
        })?;
    let mut server = tokio::spawn(finpool_telemetry::serve(
        listener,
        Metrics::new(),
        readiness,
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    let result = tokio::select! {
        result = agent.run() => result,
        served = &mut server => {
            // The endpoint ends only when told to: anything else is a failure.
            let source = match served {
                Ok(Err(e)) => e,
                Ok(Ok(())) => std::io::Error::other("the endpoint stopped"),
                Err(e) => std::io::Error::other(e.to_string()),
            };
            return Err(RunError::Serve { addr: metrics_addr, source });
        }
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    let _ = stop.send(true);
    let _ = server.await;
    result
}

/// `--discover-once`: one round, then exit; a failed apply is an error.
pub async fn once(
    open: Opener,
    client: kube::Client,
    settings: Settings,
) -> Result<Outcome, RunError> {
    Agent::new(open, client, settings, Readiness::default())?
        .tick()
        .await
}

/// What `--discover-once --print` shows: the cards, their use, and what
/// the agent would apply.
#[derive(Debug, Serialize)]
pub struct Report {
    pub cards: Vec<Card>,
    pub usage: Vec<CardUsage>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Discovers, samples and reads the model cache once, applying nothing;
/// every failure is an error (it is a check).
pub fn report(
    devices: &dyn Devices,
    model_cache: &Path,
    now: OffsetDateTime,
) -> Result<Report, ReportError> {
    let cards = devices.discover()?;
    if cards.is_empty() {
        return Err(DeviceError::NoGpus.into());
    }
    let usage = Usage {
        sampled_at: now,
        samples: devices.sample()?,
    };
    let entries = read_model_cache(model_cache).map_err(|source| ReportError::ModelCache {
        dir: model_cache.to_owned(),
        source,
    })?;
    let Publication {
        labels,
        annotations,
    } = publish(&cards, Some(&usage), &entries);
    let usage = annotations
        .get(USAGE_ANNOTATION)
        .map(|u| usage_from_annotation(u))
        .transpose()
        .map_err(|e| ReportError::Usage(e.to_string()))?
        .unwrap_or_default();
    Ok(Report {
        cards,
        usage,
        labels,
        annotations,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error("--model-cache {}: {source}", dir.display())]
    ModelCache {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the usage annotation does not read back: {0}")]
    Usage(String),
}
