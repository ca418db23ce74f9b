//! `finpool bench index`: how fast the index takes a cluster in. Nodes and
//! pending pods are applied as a watch would deliver them; the baseline is
//! the same objects put in a plain map by uid (what a bare reflector store
//! does), timed in the same run. Then the time from the last apply to a
//! ready snapshot (the inventory assembled and every pending job found).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use finpool_domain::JobId;
use finpool_operator::build::{JOB_ID_LABEL, SCHEDULER_NAME};
use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use crate::index::ClusterIndex;

#[derive(Debug, Serialize)]
pub struct IndexBenchReport {
    pub nodes: usize,
    pub pending_pods: usize,
    pub gpus: u64,
    pub applies_per_second: f64,
    /// The same objects into a map by uid.
    pub baseline_applies_per_second: f64,
    /// applies_per_second ÷ baseline_applies_per_second, from this run.
    pub index_to_map: f64,
    /// From the last apply to the inventory assembled and the pending
    /// jobs listed.
    pub snapshot_ms: f64,
}

fn node(i: usize) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(format!("gpu-{i:05}"));
    n.metadata.uid = Some(format!("node-uid-{i}"));
    let (product, count) = match i % 4 {
        0 => ("NVIDIA-H100-80GB-HBM3", 8),
        1 => ("NVIDIA-A100-SXM4-80GB", 8),
        2 => ("NVIDIA-L4", 4),
        _ => ("NVIDIA-H200", 8),
    };
    n.metadata.labels = Some(BTreeMap::from([
        ("nvidia.com/gpu.product".to_owned(), product.to_owned()),
        ("nvidia.com/gpu.count".to_owned(), count.to_string()),
        ("nvidia.com/gpu.memory".to_owned(), "81920".to_owned()),
        (
            "topology.kubernetes.io/zone".to_owned(),
            format!("dc-{}", i % 3),
        ),
    ]));
    n.status = Some(NodeStatus {
        allocatable: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("96".into())),
            ("memory".to_owned(), Quantity("1Ti".into())),
        ])),
        ..NodeStatus::default()
    });
    n
}

fn pending_pod(i: usize) -> (JobId, Pod) {
    let job = JobId::new_random();
    let mut pod = Pod::default();
    pod.metadata.name = Some(format!("job-{i}"));
    pod.metadata.namespace = Some(format!("tenant-{}", i % 50));
    pod.metadata.uid = Some(format!("pod-uid-{i}"));
    pod.metadata.labels = Some(BTreeMap::from([(JOB_ID_LABEL.to_owned(), job.to_string())]));
    pod.spec = Some(PodSpec {
        scheduler_name: Some(SCHEDULER_NAME.into()),
        ..PodSpec::default()
    });
    (job, pod)
}

pub fn run(nodes: usize, pods: usize) -> IndexBenchReport {
    let node_objects: Vec<Node> = (0..nodes).map(node).collect();
    let pod_objects: Vec<(JobId, Pod)> = (0..pods).map(pending_pod).collect();
    let applies = (nodes + pods) as f64;

    // Baseline: a plain map by uid.
    let began = Instant::now();
    let mut by_uid_nodes: HashMap<String, Node> = HashMap::with_capacity(nodes);
    for n in &node_objects {
        by_uid_nodes.insert(n.metadata.uid.clone().unwrap_or_default(), n.clone());
    }
    let mut by_uid_pods: HashMap<String, Pod> = HashMap::with_capacity(pods);
    for (_, p) in &pod_objects {
        by_uid_pods.insert(p.metadata.uid.clone().unwrap_or_default(), p.clone());
    }
    let baseline = began.elapsed().as_secs_f64();
    std::hint::black_box((&by_uid_nodes, &by_uid_pods));

    let mut index = ClusterIndex::new();
    let began = Instant::now();
    for n in &node_objects {
        index.apply_node(n);
    }
    for (_, p) in &pod_objects {
        index.apply_pod(p);
    }
    let applied = began.elapsed().as_secs_f64();
    let began = Instant::now();
    let inventory = index.inventory();
    let found = pod_objects
        .iter()
        .filter(|(job, _)| index.pending_pod(*job).is_some())
        .count();
    let snapshot = began.elapsed().as_secs_f64();
    assert_eq!(found, pods, "every pending pod is indexed by its job");
    IndexBenchReport {
        nodes,
        pending_pods: pods,
        gpus: inventory.gpu_count() as u64,
        applies_per_second: applies / applied,
        baseline_applies_per_second: applies / baseline,
        index_to_map: baseline / applied,
        snapshot_ms: snapshot * 1000.0,
    }
}
