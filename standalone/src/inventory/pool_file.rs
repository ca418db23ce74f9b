//! The pool file (TOML): GPU classes and nodes, with `count` to declare
//! several identical (simulated) nodes at once.

use std::collections::{BTreeMap, BTreeSet};

use finpool_domain::{Gpu, GpuClass, Inventory, MigSlice, Node};
use serde::Deserialize;

pub const EXAMPLE_POOL: &str = include_str!("example-pool.toml");

/// The most GPUs one node may have.
const MAX_GPUS_PER_NODE: u32 = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pool file: {field}: {reason}")]
pub struct PoolFileError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> PoolFileError {
    PoolFileError {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    gpu_classes: Vec<GpuClass>,
    nodes: Vec<NodeEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    /// Declares `count` nodes named `name-0`, `name-1`, …
    count: Option<u32>,
    cpu_milli: u64,
    memory_mib: u64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    gpus: GpuEntry,
    /// Base models cached on the node's disk.
    #[serde(default)]
    models: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GpuEntry {
    /// `{ class = "A100-80G", count = 8 }`, optionally with every card cut
    /// into the same MIG slices: `mig = ["3g.40gb", "3g.40gb"]`.
    Uniform {
        class: String,
        count: u32,
        #[serde(default)]
        mig: Vec<String>,
    },
    /// `[ { class = "A100-80G" }, … ]`, one entry per card.
    List(Vec<GpuListEntry>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuListEntry {
    class: String,
    uuid: Option<String>,
    /// MIG slice profiles, such as `["3g.40gb", "2g.20gb"]`.
    #[serde(default)]
    mig: Vec<String>,
}

/// Parses and checks a pool file.
pub fn parse_pool_file(text: &str) -> Result<Inventory, PoolFileError> {
    let file: PoolFile = toml::from_str(text).map_err(|e| {
        let field = e
            .span()
            .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
            .unwrap_or_else(|| "file".into());
        err(field, e.message().to_owned())
    })?;
    let mut class_names = BTreeSet::new();
    for (i, c) in file.gpu_classes.iter().enumerate() {
        let field = format!("gpu_classes[{i}]");
        if c.name.is_empty()
            || c.name.len() > 63
            || c.name
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return Err(err(format!("{field}.name"), "1-63 characters, no spaces"));
        }
        if c.memory_mib == 0 {
            return Err(err(format!("{field}.memory_mib"), "must be positive"));
        }
        if !class_names.insert(c.name.clone()) {
            return Err(err(
                format!("{field}.name"),
                format!("{:?} is declared twice", c.name),
            ));
        }
    }
    let memory_of = |class: &str| {
        file.gpu_classes
            .iter()
            .find(|c| c.name == class)
            .map(|c| c.memory_mib)
    };
    let mut nodes = Vec::new();
    let mut node_names = BTreeSet::new();
    for (i, entry) in file.nodes.iter().enumerate() {
        let field = format!("nodes[{i}]");
        finpool_domain::Name::parse(&format!("{field}.name"), &entry.name)
            .map_err(|e| err(e.field, e.reason))?;
        let classes: Vec<(String, Option<String>, Vec<String>)> = match &entry.gpus {
            GpuEntry::Uniform { class, count, mig } => (0..*count)
                .map(|_| (class.clone(), None, mig.clone()))
                .collect(),
            GpuEntry::List(list) => list
                .iter()
                .map(|g| (g.class.clone(), g.uuid.clone(), g.mig.clone()))
                .collect(),
        };
        if classes.len() as u32 > MAX_GPUS_PER_NODE {
            return Err(err(
                format!("{field}.gpus"),
                format!(
                    "{} GPUs; at most {MAX_GPUS_PER_NODE} per node",
                    classes.len()
                ),
            ));
        }
        for (class, _, mig) in &classes {
            let Some(memory) = memory_of(class) else {
                return Err(err(
                    format!("{field}.gpus"),
                    format!("class {class:?} is not among gpu_classes"),
                ));
            };
            let mut compute = 0;
            let mut used_memory = 0;
            for profile in mig {
                let slice = MigSlice::from_profile(profile, "").ok_or_else(|| {
                    err(
                        format!("{field}.gpus.mig"),
                        format!("{profile:?} is not a MIG profile like \"3g.40gb\""),
                    )
                })?;
                compute += slice.milli;
                used_memory += slice.memory_mib;
            }
            if compute > 1000 || used_memory > memory {
                return Err(err(
                    format!("{field}.gpus.mig"),
                    format!("the slices {mig:?} do not fit on one {class} card"),
                ));
            }
        }
        for (i, model) in entry.models.iter().enumerate() {
            finpool_domain::Name::parse(&format!("{field}.models[{i}]"), model)
                .map_err(|e| err(e.field, e.reason))?;
        }
        let count = entry.count.unwrap_or(1);
        if count == 0 {
            return Err(err(format!("{field}.count"), "must be at least 1"));
        }
        for n in 0..count {
            let name = match entry.count {
                Some(_) => format!("{}-{n}", entry.name),
                None => entry.name.clone(),
            };
            if !node_names.insert(name.clone()) {
                return Err(err(
                    format!("{field}.name"),
                    format!("node {name:?} is declared twice"),
                ));
            }
            let gpus = classes
                .iter()
                .enumerate()
                .map(|(index, (class, uuid, mig))| {
                    let uuid = uuid
                        .clone()
                        .unwrap_or_else(|| format!("GPU-sim-{name}-{index}"));
                    Gpu {
                        index: index as u32,
                        mig: mig
                            .iter()
                            .enumerate()
                            .filter_map(|(s, p)| {
                                MigSlice::from_profile(p, format!("MIG-{uuid}-{s}"))
                            })
                            .collect(),
                        uuid,
                        class: class.clone(),
                        memory_mib: memory_of(class).expect("checked above"),
                    }
                })
                .collect();
            nodes.push(Node {
                name,
                labels: entry.labels.clone(),
                cpu_milli: entry.cpu_milli,
                memory_mib: entry.memory_mib,
                gpus,
                models: entry.models.clone(),
            });
        }
    }
    if nodes.is_empty() {
        return Err(err("nodes", "declare at least one node"));
    }
    Ok(Inventory {
        classes: file.gpu_classes,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_pool_parses() {
        let inv = parse_pool_file(EXAMPLE_POOL).unwrap();
        assert_eq!(inv.nodes.len(), 3);
        assert_eq!(inv.nodes[0].name, "sh-a100-0");
        assert_eq!(inv.nodes[1].name, "sh-a100-1");
        assert_eq!(inv.gpu_count(), 12);
        assert_eq!(inv.nodes[2].location(), Some("cn-shenzhen-1"));
        assert_eq!(inv.max_gpus_per_node()["A100-80G"], 4);
    }

    #[test]
    fn mig_slices_and_cached_models() {
        let pool = r#"
            gpu_classes = [{ name = "H100", memory_mib = 81920 }]
            [[nodes]]
            name = "n"
            cpu_milli = 1000
            memory_mib = 1000
            models = ["qwen2-7b"]
            gpus = { class = "H100", count = 2, mig = ["3g.40gb", "2g.20gb", "1g.10gb"] }
        "#;
        let inv = parse_pool_file(pool).unwrap();
        let gpu = &inv.nodes[0].gpus[1];
        assert_eq!(gpu.mig.len(), 3);
        assert_eq!(gpu.mig[0].uuid, "MIG-GPU-sim-n-1-0");
        assert_eq!(inv.nodes[0].models, vec!["qwen2-7b"]);
        let too_big = pool.replace("\"1g.10gb\"", "\"4g.40gb\"");
        assert_eq!(
            parse_pool_file(&too_big).unwrap_err().field,
            "nodes[0].gpus.mig"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let unknown_class = r#"
            gpu_classes = [{ name = "A100", memory_mib = 80 }]
            [[nodes]]
            name = "n"
            cpu_milli = 1
            memory_mib = 1
            gpus = { class = "H100", count = 1 }
        "#;
        assert_eq!(
            parse_pool_file(unknown_class).unwrap_err().field,
            "nodes[0].gpus"
        );
        let dup = r#"
            gpu_classes = [{ name = "A100", memory_mib = 80 }]
            [[nodes]]
            name = "n"
            cpu_milli = 1
            memory_mib = 1
            gpus = { class = "A100", count = 1 }
            [[nodes]]
            name = "n"
            cpu_milli = 1
            memory_mib = 1
            gpus = [{ class = "A100" }]
        "#;
        assert_eq!(parse_pool_file(dup).unwrap_err().field, "nodes[1].name");
        let unknown_field = "gpu_classes = []\nnodes = []\ncolour = 1\n";
        assert!(
            parse_pool_file(unknown_field)
                .unwrap_err()
                .reason
                .contains("colour")
        );
    }
}
