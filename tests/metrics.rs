//! `/metrics` through a real `finpool up`: after a short scenario (a
//! tenant, a job submitted over gRPC and run, a REST call), the text
//! parses as Prometheus exposition and carries every finpool name, and the
//! public API port does not serve it.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use finpool_api::Role;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_every_name_after_a_short_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let mut alpha = server.tenant("alpha").await;
    let job = submit(&mut alpha, shell_job("metered", whole(1), "echo hi")).await;
    wait_for(
        &mut alpha,
        Duration::from_secs(60),
        "the job to end",
        |jobs| jobs.iter().any(|j| j.id == job.id && is_terminal(j.state)),
    )
    .await;
    let token = server.token(Role::Tenant, Some("alpha"));
    let listed = server
        .rest(Method::GET, "/v1/jobs", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    let url = server.metrics_url().await;
    let response = http_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text exposition");
    let samples: HashSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "finpool_pending_jobs",
        "finpool_tenant_allocated_gpus",
        "finpool_tenant_guaranteed_gpus",
        "finpool_scheduler_cycle_duration_seconds_count",
        "finpool_scheduler_decisions_total",
        "finpool_api_requests_total",
        "finpool_api_submit_duration_seconds_count",
    ] {
        assert!(samples.contains(name), "{name} has no sample in:\n{text}");
    }
    // What this scenario has no event for (no binding in standalone
    // mode, no preemption, no measured model load) is there at zero.
    for name in [
        "finpool_scheduler_bind_duration_seconds_count",
        "finpool_preemptions_total",
        "finpool_model_load_duration_seconds_count",
    ] {
        assert!(samples.contains(name), "{name} has no sample in:\n{text}");
    }
    let submit_ok = scrape.samples.iter().any(|s| {
        s.metric == "finpool_api_requests_total"
            && s.labels.get("method") == Some("finpool.v1.JobService/SubmitJob")
            && s.labels.get("code") == Some("OK")
    });
    assert!(
        submit_ok,
        "the submit is counted by method and code:\n{text}"
    );
    let rest_ok = scrape.samples.iter().any(|s| {
        s.metric == "finpool_api_requests_total"
            && s.labels.get("method") == Some("GET /v1/jobs")
            && s.labels.get("code") == Some("200")
    });
    assert!(
        rest_ok,
        "the REST call is counted by route and status:\n{text}"
    );
    let guaranteed = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "finpool_tenant_guaranteed_gpus" && s.labels.get("tenant") == Some("alpha")
        })
        .expect("alpha's guarantee");
    assert!(matches!(guaranteed.value, prometheus_parse::Value::Gauge(v) if v == 1.0));

    // Per-tenant figures are not on the public API port.
    let public = server
        .rest(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}
