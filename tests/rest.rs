//! REST through a real server: the standalone bad-input cases answered by
//! field with nothing stored, the OpenAPI document, and the limits (rate,
//! body size, pending jobs) on both doors.

mod common;

use common::*;
use finpool_api::Role;
use finpool_proto::v1 as pb;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

fn spec() -> Value {
    json!({"name": "ok-name", "command": ["true"], "resources": {"gpu": {"whole_gpus": 1}}})
}

/// POST /v1/jobs with `body` as `token`.
async fn post_job(server: &Server, token: &str, body: &Value) -> reqwest::Response {
    server
        .rest(Method::POST, "/v1/jobs", Some(token))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn set(mut v: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut v;
    for key in &path[..path.len() - 1] {
        at = &mut at[*key];
    }
    at[path[path.len() - 1]] = value;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let token = server.token(Role::Tenant, Some("alpha"));

    let cases: Vec<(&str, Value)> = vec![
        ("surprise", set(spec(), &["surprise"], json!(1))),
        (
            "resources.gpu.extra",
            set(spec(), &["resources", "gpu", "extra"], json!(true)),
        ),
        (
            "resources.gpu.whole_gpus",
            set(spec(), &["resources", "gpu", "whole_gpus"], json!(0)),
        ),
        (
            "resources.gpu.whole_gpus",
            set(spec(), &["resources", "gpu", "whole_gpus"], json!(-2)),
        ),
        (
            "resources.gpu.share.milli",
            set(
                spec(),
                &["resources", "gpu"],
                json!({"share": {"milli": 1001}}),
            ),
        ),
        (
            "resources.gpu_classes[0]",
            set(spec(), &["resources", "gpu_classes"], json!(["V100"])),
        ),
        ("model", set(spec(), &["model"], json!("llama-unknown"))),
        (
            "command",
            set(
                spec(),
                &["command"],
                json!(["sh", "-c", "x".repeat(64 * 1024 + 1)]),
            ),
        ),
        ("name", set(spec(), &["name"], json!("Not_A_Valid Name"))),
        (
            "resources.cpu_milli",
            set(spec(), &["resources", "cpu_milli"], json!(-1)),
        ),
        ("spec", json!("not an object")),
    ];
    for (field, body) in cases {
        let r = post_job(&server, &token, &body).await;
        assert_eq!(r.status(), 400, "{field}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().await.unwrap();
        let named = problem["field"].as_str().unwrap_or_default();
        assert_eq!(named, field, "{problem}");
        assert!(!problem["reason"].as_str().unwrap_or_default().is_empty());
    }
    // Not JSON at all.
    let r = server
        .rest(Method::POST, "/v1/jobs", Some(&token))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Bad query parameters name themselves.
    for (q, field) in [
        ("page_size=-3", "page_size"),
        ("states=nope", "states"),
        ("bogus=1", "bogus"),
    ] {
        let r = server
            .rest(Method::GET, &format!("/v1/jobs?{q}"), Some(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["field"], field, "{q}: {problem}");
    }
    // Nothing was stored, as any caller sees it.
    let mut alpha = server.tenant("alpha").await;
    assert!(list_all(&mut alpha).await.is_empty());
    let r: Value = server
        .rest(
            Method::GET,
            "/v1/jobs",
            Some(&server.token(Role::Regulator, None)),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["jobs"], json!([]));

    // And a good one goes through, with the tenant from the token.
    let r = post_job(&server, &token, &spec()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["job"]["tenant_id"], "alpha");
    assert_eq!(v["created"], true);
    // A tenant cannot name itself another tenant in the body.
    let r = post_job(&server, &token, &set(spec(), &["tenant_id"], json!("beta"))).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served_and_printed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let served: Value = server
        .rest(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["openapi"], "3.0.3");
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_finpool"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(served, printed);
    for route in finpool_api::rest::ROUTES {
        assert!(
            served["paths"][route.path][route.method.as_str().to_ascii_lowercase()].is_object()
        );
    }
    // Nodes page like every list: three nodes, two per page.
    let op = server.token(Role::Operator, None);
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page: Value = server
            .rest(
                Method::GET,
                &format!("/v1/nodes?page_size=2&page_token={token}"),
                Some(&op),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nodes = page["nodes"].as_array().unwrap();
        assert!(nodes.len() <= 2);
        names.extend(nodes.iter().map(|n| n["name"].as_str().unwrap().to_owned()));
        token = page["next_page_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(names, ["node-a", "node-b", "node-l4"]);
    // Unknown routes are problems too.
    let r = server
        .rest(Method::GET, "/v1/nope", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_limited_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--rate-limit", "5", "--rate-burst", "10"]);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    create_tenant(&mut op, "beta", 1, 2).await;
    let alpha = server.token(Role::Tenant, Some("alpha"));
    let beta = server.token(Role::Tenant, Some("beta"));
    // alpha floods over both doors; beta asks a little, alongside.
    let mut limited_rest = 0;
    let mut limited_grpc = 0;
    let mut alpha_grpc = server.client(&alpha).await;
    let mut beta_ok = 0;
    for i in 0..40 {
        let r = server
            .rest(Method::GET, "/v1/jobs", Some(&alpha))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited_rest += 1;
            let p: Value = r.json().await.unwrap();
            assert!(p["detail"].as_str().unwrap().contains("rate limit"), "{p}");
        }
        if let Err(s) = alpha_grpc
            .jobs
            .list_jobs(pb::ListJobsRequest::default())
            .await
        {
            assert_eq!(s.code(), Code::ResourceExhausted);
            limited_grpc += 1;
        }
        if i % 5 == 0 {
            let r = server
                .rest(Method::GET, "/v1/jobs", Some(&beta))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "beta must not be slowed by alpha");
            beta_ok += 1;
        }
    }
    assert!(
        limited_rest > 10 && limited_grpc > 10,
        "{limited_rest} / {limited_grpc}"
    );
    assert_eq!(beta_ok, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_full_queues_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--pending-cap", "3"]);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 1).await;
    let token = server.token(Role::Tenant, Some("alpha"));
    let mut alpha = server.client(&token).await;

    // Body over 1 MiB: 413 over REST, INVALID_ARGUMENT over gRPC.
    let big = set(spec(), &["labels"], json!({"blob": "x".repeat(2 << 20)}));
    let r = post_job(&server, &token, &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let mut s = shell_job("big", whole(1), "true");
    s.labels.insert("blob".into(), "x".repeat(2 << 20));
    let err = alpha
        .jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(s) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(list_all(&mut alpha).await.is_empty());

    // Pending cap 3: one job runs (limit 1 GPU), three wait, the next is
    // refused; a replay of a stored job is still answered.
    let running = submit(&mut alpha, shell_job("runner", whole(1), "sleep 30")).await;
    let id = running.id.clone();
    wait_for(
        &mut alpha,
        std::time::Duration::from_secs(20),
        "the runner to start",
        |jobs| {
            jobs.iter()
                .any(|j| j.id == id && j.state == pb::JobState::Running as i32)
        },
    )
    .await;
    let mut keyed = shell_job("w0", whole(1), "true");
    keyed.idempotency_key = "k-0".into();
    submit(&mut alpha, keyed.clone()).await;
    submit(&mut alpha, shell_job("w1", whole(1), "true")).await;
    let r = post_job(&server, &token, &set(spec(), &["name"], json!("w2"))).await;
    assert_eq!(r.status(), 200);
    let r = post_job(&server, &token, &set(spec(), &["name"], json!("w3"))).await;
    assert_eq!(r.status(), 429);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("cap"), "{p}");
    let err = alpha
        .jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(shell_job("w4", whole(1), "true")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let replay = alpha
        .jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(keyed) })
        .await
        .unwrap()
        .into_inner();
    assert!(!replay.created);
    assert_eq!(list_all(&mut alpha).await.len(), 4);
}
