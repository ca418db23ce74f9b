//! The pool's hardware: GPU classes, nodes and their GPUs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A kind of GPU card quotas and prices are set on, such as `A100-80G`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuClass {
    pub name: String,
    pub memory_mib: u64,
}

/// One physical GPU on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// The device index on its node (what `CUDA_VISIBLE_DEVICES` names).
    pub index: u32,
    pub uuid: String,
    pub class: String,
    pub memory_mib: u64,
}

/// A machine in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Free-form labels; `location` says where the node (and the data it
    /// touches) physically is, for data-residency reports.
    pub labels: BTreeMap<String, String>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: Vec<Gpu>,
}

/// The label naming a node's physical location.
pub const LOCATION_LABEL: &str = "location";

impl Node {
    pub fn location(&self) -> Option<&str> {
        self.labels.get(LOCATION_LABEL).map(String::as_str)
    }
}

/// The pool's hardware at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub classes: Vec<GpuClass>,
    pub nodes: Vec<Node>,
}

impl Inventory {
    /// Per class, the most GPUs of that class on any one node: the largest
    /// whole-GPU job that could ever run.
    pub fn max_gpus_per_node(&self) -> BTreeMap<String, u32> {
        let mut most = BTreeMap::new();
        for node in &self.nodes {
            let mut here: BTreeMap<&str, u32> = BTreeMap::new();
            for g in &node.gpus {
                *here.entry(&g.class).or_default() += 1;
            }
            for (class, n) in here {
                let m = most.entry(class.to_owned()).or_insert(0);
                *m = (*m).max(n);
            }
        }
        most
    }

    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    pub fn gpu_count(&self) -> usize {
        self.nodes.iter().map(|n| n.gpus.len()).sum()
    }
}
