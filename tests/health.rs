//! Health through a real server, as outside tools see it: gRPC health
//! (grpc.health.v1) and the HTTP probes without a token, and a clean
//! NOT_SERVING at shutdown.

mod common;

use std::time::Duration;

use common::*;
use finpool_api::Role;
use reqwest::Method;
use serde_json::Value;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn ask(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_without_a_token_on_both_doors() {
    let dir = tempfile::tempdir().unwrap();
    // A tight rate limit: the probes must not be subject to it.
    let server = Server::start_with(dir.path(), &["--rate-limit", "1", "--rate-burst", "1"]);
    let mut health = HealthClient::new(channel(&server).await);
    for service in [
        "",
        "finpool.v1.JobService",
        "finpool.v1.TenantService",
        "finpool.v1.ModelService",
        "finpool.v1.NodeService",
        "finpool.v1.UsageService",
    ] {
        let r = health.check(ask(service)).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health.check(ask("no.such.Service")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut watch = health.watch(ask("")).await.unwrap().into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // HTTP: anonymous, and a token (even a tenant's over its limit) changes
    // nothing.
    let tenant = server.token(Role::Tenant, Some("alpha"));
    for _ in 0..10 {
        for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
            for token in [None, Some(tenant.as_str())] {
                let r = server.rest(Method::GET, path, token).send().await.unwrap();
                assert_eq!(r.status(), 200, "{path}");
                assert!(
                    r.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .starts_with("text/plain"),
                    "{path}"
                );
                assert_eq!(r.text().await.unwrap(), body, "{path}");
            }
        }
    }
    // The probes are in the served OpenAPI document, anonymous.
    let doc: Value = server
        .rest(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(doc["paths"][path]["get"]["security"], serde_json::json!([]));
    }
    assert!(doc["paths"]["/readyz"]["get"]["responses"]["503"].is_object());
}

/// SIGTERM: a health watcher sees NOT_SERVING, its stream ends, and the
/// server exits instead of waiting on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_health_not_serving_and_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let mut health = HealthClient::new(channel(&server).await);
    let mut watch = health.watch(ask("")).await.unwrap().into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let pid = server.child.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        while let Some(Ok(r)) = watch.next().await {
            seen.push(r.status);
        }
        seen
    })
    .await
    .expect("the watch stream did not end at shutdown");
    assert_eq!(seen, [ServingStatus::NotServing as i32]);
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}\n{}", server.logs());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server did not exit:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
