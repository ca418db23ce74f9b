//! The API server: every service behind the auth layer, plus health and
//! reflection.

use std::future::Future;

use finpool_proto::v1::audit_service_server::AuditServiceServer;
use finpool_proto::v1::billing_service_server::BillingServiceServer;
use finpool_proto::v1::job_service_server::JobServiceServer;
use finpool_proto::v1::model_service_server::ModelServiceServer;
use finpool_proto::v1::node_service_server::NodeServiceServer;
use finpool_proto::v1::tenant_service_server::TenantServiceServer;
use finpool_proto::v1::token_service_server::TokenServiceServer;
use finpool_proto::v1::usage_service_server::UsageServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use tower::{Layer, ServiceExt};

use crate::auth::Verifier;
use crate::auth::layer::{AuthLayer, Gate};
use crate::auth::limit::RateLimiter;
use crate::health::Health;
use crate::reflection::Reflection;
use crate::service::audit::Audit;
use crate::service::billing::Billing;
use crate::service::jobs::Jobs;
use crate::service::nodes::Nodes;
use crate::service::reports::Reports;
use crate::service::tenants::{Models, Tenants, Tokens, Usage};
use crate::state::ApiState;
use finpool_proto::v1::report_service_server::ReportServiceServer;

/// The largest request accepted (a job spec's command alone may be 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The finpool.v1 services, as health reports them.
pub const SERVICES: &[&str] = &[
    finpool_proto::v1::job_service_server::SERVICE_NAME,
    finpool_proto::v1::tenant_service_server::SERVICE_NAME,
    finpool_proto::v1::token_service_server::SERVICE_NAME,
    finpool_proto::v1::model_service_server::SERVICE_NAME,
    finpool_proto::v1::node_service_server::SERVICE_NAME,
    finpool_proto::v1::usage_service_server::SERVICE_NAME,
    finpool_proto::v1::billing_service_server::SERVICE_NAME,
    finpool_proto::v1::report_service_server::SERVICE_NAME,
    finpool_proto::v1::audit_service_server::SERVICE_NAME,
];

/// Every gRPC service, unauthenticated (the caller adds [`AuthLayer`]).
pub fn grpc_routes(
    state: ApiState,
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
) -> Routes {
    let reflection = Reflection::new().expect("the embedded descriptor sets are valid");
    Routes::new(
        JobServiceServer::new(Jobs::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        TenantServiceServer::new(Tenants::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        TokenServiceServer::new(Tokens::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        ModelServiceServer::new(Models::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        NodeServiceServer::new(Nodes::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        UsageServiceServer::new(Usage::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        BillingServiceServer::new(Billing::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        ReportServiceServer::new(Reports::new(state.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        AuditServiceServer::new(Audit::new(state)).max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(health)
    .add_service(reflection.v1())
    .add_service(reflection.v1alpha())
}

/// The whole API on one port: gRPC (HTTP/2) behind authentication and
/// rate limits, and REST/JSON (HTTP/1.1 or 2), whose routes call the same
/// authenticated gRPC stack; plus the anonymous HTTP health probes.
pub async fn router(state: ApiState, verifier: Verifier) -> (axum::Router, Health) {
    let (health, health_server) = Health::new(state.store.clone(), SERVICES).await;
    let gate = Gate::new(
        verifier.with_lifetimes(state.config.token_lifetimes),
        RateLimiter::new(state.config.rate_limit),
        RateLimiter::new(state.config.anonymous_rate_limit),
        state.revocations.clone(),
    )
    .with_audit(state.audit.clone());
    let metrics = state.metrics.clone();
    let grpc = AuthLayer::new(std::sync::Arc::new(gate))
        .layer(grpc_routes(state, health_server).prepare());
    let fallback = grpc.clone();
    let router = crate::rest::router(grpc)
        .merge(health.routes())
        .fallback_service(tower::service_fn(
            move |request: http::Request<axum::body::Body>| {
                let grpc = fallback.clone();
                async move {
                    let is_grpc = request
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("application/grpc"));
                    if is_grpc {
                        let response = grpc.oneshot(request).await?;
                        Ok::<_, std::convert::Infallible>(response.map(axum::body::Body::new))
                    } else {
                        Ok(crate::rest::not_found().await)
                    }
                }
            },
        ))
        .layer(crate::metrics::CountLayer::new(metrics));
    (router, health)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    verifier: Verifier,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Revocations made before this start, then kept fresh (other replicas
    // write to the same store).
    if let Err(e) = state.revocations.reload(&state.store).await {
        tracing::warn!(error = %e, "could not load token revocations yet; retrying in the background");
    }
    let refresh = state.revocations.clone().spawn_refresh(state.store.clone());
    let _stop_refresh = AbortOnDrop(refresh);
    // The audit log's writer and checkpointer, flushed after the last call.
    let audit = state
        .audit
        .start(state.store.clone(), state.config.audit_checkpoint_every);
    let closing = state.closing.clone();
    let (router, health) = router(state, verifier).await;
    let prober = health.spawn_prober();
    let stopping = health.clone();
    let result = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            stopping.shutting_down().await;
            // Open watches and log follows end now; graceful shutdown
            // would otherwise wait for idle clients to leave.
            closing.send_replace(true);
        })
        .await;
    prober.abort();
    if let Some(audit) = audit {
        audit.shutdown().await;
    }
    result
}

/// Aborts a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
