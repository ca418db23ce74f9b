//! What a driver hands the scheduler: the pool, the tenants, the base
//! models and the jobs holding resources, in domain terms.
//! [`Snapshot::build`] turns it into the indexed [`Cluster`] the plugins
//! work on.

use std::collections::BTreeMap;
use std::sync::Arc;

use finpool_domain::{
    BaseModel, GpuClass, IsolationLevel, JobId, Name, Node, Placement, Resources, Tenant, TenantId,
    Timestamp,
};
use rustc_hash::FxHashMap;

use crate::cluster::{
    Allocation, Choice, ClassInfo, ClassSet, Cluster, GpuState, MAX_CLASSES, MAX_GPUS_PER_NODE,
    ModelIdx, NodeState, TenantIdx,
};
use crate::plugins::workload::WorkloadModel;
use crate::task::Task;
use crate::tenants::TenantBook;
use crate::wait::WaitReason;

/// The pool and everything that holds resources in it, at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: Timestamp,
    pub classes: Vec<GpuClass>,
    /// Shared with the inventory it was read from: a pool of thousands of
    /// nodes is not copied every cycle.
    pub nodes: Arc<Vec<Node>>,
    pub tenants: Vec<Tenant>,
    pub models: Vec<BaseModel>,
    /// Jobs that hold resources (admitted or running), less those being
    /// preempted (their resources are as good as free).
    pub running: Vec<RunningJob>,
    /// The base model in each card's memory: (node, GPU index) to model.
    pub resident: BTreeMap<(String, u32), Name>,
    /// Per tenant and class, recent borrowing: the tenant's use above its
    /// guarantee, in milli-GPU, averaged with exponential decay. Fair share
    /// of idle capacity favours tenants that borrowed least lately.
    pub usage: BTreeMap<TenantId, BTreeMap<String, f64>>,
    /// The workload seen recently, for fragmentation-aware scoring; learned
    /// from the queue when absent.
    pub workload: Option<WorkloadModel>,
    /// The runtime assumed for jobs that set no max runtime, when working
    /// out when resources free up (for reservations).
    pub default_max_runtime_ms: u64,
    /// The reservation the previous cycle made, kept while its job waits.
    pub reservation: Option<crate::decide::Reservation>,
    /// A pool without tenants (simulated traces): placement only, no
    /// quotas, preemption or reservations.
    pub tenantless: bool,
    /// Base-model locality's inputs.
    pub locality: LocalityInputs,
    /// How many waiting jobs get a precise reason per decision (the rest
    /// are [`WaitReason::Queued`]); each costs a placement attempt. Any
    /// waiting job that fits no node is [`WaitReason::Infeasible`]
    /// regardless, unless this is 0 (no reasons at all).
    pub explain_limit: usize,
    /// Which borrowing job goes first among tenants of equal fair share.
    pub borrow_order: crate::decide::BorrowOrder,
}

/// The default [`Snapshot::explain_limit`].
pub const EXPLAINED_PER_CYCLE: usize = 256;

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            now: Timestamp::default(),
            classes: Vec::new(),
            nodes: Arc::default(),
            tenants: Vec::new(),
            models: Vec::new(),
            running: Vec::new(),
            resident: BTreeMap::new(),
            usage: BTreeMap::new(),
            workload: None,
            default_max_runtime_ms: 0,
            reservation: None,
            tenantless: false,
            locality: LocalityInputs::default(),
            explain_limit: EXPLAINED_PER_CYCLE,
            borrow_order: crate::decide::BorrowOrder::default(),
        }
    }
}

/// What base-model locality needs to know besides the pool: see
/// `decide::locality`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityInputs {
    pub enabled: bool,
    /// Each model's load time, by name (models missing here never wait).
    pub load_ms: BTreeMap<String, u64>,
    /// How long each job has been held back for locality while a usable
    /// card was free, in milliseconds.
    pub held_ms: crate::JobMap<u64>,
    /// How many load times a job may hold out for (1: one load time).
    pub wait_factor: f64,
}

impl Default for LocalityInputs {
    fn default() -> Self {
        Self {
            enabled: false,
            load_ms: BTreeMap::new(),
            held_ms: crate::JobMap::default(),
            wait_factor: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub id: JobId,
    pub tenant: TenantId,
    pub placement: Placement,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub priority: i32,
    /// When it started; `None` while admitted but not yet running.
    pub started_at: Option<Timestamp>,
    /// It may not be preempted before it has run this long.
    pub min_runtime_ms: u64,
    pub max_runtime_ms: Option<u64>,
    pub model: Option<Name>,
    /// Jobs it was started by preempting; none of them may preempt it back.
    pub displaced: Vec<JobId>,
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
    pub max_runtime_ms: Option<u64>,
}

impl QueuedJob {
    /// A pending job as the scheduler sees it.
    pub fn of(job: &finpool_domain::Job) -> Self {
        Self {
            id: job.id,
            tenant: job.tenant_id.clone(),
            priority: job.spec.priority,
            submitted_at: job.created_at,
            resources: job.spec.resources.clone(),
            model: job.spec.model.clone(),
            max_runtime_ms: job.spec.max_runtime_ms,
        }
    }
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

/// A running job in the scheduler's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub id: JobId,
    pub tenant: Option<TenantIdx>,
    /// What it holds, card by card (the first carries its CPU and memory).
    pub pieces: Vec<Allocation>,
    pub node: u32,
    pub priority: i32,
    pub started_at: Option<Timestamp>,
    pub min_runtime_ms: u64,
    /// When it will have ended at the latest, by its max runtime.
    pub ends_by: Timestamp,
    /// Jobs it preempted to start, which may not preempt it back.
    pub displaced: Vec<JobId>,
}

/// A snapshot in the scheduler's indexed terms.
#[derive(Debug, Clone)]
pub struct Built {
    pub cluster: Cluster,
    pub tenants: TenantBook,
    pub held: Vec<Held>,
    /// Running jobs whose placement no longer matches the inventory.
    pub warnings: Vec<String>,
    // Looked up for every job each cycle: a fast hash (the names are the
    // operators' own, not a tenant's).
    node_index: FxHashMap<String, u32>,
    model_index: FxHashMap<String, ModelIdx>,
}

impl Snapshot {
    pub fn build(&self) -> Result<Built, SnapshotError> {
        let model_index: FxHashMap<String, ModelIdx> = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.to_string(), i as ModelIdx))
            .collect();
        let mut classes: Vec<ClassInfo> = self
            .classes
            .iter()
            .map(|c| ClassInfo {
                name: c.name.clone(),
                memory_mib: c.memory_mib,
            })
            .collect();
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in self.nodes.iter() {
            if n.gpus.len() > MAX_GPUS_PER_NODE {
                return Err(SnapshotError::TooManyGpus {
                    node: n.name.clone(),
                    gpus: n.gpus.len(),
                });
            }
            let mut gpus = Vec::with_capacity(n.gpus.len());
            // The node's resident models, looked up once per node rather
            // than once per card (a pool of 80,000 cards most of which
            // hold none).
            let resident: Vec<(u32, &Name)> = if self.resident.is_empty() {
                Vec::new()
            } else {
                self.resident
                    .range((n.name.clone(), 0)..=(n.name.clone(), u32::MAX))
                    .map(|((_, index), model)| (*index, model))
                    .collect()
            };
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
                let mut gpu = GpuState::new(g.index, class as u8, g.memory_mib)
                    .with_slices(g.mig.iter().map(|s| (s.milli, s.memory_mib)));
                gpu.resident_model = resident
                    .iter()
                    .find(|(index, _)| *index == g.index)
                    .and_then(|(_, m)| model_index.get(m.as_str()).copied());
                gpus.push(gpu);
            }
            let mut node = NodeState::new(n.name.clone(), n.cpu_milli, n.memory_mib, gpus);
            let mut models: Vec<ModelIdx> = n
                .models
                .iter()
                .filter_map(|m| model_index.get(m).copied())
                .collect();
            models.sort_unstable();
            models.dedup();
            node.models = models;
            nodes.push(node);
        }
        let mut tenants = TenantBook::default();
        for t in &self.tenants {
            let quotas = classes.iter().map(|c| t.quota(&c.name)).collect();
            let idx = tenants.push(t.id.as_str(), quotas, t.weight);
            tenants.set_mig(idx, t.isolation == IsolationLevel::Mig);
            tenants.set_suspended(idx, t.is_suspended());
        }
        let node_index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i as u32))
            .collect();
        let mut built = Built {
            cluster: Cluster::new(classes, nodes),
            tenants,
            held: Vec::new(),
            warnings: Vec::new(),
            node_index,
            model_index,
        };
        for job in &self.running {
            built.apply_running(job, self.now, self.default_max_runtime_ms);
        }
        Ok(built)
    }
}

impl Built {
    pub fn node_index(&self, name: &str) -> Option<u32> {
        self.node_index.get(name).copied()
    }

    pub fn model_index(&self, name: &Name) -> Option<ModelIdx> {
        self.model_index.get(name.as_str()).copied()
    }

    /// Charges a running job's resources to the cluster, card by card.
    fn apply_running(&mut self, job: &RunningJob, now: Timestamp, default_max_runtime_ms: u64) {
        let Some(node) = self.node_index(&job.placement.node) else {
            self.warnings.push(format!(
                "job {} runs on node {} which is not in the inventory",
                job.id, job.placement.node
            ));
            return;
        };
        let tenant = self.tenants.index_of(job.tenant.as_str());
        let model = job.model.as_ref().and_then(|m| self.model_index(m));
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
            let slice = match a.mig_slice {
                Some(s) if (s as usize) < gpus[pos].slices.len() => Some(s as u8),
                Some(s) => {
                    self.warnings.push(format!(
                        "job {} holds MIG slice {s} of GPU {} which is not in the inventory",
                        job.id, a.index
                    ));
                    continue;
                }
                None => None,
            };
            pieces.push(Choice {
                gpus: 1 << pos,
                milli: a.milli,
                memory_mib: Some(a.memory_mib),
                slice,
            });
        }
        if pieces.is_empty() {
            pieces.push(Choice::NO_GPU);
        }
        let allocations: Vec<Allocation> = pieces
            .into_iter()
            .enumerate()
            .map(|(i, choice)| Allocation {
                node,
                choice,
                tenant,
                cpu_milli: if i == 0 { job.cpu_milli } else { 0 },
                memory_mib: if i == 0 { job.memory_mib } else { 0 },
                model,
            })
            .collect();
        for a in &allocations {
            if !self.cluster.fits(a) {
                self.warnings.push(format!(
                    "job {} overlaps another job on node {}",
                    job.id, job.placement.node
                ));
            }
            self.cluster.apply(a);
        }
        let started = job.started_at.unwrap_or(now);
        let runtime = job.max_runtime_ms.unwrap_or(default_max_runtime_ms);
        self.held.push(Held {
            id: job.id,
            tenant,
            pieces: allocations,
            node,
            priority: job.priority,
            started_at: job.started_at,
            min_runtime_ms: job.min_runtime_ms,
            ends_by: Timestamp(started.0.saturating_add(runtime as i64)),
            displaced: job.displaced.clone(),
        });
    }

    /// The placement request for a queued job, or why it has none. In a
    /// tenant-less pool the task has no tenant.
    pub fn task_for(
        &self,
        job: &QueuedJob,
        models: &[BaseModel],
        tenantless: bool,
    ) -> Result<Task, WaitReason> {
        let tenant = match self.tenants.index_of(job.tenant.as_str()) {
            _ if tenantless => None,
            Some(t) if self.tenants.is_suspended(t) => {
                return Err(WaitReason::TenantSuspended {
                    tenant: job.tenant.to_string(),
                });
            }
            Some(t) => Some(t),
            None => {
                return Err(WaitReason::UnknownTenant {
                    tenant: job.tenant.to_string(),
                });
            }
        };
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
        let model = job.model.as_ref().and_then(|m| self.model_index(m));
        // `models` is usually the list this snapshot indexed.
        let min_gpu_memory_mib = job
            .model
            .as_ref()
            .and_then(|m| {
                model
                    .and_then(|i| models.get(i as usize))
                    .filter(|bm| &bm.name == m)
                    .or_else(|| models.iter().find(|bm| &bm.name == m))
            })
            .map_or(0, |bm| bm.min_gpu_memory_mib);
        Ok(Task {
            tenant,
            gpu: job.resources.gpu,
            classes,
            cpu_milli: job.resources.cpu_milli,
            memory_mib: job.resources.memory_mib,
            min_gpu_memory_mib,
            model,
            mig: tenant.is_some_and(|t| self.tenants.is_mig(t)),
            model_fit: crate::task::ModelFit::Any,
        })
    }

    /// The domain placement for an indexed one on `cluster` (this
    /// snapshot's). `inventory` is the node list it was built from (for
    /// card and slice UUIDs).
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
                    let uuid = match p.choice.slice {
                        Some(s) => source.gpus[i].mig[s as usize].uuid.clone(),
                        None => source.gpus[i].uuid.clone(),
                    };
                    finpool_domain::GpuAssignment {
                        index: g.index,
                        uuid,
                        class: cluster.classes[g.class as usize].name.clone(),
                        milli: p.choice.milli,
                        memory_mib: p.choice.memory_mib.unwrap_or(g.memory_mib),
                        mig_slice: p.choice.slice.map(u32::from),
                    }
                })
                .collect(),
        }
    }
}
