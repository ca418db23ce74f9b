//! Health: the gRPC health service (`grpc.health.v1.Health`, from
//! tonic-health) and the HTTP probes `GET /healthz` and `GET /readyz`, all
//! anonymous.
//!
//! Alive means the process answers. Ready means the store answers a
//! trivial query: every finpool.v1 call needs it. The gRPC statuses (the
//! whole server, `""`, and each finpool.v1 service) follow a probe run
//! every [`PROBE_EVERY`] and on each `/readyz`; at shutdown they turn
//! NOT_SERVING.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use finpool_store::Store;
use http::{HeaderValue, StatusCode, header};
use tokio::sync::Mutex;
use tonic::Status;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// Liveness: 200 `ok` while the process answers.
pub const HEALTHZ: &str = "/healthz";
/// Readiness: 200 `ready` while the store answers, else 503.
pub const READYZ: &str = "/readyz";

/// How often the store is probed for the gRPC statuses.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A probe slower than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A probe this recent is reused: `/readyz` is anonymous, so a flood of it
/// must not become a flood of database queries.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// The server's health, shared by the gRPC service, the HTTP probes and the
/// background probe.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    reporter: HealthReporter,
    store: Store,
    /// `""` and the finpool.v1 services.
    services: Vec<String>,
    /// Held while probing or changing statuses, so that they change in
    /// order and never after shutdown.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last: Option<(Instant, Result<(), NotReady>)>,
    stopping: bool,
}

/// Why the server is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the store does not answer: {0}")]
    Store(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("services", &self.inner.services)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// A health that reports `services` (and `""`) SERVING: the store was
    /// just opened. Returns the gRPC service too.
    pub async fn new(store: Store, services: &[&str]) -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        let mut all = vec![String::new()];
        all.extend(services.iter().map(|s| (*s).to_owned()));
        for service in &all {
            reporter
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let health = Self {
            inner: Arc::new(Inner {
                reporter,
                store,
                services: all,
                state: Mutex::new(State::default()),
            }),
        };
        (health, server)
    }

    /// Whether the store answers now (or did within [`PROBE_REUSE`]); the
    /// gRPC statuses follow.
    pub async fn probe(&self) -> Result<(), NotReady> {
        let mut state = self.inner.state.lock().await;
        if state.stopping {
            return Err(NotReady::ShuttingDown);
        }
        if let Some((at, result)) = &state.last
            && at.elapsed() < PROBE_REUSE
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(PROBE_TIMEOUT, self.inner.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotReady::Store(e.to_string())),
            Err(_) => Err(NotReady::Store(format!(
                "no answer within {} s",
                PROBE_TIMEOUT.as_secs_f64()
            ))),
        };
        let was_ready = state.last.as_ref().is_none_or(|(_, r)| r.is_ok());
        match (&result, was_ready) {
            (Err(e), true) => {
                tracing::warn!(error = %e, "not ready");
                self.set_all(ServingStatus::NotServing).await;
            }
            (Ok(()), false) => {
                tracing::info!("ready: the store answers again");
                self.set_all(ServingStatus::Serving).await;
            }
            _ => {}
        }
        state.last = Some((Instant::now(), result.clone()));
        result
    }

    /// Probes every [`PROBE_EVERY`], so that gRPC health learns of an
    /// outage without a `/readyz` caller. Runs until aborted.
    pub fn spawn_prober(&self) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PROBE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let _ = health.probe().await;
            }
        })
    }

    /// At shutdown: every status turns NOT_SERVING, and then is dropped, which
    /// ends open Watch streams (after they saw NOT_SERVING); otherwise the
    /// server's graceful shutdown would wait on them forever.
    pub async fn shutting_down(&self) {
        let mut state = self.inner.state.lock().await;
        state.stopping = true;
        self.set_all(ServingStatus::NotServing).await;
        let mut reporter = self.inner.reporter.clone();
        for service in &self.inner.services {
            reporter.clear_service_status(service).await;
        }
        tracing::info!("health: NOT_SERVING, shutting down");
    }

    async fn set_all(&self, status: ServingStatus) {
        for service in &self.inner.services {
            self.inner
                .reporter
                .set_service_status(service, status)
                .await;
        }
    }

    /// The HTTP probes, for the router.
    pub fn routes(&self) -> axum::Router {
        let health = self.clone();
        axum::Router::new()
            .route(HEALTHZ, axum::routing::get(|| async { text("ok") }))
            .route(
                READYZ,
                axum::routing::get(move || {
                    let health = health.clone();
                    async move {
                        let detail = match health.probe().await {
                            Ok(()) => return text("ready"),
                            // The store's own error is logged, not shown
                            // to anonymous callers.
                            Err(NotReady::Store(_)) => {
                                "not ready: the database is unavailable; retry shortly"
                            }
                            Err(NotReady::ShuttingDown) => "not ready: the server is shutting down",
                        };
                        crate::rest::problem(&Status::unavailable(detail)).into_response()
                    }
                }),
            )
    }
}

fn text(body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    fn ask(service: &str) -> tonic::Request<HealthCheckRequest> {
        tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    fn status(r: &HealthCheckResponse) -> Wire {
        Wire::try_from(r.status).unwrap()
    }

    #[tokio::test]
    async fn serving_until_shutdown_which_ends_watches_with_not_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&finpool_store::StoreConfig::Sqlite(dir.path().join("h.db")))
            .await
            .unwrap();
        let (health, _) = Health::new(store, &["finpool.v1.JobService"]).await;
        let service = HealthService::from_health_reporter(health.inner.reporter.clone());
        for name in ["", "finpool.v1.JobService"] {
            let r = service.check(ask(name)).await.unwrap().into_inner();
            assert_eq!(status(&r), Wire::Serving, "{name:?}");
        }
        assert_eq!(
            service.check(ask("no.Such")).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(health.probe().await, Ok(()));

        let mut watch = service.watch(ask("")).await.unwrap().into_inner();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(status(&first), Wire::Serving);
        health.shutting_down().await;
        let last = watch.next().await.unwrap().unwrap();
        assert_eq!(status(&last), Wire::NotServing);
        // The stream ends, so a graceful shutdown does not wait on it.
        let end = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
        assert!(matches!(end, Ok(None)), "the watch did not end");
        assert_eq!(health.probe().await, Err(NotReady::ShuttingDown));
    }
}
