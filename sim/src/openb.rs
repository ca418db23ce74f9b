//! Alibaba's cluster-trace-gpu-v2023 ("openb"), as published at
//! github.com/alibaba/clusterdata and used by the FGD paper (USENIX ATC '23):
//! a node list and pod lists in CSV.

use std::io::Read;

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, Inventory, JobId, Name, Node, Resources, Timestamp,
};
use finpool_scheduler::cluster::ClassInfo;
use finpool_scheduler::{ClassSet, Cluster, GpuState, NodeState, QueuedJob, Task};
use thiserror::Error;

use crate::trace_csv::{field_error, reader, rows};

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("{file}: {reason}")]
    Format { file: String, reason: String },
    #[error("{file} line {line}: {field}: {reason}")]
    Field {
        file: String,
        line: u64,
        field: String,
        reason: String,
    },
}

/// A node: `sn,cpu_milli,memory_mib,gpu,model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenbNode {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    pub model: String,
}

/// A pod: `name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenbPod {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub num_gpu: u32,
    pub gpu_milli: u32,
    /// Allowed GPU models; empty means any.
    pub gpu_spec: Vec<String>,
}

impl OpenbPod {
    /// Milli-GPU the pod asks for in all.
    pub fn gpu_demand(&self) -> u64 {
        self.num_gpu as u64 * self.gpu_milli as u64
    }

    pub fn request(&self) -> GpuRequest {
        match (self.num_gpu, self.gpu_milli) {
            (0, _) => GpuRequest::None,
            (n, 1000) => GpuRequest::Whole { count: n },
            (_, milli) => GpuRequest::Share {
                milli,
                memory_mib: 0,
            },
        }
    }
}

fn number<T: std::str::FromStr>(
    file: &str,
    line: u64,
    field: &str,
    value: &str,
) -> Result<T, TraceError> {
    value.trim().parse().map_err(|_| {
        field_error(
            file,
            line,
            field,
            format!("{value:?} is not a non-negative integer"),
        )
    })
}

pub fn read_nodes(file: &str, input: impl Read) -> Result<Vec<OpenbNode>, TraceError> {
    let (mut r, cols) = reader(file, input)?;
    let (sn, cpu, mem, gpu, model) = (
        cols.index("sn")?,
        cols.index("cpu_milli")?,
        cols.index("memory_mib")?,
        cols.index("gpu")?,
        cols.index("model")?,
    );
    let mut nodes = Vec::new();
    for row in rows(file, &mut r) {
        let (line, record) = row?;
        let gpus: u32 = number(file, line, "gpu", &record[gpu])?;
        if gpus as usize > finpool_scheduler::cluster::MAX_GPUS_PER_NODE {
            return Err(field_error(file, line, "gpu", "too many GPUs".into()));
        }
        nodes.push(OpenbNode {
            name: record[sn].to_owned(),
            cpu_milli: number(file, line, "cpu_milli", &record[cpu])?,
            memory_mib: number(file, line, "memory_mib", &record[mem])?,
            gpus,
            model: record[model].trim().to_owned(),
        });
    }
    Ok(nodes)
}

pub fn read_pods(file: &str, input: impl Read) -> Result<Vec<OpenbPod>, TraceError> {
    let (mut r, cols) = reader(file, input)?;
    let (name, cpu, mem, num, milli) = (
        cols.index("name")?,
        cols.index("cpu_milli")?,
        cols.index("memory_mib")?,
        cols.index("num_gpu")?,
        cols.index("gpu_milli")?,
    );
    // Some variants (multigpu20) have no gpu_spec column: any model will do.
    let spec = cols.index("gpu_spec").ok();
    let mut pods = Vec::new();
    for row in rows(file, &mut r) {
        let (line, record) = row?;
        let pod = OpenbPod {
            name: record[name].to_owned(),
            cpu_milli: number(file, line, "cpu_milli", &record[cpu])?,
            memory_mib: number(file, line, "memory_mib", &record[mem])?,
            num_gpu: number(file, line, "num_gpu", &record[num])?,
            gpu_milli: number(file, line, "gpu_milli", &record[milli])?,
            gpu_spec: spec
                .map(|i| {
                    record[i]
                        .split('|')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        };
        if pod.gpu_milli > 1000 || (pod.num_gpu > 1 && pod.gpu_milli != 1000) {
            return Err(field_error(
                file,
                line,
                "gpu_milli",
                format!(
                    "{} GPUs of {} milli: only whole GPUs or one share of a GPU are defined",
                    pod.num_gpu, pod.gpu_milli
                ),
            ));
        }
        pods.push(pod);
    }
    Ok(pods)
}

/// The trace's nodes as an empty cluster; GPU classes are the models.
pub fn cluster(nodes: &[OpenbNode]) -> Cluster {
    let mut classes: Vec<ClassInfo> = Vec::new();
    let mut states = Vec::with_capacity(nodes.len());
    for n in nodes {
        let class = match classes.iter().position(|c| c.name == n.model) {
            Some(i) => i,
            None => {
                classes.push(ClassInfo {
                    name: n.model.clone(),
                    memory_mib: 0,
                });
                classes.len() - 1
            }
        };
        let gpus = (0..n.gpus)
            .map(|i| GpuState::new(i, class as u8, 0))
            .collect();
        states.push(NodeState::new(
            n.name.clone(),
            n.cpu_milli,
            n.memory_mib,
            gpus,
        ));
    }
    Cluster::new(classes, states)
}

/// The trace's nodes as the pool's inventory (GPU classes are the models,
/// in order of first appearance, as in [`cluster`]).
pub fn inventory(nodes: &[OpenbNode]) -> Inventory {
    let mut classes: Vec<GpuClass> = Vec::new();
    for n in nodes {
        if !classes.iter().any(|c| c.name == n.model) {
            classes.push(GpuClass {
                name: n.model.clone(),
                memory_mib: 0,
            });
        }
    }
    Inventory {
        classes,
        nodes: nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                labels: Default::default(),
                cpu_milli: n.cpu_milli,
                memory_mib: n.memory_mib,
                gpus: (0..n.gpus)
                    .map(|i| Gpu {
                        index: i,
                        uuid: String::new(),
                        class: n.model.clone(),
                        memory_mib: 0,
                        mig: vec![],
                    })
                    .collect(),
                models: vec![],
            })
            .collect(),
    }
}

/// The `n`-th arrival as a queued job (of the one tenant a trace has).
pub fn queued_job(pod: &OpenbPod, n: usize, tenant: &Name) -> QueuedJob {
    QueuedJob {
        id: JobId(uuid::Uuid::from_u128(n as u128)),
        tenant: tenant.clone(),
        priority: 0,
        submitted_at: Timestamp(n as i64),
        resources: Resources {
            gpu: pod.request(),
            gpu_classes: pod.gpu_spec.clone(),
            cpu_milli: pod.cpu_milli,
            memory_mib: pod.memory_mib,
        },
        model: None,
        max_runtime_ms: None,
    }
}

/// The placement request for a pod on `cluster`.
pub fn task(cluster: &Cluster, pod: &OpenbPod) -> Task {
    let mut task = Task::new(pod.request(), pod.cpu_milli, pod.memory_mib);
    if !pod.gpu_spec.is_empty() {
        let mut classes = ClassSet::default();
        for model in &pod.gpu_spec {
            if let Some(c) = cluster.class_index(model) {
                classes.insert(c);
            }
        }
        task.classes = classes;
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nodes_and_pods_with_optional_columns() {
        let nodes = read_nodes(
            "n.csv",
            "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\n".as_bytes(),
        )
        .unwrap();
        assert_eq!(nodes[0].gpus, 2);
        let pods = read_pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np0,1000,1024,1,460,T4|P100\np1,1000,1024,0,0,\n".as_bytes(),
        )
        .unwrap();
        assert_eq!(pods[0].gpu_spec, vec!["T4", "P100"]);
        assert_eq!(
            pods[0].request(),
            GpuRequest::Share {
                milli: 460,
                memory_mib: 0
            }
        );
        assert_eq!(pods[1].request(), GpuRequest::None);
        let no_spec = read_pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,8,1000\n".as_bytes(),
        )
        .unwrap();
        assert_eq!(no_spec[0].request(), GpuRequest::Whole { count: 8 });
    }

    #[test]
    fn bad_rows_name_the_line_and_field() {
        let err = read_pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,x,1000\n".as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.csv line 2: num_gpu: \"x\" is not a non-negative integer"
        );
        let err = read_pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,2,500\n".as_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gpu_milli"));
        let err = read_nodes("n.csv", "sn,cpu\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("no \"cpu_milli\" column"));
    }
}
