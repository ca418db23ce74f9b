//! Fast placement for long runs of tasks over the same cluster.
//!
//! Two facts make placement cheap without changing its answer:
//!
//! - A score depends only on the task, the chosen node's state and the
//!   context (the [`Scorer`](crate::Scorer) contract). So nodes in the same
//!   state score the same, and the engine scores each *class* of identical
//!   nodes once: a fresh pool of 10,000 identical nodes is one class.
//! - Placing a task changes one node. So the engine keeps, per task shape,
//!   every class's best score in a max-tree, and after a placement rescores
//!   only the classes that changed since that shape was last asked for.
//!
//! The answer is exactly what [`Policy::place`] would give (same scores;
//! ties to the lowest node index); tests hold the two to each other.

use std::collections::{BTreeSet, HashMap};

use finpool_domain::GpuRequest;

use crate::cluster::{Allocation, Cluster, NodeIdx, NodeState, TenantIdx};
use crate::placer::Placement;
use crate::plugins::workload::WorkloadModel;
use crate::plugins::{Ctx, Policy, QuotaBound};
use crate::task::Task;
use crate::tenants::TenantBook;

/// What a placement may consider besides the task: quotas, the workload.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub tenants: &'a TenantBook,
    pub bound: QuotaBound,
    /// Per class, a further cap on what the tenant may hold (milli-GPU).
    pub caps: Option<&'a [u64]>,
    /// A node the task may not use (reserved for another job).
    pub avoid_node: Option<NodeIdx>,
    pub workload: &'a WorkloadModel,
    /// Must change whenever `workload` does.
    pub workload_epoch: u64,
}

impl<'a> Request<'a> {
    pub fn new(
        tenants: &'a TenantBook,
        bound: QuotaBound,
        workload: &'a WorkloadModel,
        workload_epoch: u64,
    ) -> Self {
        Self {
            tenants,
            bound,
            caps: None,
            avoid_node: None,
            workload,
            workload_epoch,
        }
    }

    fn ctx<'c>(&self, cluster: &'c Cluster) -> Ctx<'c>
    where
        'a: 'c,
    {
        Ctx {
            cluster,
            tenants: self.tenants,
            bound: self.bound,
            caps: self.caps,
            avoid_node: self.avoid_node,
            workload: self.workload,
        }
    }
}

/// Stands for "some tenant that holds nothing" in index keys, so that the
/// many tenants asking for the same shape share one index.
const ANY_TENANT: TenantIdx = TenantIdx::MAX;

/// A cluster plus the per-shape score indexes over its node classes.
pub struct Engine<'p> {
    policy: &'p Policy,
    cluster: Cluster,
    classes: NodeClasses,
    /// Classes changed, in order.
    log: Vec<u32>,
    /// Per class slot, the position of its latest entry in `log`.
    last_change: Vec<usize>,
    /// Per class slot, the position in `log` where it last took on a new
    /// state. Classes that only gained or lost members keep their scores.
    created_at: Vec<usize>,
    shapes: HashMap<Task, ShapeIndex>,
    /// Identifies the workload model the indexes were scored with.
    workload_epoch: u64,
    /// Per tenant, the nodes where it holds a (time-shared) card.
    owned: HashMap<TenantIdx, BTreeSet<NodeIdx>>,
    /// Per node, the tenants holding its cards.
    owners: Vec<Vec<TenantIdx>>,
}

impl<'p> Engine<'p> {
    pub fn new(policy: &'p Policy, cluster: Cluster) -> Self {
        let classes = NodeClasses::new(&cluster.nodes);
        let slots = classes.slots.len();
        let mut engine = Self {
            policy,
            owners: vec![Vec::new(); cluster.nodes.len()],
            cluster,
            classes,
            log: Vec::new(),
            last_change: vec![usize::MAX; slots],
            created_at: vec![0; slots],
            shapes: HashMap::new(),
            workload_epoch: 0,
            owned: HashMap::new(),
        };
        for n in 0..engine.cluster.nodes.len() {
            engine.track_owners(n as NodeIdx);
        }
        engine
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn policy(&self) -> &'p Policy {
        self.policy
    }

    pub fn into_cluster(self) -> Cluster {
        self.cluster
    }

    /// Distinct node states right now.
    pub fn class_count(&self) -> usize {
        self.classes
            .slots
            .iter()
            .filter(|s| !s.members.is_empty())
            .count()
    }

    /// Records an allocation (see [`Cluster::apply`]).
    pub fn apply(&mut self, a: &Allocation) {
        self.cluster.apply(a);
        self.touched(a.node);
    }

    /// Undoes an allocation (see [`Cluster::release`]).
    pub fn release(&mut self, a: &Allocation) {
        self.cluster.release(a);
        self.touched(a.node);
    }

    fn touched(&mut self, node: NodeIdx) {
        let (old, new, created) = self.classes.moved(node, &self.cluster.nodes[node as usize]);
        let slots = self.classes.slots.len();
        if self.last_change.len() < slots {
            self.last_change.resize(slots, usize::MAX);
            self.created_at.resize(slots, 0);
        }
        for slot in [old, new] {
            if slot == new && created {
                self.created_at[slot as usize] = self.log.len();
            }
            self.last_change[slot as usize] = self.log.len();
            self.log.push(slot);
        }
        self.track_owners(node);
    }

    fn track_owners(&mut self, node: NodeIdx) {
        let mut now: Vec<TenantIdx> = self.cluster.nodes[node as usize]
            .gpus
            .iter()
            .filter_map(|g| g.owner)
            .collect();
        now.sort_unstable();
        now.dedup();
        let before = std::mem::replace(&mut self.owners[node as usize], now.clone());
        for t in before.iter().filter(|t| !now.contains(t)) {
            if let Some(set) = self.owned.get_mut(t) {
                set.remove(&node);
            }
        }
        for t in now.iter().filter(|t| !before.contains(t)) {
            self.owned.entry(*t).or_default().insert(node);
        }
    }

    /// The best placement for `task`, exactly as [`Policy::place`] would
    /// choose it.
    pub fn place(&mut self, request: &Request<'_>, task: &Task) -> Option<Placement> {
        if request.workload_epoch != self.workload_epoch {
            self.shapes.clear();
            self.workload_epoch = request.workload_epoch;
        }
        let ctx = request.ctx(&self.cluster);
        if !self.policy.cacheable() || ctx.avoid_node.is_some() || quota_may_bind(&ctx, task) {
            return self.policy.place(&ctx, task);
        }
        // Quota cannot bind for this task: index scores without it, under a
        // key shared by every tenant asking for the same shape. For whole
        // GPUs, CPU-only work and MIG slices a tenant's identity changes a
        // score by a constant at most; a time-shared fraction may also go
        // on a card its tenant already holds, which the nodes it holds
        // cover.
        let key = match task.tenant {
            Some(_) => Task {
                tenant: Some(ANY_TENANT),
                ..*task
            },
            None => *task,
        };
        let free_ctx = Ctx {
            bound: QuotaBound::Unbounded,
            caps: None,
            ..ctx
        };
        let policy = self.policy;
        let classes = &self.classes;
        let score = |slot: u32| -> (f64, u32) {
            match classes.representative(slot) {
                None => (f64::NEG_INFINITY, u32::MAX),
                Some(node) => (
                    policy
                        .best_on_node(&free_ctx, &key, node)
                        .map_or(f64::NEG_INFINITY, |p| p.score),
                    node,
                ),
            }
        };
        let representative = |slot: u32| classes.representative(slot);
        let slots = classes.slots.len();
        let index = self
            .shapes
            .entry(key)
            .or_insert_with(|| ShapeIndex::new(slots, &score));
        index.catch_up(
            slots,
            &self.log,
            &self.last_change,
            &self.created_at,
            &score,
            &representative,
        );
        let mut candidates: Vec<NodeIdx> = index.best().into_iter().collect();
        if let (Some(t), GpuRequest::Share { .. }, false) = (task.tenant, task.gpu, task.mig)
            && let Some(nodes) = self.owned.get(&t)
        {
            candidates.extend(nodes.iter().copied());
        }
        let mut best: Option<Placement> = None;
        for node in candidates {
            if let Some(p) = policy.best_on_node(&ctx, task, node)
                && best.is_none_or(|b| p.score > b.score || (p.score == b.score && p.node < b.node))
            {
                best = Some(p);
            }
        }
        best
    }
}

/// Whether the tenant is close enough to its quota on some class the task
/// may use that the quota could rule a choice out.
fn quota_may_bind(ctx: &Ctx<'_>, task: &Task) -> bool {
    let Some(tenant) = task.tenant else {
        return false;
    };
    if ctx.bound == QuotaBound::Unbounded {
        return false;
    }
    let need = task.gpu.gpu_count();
    if need == 0 {
        return false;
    }
    (0..ctx.cluster.classes.len()).any(|c| {
        let c = c as u8;
        if !task.classes.contains(c) {
            return false;
        }
        let bound = ctx.quota_bound_milli(tenant, c).unwrap_or(u64::MAX);
        ctx.cluster.held_milli(tenant, c) + need as u64 * finpool_domain::MILLI_PER_GPU as u64
            > bound
    })
}

/// Everything a filter or scorer may read of a node, as a key: nodes with
/// equal keys are interchangeable for placement.
fn state_key(node: &NodeState) -> Vec<u64> {
    let mut key = Vec::with_capacity(4 + node.gpus.len() * 3);
    key.extend([
        node.cpu_milli,
        node.memory_mib,
        node.used_cpu_milli,
        node.used_memory_mib,
    ]);
    for g in &node.gpus {
        key.push((g.class as u64) << 32 | g.used_milli as u64);
        key.push(g.memory_mib << 32 | g.used_memory_mib);
        key.push((g.owner.map_or(0, |o| o as u64 + 1)) << 32 | g.jobs as u64);
        key.push(g.resident_model.map_or(0, |m| m as u64 + 1) << 32 | g.slices.len() as u64);
        for s in &g.slices {
            key.push(
                (s.milli as u64) << 48
                    | (s.taken as u64) << 40
                    | s.taken_by.map_or(0, |t| t as u64 + 1),
            );
            key.push(s.memory_mib);
        }
    }
    key.push(u64::MAX);
    key.extend(node.models.iter().map(|m| *m as u64));
    key
}

struct Slot {
    key: Vec<u64>,
    members: BTreeSet<u32>,
}

/// Nodes grouped by state.
struct NodeClasses {
    slots: Vec<Slot>,
    by_key: HashMap<Vec<u64>, u32>,
    slot_of: Vec<u32>,
    free: Vec<u32>,
}

impl NodeClasses {
    fn new(nodes: &[NodeState]) -> Self {
        let mut classes = Self {
            slots: Vec::new(),
            by_key: HashMap::new(),
            slot_of: vec![0; nodes.len()],
            free: Vec::new(),
        };
        for (i, node) in nodes.iter().enumerate() {
            let slot = classes.slot_for(state_key(node));
            classes.slots[slot as usize].members.insert(i as u32);
            classes.slot_of[i] = slot;
        }
        classes
    }

    fn slot_for(&mut self, key: Vec<u64>) -> u32 {
        if let Some(&slot) = self.by_key.get(&key) {
            return slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].key = key.clone();
                slot
            }
            None => {
                self.slots.push(Slot {
                    key: key.clone(),
                    members: BTreeSet::new(),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.by_key.insert(key, slot);
        slot
    }

    /// Moves `node` to the class of its new state; returns the old and new
    /// slots, and whether the new one is a state no node had a moment ago.
    fn moved(&mut self, node: NodeIdx, state: &NodeState) -> (u32, u32, bool) {
        let old = self.slot_of[node as usize];
        let slot = &mut self.slots[old as usize];
        slot.members.remove(&node);
        if slot.members.is_empty() {
            let key = std::mem::take(&mut slot.key);
            self.by_key.remove(&key);
            self.free.push(old);
        }
        let key = state_key(state);
        let created = !self.by_key.contains_key(&key);
        let new = self.slot_for(key);
        self.slots[new as usize].members.insert(node);
        self.slot_of[node as usize] = new;
        (old, new, created)
    }

    /// The class's lowest-index node: the one exhaustive placement would pick.
    fn representative(&self, slot: u32) -> Option<u32> {
        self.slots.get(slot as usize)?.members.first().copied()
    }
}

/// Every class's best score for one task shape, in a max-tree of values:
/// `tree[size + slot]` is the slot's (score, lowest node index), and every
/// inner entry is the better of its two children, so siblings sit side by
/// side in memory.
struct ShapeIndex {
    tree: Vec<(f64, u32)>,
    /// How much of the change log is reflected here.
    log_position: usize,
}

const EMPTY: (f64, u32) = (f64::NEG_INFINITY, u32::MAX);

/// `a` beats `b`: higher score, then lower node index.
fn better(a: (f64, u32), b: (f64, u32)) -> (f64, u32) {
    if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
        b
    } else {
        a
    }
}

impl ShapeIndex {
    fn new(slots: usize, score: &impl Fn(u32) -> (f64, u32)) -> Self {
        let size = slots.next_power_of_two().max(2);
        let mut tree = vec![EMPTY; 2 * size];
        for s in 0..slots {
            tree[size + s] = score(s as u32);
        }
        let mut index = Self {
            tree,
            log_position: 0,
        };
        index.rebuild_inner();
        index
    }

    fn size(&self) -> usize {
        self.tree.len() / 2
    }

    fn rebuild_inner(&mut self) {
        for i in (1..self.size()).rev() {
            self.tree[i] = better(self.tree[2 * i], self.tree[2 * i + 1]);
        }
    }

    /// Makes room for more class slots, keeping the scores known so far
    /// (new slots appear in the log, so they are scored when caught up).
    fn grow(&mut self, slots: usize) {
        let old = self.size();
        let size = slots.next_power_of_two();
        let mut tree = vec![EMPTY; 2 * size];
        tree[size..size + old].copy_from_slice(&self.tree[old..2 * old]);
        self.tree = tree;
        self.rebuild_inner();
    }

    fn leaf(&self, slot: usize) -> (f64, u32) {
        self.tree[self.size() + slot]
    }

    fn update(&mut self, slot: usize, value: (f64, u32)) {
        let mut i = self.size() + slot;
        if self.tree[i] == value {
            return;
        }
        self.tree[i] = value;
        i /= 2;
        while i >= 1 {
            let best = better(self.tree[2 * i], self.tree[2 * i + 1]);
            if self.tree[i] == best {
                break;
            }
            self.tree[i] = best;
            i /= 2;
        }
    }

    /// Brings the classes changed since this index last looked at the log
    /// up to date: a class in a new state is rescored; one that only gained
    /// or lost members keeps its score and updates its lowest node.
    fn catch_up(
        &mut self,
        slots: usize,
        log: &[u32],
        last_change: &[usize],
        created_at: &[usize],
        score: &impl Fn(u32) -> (f64, u32),
        representative: &impl Fn(u32) -> Option<u32>,
    ) {
        if slots > self.size() {
            self.grow(slots);
        }
        let pending = &log[self.log_position..];
        for (offset, &slot) in pending.iter().enumerate() {
            // A class changed several times is handled once, at its last change.
            if last_change[slot as usize] != self.log_position + offset {
                continue;
            }
            let value = match representative(slot) {
                None => EMPTY,
                Some(_) if created_at[slot as usize] >= self.log_position => score(slot),
                Some(node) => (self.leaf(slot as usize).0, node),
            };
            self.update(slot as usize, value);
        }
        self.log_position = log.len();
    }

    fn best(&self) -> Option<NodeIdx> {
        let (score, node) = self.tree[1];
        (score > f64::NEG_INFINITY).then_some(node)
    }
}
