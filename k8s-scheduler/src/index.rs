//! The cluster as the scheduler sees it: nodes, pods waiting for a node,
//! finpool pods already on one, and the pods this scheduler has just
//! bound (the assume cache). Pure and in memory, in the style of Linkerd's
//! policy-controller indexes: watchers call `apply` and `delete` per kind,
//! and tests drive it with no server.
//!
//! Jobs are keyed by the store's job id, which the operator puts on each
//! job's pod (`finpool.io/job-id`): the store says what to run, the index
//! says which pod runs it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use finpool_domain::{GpuClass, Inventory, JobId, Node as PoolNode, Timestamp};
use finpool_operator::build::JOB_ID_LABEL;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

/// A pod, by what the API server needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    pub fn of(pod: &Pod) -> Option<Self> {
        Some(Self {
            namespace: pod.namespace()?,
            name: pod.metadata.name.clone()?,
            uid: pod.metadata.uid.clone()?,
        })
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub pod: PodRef,
    pub node: String,
}

/// A binding this scheduler made that the watch has not shown yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assumed {
    pub pod: PodRef,
    pub node: String,
    pub at: Timestamp,
}

/// A node as the pool sees it, with the fingerprint of the fields that
/// matter for placement (a heartbeat changes none of them).
#[derive(Debug, Clone)]
struct IndexedNode {
    fingerprint: u64,
    pool: Option<PoolNode>,
    class: Vec<GpuClass>,
}

#[derive(Debug, Default)]
pub struct ClusterIndex {
    nodes: BTreeMap<String, IndexedNode>,
    /// Pods waiting for a node, by job.
    pending: HashMap<JobId, PodRef>,
    /// Pods with this scheduler's name but no job id: not finpool's to place.
    strays: HashMap<String, PodRef>,
    /// finpool pods on a node, by job.
    bound: HashMap<JobId, BoundPod>,
    assumed: HashMap<JobId, Assumed>,
    /// Pod uid → job, to handle deletes.
    by_uid: HashMap<String, JobId>,
    /// Jobs whose bound pod was deleted since the last [`take_gone`].
    ///
    /// [`take_gone`]: ClusterIndex::take_gone
    gone: Vec<(JobId, PodRef)>,
    /// The inventory as last assembled; `None` once a node changed.
    inventory: Option<Arc<Inventory>>,
}

/// The job a pod runs, from its label (or annotation).
pub fn job_of(pod: &Pod) -> Option<JobId> {
    let raw = pod
        .labels()
        .get(JOB_ID_LABEL)
        .or_else(|| pod.annotations().get(JOB_ID_LABEL))?;
    JobId::parse(JOB_ID_LABEL, raw).ok()
}

/// The node annotations that describe what can be placed there.
const PLACEMENT_ANNOTATIONS: [&str; 2] = [
    finpool_operator::inventory::MODELS_ANNOTATION,
    "finpool.io/gpu-inventory",
];

fn fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    // Only the cards and the model cache matter; the agent's usage
    // samples change every half minute and must not re-queue the world.
    for (k, v) in node.annotations() {
        if PLACEMENT_ANNOTATIONS.contains(&k.as_str()) {
            (k, v).hash(&mut h);
        }
    }
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .hash(&mut h);
    if let Some(alloc) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) {
        for (k, v) in alloc {
            (k, &v.0).hash(&mut h);
        }
    }
    h.finish()
}

impl ClusterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a node; returns whether placement could change (new node,
    /// or labels, cards, caches, allocatable or cordon changed).
    pub fn apply_node(&mut self, node: &Node) -> bool {
        let name = node.name_any();
        let fingerprint = fingerprint(node);
        if self
            .nodes
            .get(&name)
            .is_some_and(|n| n.fingerprint == fingerprint)
        {
            return false;
        }
        let mut one = finpool_operator::inventory::from_nodes(std::slice::from_ref(node));
        self.nodes.insert(
            name,
            IndexedNode {
                fingerprint,
                pool: one.nodes.pop(),
                class: one.classes,
            },
        );
        self.inventory = None;
        true
    }

    pub fn delete_node(&mut self, name: &str) -> bool {
        let removed = self.nodes.remove(name).is_some();
        if removed {
            self.inventory = None;
        }
        removed
    }

    /// Replaces every node (a watch relist).
    pub fn reset_nodes(&mut self, nodes: &[Node]) {
        self.nodes.clear();
        self.inventory = None;
        for n in nodes {
            self.apply_node(n);
        }
    }

    /// The pool's inventory, assembled once per node change.
    pub fn inventory(&mut self) -> Arc<Inventory> {
        if let Some(inv) = &self.inventory {
            return inv.clone();
        }
        let mut classes: BTreeMap<String, u64> = BTreeMap::new();
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in self.nodes.values() {
            for c in &n.class {
                let m = classes.entry(c.name.clone()).or_default();
                *m = (*m).max(c.memory_mib);
            }
            if let Some(pool) = &n.pool {
                nodes.push(pool.clone());
            }
        }
        let inv = Arc::new(Inventory {
            classes: classes
                .into_iter()
                .map(|(name, memory_mib)| GpuClass { name, memory_mib })
                .collect(),
            nodes,
        });
        self.inventory = Some(inv.clone());
        inv
    }

    /// Records a pod: waiting for a node, or on one. Returns whether it is
    /// a pod waiting for this scheduler.
    pub fn apply_pod(&mut self, pod: &Pod) -> bool {
        let Some(pod_ref) = PodRef::of(pod) else {
            return false;
        };
        if pod.metadata.deletion_timestamp.is_some() && node_of(pod).is_none() {
            self.delete_pod(pod);
            return false;
        }
        let Some(job) = job_of(pod) else {
            if node_of(pod).is_none() {
                self.strays.insert(pod_ref.uid.clone(), pod_ref);
                return true;
            }
            self.strays.remove(&pod_ref.uid);
            return false;
        };
        self.by_uid.insert(pod_ref.uid.clone(), job);
        match node_of(pod) {
            None => {
                // A pod we bound may show up unbound once more from a
                // stale list; the assumption stands.
                if self
                    .assumed
                    .get(&job)
                    .is_some_and(|a| a.pod.uid == pod_ref.uid)
                {
                    return false;
                }
                self.pending.insert(job, pod_ref);
                true
            }
            Some(node) => {
                if self.pending.get(&job).is_some_and(|p| p.uid == pod_ref.uid) {
                    self.pending.remove(&job);
                }
                if self
                    .assumed
                    .get(&job)
                    .is_some_and(|a| a.pod.uid == pod_ref.uid)
                {
                    self.assumed.remove(&job);
                }
                self.bound.insert(
                    job,
                    BoundPod {
                        pod: pod_ref,
                        node: node.to_owned(),
                    },
                );
                false
            }
        }
    }

    /// Forgets a pod. A bound pod's job is remembered as gone, so that the
    /// driver can settle its record.
    pub fn delete_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        self.strays.remove(uid);
        let Some(job) = self.by_uid.remove(uid) else {
            return;
        };
        if self.pending.get(&job).is_some_and(|p| p.uid == uid) {
            self.pending.remove(&job);
        }
        if let Some(b) = self.bound.get(&job)
            && b.pod.uid == uid
        {
            let b = self.bound.remove(&job).expect("present");
            self.gone.push((job, b.pod));
        }
        if let Some(a) = self.assumed.get(&job)
            && a.pod.uid == uid
        {
            let a = self.assumed.remove(&job).expect("present");
            self.gone.push((job, a.pod));
        }
    }

    /// A pod left the pending watch: bound (the bound watch has it now) or
    /// deleted before it ever ran.
    pub fn delete_pending(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        self.strays.remove(uid);
        let Some(job) = self.by_uid.get(uid).copied() else {
            return;
        };
        if self.pending.get(&job).is_some_and(|p| p.uid == uid) {
            self.pending.remove(&job);
            let placed = self.placed_pod(job).is_some_and(|(p, _)| p.uid == uid);
            if !placed {
                self.by_uid.remove(uid);
            }
        }
    }

    /// This scheduler bound `pod` to `node` for `job`.
    pub fn assume(&mut self, job: JobId, pod: PodRef, node: String, at: Timestamp) {
        if self.pending.get(&job).is_some_and(|p| p.uid == pod.uid) {
            self.pending.remove(&job);
        }
        self.by_uid.insert(pod.uid.clone(), job);
        self.assumed.insert(job, Assumed { pod, node, at });
    }

    /// A pending pod the API server no longer has (a bind answered 404).
    pub fn forget_pending(&mut self, job: JobId) {
        if let Some(p) = self.pending.remove(&job) {
            self.by_uid.remove(&p.uid);
        }
    }

    /// After a relist of bound pods: those not in `seen` (by uid) were
    /// deleted while the watch was down.
    pub fn retain_bound(&mut self, seen: &std::collections::HashSet<String>) {
        let missing: Vec<JobId> = self
            .bound
            .iter()
            .filter(|(_, b)| !seen.contains(&b.pod.uid))
            .map(|(j, _)| *j)
            .collect();
        for job in missing {
            let b = self.bound.remove(&job).expect("present");
            self.by_uid.remove(&b.pod.uid);
            self.gone.push((job, b.pod));
        }
    }

    /// The pod waiting for a node for `job`, if any.
    pub fn pending_pod(&self, job: JobId) -> Option<&PodRef> {
        self.pending.get(&job)
    }

    /// Where `job`'s pod runs, bound or assumed.
    pub fn placed_pod(&self, job: JobId) -> Option<(&PodRef, &str)> {
        self.bound
            .get(&job)
            .map(|b| (&b.pod, b.node.as_str()))
            .or_else(|| self.assumed.get(&job).map(|a| (&a.pod, a.node.as_str())))
    }

    pub fn pending_jobs(&self) -> impl Iterator<Item = (JobId, &PodRef)> {
        self.pending.iter().map(|(j, p)| (*j, p))
    }

    pub fn strays(&self) -> impl Iterator<Item = &PodRef> {
        self.strays.values()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len() + self.strays.len()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Jobs whose bound pod was deleted since the last call.
    pub fn take_gone(&mut self) -> Vec<(JobId, PodRef)> {
        std::mem::take(&mut self.gone)
    }
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use finpool_operator::build::SCHEDULER_NAME;
    use k8s_openapi::api::core::v1::{NodeStatus, PodSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    pub(crate) fn gpu_node(name: &str, count: u32) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.labels = Some(BTreeMap::from([
            ("nvidia.com/gpu.product".to_owned(), "H100".to_owned()),
            ("nvidia.com/gpu.count".to_owned(), count.to_string()),
            ("nvidia.com/gpu.memory".to_owned(), "81920".to_owned()),
        ]));
        node.status = Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("64".into())),
                ("memory".to_owned(), Quantity("512Gi".into())),
            ])),
            ..NodeStatus::default()
        });
        node
    }

    pub(crate) fn job_pod(job: JobId, uid: &str, node: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(format!("job-{uid}"));
        pod.metadata.namespace = Some("alpha-jobs".into());
        pod.metadata.uid = Some(uid.into());
        pod.metadata.labels = Some(BTreeMap::from([(JOB_ID_LABEL.to_owned(), job.to_string())]));
        pod.spec = Some(PodSpec {
            scheduler_name: Some(SCHEDULER_NAME.into()),
            node_name: node.map(str::to_owned),
            ..PodSpec::default()
        });
        pod
    }

    fn job(_n: u8) -> JobId {
        JobId::new_random()
    }

    #[test]
    fn heartbeats_do_not_rebuild_the_inventory() {
        let mut index = ClusterIndex::new();
        let node = gpu_node("gpu-1", 8);
        assert!(index.apply_node(&node));
        let first = index.inventory();
        assert_eq!(first.gpu_count(), 8);
        let mut beat = node.clone();
        beat.metadata.resource_version = Some("2".into());
        assert!(!index.apply_node(&beat), "a heartbeat changes no placement");
        assert!(Arc::ptr_eq(&first, &index.inventory()));
        assert!(index.apply_node(&gpu_node("gpu-1", 4)));
        assert_eq!(index.inventory().gpu_count(), 4);
        assert!(index.delete_node("gpu-1"));
        assert_eq!(index.inventory().gpu_count(), 0);
    }

    #[test]
    fn a_pod_moves_from_pending_to_assumed_to_bound_to_gone() {
        let mut index = ClusterIndex::new();
        let j = job(1);
        let pending = job_pod(j, "u1", None);
        assert!(index.apply_pod(&pending));
        let pod = index.pending_pod(j).cloned().unwrap();
        index.assume(j, pod.clone(), "gpu-1".into(), Timestamp::from_millis(1));
        assert!(index.pending_pod(j).is_none());
        assert_eq!(index.placed_pod(j), Some((&pod, "gpu-1")));
        // A stale unbound copy does not undo the binding.
        assert!(!index.apply_pod(&pending));
        assert!(index.pending_pod(j).is_none());
        let bound = job_pod(j, "u1", Some("gpu-1"));
        index.apply_pod(&bound);
        assert_eq!(index.placed_pod(j).unwrap().1, "gpu-1");
        index.delete_pod(&bound);
        assert!(index.placed_pod(j).is_none());
        assert_eq!(index.take_gone(), vec![(j, pod)]);
        assert!(index.take_gone().is_empty());
    }

    #[test]
    fn a_pod_without_a_job_is_a_stray() {
        let mut index = ClusterIndex::new();
        let mut pod = job_pod(job(2), "u2", None);
        pod.metadata.labels = None;
        assert!(index.apply_pod(&pod));
        assert_eq!(index.strays().count(), 1);
        index.delete_pod(&pod);
        assert_eq!(index.strays().count(), 0);
    }

    #[test]
    fn a_replaced_pod_does_not_evict_its_successor() {
        let mut index = ClusterIndex::new();
        let j = job(3);
        let old = job_pod(j, "old", Some("gpu-1"));
        index.apply_pod(&old);
        let new = job_pod(j, "new", None);
        index.apply_pod(&new);
        index.delete_pod(&old);
        assert_eq!(index.pending_pod(j).unwrap().uid, "new");
        assert_eq!(index.take_gone().len(), 1);
    }
}
