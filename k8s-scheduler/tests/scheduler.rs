//! The in-cluster scheduler against a fake API server (tower-test's mock
//! service): the real kube-runtime watchers and Controller LIST, then hold
//! their watches open; the test pushes events and reads what the scheduler
//! wrote. The store is a real SQLite one.

mod fake_api;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use fake_api::FakeApi;
use finpool_domain::{
    GpuRequest, IsolationLevel, Job, JobId, JobSpec, JobState, Name, Quota, Resources,
    RestartPolicy, Tenant, Timestamp,
};
use finpool_k8s_scheduler::driver::{self, DriverConfig};
use finpool_scheduler::{CycleConfig, Policy};
use finpool_store::{Change, Store, StoreConfig};
use finpool_telemetry::{Metrics, Readiness};
use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use tokio::sync::watch;

const NS: &str = "alpha-jobs";

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

fn gpu_node(node: &str, cards: u32) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(node.into());
    n.metadata.labels = Some(BTreeMap::from([
        ("nvidia.com/gpu.product".to_owned(), "H100".to_owned()),
        ("nvidia.com/gpu.count".to_owned(), cards.to_string()),
        ("nvidia.com/gpu.memory".to_owned(), "81920".to_owned()),
    ]));
    n.status = Some(NodeStatus {
        allocatable: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("64".into())),
            ("memory".to_owned(), Quantity("512Gi".into())),
        ])),
        ..NodeStatus::default()
    });
    n
}

fn tenant(id: &str, guaranteed: u32, limit: u32) -> Tenant {
    Tenant {
        id: name(id),
        display_name: id.into(),
        quotas: [(
            "H100".to_owned(),
            Quota {
                guaranteed,
                limit,
                lending_limit: None,
            },
        )]
        .into(),
        weight: 1,
        isolation: IsolationLevel::SharedWithinTenant,
        created_at: Timestamp(0),
        suspended: None,
    }
}

fn job(tenant: &str, n: usize, gpus: u32) -> Job {
    let spec = JobSpec {
        name: name(&format!("job-{n}")),
        model: None,
        command: vec!["true".into()],
        args: vec![],
        env: BTreeMap::new(),
        resources: Resources {
            gpu: GpuRequest::Whole { count: gpus },
            gpu_classes: vec![],
            cpu_milli: 100,
            memory_mib: 128,
        },
        priority: 0,
        max_runtime_ms: Some(3_600_000),
        min_runtime_ms: None,
        idempotency_key: None,
        labels: BTreeMap::new(),
        restart_policy: RestartPolicy::Requeue,
    };
    Job::new(JobId::new_random(), name(tenant), spec, Timestamp::now())
}

/// The pod the operator makes for `job`.
fn pod_for(job: JobId, n: usize, node: Option<&str>) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some(format!("job-{n}"));
    pod.metadata.namespace = Some(NS.into());
    pod.metadata.uid = Some(format!("uid-{n}"));
    pod.metadata.labels = Some(BTreeMap::from([(
        "finpool.io/job-id".to_owned(),
        job.to_string(),
    )]));
    pod.spec = Some(PodSpec {
        scheduler_name: Some("finpool-scheduler".into()),
        node_name: node.map(str::to_owned),
        ..PodSpec::default()
    });
    pod
}

struct Running {
    store: Store,
    metrics: Metrics,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
    _leading: watch::Sender<bool>,
}

async fn store_with(tenants: &[Tenant]) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::Sqlite(dir.path().join("finpool.db")))
        .await
        .unwrap();
    for t in tenants {
        store.create_tenant(t).await.unwrap();
    }
    (store, dir)
}

fn start(api: &FakeApi, store: Store, dir: tempfile::TempDir) -> Running {
    let metrics = Metrics::new();
    let (leading_tx, leading) = watch::channel(true);
    let (stop_tx, stop) = watch::channel(false);
    let config = DriverConfig {
        cycle: CycleConfig {
            stop_grace_ms: 5_000,
            ..CycleConfig::default()
        },
        policy: Policy::finpool,
        idle_tick: Duration::from_millis(100),
        identity: "test".into(),
    };
    tokio::spawn(driver::run(
        api.client(),
        store.clone(),
        config,
        metrics.clone(),
        Readiness::default(),
        leading,
        stop,
    ));
    Running {
        store,
        metrics,
        _dir: dir,
        _stop: stop_tx,
        _leading: leading_tx,
    }
}

#[tokio::test]
async fn a_pending_pod_is_bound_by_uid_to_a_node_that_fits_with_its_cards() {
    let (store, dir) = store_with(&[tenant("alpha", 8, 8)]).await;
    let j = job("alpha", 1, 2);
    store.submit(j.clone()).await.unwrap();
    let api = FakeApi::new(
        vec![gpu_node("gpu-1", 8)],
        vec![pod_for(j.id, 1, None)],
        vec![],
    );
    let run = start(&api, store, dir);
    api.wait_for("a binding", 10, |w| {
        w.iter().any(|w| w.path.ends_with("/binding"))
    })
    .await;
    let binding = &api.writes_to("/binding")[0];
    assert_eq!(binding.method, http::Method::POST);
    assert_eq!(
        binding.path,
        "/api/v1/namespaces/alpha-jobs/pods/job-1/binding"
    );
    assert_eq!(binding.body["target"]["kind"], "Node");
    assert_eq!(binding.body["target"]["name"], "gpu-1");
    assert_eq!(binding.body["metadata"]["uid"], "uid-1");
    let gpus = binding.body["metadata"]["annotations"]["finpool.io/gpus"]
        .as_str()
        .unwrap();
    assert_eq!(gpus.split(',').count(), 2, "{gpus}");
    let stored = run.store.get_job(j.id).await.unwrap();
    assert_eq!(stored.state, JobState::Admitted);
    let placement = stored.placement.unwrap();
    assert_eq!(placement.node, "gpu-1");
    assert_eq!(placement.visible_devices(), gpus);
}

#[tokio::test]
async fn a_conflict_on_binding_counts_as_done() {
    let (store, dir) = store_with(&[tenant("alpha", 8, 8)]).await;
    let j = job("alpha", 1, 1);
    store.submit(j.clone()).await.unwrap();
    let api = FakeApi::new(
        vec![gpu_node("gpu-1", 8)],
        vec![pod_for(j.id, 1, None)],
        vec![],
    );
    api.conflict_on("job-1");
    let run = start(&api, store, dir);
    api.wait_for("a binding", 10, |w| {
        w.iter().any(|w| w.path.ends_with("/binding"))
    })
    .await;
    // Several idle cycles later: no second try, and the job stays admitted.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(api.writes_to("/binding").len(), 1, "{:#?}", api.writes());
    assert_eq!(
        run.store.get_job(j.id).await.unwrap().state,
        JobState::Admitted
    );
}

#[tokio::test]
async fn a_job_too_big_for_any_node_is_marked_unschedulable_with_its_reason() {
    let (store, dir) = store_with(&[tenant("alpha", 16, 16)]).await;
    let j = job("alpha", 1, 16);
    store.submit(j.clone()).await.unwrap();
    let api = FakeApi::new(
        vec![gpu_node("gpu-1", 8)],
        vec![pod_for(j.id, 1, None)],
        vec![],
    );
    let run = start(&api, store, dir);
    api.wait_for("a status patch", 10, |w| {
        w.iter().any(|w| w.path.ends_with("/status"))
    })
    .await;
    let patch = &api.writes_to("/status")[0];
    assert_eq!(patch.method, http::Method::PATCH);
    assert_eq!(
        patch.path,
        "/api/v1/namespaces/alpha-jobs/pods/job-1/status"
    );
    let condition = &patch.body["status"]["conditions"][0];
    assert_eq!(condition["type"], "PodScheduled");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Unschedulable");
    let stored = run.store.get_job(j.id).await.unwrap();
    assert_eq!(stored.state, JobState::Pending);
    assert!(!stored.reason_code.is_empty());
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("{}: ", stored.reason_code)),
        "{message} vs {}",
        stored.reason_code
    );
    assert!(api.writes_to("/binding").is_empty());
    // The same reason is not written again every cycle.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(api.writes_to("/status").len(), 1);
}

#[tokio::test]
async fn a_node_event_requeues_pending_pods() {
    let (store, dir) = store_with(&[tenant("alpha", 8, 8)]).await;
    let j = job("alpha", 1, 4);
    store.submit(j.clone()).await.unwrap();
    // No node yet: the pod waits.
    let api = FakeApi::new(vec![], vec![pod_for(j.id, 1, None)], vec![]);
    let _run = start(&api, store, dir);
    api.wait_for("the pod marked unschedulable", 10, |w| {
        w.iter().any(|w| w.path.ends_with("/status"))
    })
    .await;
    assert!(api.writes_to("/binding").is_empty());
    api.add_node(gpu_node("gpu-new", 8));
    api.wait_for("a binding to the new node", 10, |w| {
        w.iter()
            .any(|w| w.path.ends_with("/binding") && w.body["target"]["name"] == "gpu-new")
    })
    .await;
}

#[tokio::test]
async fn a_guarantee_reclaim_evicts_the_borrowers_pod_then_binds_the_preemptor() {
    // beta borrows the whole node; alpha's guarantee covers it.
    let (store, dir) = store_with(&[tenant("alpha", 8, 8), tenant("beta", 0, 8)]).await;
    let borrower = job("beta", 1, 8);
    store.submit(borrower.clone()).await.unwrap();
    let mut admit = Change::new(JobState::Admitted, "admitted", Timestamp::now());
    admit.placement = Some(finpool_domain::Placement {
        node: "gpu-1".into(),
        gpus: (0..8)
            .map(|i| finpool_domain::GpuAssignment {
                index: i,
                uuid: format!("gpu-1-gpu{i}"),
                class: "H100".into(),
                milli: 1000,
                memory_mib: 81920,
                mig_slice: None,
            })
            .collect(),
    });
    store
        .transition(borrower.id, Some(JobState::Pending), admit)
        .await
        .unwrap();
    store
        .transition(
            borrower.id,
            Some(JobState::Admitted),
            Change::new(JobState::Running, "pod running", Timestamp::now()),
        )
        .await
        .unwrap();
    let preemptor = job("alpha", 2, 8);
    store.submit(preemptor.clone()).await.unwrap();
    let api = FakeApi::new(
        vec![gpu_node("gpu-1", 8)],
        vec![pod_for(preemptor.id, 2, None)],
        vec![pod_for(borrower.id, 1, Some("gpu-1"))],
    );
    let run = start(&api, store, dir);
    api.wait_for("the preemptor bound", 15, |w| {
        w.iter().any(|w| w.path.ends_with("job-2/binding"))
    })
    .await;
    let writes = api.writes();
    let position = |suffix: &str| writes.iter().position(|w| w.path.ends_with(suffix));
    let eviction = &writes[position("job-1/eviction").expect("an eviction")];
    assert_eq!(eviction.method, http::Method::POST);
    assert_eq!(
        eviction.path,
        "/api/v1/namespaces/alpha-jobs/pods/job-1/eviction"
    );
    assert_eq!(eviction.body["kind"], "Eviction");
    assert_eq!(eviction.body["deleteOptions"]["gracePeriodSeconds"], 5);
    assert_eq!(
        eviction.body["deleteOptions"]["preconditions"]["uid"],
        "uid-1"
    );
    // Marked preempted first (its end is a requeue, not a failure), and
    // an event names the reason.
    let mark = position("pods/job-1").expect("the preempted mark");
    assert!(mark < position("job-1/eviction").unwrap());
    assert!(
        writes[mark].body["metadata"]["annotations"]["finpool.io/preempted"]
            .as_str()
            .unwrap()
            .contains("reclaims")
    );
    assert!(writes.iter().any(|w| w.path.ends_with("/events")
        && w.body["reason"] == "Preempted"
        && w.body["regarding"]["name"] == "job-1"));
    // The preemptor waited for its victim to go.
    assert!(position("job-1/eviction").unwrap() < position("job-2/binding").unwrap());
    let victim = run.store.get_job(borrower.id).await.unwrap();
    assert_eq!(victim.state, JobState::Pending, "{:?}", victim.history);
    assert!(victim.history.iter().any(|t| t.to == JobState::Preempted));
    let text = run.metrics.encode();
    assert!(
        text.contains("finpool_preemptions_total{reason=\"Reclaim\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn two_hundred_pods_at_once_never_share_a_card() {
    let tenants = [
        tenant("alpha", 8, 32),
        tenant("beta", 8, 32),
        tenant("gamma", 8, 32),
        tenant("delta", 8, 32),
    ];
    let (store, dir) = store_with(&tenants).await;
    let nodes: Vec<Node> = (0..4).map(|i| gpu_node(&format!("gpu-{i}"), 8)).collect();
    let api = FakeApi::new(nodes, vec![], vec![]);
    let run = start(&api, store.clone(), dir);
    let mut jobs = Vec::new();
    for n in 0..200 {
        let j = job(tenants[n % 4].id.as_str(), n, 1);
        store.submit(j.clone()).await.unwrap();
        jobs.push(j);
    }
    // All 200 arrive over the watch at once.
    for (n, j) in jobs.iter().enumerate() {
        api.add_pending(pod_for(j.id, n, None));
    }
    api.wait_for("32 bindings", 20, |w| {
        w.iter().filter(|w| w.path.ends_with("/binding")).count() >= 32
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let bindings = api.writes_to("/binding");
    assert_eq!(bindings.len(), 32, "32 cards, so 32 pods bound");
    let mut cards = HashSet::new();
    let mut pods = HashSet::new();
    for b in &bindings {
        let node = b.body["target"]["name"].as_str().unwrap().to_owned();
        let gpus = b.body["metadata"]["annotations"]["finpool.io/gpus"]
            .as_str()
            .unwrap();
        for g in gpus.split(',') {
            assert!(
                cards.insert((node.clone(), g.to_owned())),
                "card {node}/{g} given twice"
            );
        }
        assert!(pods.insert(b.path.clone()), "{} bound twice", b.path);
    }
    // The record agrees: 32 admitted, no card in two placements.
    let mut held = HashSet::new();
    let mut admitted = 0;
    for j in &jobs {
        let stored = run.store.get_job(j.id).await.unwrap();
        if let Some(p) = stored
            .placement
            .filter(|_| stored.state == JobState::Admitted)
        {
            admitted += 1;
            for g in p.gpus {
                assert!(held.insert((p.node.clone(), g.index)));
            }
        }
    }
    assert_eq!(admitted, 32);
    // The cycle's metrics saw it.
    let text = run.metrics.encode();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let names: HashSet<_> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for n in [
        "finpool_pending_jobs",
        "finpool_tenant_allocated_gpus",
        "finpool_tenant_guaranteed_gpus",
        "finpool_scheduler_cycle_duration_seconds_count",
        "finpool_scheduler_decisions_total",
        "finpool_scheduler_bind_duration_seconds_count",
    ] {
        assert!(names.contains(n), "{n} missing");
    }
    let pending: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "finpool_pending_jobs")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(pending, 168.0);
}
