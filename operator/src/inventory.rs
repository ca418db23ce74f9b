//! The pool's inventory from Kubernetes Nodes: the cards come from the
//! finpool agent's inventory annotation (each card's UUID, memory and MIG
//! slices, from NVML), else from what NVIDIA GPU Feature Discovery labels
//! (`nvidia.com/gpu.product`, `.count`, `.memory`); CPU and memory from
//! the node's allocatable, the location from its zone label, and cached
//! models from the agent's annotation.
//! Pure, so the submit path and the scheduler see the same pool.

use std::collections::BTreeMap;

use finpool_domain::{Gpu, GpuClass, Inventory, MigSlice, Node as PoolNode};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

pub const GPU_PRODUCT: &str = "nvidia.com/gpu.product";
pub const GPU_COUNT: &str = "nvidia.com/gpu.count";
pub const GPU_MEMORY: &str = "nvidia.com/gpu.memory";
/// Where a node is, for data residency: finpool's label, else the zone.
pub const LOCATION_LABELS: [&str; 2] = ["finpool.io/location", "topology.kubernetes.io/zone"];
/// The base models the node agent found in the node's cache.
pub const MODELS_ANNOTATION: &str = "finpool.io/models";

/// A GPU class name from NVML's product name, as GFD spells it in its
/// label (`NVIDIA H100 80GB HBM3` → `NVIDIA-H100-80GB-HBM3`), so that a
/// node reads the same class either way.
fn card_class(product: &str) -> String {
    finpool_agent::publish::label_value(product).unwrap_or_else(|| product.replace(' ', "-"))
}

/// A GPU class name from a product label (`NVIDIA-A100-SXM4-80GB` stays
/// as it is: it is already a label value).
fn class_of(product: &str) -> String {
    product.to_owned()
}

/// CPU in millicores from a quantity ("16", "15500m").
pub fn cpu_milli(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    match s.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => s.parse::<f64>().ok().map(|c| (c * 1000.0).round() as u64),
    }
}

/// Memory in MiB from a quantity ("64Gi", "65536Mi", "68719476736").
pub fn memory_mib(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(u, f)| s.strip_suffix(u).map(|n| (n, *f)))
        .unwrap_or((s, 1));
    let bytes = number.parse::<f64>().ok()? * factor as f64;
    Some((bytes / (1u64 << 20) as f64).floor() as u64)
}

/// The inventory of `nodes`; nodes without GPU labels hold no cards but
/// still count for CPU-only work. Unschedulable nodes are left out.
pub fn from_nodes(nodes: &[Node]) -> Inventory {
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut pool = Vec::new();
    for node in nodes {
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            continue;
        }
        let labels = node.labels();
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        let count: u32 = labels
            .get(GPU_COUNT)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let memory: u64 = labels
            .get(GPU_MEMORY)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let from_agent = node
            .annotations()
            .get(finpool_agent::publish::INVENTORY_ANNOTATION)
            .and_then(
                |a| match finpool_agent::publish::inventory_from_annotation(a) {
                    Ok(cards) => Some(cards),
                    Err(e) => {
                        tracing::warn!(node = %node.name_any(), error = %e,
                        "unreadable agent inventory; using the GPU Feature Discovery labels");
                        None
                    }
                },
            );
        let gpus = match (from_agent, labels.get(GPU_PRODUCT)) {
            (Some(cards), _) => cards
                .iter()
                .map(|card| {
                    let class = card_class(&card.product);
                    let known = classes.entry(class.clone()).or_insert(card.memory_mib);
                    *known = (*known).max(card.memory_mib);
                    Gpu {
                        index: card.index,
                        uuid: card.uuid.clone(),
                        class,
                        memory_mib: card.memory_mib,
                        mig: if card.mig.enabled {
                            card.mig
                                .instances
                                .iter()
                                .filter_map(|i| MigSlice::from_profile(&i.profile, i.uuid.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect(),
            (None, Some(product)) if count > 0 => {
                let class = class_of(product);
                let known = classes.entry(class.clone()).or_insert(memory);
                *known = (*known).max(memory);
                (0..count)
                    .map(|index| Gpu {
                        index,
                        uuid: format!("{}-gpu{index}", node.name_any()),
                        class: class.clone(),
                        memory_mib: memory,
                        mig: Vec::new(),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut node_labels = BTreeMap::new();
        if let Some(location) = LOCATION_LABELS.iter().find_map(|l| labels.get(*l)) {
            node_labels.insert("location".to_owned(), location.clone());
        }
        let models = node
            .annotations()
            .get(MODELS_ANNOTATION)
            .map(|m| {
                m.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        pool.push(PoolNode {
            name: node.name_any(),
            labels: node_labels,
            cpu_milli: allocatable.get("cpu").and_then(cpu_milli).unwrap_or(0),
            memory_mib: allocatable.get("memory").and_then(memory_mib).unwrap_or(0),
            gpus,
            models,
        });
    }
    Inventory {
        classes: classes
            .into_iter()
            .map(|(name, memory_mib)| GpuClass { name, memory_mib })
            .collect(),
        nodes: pool,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};

    pub(crate) fn gpu_node(name: &str, product: &str, count: u32) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.labels = Some(BTreeMap::from([
            (GPU_PRODUCT.to_owned(), product.to_owned()),
            (GPU_COUNT.to_owned(), count.to_string()),
            (GPU_MEMORY.to_owned(), "81920".to_owned()),
            ("topology.kubernetes.io/zone".to_owned(), "dc-1".to_owned()),
        ]));
        node.metadata.annotations = Some(BTreeMap::from([(
            MODELS_ANNOTATION.to_owned(),
            "llama-3-8b, mistral-7b".to_owned(),
        )]));
        node.status = Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("15500m".into())),
                ("memory".to_owned(), Quantity("64Gi".into())),
            ])),
            ..NodeStatus::default()
        });
        node
    }

    #[test]
    fn gfd_labels_become_cards_and_classes() {
        let mut cordoned = gpu_node("gpu-3", "A100", 8);
        cordoned.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..NodeSpec::default()
        });
        let inv = from_nodes(&[
            gpu_node("gpu-1", "A100", 8),
            gpu_node("gpu-2", "L4", 2),
            cordoned,
        ]);
        assert_eq!(inv.nodes.len(), 2);
        assert_eq!(inv.gpu_count(), 10);
        assert_eq!(inv.class_names(), ["A100", "L4"]);
        assert_eq!(inv.max_gpus_per_node()["A100"], 8);
        let n = &inv.nodes[0];
        assert_eq!((n.cpu_milli, n.memory_mib), (15_500, 65_536));
        assert_eq!(n.labels["location"], "dc-1");
        assert_eq!(n.models, ["llama-3-8b", "mistral-7b"]);
    }

    #[test]
    fn the_agents_cards_win_over_the_gfd_labels() {
        use finpool_agent::devices::{Devices, FakeDevices};
        let fake = FakeDevices::nvlink_node(8).with_mig(7, &["3g.40gb", "3g.40gb"]);
        let cards = fake.discover().unwrap();
        let published = finpool_agent::publish::publish(&cards, None, &[]);
        let mut node = gpu_node("gpu-1", "A100", 2);
        node.metadata
            .annotations
            .get_or_insert_default()
            .extend(published.annotations.clone());
        let inv = from_nodes(&[node]);
        let gpus = &inv.nodes[0].gpus;
        assert_eq!(gpus.len(), 8);
        assert_eq!(gpus[0].uuid, cards[0].uuid);
        assert_eq!(gpus[0].class, "NVIDIA-H100-80GB-HBM3");
        assert_eq!(gpus[7].mig.len(), 2);
        assert_eq!(inv.class_names(), ["NVIDIA-H100-80GB-HBM3"]);
    }

    #[test]
    fn quantities_parse_in_their_units() {
        assert_eq!(cpu_milli(&Quantity("2".into())), Some(2000));
        assert_eq!(cpu_milli(&Quantity("250m".into())), Some(250));
        assert_eq!(memory_mib(&Quantity("1Gi".into())), Some(1024));
        assert_eq!(memory_mib(&Quantity("1048576".into())), Some(1));
        assert_eq!(memory_mib(&Quantity("lots".into())), None);
    }
}
