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
//! - From one decision to the next most nodes keep their state. So the
//!   indexes carry over ([`EngineCache`]) while what else scores read
//!   stays the same ([`ScoreInputs`]), and only the nodes whose state
//!   differs are re-indexed.
//!
//! The answer is exactly what [`Policy::place`] would give (same scores;
//! ties to the lowest node index); tests hold the two to each other.

use std::cell::OnceCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use finpool_domain::GpuRequest;

use crate::cluster::{Allocation, ClassInfo, Cluster, ModelDemand, NodeIdx, NodeState, TenantIdx};
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
            node_memo: None,
            memo: None,
        }
    }
}

/// Stands for "some tenant that holds nothing" in index keys, so that the
/// many tenants asking for the same shape share one index.
const ANY_TENANT: TenantIdx = TenantIdx::MAX;

/// An index no decision asked for in this many decisions is dropped when
/// the indexes carry over to the next one.
const KEEP_UNUSED_DECISIONS: u64 = 4;

/// Score trees kept for reuse: a fresh one costs the kernel zeroed pages.
const SPARE_TREES: usize = 32;

/// Everything besides the nodes' states that the indexes' scores depend
/// on: indexes carry over to the next decision ([`EngineCache`]) only
/// when all of it is the same.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoreInputs {
    pub workload: WorkloadModel,
    pub tenants: TenantBook,
    pub classes: Vec<ClassInfo>,
    pub model_demand: Vec<ModelDemand>,
    /// The base models' names by [`crate::cluster::ModelIdx`].
    pub models: Vec<String>,
    pub nodes: usize,
}

/// The indexes an engine built, kept from one decision to the next (a
/// cycle keeps them in its volatile memory). At the next decision the
/// engine compares every node's state with the one its indexes know and
/// re-indexes only the nodes that differ; if anything else that scores
/// read differs ([`ScoreInputs`]), or the policy, it starts afresh.
#[derive(Default)]
pub struct EngineCache {
    kept: Option<Kept>,
}

struct Kept {
    inputs: ScoreInputs,
    /// The policy the scores are of (its address: one cycle, one policy).
    policy: usize,
    indexes: Indexes,
}

impl std::fmt::Debug for EngineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kept {
            None => f.write_str("EngineCache(empty)"),
            Some(k) => write!(
                f,
                "EngineCache({} nodes, {} shapes)",
                k.inputs.nodes,
                k.indexes.shapes.len()
            ),
        }
    }
}

/// A cluster plus the per-shape score indexes over its node classes.
pub struct Engine<'p> {
    policy: &'p Policy,
    cluster: Cluster,
    indexes: Indexes,
    /// Set when the engine may be kept for the next decision.
    inputs: Option<ScoreInputs>,
    /// The policy checks tenant isolation and quotas (so a tenant out of
    /// quota can only add to cards it holds: see [`Engine::place`]).
    isolates: bool,
}

/// The part of an engine that outlives a decision.
struct Indexes {
    classes: NodeClasses,
    /// Class changes so far: each change is stamped with the count before
    /// it, and an index knows every change stamped below its position.
    clock: usize,
    /// The classes changed, each once, in the order of their latest
    /// change: an index catching up walks back from the latest until it
    /// meets a change it knows, so a class changed many times since costs
    /// one step, not one per change.
    changed: ChangeList,
    /// Per class slot, the stamp of its latest change.
    last_change: Vec<usize>,
    /// Per class slot, the stamp of the change that gave it a new state.
    /// Classes that only gained or lost members keep their scores.
    created_at: Vec<usize>,
    /// Per class slot, the scorers' memo for its state ([`Ctx::remembered`]):
    /// `scorers` cells per slot. Emptied when the slot takes on a new
    /// state or the workload changes.
    memos: Vec<OnceCell<f64>>,
    scorers: usize,
    shapes: HashMap<Task, ShapeIndex, FastHash>,
    /// Identifies the workload model the indexes were scored with.
    workload_epoch: u64,
    /// Per tenant, the nodes where it holds a (time-shared) card that a
    /// share could still join (see [`Indexes::room_only`]).
    owned: HashMap<TenantIdx, BTreeSet<NodeIdx>>,
    /// Whether `owned` leaves out cards with neither milli nor memory
    /// free: exact when the policy checks card capacity (no share fits
    /// such a card), and most held cards are full (whole-GPU work).
    room_only: bool,
    /// Per node, the tenants holding its cards.
    owners: Vec<Vec<TenantIdx>>,
    /// Trees of dropped indexes, for new ones.
    spare: Vec<Vec<(f64, u32)>>,
    /// Decisions these indexes served.
    decisions: u64,
}

impl Indexes {
    fn new(nodes: &[NodeState], scorers: usize, room_only: bool) -> Self {
        let classes = NodeClasses::new(nodes);
        let slots = classes.slots.len();
        let mut indexes = Self {
            memos: vec![OnceCell::new(); slots * scorers],
            scorers,
            owners: vec![Vec::new(); nodes.len()],
            classes,
            clock: 0,
            changed: ChangeList::default(),
            last_change: vec![0; slots],
            created_at: vec![0; slots],
            shapes: HashMap::default(),
            workload_epoch: 0,
            owned: HashMap::new(),
            room_only,
            spare: Vec::new(),
            decisions: 0,
        };
        for (n, node) in nodes.iter().enumerate() {
            indexes.track_owners(n as NodeIdx, node);
        }
        indexes
    }

    /// Moves `node` to the class of its state `key`, and logs the change.
    fn touched(&mut self, node: NodeIdx, state: &NodeState, key: Vec<u64>) {
        let (old, new, created) = self.classes.moved(node, key);
        let slots = self.classes.slots.len();
        if self.last_change.len() < slots {
            self.last_change.resize(slots, 0);
            self.created_at.resize(slots, 0);
            self.memos.resize(slots * self.scorers, OnceCell::new());
        }
        if created {
            for cell in self.memo_mut(new) {
                cell.take();
            }
        }
        for slot in [old, new] {
            let at = self.clock;
            self.clock += 1;
            if slot == new && created {
                self.created_at[slot as usize] = at;
            }
            self.last_change[slot as usize] = at;
            self.changed.mark_latest(slot);
        }
        self.track_owners(node, state);
    }

    /// Re-indexes `node` if its state is not the one its class has.
    fn settle(&mut self, node: NodeIdx, state: &NodeState) {
        let key = state_key(state);
        if self.classes.key_of(node) != key.as_slice() {
            self.touched(node, state, key);
        } else {
            // Who holds its cards is not in the key ([`state_key`]): a card
            // may have changed holders since the indexes last saw it.
            self.track_owners(node, state);
        }
    }

    /// The scorers' memo for the class in `slot`.
    fn memo_mut(&mut self, slot: u32) -> &mut [OnceCell<f64>] {
        let cells = memo_cells(slot, self.scorers);
        &mut self.memos[cells]
    }

    fn track_owners(&mut self, node: NodeIdx, state: &NodeState) {
        let room_only = self.room_only;
        let mut now: Vec<TenantIdx> = state
            .gpus
            .iter()
            .filter(|g| {
                !room_only || (!g.is_mig() && (g.free_milli() > 0 || g.free_memory_mib() > 0))
            })
            .filter_map(|g| g.owner)
            .collect();
        now.sort_unstable();
        now.dedup();
        if now == self.owners[node as usize] {
            return;
        }
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

    /// Drops every index (their trees kept for reuse) and every memo.
    fn drop_shapes(&mut self) {
        self.memos.iter_mut().for_each(|cell| {
            cell.take();
        });
        let spare = &mut self.spare;
        for (_, index) in self.shapes.drain() {
            if spare.len() < SPARE_TREES {
                spare.push(index.tree);
            }
        }
    }

    /// Before a decision: drops the indexes no recent decision asked for.
    fn compact(&mut self) {
        let now = self.decisions;
        let spare = &mut self.spare;
        self.shapes.retain(|_, index| {
            let keep = now.saturating_sub(index.used) <= KEEP_UNUSED_DECISIONS;
            if !keep && spare.len() < SPARE_TREES {
                spare.push(std::mem::take(&mut index.tree));
            }
            keep
        });
    }
}

impl<'p> Engine<'p> {
    pub fn new(policy: &'p Policy, cluster: Cluster) -> Self {
        Self {
            policy,
            indexes: Indexes::new(
                &cluster.nodes,
                policy.scorers.len(),
                checks_capacity(policy),
            ),
            cluster,
            inputs: None,
            isolates: isolates(policy),
        }
    }

    /// An engine for the next decision, going on from the indexes `cache`
    /// kept if they were built for the same policy and inputs: only nodes
    /// whose state differs from the one the indexes know are re-indexed.
    /// [`Engine::keep`] puts the indexes back at the end of the decision.
    /// Placements are exactly those of a fresh engine.
    pub fn resume(
        policy: &'p Policy,
        cluster: Cluster,
        cache: &mut EngineCache,
        inputs: ScoreInputs,
    ) -> Self {
        let address = policy as *const Policy as usize;
        let indexes = match cache.kept.take() {
            Some(kept)
                if kept.policy == address
                    && kept.inputs == inputs
                    && kept.indexes.classes.slot_of.len() == cluster.nodes.len() =>
            {
                let mut indexes = kept.indexes;
                indexes.decisions += 1;
                for (n, node) in cluster.nodes.iter().enumerate() {
                    indexes.settle(n as NodeIdx, node);
                }
                indexes.compact();
                indexes
            }
            Some(mut kept) => {
                kept.indexes.drop_shapes();
                let mut indexes = Indexes::new(
                    &cluster.nodes,
                    policy.scorers.len(),
                    checks_capacity(policy),
                );
                indexes.spare = kept.indexes.spare;
                indexes
            }
            None => Indexes::new(
                &cluster.nodes,
                policy.scorers.len(),
                checks_capacity(policy),
            ),
        };
        Self {
            policy,
            cluster,
            indexes,
            inputs: Some(inputs),
            isolates: isolates(policy),
        }
    }

    /// Keeps the indexes for the next decision (see [`Engine::resume`]).
    pub fn keep(self, cache: &mut EngineCache) {
        if let Some(inputs) = self.inputs {
            cache.kept = Some(Kept {
                inputs,
                policy: self.policy as *const Policy as usize,
                indexes: self.indexes,
            });
        }
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
        self.indexes
            .classes
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

    /// [`Engine::apply`] for a trial that will be undone: the cluster
    /// changes, the indexes do not until [`Engine::settle`]. Until then
    /// only the cluster may be read ([`Engine::place`] may not be called).
    pub fn apply_trial(&mut self, a: &Allocation) {
        self.cluster.apply(a);
    }

    /// [`Engine::release`] for a trial: see [`Engine::apply_trial`].
    pub fn release_trial(&mut self, a: &Allocation) {
        self.cluster.release(a);
    }

    /// After a trial on `node`: re-indexes it if it did not come back to
    /// the state it had.
    pub fn settle(&mut self, node: NodeIdx) {
        self.indexes
            .settle(node, &self.cluster.nodes[node as usize]);
    }

    fn touched(&mut self, node: NodeIdx) {
        let state = &self.cluster.nodes[node as usize];
        self.indexes.touched(node, state, state_key(state));
    }

    /// The best placement for `task`, exactly as [`Policy::place`] would
    /// choose it.
    pub fn place(&mut self, request: &Request<'_>, task: &Task) -> Option<Placement> {
        if request.workload_epoch != self.indexes.workload_epoch {
            self.indexes.drop_shapes();
            self.indexes.workload_epoch = request.workload_epoch;
        }
        let ctx = request.ctx(&self.cluster);
        if !self.policy.cacheable() {
            return self.policy.place(&ctx, task);
        }
        match quota_room(&ctx, task) {
            Room::Open => {}
            // Out of quota on every class it may use, a tenant can only add
            // to cards it already holds: every card a choice takes anew
            // counts a whole card against the quota, and a card another
            // tenant holds is never shared.
            Room::Closed if self.isolates && !task.mig => {
                let t = task.tenant.expect("a quota binds only a tenant");
                return best_of(
                    self.policy,
                    &ctx,
                    task,
                    self.own_cards_may_take(&ctx, task, t),
                );
            }
            Room::Closed | Room::Mixed => return self.policy.place(&ctx, task),
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
        // The node to avoid is left out when the index is read, not when
        // it is scored (the other nodes of its class score the same).
        let free_ctx = Ctx {
            bound: QuotaBound::Unbounded,
            caps: None,
            avoid_node: None,
            ..ctx
        };
        let policy = self.policy;
        let indexes = &mut self.indexes;
        let classes = &indexes.classes;
        let (memos, scorers) = (&indexes.memos, indexes.scorers);
        let score = |slot: u32| -> (f64, u32) {
            match classes.representative(slot) {
                None => EMPTY,
                Some(node) => (
                    policy
                        .best_on_node(
                            &Ctx {
                                node_memo: memos.get(memo_cells(slot, scorers)),
                                ..free_ctx
                            },
                            &key,
                            node,
                        )
                        .map_or(f64::NEG_INFINITY, |p| p.score),
                    node,
                ),
            }
        };
        let slots = classes.slots.len();
        let nodes = classes.slot_of.len();
        let clock = indexes.clock;
        let index = match indexes.shapes.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let tree = indexes.spare.pop().unwrap_or_default();
                e.insert(ShapeIndex::new(tree, slots, clock, nodes, &score))
            }
        };
        index.used = indexes.decisions;
        index.catch_up(
            slots,
            clock,
            &indexes.changed,
            &indexes.last_change,
            &indexes.created_at,
            &score,
            &|slot| classes.representative(slot),
        );
        let best = match ctx.avoid_node {
            None => index.best(),
            Some(avoid) => index.best_avoiding(avoid, classes),
        };
        let mut candidates: Vec<NodeIdx> = best.into_iter().collect();
        if let (Some(t), GpuRequest::Share { .. }, false) = (task.tenant, task.gpu, task.mig) {
            candidates.extend(self.own_cards_may_take(&ctx, task, t));
        }
        best_of(policy, &ctx, task, candidates)
    }

    /// The nodes where `t` holds a card that passes the policy's filters
    /// for `task` (on the others, the task can take only cards no tenant
    /// holds), in node order.
    fn own_cards_may_take(&self, ctx: &Ctx<'_>, task: &Task, t: TenantIdx) -> Vec<NodeIdx> {
        let Some(nodes) = self.indexes.owned.get(&t) else {
            return Vec::new();
        };
        let filters = &self.policy.filters;
        nodes
            .iter()
            .copied()
            .filter(|&n| {
                let node = &self.cluster.nodes[n as usize];
                filters.iter().all(|f| f.node(ctx, task, node))
                    && node.gpus.iter().any(|g| {
                        g.owner == Some(t) && filters.iter().all(|f| f.gpu(ctx, task, node, g))
                    })
            })
            .collect()
    }
}

/// The best placement on any of `nodes`: the highest score, then the
/// lowest node.
fn best_of(
    policy: &Policy,
    ctx: &Ctx<'_>,
    task: &Task,
    nodes: impl IntoIterator<Item = NodeIdx>,
) -> Option<Placement> {
    let mut best: Option<Placement> = None;
    for node in nodes {
        if let Some(p) = policy.best_on_node(ctx, task, node)
            && best.is_none_or(|b| p.score > b.score || (p.score == b.score && p.node < b.node))
        {
            best = Some(p);
        }
    }
    best
}

/// Where the memo of the class in `slot` lies in [`Indexes`]' memos: one
/// cell per scorer.
fn memo_cells(slot: u32, scorers: usize) -> std::ops::Range<usize> {
    let at = slot as usize * scorers;
    at..at + scorers
}

/// Whether the policy refuses a card without room for the task (see
/// [`Indexes::room_only`]).
fn checks_capacity(policy: &Policy) -> bool {
    policy.filters.iter().any(|f| f.name() == "GpuCapacity")
}

/// Whether the policy never time-slices a card between tenants and
/// checks quotas: what [`Engine::place`]'s out-of-quota path relies on.
fn isolates(policy: &Policy) -> bool {
    let has = |name: &str| policy.filters.iter().any(|f| f.name() == name);
    has("TenantIsolation") && has("QuotaLimit")
}

/// Where the task's tenant stands against its quota on the classes the
/// task may use.
enum Room {
    /// Room for the task on cards it does not hold yet, on every class
    /// (or quotas are not checked): the quota cannot rule a choice out.
    Open,
    /// On no class.
    Closed,
    /// On some classes only.
    Mixed,
}

fn quota_room(ctx: &Ctx<'_>, task: &Task) -> Room {
    let Some(tenant) = task.tenant else {
        return Room::Open;
    };
    if ctx.bound == QuotaBound::Unbounded {
        return Room::Open;
    }
    let need = task.gpu.gpu_count();
    if need == 0 {
        return Room::Open;
    }
    let (mut open, mut closed) = (false, false);
    for c in 0..ctx.cluster.classes.len() {
        let c = c as u8;
        if !task.classes.contains(c) {
            continue;
        }
        let bound = ctx.quota_bound_milli(tenant, c).unwrap_or(u64::MAX);
        if ctx.cluster.held_milli(tenant, c) + need as u64 * finpool_domain::MILLI_PER_GPU as u64
            > bound
        {
            closed = true;
        } else {
            open = true;
        }
    }
    match (open, closed) {
        (_, false) => Room::Open,
        (false, true) => Room::Closed,
        (true, true) => Room::Mixed,
    }
}

/// A fast, deterministic hasher for the engine's own keys (node states,
/// task shapes): FxHash's multiply-rotate.
#[derive(Default, Clone, Copy)]
struct FastHash;

struct FastHasher(u64);

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// Everything a filter or scorer may read of a node when placing a task
/// the indexes serve, as a key: nodes with equal keys are interchangeable
/// for those tasks.
///
/// Indexes serve only tasks of no tenant or of [`ANY_TENANT`] (a tenant
/// holding nothing), for which a card some tenant holds is simply taken,
/// whichever tenant that is: so the key records *whether* a card (or MIG
/// slice) is held, not by whom. In a pool shared by many tenants, keying
/// on the holder would make almost every busy node a class of its own.
fn state_key(node: &NodeState) -> Vec<u64> {
    let slices: usize = node.gpus.iter().map(|g| g.slices.len()).sum();
    let mut key = Vec::with_capacity(5 + node.gpus.len() * 4 + slices * 2 + node.models.len());
    key.extend([
        node.cpu_milli,
        node.memory_mib,
        node.used_cpu_milli,
        node.used_memory_mib,
    ]);
    for g in &node.gpus {
        key.push((g.class as u64) << 32 | g.used_milli as u64);
        key.push(g.memory_mib << 32 | g.used_memory_mib);
        key.push(u64::from(g.owner.is_some()) << 32 | g.jobs as u64);
        key.push(g.resident_model.map_or(0, |m| m as u64 + 1) << 32 | g.slices.len() as u64);
        for s in &g.slices {
            key.push((s.milli as u64) << 48 | (s.taken as u64) << 40);
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
    /// The lowest member.
    first: Option<u32>,
}

/// Nodes grouped by state.
struct NodeClasses {
    slots: Vec<Slot>,
    by_key: HashMap<Vec<u64>, u32, FastHash>,
    slot_of: Vec<u32>,
    free: Vec<u32>,
}

impl NodeClasses {
    fn new(nodes: &[NodeState]) -> Self {
        let mut classes = Self {
            slots: Vec::new(),
            by_key: HashMap::default(),
            slot_of: vec![0; nodes.len()],
            free: Vec::new(),
        };
        for (i, node) in nodes.iter().enumerate() {
            let (slot, _) = classes.slot_for(state_key(node));
            classes.join(slot, i as u32);
            classes.slot_of[i] = slot;
        }
        classes
    }

    fn key_of(&self, node: NodeIdx) -> &[u64] {
        &self.slots[self.slot_of[node as usize] as usize].key
    }

    fn join(&mut self, slot: u32, node: NodeIdx) {
        let slot = &mut self.slots[slot as usize];
        slot.members.insert(node);
        slot.first = slot.members.first().copied();
    }

    /// The slot of the class with state `key`, made if no node has that
    /// state; and whether it was made (one hash of the key either way).
    fn slot_for(&mut self, key: Vec<u64>) -> (u32, bool) {
        let entry = match self.by_key.entry(key) {
            Entry::Occupied(e) => return (*e.get(), false),
            Entry::Vacant(e) => e,
        };
        let key = entry.key().clone();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].key = key;
                slot
            }
            None => {
                self.slots.push(Slot {
                    key,
                    members: BTreeSet::new(),
                    first: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        entry.insert(slot);
        (slot, true)
    }

    /// Moves `node` to the class of state `key`; returns the old and new
    /// slots, and whether the new one is a state no node had a moment ago.
    fn moved(&mut self, node: NodeIdx, key: Vec<u64>) -> (u32, u32, bool) {
        let old = self.slot_of[node as usize];
        let slot = &mut self.slots[old as usize];
        slot.members.remove(&node);
        slot.first = slot.members.first().copied();
        if slot.members.is_empty() {
            let key = std::mem::take(&mut slot.key);
            self.by_key.remove(&key);
            self.free.push(old);
        }
        let (new, created) = self.slot_for(key);
        self.join(new, node);
        self.slot_of[node as usize] = new;
        (old, new, created)
    }

    /// The class's lowest-index node: the one exhaustive placement would pick.
    fn representative(&self, slot: u32) -> Option<u32> {
        self.slots.get(slot as usize)?.first
    }
}

/// Class slots in the order of their latest change, each once: a doubly
/// linked list over slot numbers, so that moving a slot to the latest end
/// costs the same however long the list.
#[derive(Default)]
struct ChangeList {
    /// Per slot: the slot changed just before it, and just after it
    /// (`NONE` at the ends); slots never changed are in neither.
    before: Vec<u32>,
    after: Vec<u32>,
    latest: Option<u32>,
}

const NONE: u32 = u32::MAX;

impl ChangeList {
    /// Makes `slot` the latest change.
    fn mark_latest(&mut self, slot: u32) {
        let s = slot as usize;
        if self.before.len() <= s {
            self.before.resize(s + 1, NONE);
            self.after.resize(s + 1, NONE);
        }
        if self.latest == Some(slot) {
            return;
        }
        // Unlink it, if it is in the list.
        let (b, a) = (self.before[s], self.after[s]);
        if a != NONE {
            self.before[a as usize] = b;
            if b != NONE {
                self.after[b as usize] = a;
            }
        }
        // Link it after the latest.
        self.before[s] = self.latest.unwrap_or(NONE);
        self.after[s] = NONE;
        if let Some(l) = self.latest {
            self.after[l as usize] = slot;
        }
        self.latest = Some(slot);
    }

    /// The slots, latest change first.
    fn latest_first(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(self.latest, |&s| {
            let b = self.before[s as usize];
            (b != NONE).then_some(b)
        })
    }
}

/// Every class's best score for one task shape, in a max-tree of values:
/// `tree[size + slot]` is the slot's (score, lowest node index), and every
/// inner entry is the better of its two children, so siblings sit side by
/// side in memory.
struct ShapeIndex {
    tree: Vec<(f64, u32)>,
    /// The changes reflected here: those stamped below this.
    position: usize,
    /// The last decision that asked (see [`Indexes::compact`]).
    used: u64,
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
    /// Scores every class now, in `tree`'s memory (a spare one, or empty):
    /// the index reflects every change stamped below `clock`.
    fn new(
        mut tree: Vec<(f64, u32)>,
        slots: usize,
        clock: usize,
        nodes: usize,
        score: &impl Fn(u32) -> (f64, u32),
    ) -> Self {
        let size = slots.next_power_of_two().max(2);
        tree.clear();
        // Room for as many classes as there are nodes, so that the tree
        // grows in place: moving it to fresh memory each time the classes
        // double cost more than the rest of its upkeep (room that is never
        // written is never backed by memory).
        tree.reserve(2 * nodes.next_power_of_two().max(size));
        tree.resize(2 * size, EMPTY);
        for s in 0..slots {
            tree[size + s] = score(s as u32);
        }
        let mut index = Self {
            tree,
            position: clock,
            used: 0,
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
        // In place, within the room reserved when the tree was made: the
        // old leaves move up to their new places (which lie past the old
        // tree), and the inner entries are rebuilt.
        self.tree.resize(2 * size, EMPTY);
        self.tree.copy_within(old..2 * old, size);
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

    /// Brings the classes changed since this index last looked (changes
    /// stamped from its position to `clock`) up to date: a class in a new
    /// state is rescored; one that only gained or lost members keeps its
    /// score and updates its lowest node.
    #[allow(clippy::too_many_arguments)]
    fn catch_up(
        &mut self,
        slots: usize,
        clock: usize,
        changes: &ChangeList,
        last_change: &[usize],
        created_at: &[usize],
        score: &impl Fn(u32) -> (f64, u32),
        representative: &impl Fn(u32) -> Option<u32>,
    ) {
        if slots > self.size() {
            self.grow(slots);
        }
        let mut changed = Vec::new();
        for slot in changes.latest_first() {
            if last_change[slot as usize] < self.position {
                break;
            }
            let value = match representative(slot) {
                None => EMPTY,
                Some(_) if created_at[slot as usize] >= self.position => score(slot),
                Some(node) => (self.leaf(slot as usize).0, node),
            };
            if self.leaf(slot as usize) != value {
                changed.push((slot as usize, value));
            }
        }
        // Many changes: rebuilding the inner entries in one sweep beats
        // walking up from each leaf.
        let size = self.size();
        if changed.len() * 16 > size {
            for (slot, value) in changed {
                self.tree[size + slot] = value;
            }
            self.rebuild_inner();
        } else {
            for (slot, value) in changed {
                self.update(slot, value);
            }
        }
        self.position = clock;
    }

    fn best(&self) -> Option<NodeIdx> {
        let (score, node) = self.tree[1];
        (score > f64::NEG_INFINITY).then_some(node)
    }

    /// The best node other than `avoid`: if `avoid` stands for its class,
    /// the class's next node does while the tree is read.
    fn best_avoiding(&mut self, avoid: NodeIdx, classes: &NodeClasses) -> Option<NodeIdx> {
        let Some(&slot) = classes.slot_of.get(avoid as usize) else {
            return self.best();
        };
        let leaf = self.leaf(slot as usize);
        if leaf.1 != avoid {
            return self.best();
        }
        let next = classes.slots[slot as usize]
            .members
            .range(avoid + 1..)
            .next()
            .map_or(EMPTY, |&n| (leaf.0, n));
        self.update(slot as usize, next);
        let best = self.best();
        self.update(slot as usize, leaf);
        best
    }
}

#[cfg(test)]
mod tests {
    use super::ChangeList;

    #[test]
    fn the_change_list_holds_each_class_once_latest_first() {
        let mut list = ChangeList::default();
        assert_eq!(list.latest_first().count(), 0);
        for slot in [3, 0, 5, 0, 3, 3, 7] {
            list.mark_latest(slot);
        }
        assert_eq!(list.latest_first().collect::<Vec<_>>(), [7, 3, 0, 5]);
        // The earliest moves to the latest end, and the middle one too.
        list.mark_latest(5);
        list.mark_latest(3);
        assert_eq!(list.latest_first().collect::<Vec<_>>(), [3, 5, 7, 0]);
    }
}
