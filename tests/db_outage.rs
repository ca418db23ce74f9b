//! PostgreSQL restarted in the middle of a submit load: while it is down
//! the API answers 503 / UNAVAILABLE and health says NOT_SERVING, it
//! recovers by itself, and no acknowledged job is lost.
//!
//! Runs when `FINPOOL_TEST_DATABASE_URL` names a server and
//! `FINPOOL_TEST_PG_CTL` is the command that stops and starts it (with
//! `stop` or `start` appended), as `.ci/run` sets both. Without them it
//! says so and passes, like the rest of the PostgreSQL half.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use finpool_api::Role;
use finpool_proto::v1 as pb;
use reqwest::Method;
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

/// Starts PostgreSQL again however the test ends.
struct Restart(String);

impl Restart {
    fn run(&self, action: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {action}", self.0))
            .status()
            .expect("running the PostgreSQL control command");
        assert!(status.success(), "`{} {action}` failed", self.0);
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("{} start", self.0))
            .status();
    }
}

/// Polls gRPC health for the whole server until it reports `want`.
async fn wait_for_health(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    want: ServingStatus,
) {
    let start = Instant::now();
    loop {
        let got = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status;
        if got == want as i32 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "health stayed {got}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_load_loses_no_acknowledged_job() {
    let (Ok(base), Ok(ctl)) = (
        std::env::var(finpool_store::testing::TEST_DATABASE_URL_VAR),
        std::env::var("FINPOOL_TEST_PG_CTL"),
    ) else {
        eprintln!(
            "skipped: set FINPOOL_TEST_DATABASE_URL and FINPOOL_TEST_PG_CTL to run it (.ci/run does)"
        );
        return;
    };
    let url = finpool_store::testing::fresh_postgres_database(&base)
        .await
        .expect("a scratch database");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--database-url", &url]);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let token = server.token(Role::Tenant, Some("alpha"));

    // The load: one submit after another, each with its own key.
    let stop = Arc::new(AtomicBool::new(false));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let load = {
        let stop = stop.clone();
        let unavailable = unavailable.clone();
        let addr = server.addr.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let client = http_client();
            let mut acked = Vec::new();
            let mut other = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({"name": format!("load-{n}"), "command": ["true"],
                    "idempotency_key": format!("load-{n}"), "resources": {"gpu": {"whole_gpus": 1}}});
                match client
                    .post(format!("{addr}/v1/jobs"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        acked.push(v["job"]["id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) if r.status() == 503 => {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => other.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => other.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, other)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pg = Restart(ctl);
    pg.run("stop");
    // While it is down: REST 503, gRPC UNAVAILABLE.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut alpha = server.client(&token).await;
    let err = alpha
        .jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(shell_job("during", whole(1), "true")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let during = unavailable.load(Ordering::Relaxed);
    assert!(during > 0, "no 503 while the database was down");
    // Health says so too: gRPC (from the background probe) and /readyz;
    // the process itself is still alive.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(server.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    wait_for_health(&mut health, ServingStatus::NotServing).await;
    let r = server
        .rest(Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = server
        .rest(Method::GET, "/healthz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    pg.run("start");

    // It recovers by itself: submits succeed again.
    let back = Instant::now();
    loop {
        let r = server
            .rest(Method::GET, "/v1/jobs?page_size=1", Some(&token))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no recovery: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_health(&mut health, ServingStatus::Serving).await;
    let r = server
        .rest(Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, other) = load.await.unwrap();
    assert!(other.is_empty(), "answers other than 200 or 503: {other:?}");
    assert!(acked.len() > 20, "too little load: {}", acked.len());

    // Every acknowledged job is there.
    let mut missing = Vec::new();
    for id in &acked {
        let r = server
            .rest(Method::GET, &format!("/v1/jobs/{id}"), Some(&token))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            missing.push((id.clone(), r.status()));
        }
    }
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(
        !server.logs().contains("panicked"),
        "the server panicked:\n{}",
        server.logs()
    );
    drop(server);
    finpool_store::testing::drop_postgres_database(&base, &url).await;
}
