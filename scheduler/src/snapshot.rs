//! What a driver hands the scheduler: the pool, the tenants and the jobs
//! holding resources, in domain terms. [`Snapshot::build`] turns it into the
//! indexed [`Cluster`] the plugins work on.

use std::collections::HashMap;

use finpool_domain::{
    BaseModel, GpuClass, JobId, Name, Node, Placement, Resources, Tenant, TenantId, Timestamp,
};

use crate::cluster::{
    Allocation, Choice, ClassInfo, ClassSet, Cluster, GpuState, MAX_CLASSES, MAX_GPUS_PER_NODE,
    NodeState,
};
use crate::task::Task;
use crate::tenants::TenantBook;

/// The pool and everything that holds resources in it, at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now: Timestamp,
    pub classes: Vec<GpuClass>,
    pub nodes: Vec<Node>,
    pub tenants: Vec<Tenant>,
    pub models: Vec<BaseModel>,
    /// Jobs that hold resources (admitted or running).
    pub running: Vec<RunningJob>,
    /// The workload seen recently, for fragmentation-aware scoring.
    pub workload: Option<crate::plugins::fragmentation::WorkloadModel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub id: JobId,
    pub tenant: TenantId,
    pub placement: Placement,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

/// A job waiting to be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: JobId,
    pub tenant: TenantId,
    pub priority: i32,
    pub submitted_at: Timestamp,
    pub resources: Resources,
    pub model: Option<Name>,
}

/// A snapshot the scheduler cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    TooManyClasses(usize),
    TooManyGpus { node: String, gpus: usize },
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyClasses(n) => {
                write!(
                    f,
                    "the pool has {n} GPU classes; at most {MAX_CLASSES} are supported"
                )
            }
            Self::TooManyGpus { node, gpus } => write!(
                f,
                "node {node} has {gpus} GPUs; at most {MAX_GPUS_PER_NODE} per node are supported"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// A snapshot in the scheduler's indexed terms.
#[derive(Debug, Clone)]
pub struct Built {
    pub cluster: Cluster,
    pub tenants: TenantBook,
    /// Running jobs whose placement no longer matches the inventory.
    pub warnings: Vec<String>,
    node_index: HashMap<String, u32>,
}

impl Snapshot {
    pub fn build(&self) -> Result<Built, SnapshotError> {
        let mut classes: Vec<ClassInfo> = self
            .classes
            .iter()
            .map(|c| ClassInfo {
                name: c.name.clone(),
                memory_mib: c.memory_mib,
            })
            .collect();
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            if n.gpus.len() > MAX_GPUS_PER_NODE {
                return Err(SnapshotError::TooManyGpus {
                    node: n.name.clone(),
                    gpus: n.gpus.len(),
                });
            }
            let mut gpus = Vec::with_capacity(n.gpus.len());
            for g in &n.gpus {
                let class = match classes.iter().position(|c| c.name == g.class) {
                    Some(i) => i,
                    None => {
                        classes.push(ClassInfo {
                            name: g.class.clone(),
                            memory_mib: g.memory_mib,
                        });
                        classes.len() - 1
                    }
                };
                if classes.len() > MAX_CLASSES {
                    return Err(SnapshotError::TooManyClasses(classes.len()));
                }
                gpus.push(GpuState::new(g.index, class as u8, g.memory_mib));
            }
            nodes.push(NodeState::new(
                n.name.clone(),
                n.cpu_milli,
                n.memory_mib,
                gpus,
            ));
        }
        let mut tenants = TenantBook::default();
        for t in &self.tenants {
            let quotas = classes.iter().map(|c| t.quota(&c.name)).collect();
            tenants.push(t.id.as_str(), quotas, t.weight);
        }
        let node_index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i as u32))
            .collect();
        let mut built = Built {
            cluster: Cluster::new(classes, nodes),
            tenants,
            warnings: Vec::new(),
            node_index,
        };
        for job in &self.running {
            built.apply_running(job);
        }
        Ok(built)
    }
}

impl Built {
    pub fn node_index(&self, name: &str) -> Option<u32> {
        self.node_index.get(name).copied()
    }

    /// Charges a running job's resources to the cluster, card by card.
    fn apply_running(&mut self, job: &RunningJob) {
        let Some(node) = self.node_index(&job.placement.node) else {
            self.warnings.push(format!(
                "job {} runs on node {} which is not in the inventory",
                job.id, job.placement.node
            ));
            return;
        };
        let tenant = self.tenants.index_of(job.tenant.as_str());
        let mut pieces = Vec::with_capacity(job.placement.gpus.len().max(1));
        for a in &job.placement.gpus {
            let gpus = &self.cluster.nodes[node as usize].gpus;
            let Some(pos) = gpus.iter().position(|g| g.index == a.index) else {
                self.warnings.push(format!(
                    "job {} holds GPU {} on node {} which is not in the inventory",
                    job.id, a.index, job.placement.node
                ));
                continue;
            };
            pieces.push(Choice {
                gpus: 1 << pos,
                milli: a.milli,
                memory_mib: Some(a.memory_mib),
            });
        }
        if pieces.is_empty() {
            pieces.push(Choice::NO_GPU);
        }
        for (i, choice) in pieces.into_iter().enumerate() {
            let first = i == 0;
            self.cluster.apply(&Allocation {
                node,
                choice,
                tenant,
                cpu_milli: if first { job.cpu_milli } else { 0 },
                memory_mib: if first { job.memory_mib } else { 0 },
            });
        }
    }

    /// The placement request for a queued job, or why it has none.
    pub fn task_for(&self, job: &QueuedJob, models: &[BaseModel]) -> Result<Task, String> {
        let tenant = self
            .tenants
            .index_of(job.tenant.as_str())
            .ok_or_else(|| format!("tenant {} is unknown", job.tenant))?;
        let classes = if job.resources.gpu_classes.is_empty() {
            ClassSet::ALL
        } else {
            let mut set = ClassSet::default();
            for name in &job.resources.gpu_classes {
                if let Some(c) = self.cluster.class_index(name) {
                    set.insert(c);
                }
            }
            set
        };
        let min_gpu_memory_mib = job
            .model
            .as_ref()
            .and_then(|m| models.iter().find(|bm| &bm.name == m))
            .map_or(0, |bm| bm.min_gpu_memory_mib);
        Ok(Task {
            tenant: Some(tenant),
            gpu: job.resources.gpu,
            classes,
            cpu_milli: job.resources.cpu_milli,
            memory_mib: job.resources.memory_mib,
            min_gpu_memory_mib,
        })
    }

    /// The domain placement for an indexed one on `cluster` (this
    /// snapshot's). `inventory` is the node list it was built from (for
    /// card UUIDs).
    pub fn to_domain(
        &self,
        cluster: &Cluster,
        p: &crate::placer::Placement,
        inventory: &[Node],
    ) -> Placement {
        let node = &cluster.nodes[p.node as usize];
        let source = &inventory[p.node as usize];
        Placement {
            node: node.name.clone(),
            gpus: p
                .choice
                .positions()
                .map(|i| {
                    let g = &node.gpus[i];
                    finpool_domain::GpuAssignment {
                        index: g.index,
                        uuid: source.gpus[i].uuid.clone(),
                        class: cluster.classes[g.class as usize].name.clone(),
                        milli: p.choice.milli,
                        memory_mib: p.choice.memory_mib.unwrap_or(g.memory_mib),
                    }
                })
                .collect(),
        }
    }
}
