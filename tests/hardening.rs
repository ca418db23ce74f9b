//! The API rules outside testing asked for, through a real server, on both
//! doors (gRPC and REST) and both backends (SQLite, and PostgreSQL when
//! `FINPOOL_TEST_DATABASE_URL` is set): stream caps, authentication before
//! the body, anonymous rate limits, body rules, free text, token
//! lifetimes, tenant suspension and per-subject revocation.

mod common;

use std::time::Duration;

use common::*;
use finpool_api::Role;
use finpool_proto::v1 as pb;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

fn spec(name: &str) -> Value {
    json!({"name": name, "command": ["true"], "resources": {"gpu": {"whole_gpus": 1}}})
}

async fn problem(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Streams per caller: the cap on both doors, other tenants unaffected,
/// slots back on close.
async fn stream_caps(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.start(
        dir.path(),
        &["--streams-per-caller", "3", "--streams-total", "5"],
    );
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    create_tenant(&mut op, "beta", 1, 2).await;
    create_tenant(&mut op, "gamma", 1, 2).await;
    let mut alpha = server.tenant("alpha").await;
    let token = server.token(Role::Tenant, Some("alpha"));
    let job = submit(&mut alpha, shell_job("long", whole(1), "sleep 60")).await;

    // Three open: two watches and a log follow.
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            alpha
                .jobs
                .watch_jobs(pb::WatchJobsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let follow = follow_logs(&mut alpha, &job.id).await;
    // The fourth is refused on both doors.
    let err = alpha
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("streams"), "{}", err.message());
    let r = server
        .rest(Method::GET, "/v1/job-events", Some(&token))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["status"], 429);
    // Another tenant is not affected, up to the server's total.
    let mut beta = server.tenant("beta").await;
    let mut beta_watches = Vec::new();
    for _ in 0..2 {
        beta_watches.push(
            beta.jobs
                .watch_jobs(pb::WatchJobsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let mut gamma = server.tenant("gamma").await;
    let err = gamma
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("server"), "{}", err.message());
    drop(beta_watches);
    // Closing gives the slots back: many open-and-close rounds later, the
    // cap still admits three.
    drop(open);
    drop(follow);
    for round in 0..30 {
        let mut admitted = false;
        for _ in 0..50 {
            match alpha.jobs.watch_jobs(pb::WatchJobsRequest::default()).await {
                Ok(s) => {
                    drop(s);
                    admitted = true;
                    break;
                }
                Err(e) if e.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(admitted, "round {round}: a closed stream kept its slot");
    }
    // REST streams count too, and a closed REST stream frees its slot.
    for _ in 0..5 {
        let r = server
            .rest(Method::GET, "/v1/job-events", Some(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        drop(r);
    }
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "slots not freed");
        match alpha.jobs.watch_jobs(pb::WatchJobsRequest::default()).await {
            Ok(s) => held.push(s.into_inner()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    drop(server);
    backend.cleanup().await;
}

/// The body is read only for an admitted caller; body rules (415,
/// duplicate keys, 413 saying 413).
async fn bodies(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.start(dir.path(), &[]);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let token = server.token(Role::Tenant, Some("alpha"));
    let mut alpha = server.client(&token).await;

    // Anonymous, declaring a body too large and of the wrong type, and
    // sending none of it: answered 401 at once, since authentication comes
    // first and the body is never read.
    let head = raw_request(&server, None, "text/plain", 2 << 20).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // gRPC: an oversized message from an anonymous caller is refused as
    // unauthenticated, before it is decoded.
    let anonymous = finpool_cli::client::Clients::connect(&server.addr, None)
        .await
        .unwrap();
    let mut s = shell_job("big", whole(1), "true");
    s.labels.insert("blob".into(), "x".repeat(2 << 20));
    let err = anonymous
        .clone()
        .jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(s) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // 413 says 413: for a declared length (answered before the body
    // is read) and for a streamed body without one.
    let head = raw_request(&server, Some(&token), "application/json", 2 << 20).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("\"status\":413"), "{head}");
    // Just over the limit, so the rest fits in the socket's buffers and the
    // client reads the answer rather than a closed pipe.
    let chunks = futures::stream::iter(
        (0..17).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 << 10]))),
    );
    let r = server
        .rest(Method::POST, "/v1/jobs", Some(&token))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(
        (status, body["status"].as_i64()),
        (413, Some(413)),
        "{body}"
    );

    // 415 unless the body is JSON; a charset or a +json type is fine.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let mut r = server
            .rest(Method::POST, "/v1/jobs", Some(&token))
            .body(spec("typed").to_string());
        if !content_type.is_empty() {
            r = r.header("content-type", content_type);
        }
        let (status, body) = problem(r.send().await.unwrap()).await;
        assert_eq!(status, 415, "{content_type}: {body}");
        assert_eq!(body["status"], 415);
    }
    for (i, content_type) in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ]
    .iter()
    .enumerate()
    {
        let r = server
            .rest(Method::POST, "/v1/jobs", Some(&token))
            .header("content-type", *content_type)
            .body(spec(&format!("typed-{i}")).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{content_type}");
    }

    // Duplicate keys, at the top and nested, are refused by path.
    for (body, field) in [
        (
            r#"{"name": "a", "name": "b", "command": ["true"], "resources": {"gpu": {"whole_gpus": 1}}}"#,
            "name",
        ),
        (
            r#"{"name": "a", "command": ["true"], "resources": {"gpu": {"whole_gpus": 1, "whole_gpus": 2}}}"#,
            "resources.gpu.whole_gpus",
        ),
        (
            r#"{"name": "a", "command": ["true"], "resources": {"gpu": {"whole_gpus": 1}}, "labels": {"k": "1", "k": "2"}}"#,
            "labels.k",
        ),
    ] {
        let r = server
            .rest(Method::POST, "/v1/jobs", Some(&token))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem(r).await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    // Only the two typed jobs were stored.
    assert_eq!(list_all(&mut alpha).await.len(), 2);
    drop(server);
    backend.cleanup().await;
}

/// Sends a POST /v1/jobs head declaring `length` body bytes, and none of
/// them; returns what the server answers (status line, headers, body).
async fn raw_request(
    server: &Server,
    token: Option<&str>,
    content_type: &str,
    length: usize,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: {content_type}\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 16 << 10];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// Free text is bounded and printable on both doors and both backends,
/// and nothing is stored when it is refused.
async fn free_text(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.start(dir.path(), &[]);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let token = server.token(Role::Tenant, Some("alpha"));
    let mut alpha = server.client(&token).await;
    let job = submit(&mut alpha, shell_job("target", whole(1), "sleep 30")).await;
    let history = |j: &pb::Job| j.history.len();
    let before = history(
        &alpha
            .jobs
            .get_job(pb::GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner(),
    );
    for reason in [
        "x".repeat(100_000),
        "nul\0byte".to_owned(),
        "\x1b[2Jwiped".to_owned(),
        "bidi \u{202E}txt".to_owned(),
    ] {
        let err = alpha
            .jobs
            .cancel_job(pb::CancelJobRequest {
                id: job.id.clone(),
                reason: reason.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("reason: "), "{}", err.message());
        let r = server
            .rest(
                Method::POST,
                &format!("/v1/jobs/{}/cancel", job.id),
                Some(&token),
            )
            .json(&json!({ "reason": reason }))
            .send()
            .await
            .unwrap();
        let (status, body) = problem(r).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["field"], "reason");
    }
    // Display names too.
    let r = server
        .rest(
            Method::POST,
            "/v1/tenants",
            Some(&server.token(Role::Operator, None)),
        )
        .json(&json!({"id": "gamma", "display_name": "Gamma\x1b]0;owned\x07"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("display_name"))
    );
    let err = op
        .tenants
        .create_tenant(pb::CreateTenantRequest {
            id: "gamma".into(),
            display_name: "Gamma\u{1b}]0;owned\u{7}".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("display_name: "),
        "{}",
        err.message()
    );
    let job = alpha
        .jobs
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    // The job ran on (it may have started meanwhile): no refused reason
    // reached its history, and it was not cancelled.
    assert!(history(&job) >= before);
    assert!(
        !job.history
            .iter()
            .any(|t| t.to == pb::JobState::Cancelled as i32 || t.reason.contains("cancelled")),
        "{:?}",
        job.history
    );
    // A printable reason within bounds is kept.
    alpha
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: job.id.clone(),
            reason: "desk closed — 收盘".into(),
        })
        .await
        .unwrap();
    let id = job.id.clone();
    wait_for(&mut alpha, Duration::from_secs(30), "the cancel", |jobs| {
        jobs.iter().any(|j| j.id == id && is_terminal(j.state))
    })
    .await;
    let done = alpha
        .jobs
        .get_job(pb::GetJobRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert!(
        done.history.iter().any(|t| t.reason.contains("收盘")),
        "{:?}",
        done.history
    );
    drop(server);
    backend.cleanup().await;
}

fn sign(dir: &std::path::Path, claims: &Value) -> String {
    let key = finpool_api::SigningKey::load(dir).unwrap();
    let pkcs8 = std::fs::read(dir.join(finpool_api::auth::KEY_FILE)).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&pkcs8),
    )
    .unwrap()
}

async fn rest_status(server: &Server, token: &str) -> u16 {
    server
        .rest(Method::GET, "/v1/jobs", Some(token))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn grpc_code(server: &Server, token: &str) -> Code {
    match server
        .client(token)
        .await
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
    {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

/// A watch on every job the caller may see.
async fn open_watch(c: &mut finpool_cli::client::Clients) -> tonic::Streaming<pb::JobEvent> {
    c.jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// A job's log, followed.
async fn follow_logs(
    c: &mut finpool_cli::client::Clients,
    id: &str,
) -> tonic::Streaming<pb::LogChunk> {
    c.jobs
        .stream_logs(pb::StreamLogsRequest {
            id: id.into(),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Reads a stream until it ends with an error (events before it are
/// skipped); panics if it runs on for 10 s.
async fn stream_end<T>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Err(_) => panic!("the stream outlived the caller's access"),
            Ok(Err(status)) => return status,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
        }
    }
}

/// Open streams end when the server shuts down, so that a SIGTERM is not
/// held up by idle clients.
async fn shutdown_with_open_streams(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = backend.start(dir.path(), &[]);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let mut alpha = server.tenant("alpha").await;
    let job = submit(&mut alpha, shell_job("long", whole(1), "sleep 60")).await;
    let mut watch = open_watch(&mut alpha).await;
    let mut follow = follow_logs(&mut alpha, &job.id).await;
    let rest_watch = server
        .rest(
            Method::GET,
            "/v1/job-events",
            Some(&server.token(Role::Tenant, Some("alpha"))),
        )
        .send()
        .await
        .unwrap();
    let pid = server.child.id() as i32;
    // SAFETY: signals the server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    let exited = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    });
    let (status, server) = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("finpool up still running 20 s after SIGTERM with streams open")
        .unwrap();
    assert!(status.success(), "{status:?}");
    eprintln!(
        "exited {:?} after SIGTERM with 3 streams open",
        start.elapsed()
    );
    for stream_end in [stream_end(&mut watch).await, stream_end(&mut follow).await] {
        assert!(
            matches!(
                stream_end.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown
            ),
            "{stream_end:?}"
        );
    }
    drop(rest_watch);
    drop(server);
    backend.cleanup().await;
}

/// The job, as an operator sees it, checked to be still pending.
async fn still_pending(op: &mut finpool_cli::client::Clients, id: &str) -> pb::Job {
    let j = op
        .jobs
        .get_job(pb::GetJobRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        j.state,
        pb::JobState::Pending as i32,
        "admitted while suspended"
    );
    j
}

/// Token lifetimes, suspension and per-subject revocation.
async fn revocation(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.start(dir.path(), &["--max-tenant-token-ttl", "2h"]);
    let mut op = server.operator().await;
    // alpha may hold one card: its second job waits on quota (not on a
    // race with the scheduler) until the suspension holds it instead.
    create_tenant(&mut op, "alpha", 1, 1).await;
    create_tenant(&mut op, "beta", 1, 2).await;
    let now = now_seconds();
    let claims = |sub: &str, iat: u64, exp: u64| {
        json!({"iss": finpool_api::auth::ISSUER, "aud": finpool_api::auth::AUDIENCE,
            "sub": sub, "role": "tenant", "tenant": "alpha", "iat": iat, "exp": exp})
    };

    // Lifetimes: within the server's maximum, accepted; beyond, refused on
    // both doors, whatever the signature.
    let fine = sign(dir.path(), &claims("desk-1", now, now + 3600));
    let forever = sign(dir.path(), &claims("desk-1", now, u64::MAX / 2));
    let three_hours = sign(dir.path(), &claims("desk-1", now, now + 3 * 3600));
    assert_eq!(rest_status(&server, &fine).await, 200);
    assert_eq!(grpc_code(&server, &fine).await, Code::Ok);
    for t in [&forever, &three_hours] {
        assert_eq!(rest_status(&server, t).await, 401);
        assert_eq!(grpc_code(&server, t).await, Code::Unauthenticated);
    }
    // `token issue` is bounded by the same maximum.
    let issue = |ttl: &str| {
        std::process::Command::new(finpool_bin())
            .args(["token", "issue", "--role", "tenant", "--tenant", "alpha"])
            .args(["--ttl", ttl, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = issue("100y");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ttl") && stderr.contains("2h"),
        "{stderr}"
    );
    assert!(issue("1h").status.success());

    // Suspension: alpha's tokens are refused and its jobs wait; beta is
    // untouched; after resume both work again.
    let alpha_token = server.token(Role::Tenant, Some("alpha"));
    let mut alpha = server.client(&alpha_token).await;
    let running = submit(&mut alpha, shell_job("before", whole(1), "sleep 30")).await;
    wait_for(&mut alpha, Duration::from_secs(30), "a start", |jobs| {
        jobs.iter()
            .any(|j| j.id == running.id && j.state == pb::JobState::Running as i32)
    })
    .await;
    let waiting = submit(&mut alpha, shell_job("after", whole(1), "true")).await;
    // A watch opened before the suspension must not outlive it.
    let mut watch = open_watch(&mut alpha).await;
    let suspended = op
        .tenants
        .suspend_tenant(pb::SuspendTenantRequest {
            id: "alpha".into(),
            reason: "unpaid invoice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(suspended.suspended);
    assert!(suspended.suspended_reason.contains("unpaid invoice"));
    assert_eq!(rest_status(&server, &alpha_token).await, 401);
    let err = alpha
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("suspended"), "{}", err.message());
    let beta_token = server.token(Role::Tenant, Some("beta"));
    assert_eq!(rest_status(&server, &beta_token).await, 200);
    let ended = stream_end(&mut watch).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("suspended"), "{}", ended.message());
    // Its waiting job is held with a typed reason (the operator sees it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let j = still_pending(&mut op, &waiting.id).await;
        if j.reason_code == "TenantSuspended" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reason: {}", j.reason);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cancel the runner so the waiting job has room once resumed.
    op.jobs
        .cancel_job(pb::CancelJobRequest {
            id: running.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_pending(&mut op, &waiting.id).await;
    // Resume over REST.
    let r = server
        .rest(
            Method::POST,
            "/v1/tenants/alpha/resume",
            Some(&server.token(Role::Operator, None)),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["suspended"], false);
    assert_eq!(rest_status(&server, &alpha_token).await, 200);
    wait_for(
        &mut alpha,
        Duration::from_secs(30),
        "the held job",
        |jobs| {
            jobs.iter()
                .any(|j| j.id == waiting.id && is_terminal(j.state))
        },
    )
    .await;

    // Per-subject revocation: desk-1's earlier tokens are refused (REST
    // revoke, checked on both doors); a token issued afterwards works;
    // another subject is untouched.
    let other = sign(dir.path(), &claims("desk-2", now, now + 3600));
    let mut desk_watch = server
        .client(&fine)
        .await
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let r = server
        .rest(
            Method::POST,
            "/v1/token-revocations",
            Some(&server.token(Role::Operator, None)),
        )
        .json(&json!({"subject": "desk-1"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rest_status(&server, &fine).await, 401);
    assert_eq!(grpc_code(&server, &fine).await, Code::Unauthenticated);
    assert_eq!(rest_status(&server, &other).await, 200);
    // Its open watch ends too.
    let ended = stream_end(&mut desk_watch).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{}", ended.message());
    // The bar is the next whole second; a token issued after it works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = now_seconds();
    let fresh = sign(dir.path(), &claims("desk-1", later, later + 600));
    assert_eq!(rest_status(&server, &fresh).await, 200);
    assert_eq!(grpc_code(&server, &fresh).await, Code::Ok);
    // gRPC revoke; and revocations survive a restart (they are stored).
    op.tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            subject: "desk-2".into(),
            not_before: None,
        })
        .await
        .unwrap();
    assert_eq!(grpc_code(&server, &other).await, Code::Unauthenticated);
    drop(op);
    drop(alpha);
    let data_dir = server.data_dir.clone();
    server.kill();
    let server = backend.start(&data_dir, &["--max-tenant-token-ttl", "2h"]);
    assert_eq!(rest_status(&server, &other).await, 401);
    assert_eq!(rest_status(&server, &fine).await, 401);
    assert_eq!(rest_status(&server, &fresh).await, 200);
    drop(server);
    backend.cleanup().await;
}

/// Callers without a valid token are limited per address; a tenant with
/// one is not slowed by them.
async fn anonymous_limits(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.start(dir.path(), &["--anonymous-rate-limit", "5"]);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let token = server.token(Role::Tenant, Some("alpha"));
    let mut rest_limited = 0;
    let mut grpc_limited = 0;
    let anonymous = finpool_cli::client::Clients::connect(&server.addr, None)
        .await
        .unwrap();
    for i in 0..30 {
        let bad = if i % 2 == 0 {
            None
        } else {
            Some("not-a-token")
        };
        let r = server
            .rest(Method::GET, "/v1/jobs", bad)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => {}
            429 => rest_limited += 1,
            other => panic!("anonymous REST got {other}"),
        }
        match anonymous
            .clone()
            .jobs
            .list_jobs(pb::ListJobsRequest::default())
            .await
        {
            Err(e) if e.code() == Code::Unauthenticated => {}
            Err(e) if e.code() == Code::ResourceExhausted => grpc_limited += 1,
            other => panic!("anonymous gRPC got {other:?}"),
        }
    }
    assert!(
        rest_limited + grpc_limited >= 30,
        "{rest_limited} + {grpc_limited} limited of 60"
    );
    // The tenant with a token is unaffected.
    for _ in 0..10 {
        assert_eq!(rest_status(&server, &token).await, 200);
        assert_eq!(grpc_code(&server, &token).await, Code::Ok);
    }
    drop(server);
    backend.cleanup().await;
}

macro_rules! on_both_backends {
    ($($name:ident => $body:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for backend in backends().await {
                eprintln!("{} on {}", stringify!($name), backend.name());
                $body(&backend).await;
            }
        }
    )*};
}

on_both_backends! {
    streams_are_capped_per_caller_and_freed_on_close => stream_caps,
    bodies_are_read_after_authentication_and_must_be_json => bodies,
    free_text_is_bounded_and_printable => free_text,
    token_lifetimes_suspension_and_revocation => revocation,
    anonymous_callers_are_limited_per_address => anonymous_limits,
    open_streams_end_at_shutdown => shutdown_with_open_streams,
}

#[test]
fn the_cli_escapes_control_characters_it_prints() {
    assert_eq!(
        finpool_cli::output::clean("job\x1b]0;pwned\x07 done"),
        "job\\u{1b}]0;pwned\\u{7} done"
    );
}
