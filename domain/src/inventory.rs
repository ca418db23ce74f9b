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
    /// MIG partitions, when the card is in MIG mode: only these run work,
    /// each isolated in hardware, so each may serve a different tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig: Vec<MigSlice>,
}

/// A MIG GPU instance: a hardware-isolated slice of a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigSlice {
    /// The profile, such as `3g.40gb`.
    pub profile: String,
    /// The slice's device UUID (`MIG-…`).
    pub uuid: String,
    /// Its share of the card's compute, in milli-GPU.
    pub milli: u32,
    pub memory_mib: u64,
}

impl MigSlice {
    /// The compute and memory of a profile named `<n>g.<m>gb` on a card with
    /// seven compute slices (A100, H100, H200): n/7 of the card, m GiB.
    pub fn from_profile(profile: &str, uuid: impl Into<String>) -> Option<Self> {
        let (g, rest) = profile.split_once("g.")?;
        let gb = rest.strip_suffix("gb")?;
        let g: u32 = g.parse().ok().filter(|g| (1..=7).contains(g))?;
        let gb: u64 = gb.parse().ok().filter(|gb| *gb > 0)?;
        Some(Self {
            profile: profile.to_owned(),
            uuid: uuid.into(),
            milli: g * crate::MILLI_PER_GPU / 7,
            memory_mib: gb * 1024,
        })
    }
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
    /// Base models cached on the node's disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

/// The label naming a node's physical location.
pub const LOCATION_LABEL: &str = "location";

impl Node {
    pub fn location(&self) -> Option<&str> {
        self.labels.get(LOCATION_LABEL).map(String::as_str)
    }
}

/// The pool's hardware at one moment.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_profiles_give_compute_and_memory() {
        let s = MigSlice::from_profile("3g.40gb", "MIG-1").unwrap();
        assert_eq!((s.milli, s.memory_mib), (428, 40 * 1024));
        assert_eq!(
            MigSlice::from_profile("7g.80gb", "MIG-2").unwrap().milli,
            1000
        );
        assert!(MigSlice::from_profile("8g.80gb", "x").is_none());
        assert!(MigSlice::from_profile("big", "x").is_none());
    }
}

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
