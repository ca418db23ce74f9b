//! Base-model locality on a real pool (`finpool up`): a job holds out for
//! a card that already holds its model only when that card could run it
//! and frees sooner than a load elsewhere would take. Otherwise it starts
//! at once on an idle card.

mod common;

use std::time::Duration;

use common::*;
use finpool_cli::client::Clients;
use finpool_proto::v1 as pb;

/// One A100 node and one L40S node, one card each.
const TWO_CLASSES: &str = r#"
[[gpu_classes]]
name = "A100"
memory_mib = 81920

[[gpu_classes]]
name = "L40S"
memory_mib = 46068

[[nodes]]
name = "node-a100"
cpu_milli = 16000
memory_mib = 65536
gpus = { class = "A100", count = 1 }

[[nodes]]
name = "node-l40s"
cpu_milli = 16000
memory_mib = 65536
gpus = { class = "L40S", count = 1 }
"#;

/// One node with two A100s.
const TWO_A100: &str = r#"
[[gpu_classes]]
name = "A100"
memory_mib = 81920

[[nodes]]
name = "node-a"
cpu_milli = 16000
memory_mib = 65536
gpus = { class = "A100", count = 2 }
"#;

/// Long enough that a wrong hold-out would show: the jobs below must
/// start in a small fraction of it.
const LOAD_TIME_MS: i64 = 60_000;

fn start_on(pool: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pool.toml"), pool).unwrap();
    let server = Server::start(dir.path());
    (dir, server)
}

async fn tenant(
    op: &mut Clients,
    id: &str,
    quotas: &[&str],
    limit: i64,
    isolation: pb::IsolationLevel,
) {
    op.tenants
        .create_tenant(pb::CreateTenantRequest {
            id: id.into(),
            display_name: id.into(),
            quotas: quotas
                .iter()
                .map(|c| {
                    (
                        c.to_string(),
                        pb::Quota {
                            guaranteed: 1,
                            limit,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            weight: 1,
            isolation: isolation as i32,
        })
        .await
        .unwrap();
}

async fn model(op: &mut Clients) {
    op.models
        .register_model(pb::RegisterModelRequest {
            name: "qwen2-7b".into(),
            size_mib: 15_360,
            min_gpu_memory_mib: 20_480,
            load_time_ms: LOAD_TIME_MS,
        })
        .await
        .unwrap();
}

fn model_job(
    name: &str,
    gpu: pb::gpu_request::Kind,
    classes: &[&str],
    script: &str,
) -> pb::JobSpec {
    let mut spec = shell_job(name, gpu, script);
    spec.model = "qwen2-7b".into();
    if let Some(r) = spec.resources.as_mut() {
        r.gpu_classes = classes.iter().map(|c| c.to_string()).collect();
    }
    spec
}

async fn running(c: &mut Clients, id: &str) -> pb::Job {
    let jobs = wait_for(c, Duration::from_secs(30), "the job to run", |jobs| {
        jobs.iter()
            .any(|j| j.id == id && j.state == pb::JobState::Running as i32)
    })
    .await;
    jobs.into_iter().find(|j| j.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_allowed_only_where_its_model_is_not_warm_starts_at_once() {
    let (_dir, server) = start_on(TWO_CLASSES);
    let mut op = server.operator().await;
    tenant(
        &mut op,
        "alpha",
        &["A100", "L40S"],
        2,
        pb::IsolationLevel::SharedWithinTenant,
    )
    .await;
    model(&mut op).await;
    let mut alpha = server.tenant("alpha").await;
    // The model is now resident on the A100 card only, which stays busy.
    let warm = submit(
        &mut alpha,
        model_job("warm", whole(1), &["A100"], "sleep 60"),
    )
    .await;
    let warm = running(&mut alpha, &warm.id).await;
    // The node listing shows the model cached on the node and loaded on
    // the card, to tenants and operators alike.
    let card = warm.placement.as_ref().unwrap().gpus[0].index;
    for c in [&mut alpha, &mut op] {
        let nodes = c
            .nodes
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        let a100 = nodes.iter().find(|n| n.name == "node-a100").unwrap();
        assert_eq!(a100.models, vec!["qwen2-7b".to_owned()], "{a100:#?}");
        let gpu = a100.gpus.iter().find(|g| g.index == card).unwrap();
        assert_eq!(gpu.resident_model, "qwen2-7b", "{a100:#?}");
        let l40s = nodes.iter().find(|n| n.name == "node-l40s").unwrap();
        assert!(l40s.models.is_empty(), "{l40s:#?}");
        assert!(l40s.gpus.iter().all(|g| g.resident_model.is_empty()));
    }
    // The table shows it in its own columns; JSON in full.
    let token = server.token(finpool_api::Role::Tenant, Some("alpha"));
    let node_list = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_finpool"));
        cmd.args(["node", "list"]);
        if json {
            cmd.args(["-o", "json"]);
        }
        let out = cmd
            .env("FINPOOL_ADDR", &server.addr)
            .env("FINPOOL_TOKEN", &token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = node_list(false);
    assert!(table.contains("CACHED ON NODE"), "{table}");
    let row = table.lines().find(|l| l.contains("node-a100")).unwrap();
    assert_eq!(
        row.matches("qwen2-7b").count(),
        2,
        "resident and cached: {table}"
    );
    let json: serde_json::Value = serde_json::from_str(&node_list(true)).unwrap();
    let a100 = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-a100")
        .unwrap();
    assert_eq!(a100["models"][0], "qwen2-7b", "{a100}");
    assert_eq!(a100["gpus"][0]["resident_model"], "qwen2-7b", "{a100}");
    // This job may run only on L40S: the A100 that holds its model can
    // never run it, so waiting for it would be waiting for nothing.
    let l40s = submit(
        &mut alpha,
        model_job("l40s-only", whole(1), &["L40S"], "sleep 1"),
    )
    .await;
    let job = running(&mut alpha, &l40s.id).await;
    let waited = millis(&job.started_at) - millis(&job.created_at);
    assert!(waited <= 5_000, "waited {waited} ms: {job:#?}");
    assert_eq!(job.placement.as_ref().unwrap().node, "node-l40s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_tenant_does_not_wait_for_a_warm_card_another_tenant_holds() {
    let (_dir, server) = start_on(TWO_A100);
    let mut op = server.operator().await;
    tenant(
        &mut op,
        "beta",
        &["A100"],
        2,
        pb::IsolationLevel::SharedWithinTenant,
    )
    .await;
    tenant(
        &mut op,
        "cedar",
        &["A100"],
        2,
        pb::IsolationLevel::Exclusive,
    )
    .await;
    model(&mut op).await;
    let mut beta = server.tenant("beta").await;
    let mut cedar = server.tenant("cedar").await;
    // beta's share loads the model on one card and keeps it.
    let shared = submit(&mut beta, model_job("shared", share(300), &[], "sleep 60")).await;
    let shared = running(&mut beta, &shared.id).await;
    let warm_card = shared.placement.as_ref().unwrap().gpus[0].index;
    // cedar isolates exclusively: beta's card is no use to it until beta's
    // job ends, far beyond a load. The other card is idle.
    let exclusive = submit(&mut cedar, model_job("exclusive", whole(1), &[], "sleep 1")).await;
    let job = running(&mut cedar, &exclusive.id).await;
    let waited = millis(&job.started_at) - millis(&job.created_at);
    assert!(waited <= 3_000, "waited {waited} ms: {job:#?}");
    assert_ne!(job.placement.as_ref().unwrap().gpus[0].index, warm_card);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_carries_a_typed_reason() {
    let (_dir, server) = start_on(TWO_A100);
    let mut op = server.operator().await;
    tenant(
        &mut op,
        "beta",
        &["A100"],
        1,
        pb::IsolationLevel::SharedWithinTenant,
    )
    .await;
    let mut beta = server.tenant("beta").await;
    // Limit 1: a second whole card is over the tenant's quota, while the
    // pool's other card is idle.
    let hold = submit(&mut beta, shell_job("hold", whole(1), "sleep 60")).await;
    running(&mut beta, &hold.id).await;
    let over = submit(&mut beta, shell_job("over", whole(1), "sleep 1")).await;
    let jobs = wait_for(&mut beta, Duration::from_secs(30), "reasons", |jobs| {
        jobs.iter()
            .any(|j| j.id == over.id && j.reason_code == "QuotaLimit")
    })
    .await;
    // The reason names the class, the bound and the numbers.
    let waiting = jobs.iter().find(|j| j.id == over.id).unwrap();
    assert_eq!(
        waiting.reason, "quota: A100 limit 1 GPU; holding 1, this job asks 1",
        "{waiting:#?}"
    );
    // A job no node could hold never waits: it is refused at submit (one
    // the pool stops fitting while it waits says Infeasible; see
    // tests/feasibility.rs).
    let mut spec = shell_job("too-big", share(100), "sleep 1");
    spec.resources.as_mut().unwrap().cpu_milli = 64_000;
    let err = beta
        .jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with(
            "resources.cpu_milli: asks for 64000; the largest node of this pool has 16000"
        ),
        "{}",
        err.message()
    );
}
