//! Health and reflection through a real server, as outside tools see them:
//! gRPC health (grpc.health.v1) and the HTTP probes without a token, a
//! clean NOT_SERVING at shutdown, and reflection that answers a bad
//! request with an error response and keeps the stream open.

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

/// grpcio's reflection client asks for symbols one by one on one stream;
/// an unknown one must not end it. Both protocol versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_an_unknown_symbol_and_keeps_the_stream_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let channel = channel(&server).await;

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let request = |m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut answers = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(request(MessageRequest::FileContainingSymbol(
            "finpool.v1.NoSuchService".into(),
        )))
        .await
        .unwrap();
        let first = answers.next().await.unwrap().unwrap();
        let Some(MessageResponse::ErrorResponse(e)) = first.message_response else {
            panic!("expected an error response, got {first:?}");
        };
        assert_eq!(e.error_code, tonic::Code::NotFound as i32, "{e:?}");
        assert!(
            e.error_message.contains("finpool.v1.NoSuchService"),
            "{e:?}"
        );
        // The same stream answers the next request.
        tx.send(request(MessageRequest::ListServices(String::new())))
            .await
            .unwrap();
        let second = answers.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = second.message_response else {
            panic!("expected a service list, got {second:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in [
            "finpool.v1.JobService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(names.iter().any(|n| n == name), "{name}: {names:?}");
        }
        // And describes the health service.
        tx.send(request(MessageRequest::FileContainingSymbol(
            "grpc.health.v1.Health".into(),
        )))
        .await
        .unwrap();
        let third = answers.next().await.unwrap().unwrap();
        assert!(
            matches!(
                third.message_response,
                Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
            ),
            "{third:?}"
        );
        drop(tx);
        assert!(answers.next().await.is_none(), "the stream ends cleanly");
    }

    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

        let request = |m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(request(MessageRequest::FileByFilename(
            "no/such.proto".into(),
        )))
        .await
        .unwrap();
        let first = answers.next().await.unwrap().unwrap();
        let Some(MessageResponse::ErrorResponse(e)) = first.message_response else {
            panic!("expected an error response, got {first:?}");
        };
        assert_eq!(e.error_code, tonic::Code::NotFound as i32, "{e:?}");
        tx.send(request(MessageRequest::ListServices(String::new())))
            .await
            .unwrap();
        let second = answers.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = second.message_response else {
            panic!("expected a service list, got {second:?}");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "finpool.v1.JobService")
        );
    }
}
