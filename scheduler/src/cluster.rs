//! The scheduler's working copy of the pool: nodes, GPUs and what is in
//! use, indexed for speed. Placing a task mutates it, so one decision pass
//! sees the effect of the decisions before it.

use finpool_domain::MILLI_PER_GPU;

/// Index of a GPU class in [`Cluster::classes`].
pub type ClassIdx = u8;
/// Index of a tenant in the snapshot's tenant list.
pub type TenantIdx = u32;
/// Index of a node in [`Cluster::nodes`].
pub type NodeIdx = u32;
/// Index of a base model in the snapshot's model list.
pub type ModelIdx = u32;

/// The most GPU classes one pool may have (a [`ClassSet`] is a bitmask).
pub const MAX_CLASSES: usize = 64;
/// The most GPUs one node may have (a [`Choice`] is a bitmask).
pub const MAX_GPUS_PER_NODE: usize = 64;

/// A set of GPU classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClassSet(pub u64);

impl ClassSet {
    pub const ALL: ClassSet = ClassSet(u64::MAX);

    pub fn single(c: ClassIdx) -> Self {
        Self(1 << c)
    }

    pub fn contains(self, c: ClassIdx) -> bool {
        self.0 & (1 << c) != 0
    }

    pub fn insert(&mut self, c: ClassIdx) {
        self.0 |= 1 << c;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersect(self, other: ClassSet) -> ClassSet {
        ClassSet(self.0 & other.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    pub name: String,
    pub memory_mib: u64,
}

/// A MIG slice of a card: one job at a time, isolated in hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SliceState {
    pub milli: u32,
    pub memory_mib: u64,
    /// The tenant whose job runs on the slice; `Some` while it is taken.
    pub taken_by: Option<TenantIdx>,
    pub taken: bool,
}

/// One GPU and what is allocated on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuState {
    /// Device index on its node.
    pub index: u32,
    pub class: ClassIdx,
    pub memory_mib: u64,
    pub used_milli: u32,
    pub used_memory_mib: u64,
    /// The tenant whose jobs are on this card. Cards are never time-sliced
    /// between tenants, so there is at most one.
    pub owner: Option<TenantIdx>,
    /// Jobs on the card; the owner is cleared when the last one leaves.
    pub jobs: u32,
    /// MIG slices when the card is partitioned (then only they run work).
    pub slices: Vec<SliceState>,
    /// The base model last loaded on the card, still in its memory.
    pub resident_model: Option<ModelIdx>,
}

impl GpuState {
    pub fn new(index: u32, class: ClassIdx, memory_mib: u64) -> Self {
        Self {
            index,
            class,
            memory_mib,
            used_milli: 0,
            used_memory_mib: 0,
            owner: None,
            jobs: 0,
            slices: Vec::new(),
            resident_model: None,
        }
    }

    /// A card in MIG mode, cut into slices of (milli, memory).
    pub fn with_slices(mut self, slices: impl IntoIterator<Item = (u32, u64)>) -> Self {
        self.slices = slices
            .into_iter()
            .map(|(milli, memory_mib)| SliceState {
                milli,
                memory_mib,
                taken_by: None,
                taken: false,
            })
            .collect();
        self
    }

    pub fn is_mig(&self) -> bool {
        !self.slices.is_empty()
    }

    pub fn free_milli(&self) -> u32 {
        MILLI_PER_GPU - self.used_milli
    }

    pub fn free_memory_mib(&self) -> u64 {
        self.memory_mib - self.used_memory_mib
    }

    pub fn is_idle(&self) -> bool {
        self.jobs == 0
    }
}

/// One node and what is allocated on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub used_cpu_milli: u64,
    pub used_memory_mib: u64,
    pub gpus: Vec<GpuState>,
    /// Classes of the GPUs on this node.
    pub classes: ClassSet,
    /// Base models cached on the node's disk, sorted.
    pub models: Vec<ModelIdx>,
}

impl NodeState {
    pub fn new(
        name: impl Into<String>,
        cpu_milli: u64,
        memory_mib: u64,
        gpus: Vec<GpuState>,
    ) -> Self {
        assert!(
            gpus.len() <= MAX_GPUS_PER_NODE,
            "a node has at most {MAX_GPUS_PER_NODE} GPUs"
        );
        let mut classes = ClassSet::default();
        for g in &gpus {
            classes.insert(g.class);
        }
        Self {
            name: name.into(),
            cpu_milli,
            memory_mib,
            used_cpu_milli: 0,
            used_memory_mib: 0,
            gpus,
            classes,
            models: Vec::new(),
        }
    }

    pub fn has_model(&self, model: ModelIdx) -> bool {
        self.models.binary_search(&model).is_ok()
    }

    fn cache_model(&mut self, model: ModelIdx) {
        if let Err(at) = self.models.binary_search(&model) {
            self.models.insert(at, model);
        }
    }

    pub fn free_cpu_milli(&self) -> u64 {
        self.cpu_milli.saturating_sub(self.used_cpu_milli)
    }

    pub fn free_memory_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.used_memory_mib)
    }

    /// Free milli-GPU summed over the node's cards.
    pub fn free_gpu_milli(&self) -> u64 {
        self.gpus.iter().map(|g| g.free_milli() as u64).sum()
    }

    pub fn idle_gpus(&self) -> usize {
        self.gpus.iter().filter(|g| g.is_idle()).count()
    }
}

/// Which GPUs of a node a task gets, and how much of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Choice {
    /// Bit i set: the node's i-th GPU (position in `NodeState::gpus`).
    pub gpus: u64,
    /// Milli-GPU taken on each chosen card.
    pub milli: u32,
    /// GPU memory taken on each chosen card; `None` takes the whole card's memory.
    pub memory_mib: Option<u64>,
    /// The MIG slice taken on the (single) chosen card.
    pub slice: Option<u8>,
}

impl Choice {
    pub const NO_GPU: Choice = Choice {
        gpus: 0,
        milli: 0,
        memory_mib: Some(0),
        slice: None,
    };

    pub fn positions(self) -> impl Iterator<Item = usize> {
        let mut bits = self.gpus;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }

    pub fn gpu_count(self) -> u32 {
        self.gpus.count_ones()
    }

    fn memory_on(self, gpu: &GpuState) -> u64 {
        self.memory_mib.unwrap_or(gpu.memory_mib)
    }
}

/// A placed task: enough to apply it and to undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub node: NodeIdx,
    pub choice: Choice,
    pub tenant: Option<TenantIdx>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// The base model the job loads on its cards.
    pub model: Option<ModelIdx>,
}

/// The pool as the scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub classes: Vec<ClassInfo>,
    pub nodes: Vec<NodeState>,
    /// Milli-GPU held per (tenant, class), at `tenant * MAX_CLASSES + class`:
    /// 1000 per card holding any of the tenant's time-shared jobs, a slice's
    /// share per MIG slice. Kept in step by [`Cluster::apply`] and
    /// [`Cluster::release`].
    held: Vec<u64>,
    /// Demand for each base model as the cycle began (fixed for the cycle,
    /// so that scores stay a function of the node they are for).
    pub model_demand: Vec<ModelDemand>,
    /// The largest node's CPU and GPU capacity (milli): the scale that
    /// makes CPU and GPU comparable for scorers that add them up.
    largest: (u64, u64),
    /// Milli-GPU not in use on any card, kept in step by
    /// [`Cluster::apply`] and [`Cluster::release`].
    free_gpu_milli: u64,
}

/// How much a base model is wanted, per [`ModelIdx`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelDemand {
    /// Queued jobs that run it.
    pub queued: u32,
    /// Cards holding it in memory.
    pub resident: u32,
}

impl Cluster {
    pub fn new(classes: Vec<ClassInfo>, nodes: Vec<NodeState>) -> Self {
        let largest = (
            nodes.iter().map(|n| n.cpu_milli).max().unwrap_or(0),
            nodes
                .iter()
                .map(|n| n.gpus.len() as u64 * MILLI_PER_GPU as u64)
                .max()
                .unwrap_or(0),
        );
        let free_gpu_milli = nodes
            .iter()
            .flat_map(|n| &n.gpus)
            .map(|g| g.free_milli() as u64)
            .sum();
        Self {
            classes,
            nodes,
            held: Vec::new(),
            model_demand: Vec::new(),
            largest,
            free_gpu_milli,
        }
    }

    /// The most CPU (milli) and GPU (milli) any one node has.
    pub fn largest_node(&self) -> (u64, u64) {
        self.largest
    }

    /// Cards holding each model, counted now (indexed by [`ModelIdx`]).
    pub fn resident_counts(&self, models: usize) -> Vec<u32> {
        let mut counts = vec![0; models];
        for g in self.nodes.iter().flat_map(|n| &n.gpus) {
            if let Some(m) = g.resident_model
                && let Some(c) = counts.get_mut(m as usize)
            {
                *c += 1;
            }
        }
        counts
    }

    /// Milli-GPU of `class` the tenant holds: a card with any of its
    /// (time-shared) jobs counts whole, since nobody else may use it; a MIG
    /// slice counts its share. This is what quotas count.
    pub fn held_milli(&self, tenant: TenantIdx, class: ClassIdx) -> u64 {
        self.held
            .get(tenant as usize * MAX_CLASSES + class as usize)
            .copied()
            .unwrap_or(0)
    }

    fn held_mut(&mut self, tenant: TenantIdx, class: ClassIdx) -> &mut u64 {
        let i = tenant as usize * MAX_CLASSES + class as usize;
        if self.held.len() <= i {
            self.held.resize((tenant as usize + 1) * MAX_CLASSES, 0);
        }
        &mut self.held[i]
    }

    pub fn class_index(&self, name: &str) -> Option<ClassIdx> {
        self.classes
            .iter()
            .position(|c| c.name == name)
            .map(|i| i as ClassIdx)
    }

    /// Total milli-GPU capacity of the pool.
    pub fn gpu_capacity_milli(&self) -> u64 {
        self.nodes.iter().map(|n| n.gpus.len() as u64).sum::<u64>() * MILLI_PER_GPU as u64
    }

    /// Whether every card is in full use: then no GPU task fits anywhere.
    pub fn every_card_full(&self) -> bool {
        self.free_gpu_milli == 0
    }

    /// Milli-GPU allocated across the pool.
    pub fn gpu_allocated_milli(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(|n| &n.gpus)
            .map(|g| g.used_milli as u64)
            .sum()
    }

    /// Records an allocation. The caller has checked that it fits.
    pub fn apply(&mut self, a: &Allocation) {
        let node = &mut self.nodes[a.node as usize];
        node.used_cpu_milli += a.cpu_milli;
        node.used_memory_mib += a.memory_mib;
        let mut newly_held = ClassCounts::default();
        for i in a.choice.positions() {
            let gpu = &mut node.gpus[i];
            if let Some(model) = a.model {
                gpu.resident_model = Some(model);
            }
            gpu.jobs += 1;
            if let Some(s) = a.choice.slice {
                let slice = &mut gpu.slices[s as usize];
                debug_assert!(!slice.taken);
                slice.taken = true;
                slice.taken_by = a.tenant;
                gpu.used_milli += slice.milli;
                self.free_gpu_milli -= slice.milli as u64;
                gpu.used_memory_mib += slice.memory_mib;
                newly_held.add(gpu.class, slice.milli as u64);
                continue;
            }
            debug_assert!(gpu.owner.is_none() || gpu.owner == a.tenant || a.tenant.is_none());
            gpu.used_milli += a.choice.milli;
            self.free_gpu_milli -= a.choice.milli as u64;
            gpu.used_memory_mib += a.choice.memory_on(gpu);
            if a.tenant.is_some() && gpu.owner.is_none() {
                gpu.owner = a.tenant;
                newly_held.add(gpu.class, MILLI_PER_GPU as u64);
            }
        }
        if let Some(model) = a.model
            && a.choice.gpus != 0
        {
            node.cache_model(model);
        }
        if let Some(t) = a.tenant {
            for (class, n) in newly_held.iter() {
                *self.held_mut(t, class) += n;
            }
        }
    }

    /// Undoes [`Cluster::apply`], for a job that ended or was preempted.
    /// The model stays resident on the cards and cached on the node.
    pub fn release(&mut self, a: &Allocation) {
        let node = &mut self.nodes[a.node as usize];
        node.used_cpu_milli -= a.cpu_milli;
        node.used_memory_mib -= a.memory_mib;
        let mut freed = ClassCounts::default();
        for i in a.choice.positions() {
            let gpu = &mut node.gpus[i];
            gpu.jobs -= 1;
            if let Some(s) = a.choice.slice {
                let slice = &mut gpu.slices[s as usize];
                slice.taken = false;
                slice.taken_by = None;
                gpu.used_milli -= slice.milli;
                self.free_gpu_milli += slice.milli as u64;
                gpu.used_memory_mib -= slice.memory_mib;
                freed.add(gpu.class, slice.milli as u64);
                continue;
            }
            gpu.used_milli -= a.choice.milli;
            self.free_gpu_milli += a.choice.milli as u64;
            gpu.used_memory_mib -= a.choice.memory_on(gpu);
            if gpu.jobs == 0 && gpu.owner.take().is_some() {
                freed.add(gpu.class, MILLI_PER_GPU as u64);
            }
        }
        if let Some(t) = a.tenant {
            for (class, n) in freed.iter() {
                *self.held_mut(t, class) -= n;
            }
        }
    }

    /// Whether `a` fits on the cluster as it is now, with no card shared by
    /// two tenants. Used to check decisions, in tests and in debug builds.
    pub fn fits(&self, a: &Allocation) -> bool {
        let Some(node) = self.nodes.get(a.node as usize) else {
            return false;
        };
        if node.free_cpu_milli() < a.cpu_milli || node.free_memory_mib() < a.memory_mib {
            return false;
        }
        a.choice.positions().all(|i| {
            node.gpus.get(i).is_some_and(|g| match a.choice.slice {
                Some(s) => g.slices.get(s as usize).is_some_and(|slice| !slice.taken),
                None => {
                    !g.is_mig()
                        && g.free_milli() >= a.choice.milli
                        && g.free_memory_mib() >= a.choice.memory_on(g)
                        && (g.owner.is_none() || g.owner == a.tenant)
                }
            })
        })
    }
}

/// A few (class, amount) pairs, without allocating.
#[derive(Default)]
struct ClassCounts {
    entries: [(ClassIdx, u64); 4],
    len: usize,
    overflow: Vec<(ClassIdx, u64)>,
}

impl ClassCounts {
    fn add(&mut self, class: ClassIdx, amount: u64) {
        if let Some(e) = self.entries[..self.len].iter_mut().find(|e| e.0 == class) {
            e.1 += amount;
        } else if self.len < self.entries.len() {
            self.entries[self.len] = (class, amount);
            self.len += 1;
        } else if let Some(e) = self.overflow.iter_mut().find(|e| e.0 == class) {
            e.1 += amount;
        } else {
            self.overflow.push((class, amount));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (ClassIdx, u64)> + '_ {
        self.entries[..self.len]
            .iter()
            .chain(&self.overflow)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeState {
        NodeState::new(
            "n0",
            8000,
            64_000,
            (0..4).map(|i| GpuState::new(i, 0, 80_000)).collect(),
        )
    }

    #[test]
    fn apply_then_release_restores_the_node() {
        let mut c = Cluster::new(
            vec![ClassInfo {
                name: "A100".into(),
                memory_mib: 80_000,
            }],
            vec![node()],
        );
        let before = c.clone();
        let a = Allocation {
            node: 0,
            choice: Choice {
                gpus: 0b0110,
                milli: 1000,
                memory_mib: None,
                slice: None,
            },
            tenant: Some(3),
            cpu_milli: 2000,
            memory_mib: 1000,
            model: Some(7),
        };
        assert!(c.fits(&a));
        c.apply(&a);
        assert_eq!(c.nodes[0].gpus[1].owner, Some(3));
        assert_eq!(c.held_milli(3, 0), 2000);
        assert_eq!(c.nodes[0].gpus[1].resident_model, Some(7));
        assert!(c.nodes[0].has_model(7));
        assert_eq!(c.nodes[0].gpus[2].used_memory_mib, 80_000);
        assert!(!c.fits(&a), "the same GPUs are now taken");
        c.release(&a);
        assert_eq!(c.held_milli(3, 0), 0);
        assert_eq!(c.nodes[0].used_cpu_milli, before.nodes[0].used_cpu_milli);
        assert_eq!(c.nodes[0].gpus[1].owner, None);
        assert_eq!(
            c.nodes[0].gpus[1].resident_model,
            Some(7),
            "the model stays warm"
        );
    }

    #[test]
    fn the_pool_is_full_only_while_every_card_is_in_full_use() {
        let mut c = Cluster::new(vec![], vec![node()]);
        let whole = |gpus: u64| Allocation {
            node: 0,
            choice: Choice {
                gpus,
                milli: 1000,
                memory_mib: None,
                slice: None,
            },
            tenant: Some(1),
            cpu_milli: 0,
            memory_mib: 0,
            model: None,
        };
        let three = whole(0b0111);
        let half = Allocation {
            choice: Choice {
                gpus: 0b1000,
                milli: 500,
                memory_mib: Some(1000),
                slice: None,
            },
            ..whole(0)
        };
        c.apply(&three);
        c.apply(&half);
        assert!(!c.every_card_full(), "half a card is free");
        c.apply(&half);
        assert!(c.every_card_full());
        c.release(&half);
        assert!(!c.every_card_full());
        c.release(&half);
        c.release(&three);
        assert_eq!(c.nodes, vec![node()]);
        assert_eq!(c.free_gpu_milli, 4000);
    }

    #[test]
    fn another_tenant_cannot_share_a_card() {
        let mut c = Cluster::new(vec![], vec![node()]);
        let share = |tenant| Allocation {
            node: 0,
            choice: Choice {
                gpus: 1,
                milli: 300,
                memory_mib: Some(1000),
                slice: None,
            },
            tenant: Some(tenant),
            cpu_milli: 0,
            memory_mib: 0,
            model: None,
        };
        c.apply(&share(1));
        c.apply(&share(1));
        assert_eq!(
            c.held_milli(1, 0),
            1000,
            "two shares on one card hold one card"
        );
        assert!(c.fits(&share(1)));
        assert!(!c.fits(&share(2)));
    }

    #[test]
    fn mig_slices_hold_only_their_share_and_isolate_tenants() {
        let gpu =
            GpuState::new(0, 0, 80_000).with_slices([(428, 40_960), (285, 20_480), (142, 10_240)]);
        let mut c = Cluster::new(vec![], vec![NodeState::new("n", 8000, 64_000, vec![gpu])]);
        let slice = |tenant, s| Allocation {
            node: 0,
            choice: Choice {
                gpus: 1,
                milli: 0,
                memory_mib: None,
                slice: Some(s),
            },
            tenant: Some(tenant),
            cpu_milli: 0,
            memory_mib: 0,
            model: None,
        };
        c.apply(&slice(1, 0));
        c.apply(&slice(2, 1));
        assert_eq!(c.held_milli(1, 0), 428);
        assert_eq!(c.held_milli(2, 0), 285);
        assert_eq!(
            c.nodes[0].gpus[0].owner, None,
            "a MIG card has no single owner"
        );
        assert!(!c.fits(&slice(3, 0)), "a taken slice is taken");
        assert!(c.fits(&slice(3, 2)));
        c.release(&slice(1, 0));
        assert_eq!(c.held_milli(1, 0), 0);
        assert!(c.fits(&slice(3, 0)));
    }

    #[test]
    fn choice_positions_iterate_set_bits() {
        let c = Choice {
            gpus: 0b1010_0001,
            milli: 1000,
            memory_mib: None,
            slice: None,
        };
        assert_eq!(c.positions().collect::<Vec<_>>(), vec![0, 5, 7]);
        assert_eq!(c.gpu_count(), 3);
    }
}
