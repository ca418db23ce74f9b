//! The agent end to end on a fake 8-GPU NVLink node: what it publishes,
//! how the inventory annotation reads back, the no-GPU path through the
//! real NVML loader, and the server-side apply it sends to a mock API
//! server (tower-test, as operator/tests/reconcile.rs).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use finpool_agent::devices::{FAKE_MEMORY_MIB, NvmlDevices};
use finpool_agent::publish::{
    COUNT_LABEL, INVENTORY_ANNOTATION, MEMORY_LABEL, MIG_CAPABLE_LABEL, MODELS_ANNOTATION,
    PRODUCT_LABEL, USAGE_ANNOTATION, Usage,
};
use finpool_agent::run::{self, Agent, Opener, Outcome, RunError, Settings};
use finpool_agent::{
    Card, DeviceError, Devices, FakeDevices, inventory_from_annotation, publish,
    usage_from_annotation,
};
use finpool_telemetry::Readiness;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse, pair};

const NODE: &str = "gpu-node-1";
const MISSING_NVML: &str = "/nonexistent/finpool-test/libnvidia-ml.so.1";

/// The fake node the tests use: 8 H100s, card 6 split into two 3g.40gb
/// instances, card 7 into one 7g.80gb, card 0 busy.
fn fake_node() -> FakeDevices {
    let node = FakeDevices::nvlink_node(8)
        .with_mig(6, &["3g.40gb", "3g.40gb"])
        .with_mig(7, &["7g.80gb"]);
    node.set_sample(0, Some(87), 40_960);
    node
}

/// A model cache with two models and what else a cache holds: a partial
/// download, a hidden directory, a file, a name that is no model name.
fn model_cache() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "mistral-7b",
        "llama-3-8b",
        "qwen2-7b.partial",
        ".tmp",
        "Bad_Name",
    ] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("README"), "not a model").unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    run::read_model_cache(dir).unwrap()
}

#[test]
fn an_eight_gpu_nvlink_node_publishes_the_expected_labels_and_annotations() {
    let node = fake_node();
    let cache = model_cache();
    let cards = node.discover().unwrap();
    let usage = Usage {
        sampled_at: time::macros::datetime!(2026-01-15 10:00:00.25 UTC),
        samples: node.sample().unwrap(),
    };
    let p = publish(&cards, Some(&usage), &entries(cache.path()));

    let expected_labels: BTreeMap<String, String> = [
        (PRODUCT_LABEL, "NVIDIA-H100-80GB-HBM3"),
        (COUNT_LABEL, "8"),
        (MEMORY_LABEL, "81559"),
        (MIG_CAPABLE_LABEL, "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(p.labels, expected_labels);
    assert_eq!(
        p.annotations.keys().map(String::as_str).collect::<Vec<_>>(),
        [INVENTORY_ANNOTATION, USAGE_ANNOTATION, MODELS_ANNOTATION]
    );
    assert_eq!(p.annotations[MODELS_ANNOTATION], "llama-3-8b,mistral-7b");

    let inventory: Value = serde_json::from_str(&p.annotations[INVENTORY_ANNOTATION]).unwrap();
    let inventory = inventory.as_array().unwrap();
    assert_eq!(inventory.len(), 8);
    for (i, card) in inventory.iter().enumerate() {
        let i = i as u64;
        assert_eq!(card["index"], i);
        assert_eq!(
            card["uuid"],
            format!("GPU-f1a00000-0000-4000-8000-{i:012x}")
        );
        assert_eq!(card["product"], "NVIDIA H100 80GB HBM3");
        assert_eq!(card["memoryMib"], FAKE_MEMORY_MIB);
        let peers: Vec<u64> = card["nvlinkPeers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(peers, (0..8).filter(|p| *p != i).collect::<Vec<_>>());
        assert_eq!(card["mig"]["capable"], true);
    }
    assert_eq!(
        inventory[0]["mig"],
        json!({"capable": true, "enabled": false, "instances": []})
    );
    assert_eq!(
        inventory[6]["mig"],
        json!({"capable": true, "enabled": true, "instances": [
            {"profile": "3g.40gb", "uuid": "MIG-f1a00000-0006-4000-8000-000000000000", "memoryMib": 40960},
            {"profile": "3g.40gb", "uuid": "MIG-f1a00000-0006-4000-8000-000000000001", "memoryMib": 40960},
        ]})
    );
    assert_eq!(inventory[7]["mig"]["instances"][0]["profile"], "7g.80gb");
    assert_eq!(inventory[7]["mig"]["instances"][0]["memoryMib"], 81920);

    let usage: Value = serde_json::from_str(&p.annotations[USAGE_ANNOTATION]).unwrap();
    let usage = usage.as_array().unwrap();
    assert_eq!(usage.len(), 8);
    assert_eq!(
        usage[0],
        json!({"index": 0, "utilizationPercent": 87, "memoryUsedMib": 40960,
               "sampledAt": "2026-01-15T10:00:00Z"})
    );
    assert_eq!(usage[1]["utilizationPercent"], 0);
    // MIG mode: NVML has no whole-card utilization.
    assert_eq!(usage[6]["utilizationPercent"], Value::Null);
    assert_eq!(usage[7]["utilizationPercent"], Value::Null);

    for value in p.labels.values() {
        assert!(value.len() <= 63, "{value}");
        assert!(
            value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{value}"
        );
    }
}

#[test]
fn the_inventory_annotation_reads_back_as_the_cards() {
    let node = fake_node();
    let cards = node.discover().unwrap();
    let p = publish(&cards, None, &[]);
    let back: Vec<Card> = inventory_from_annotation(&p.annotations[INVENTORY_ANNOTATION]).unwrap();
    assert_eq!(back, cards);
    assert_eq!(back[6].mig.instances.len(), 2);
    assert!(back.iter().all(|c| c.nvlink_peers.len() == 7));
    // Without a sample there is no usage annotation (rather than a stale one).
    assert!(!p.annotations.contains_key(USAGE_ANNOTATION));
}

#[test]
fn without_nvml_discovery_is_a_typed_error_not_a_panic() {
    match NvmlDevices::init_from(OsStr::new(MISSING_NVML)) {
        Err(DeviceError::Unavailable { reason }) => {
            let message = DeviceError::Unavailable { reason }.to_string();
            assert!(message.starts_with("NVML is unavailable ("), "{message}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("NVML loaded from {MISSING_NVML}"),
    }
    // The default loader: no driver here is the same typed error; on a GPU
    // machine, discovery works.
    match NvmlDevices::init() {
        Ok(nvml) => {
            let cards = nvml.discover().unwrap();
            let samples = nvml.sample().unwrap();
            assert_eq!(cards.len(), samples.len());
        }
        Err(DeviceError::Unavailable { .. }) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
    }
}

#[test]
fn the_report_shows_the_cards_and_what_would_be_published() {
    let cache = model_cache();
    let now = time::macros::datetime!(2026-01-15 10:00:00 UTC);
    let report = run::report(&fake_node(), cache.path(), now).unwrap();
    assert_eq!(report.cards.len(), 8);
    assert_eq!(report.usage.len(), 8);
    assert_eq!(report.labels[COUNT_LABEL], "8");
    assert_eq!(
        report.annotations[MODELS_ANNOTATION],
        "llama-3-8b,mistral-7b"
    );
    let printed = serde_json::to_value(&report).unwrap();
    assert_eq!(
        printed["cards"][3]["nvlinkPeers"].as_array().unwrap().len(),
        7
    );

    let none = run::report(&FakeDevices::nvlink_node(0), cache.path(), now).unwrap_err();
    assert_eq!(none.to_string(), "NVML found no GPUs on this node");
}

// The agent against a mock API server.

type ApiHandle = Handle<Request<Body>, Response<Body>>;

struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

async fn next_request(handle: &mut ApiHandle) -> (Seen, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the agent made no request")
        .expect("the client is gone");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    (seen, send)
}

fn settings(cache: &Path) -> Settings {
    Settings {
        node_name: NODE.into(),
        model_cache: cache.to_owned(),
        sample_interval: Duration::from_secs(30),
        rediscover_interval: Duration::from_secs(300),
        require_gpu: false,
    }
}

fn missing_nvml() -> Opener {
    Arc::new(|| NvmlDevices::init_from(OsStr::new(MISSING_NVML)).map(|d| Arc::new(d) as _))
}

#[tokio::test]
async fn the_agent_applies_its_labels_and_annotations_to_its_node() {
    let (mock, mut handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let cache = model_cache();
    let node = Arc::new(fake_node());
    let readiness = Readiness::default();
    let mut agent = Agent::new(
        run::fixed_opener(node.clone()),
        client,
        settings(cache.path()),
        readiness.clone(),
    )
    .unwrap();

    let round = tokio::spawn(async move {
        let outcome = agent.tick().await;
        (agent, outcome)
    });
    let (seen, send) = next_request(&mut handle).await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, format!("/api/v1/nodes/{NODE}"));
    assert_eq!(seen.query, "&force=true&fieldManager=finpool-agent");
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(seen.body["apiVersion"], "v1");
    assert_eq!(seen.body["kind"], "Node");
    let metadata = seen.body["metadata"].as_object().unwrap();
    // Only the agent's own fields: name, labels, annotations.
    assert_eq!(
        metadata.keys().map(String::as_str).collect::<Vec<_>>(),
        ["annotations", "labels", "name"]
    );
    assert_eq!(metadata["name"], NODE);
    assert_eq!(
        metadata["labels"],
        json!({PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3", COUNT_LABEL: "8",
               MEMORY_LABEL: "81559", MIG_CAPABLE_LABEL: "true"})
    );
    assert_eq!(
        metadata["annotations"][MODELS_ANNOTATION],
        "llama-3-8b,mistral-7b"
    );
    let inventory = inventory_from_annotation(
        metadata["annotations"][INVENTORY_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(inventory, node.cards());
    let usage =
        usage_from_annotation(metadata["annotations"][USAGE_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(usage[0].utilization_percent, Some(87));
    assert!(!readiness.is_ready(), "ready before the apply was answered");
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&seen.body).unwrap()))
            .unwrap(),
    );
    let (mut agent, outcome) = round.await.unwrap();
    assert_eq!(outcome.unwrap(), Outcome::Published);
    assert!(readiness.is_ready());

    // The next round carries the new sample (no rediscovery yet).
    node.set_sample(0, Some(12), 1_024);
    let round = tokio::spawn(async move { agent.tick().await });
    let (seen, send) = next_request(&mut handle).await;
    let usage = usage_from_annotation(
        seen.body["metadata"]["annotations"][USAGE_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (usage[0].utilization_percent, usage[0].memory_used_mib),
        (Some(12), 1_024)
    );
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&seen.body).unwrap()))
            .unwrap(),
    );
    assert_eq!(round.await.unwrap().unwrap(), Outcome::Published);
}

#[tokio::test]
async fn a_refused_apply_is_retried_and_leaves_the_agent_unready() {
    let (mock, mut handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let cache = model_cache();
    let readiness = Readiness::default();
    let mut agent = Agent::new(
        run::fixed_opener(Arc::new(fake_node())),
        client,
        settings(cache.path()),
        readiness.clone(),
    )
    .unwrap();
    let round = tokio::spawn(async move { agent.tick().await });
    let (_, send) = next_request(&mut handle).await;
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Forbidden", "code": 403,
        "message": "nodes \"gpu-node-1\" is forbidden: User cannot patch resource"});
    send.send_response(
        Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Body::from(serde_json::to_vec(&forbidden).unwrap()))
            .unwrap(),
    );
    let err = round.await.unwrap().unwrap_err();
    assert!(matches!(err, RunError::Publish { .. }), "{err}");
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("Node gpu-node-1"), "{err}");
    assert!(!readiness.is_ready());
}

#[tokio::test]
async fn without_a_gpu_the_agent_is_ready_and_publishes_nothing() {
    let (mock, mut handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let cache = model_cache();
    let readiness = Readiness::default();
    let mut agent = Agent::new(
        missing_nvml(),
        client.clone(),
        settings(cache.path()),
        readiness.clone(),
    )
    .unwrap();
    assert_eq!(agent.tick().await.unwrap(), Outcome::NoGpu);
    assert_eq!(agent.tick().await.unwrap(), Outcome::NoGpu);
    assert!(readiness.is_ready());
    let request = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(request.is_err(), "the agent wrote to the API without a GPU");

    // --require-gpu: the same is fatal, with NVML's reason.
    let strict = Settings {
        require_gpu: true,
        ..settings(cache.path())
    };
    let readiness = Readiness::default();
    let mut agent = Agent::new(missing_nvml(), client, strict, readiness.clone()).unwrap();
    let err = agent.tick().await.unwrap_err();
    assert!(
        matches!(err, RunError::NoGpu(DeviceError::Unavailable { .. })),
        "{err}"
    );
    assert!(err.is_fatal());
    assert!(
        err.to_string()
            .starts_with("--require-gpu: NVML is unavailable"),
        "{err}"
    );
    assert!(!readiness.is_ready());
}

#[tokio::test]
async fn bad_settings_are_refused_naming_the_flag() {
    let (mock, _handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let cache = model_cache();
    let open = run::fixed_opener(Arc::new(fake_node()));
    let cases = [
        (
            Settings {
                sample_interval: Duration::ZERO,
                ..settings(cache.path())
            },
            "--sample-interval",
        ),
        (
            Settings {
                rediscover_interval: Duration::ZERO,
                ..settings(cache.path())
            },
            "--rediscover",
        ),
        (
            Settings {
                node_name: " ".into(),
                ..settings(cache.path())
            },
            "--node-name",
        ),
    ];
    for (bad, flag) in cases {
        let err = Agent::new(open.clone(), client.clone(), bad, Readiness::default())
            .err()
            .expect("accepted bad settings");
        assert!(err.to_string().starts_with(flag), "{err}");
    }
}
