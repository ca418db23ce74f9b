//! The workload model: the typical task shapes a pool sees and their
//! weights, learned online from arrivals ([`OnlineWorkload`]) or read from
//! a trace, and what fragmentation-aware scorers compute from it.
//!
//! GPU fragmentation, after "Beware of Fragmentation: Scheduling
//! GPU-Sharing Workloads with Fragmentation Gradient Descent" (FGD, USENIX
//! ATC '23).
//!
//! A node's fragmentation for a task shape is its free GPU capacity that
//! the shape cannot use: all of it when the shape cannot run on the node at
//! all (GPU count, class, CPU or memory) or asks for no GPU, otherwise the
//! cards whose free share is smaller than what the shape needs per card. The expected
//! fragmentation weights this over a workload model: the typical task
//! shapes and their weights.

use std::collections::HashMap;

use finpool_domain::MILLI_PER_GPU;

use crate::cluster::{
    Choice, ClassIdx, ClassSet, Cluster, MAX_CLASSES, MAX_GPUS_PER_NODE, NodeState,
};
use crate::task::Task;

/// What a task needs, for fragmentation purposes (tenant-free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Milli-GPU needed on each card (1000 for whole cards, 0 for CPU-only).
    pub milli_per_gpu: u32,
    /// Cards needed (0 for CPU-only).
    pub gpus: u32,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub classes: ClassSet,
}

impl Shape {
    pub fn of(task: &Task) -> Self {
        Self {
            milli_per_gpu: task.milli_per_gpu(),
            gpus: task.gpu.gpu_count(),
            cpu_milli: task.cpu_milli,
            memory_mib: task.memory_mib,
            classes: task.classes,
        }
    }

    /// Milli-GPU the shape takes in all.
    pub fn demand_milli(&self) -> u64 {
        self.milli_per_gpu as u64 * self.gpus as u64
    }
}

/// How shapes are weighted in a workload model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// By how often the shape arrives (the FGD paper's popularity).
    Count,
    /// By how much GPU the shape asks for in all (count × milli): a rare
    /// 8-GPU task weighs as much as the GPU it would be refused.
    Demand,
    /// By GPU demand, leaving CPU-only shapes out.
    GpuDemand,
}

/// Typical task shapes and their weights (summing to 1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadModel {
    pub shapes: Vec<(Shape, f64)>,
    /// CPU and memory GPU work brings along, over every observed GPU task.
    pub companion: Option<Companion>,
    /// The shapes grouped by GPU need, for fast evaluation.
    groups: Vec<NeedGroup>,
    /// Per card class, how the model's GPU shapes allowed on it can fill a
    /// card (see [`WorkloadModel::unfillable`]).
    fills: ClassFills,
    /// The least CPU and memory any typical GPU share asks for: a node
    /// with less can take no more shares.
    pub smallest_share: Option<(u64, u64)>,
    /// The work that can run on only some kinds of node, weighted by how
    /// much more it leans on them than work that may go anywhere (see
    /// [`WorkloadModel::with_pressure`]); `None` until the cycle sets it
    /// for the pool at hand.
    pinned: Option<Box<WorkloadModel>>,
    /// Every GPU shape observed, by its share of the GPU demand (summing
    /// to 1): scarcity counts all demand, not only the typical shapes.
    gpu_demand: Vec<(Shape, f64)>,
}

/// How much CPU and memory GPU work brings along, per milli-GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Companion {
    pub cpu_per_milli: f64,
    pub memory_per_milli: f64,
}

impl WorkloadModel {
    /// The heaviest shapes covering `coverage` of the total weight, with
    /// weights as asked (by count, or by GPU demand), normalised.
    pub fn from_counts(counts: &HashMap<Shape, u64>, coverage: f64, weighting: Weighting) -> Self {
        let weight = |shape: &Shape, n: u64| match weighting {
            Weighting::Count => n as f64,
            // CPU-only shapes ask for no GPU but still take the CPU that
            // GPU work needs; give them the weight of a small share.
            Weighting::Demand => n as f64 * (shape.demand_milli().max(100)) as f64,
            Weighting::GpuDemand => n as f64 * shape.demand_milli() as f64,
        };
        let mut shapes: Vec<(Shape, f64)> = counts
            .iter()
            .map(|(s, n)| (*s, weight(s, *n)))
            .filter(|(_, w)| *w > 0.0)
            .collect();
        // Heaviest first; a total order so the model is deterministic.
        shapes.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(a.0.gpus.cmp(&b.0.gpus))
                .then(a.0.milli_per_gpu.cmp(&b.0.milli_per_gpu))
                .then(a.0.cpu_milli.cmp(&b.0.cpu_milli))
                .then(a.0.memory_mib.cmp(&b.0.memory_mib))
                .then(a.0.classes.0.cmp(&b.0.classes.0))
        });
        let total: f64 = shapes.iter().map(|s| s.1).sum();
        let mut kept = Vec::new();
        let mut covered = 0.0;
        for (shape, w) in shapes {
            if total > 0.0 && covered >= coverage * total {
                break;
            }
            covered += w;
            kept.push((shape, w));
        }
        let sum: f64 = kept.iter().map(|s| s.1).sum();
        Self {
            shapes: kept
                .into_iter()
                .map(|(s, w)| (s, if sum > 0.0 { w / sum } else { 0.0 }))
                .collect(),
            companion: companion(counts),
            gpu_demand: gpu_demand(counts.iter().map(|(s, n)| (*s, *n as f64))),
            fills: ClassFills::default(),
            smallest_share: None,
            groups: Vec::new(),
            pinned: None,
        }
        .with_fill()
        .with_groups()
    }

    /// A model of exactly these shapes and weights (no companion ratios).
    pub fn of_shapes(shapes: Vec<(Shape, f64)>) -> Self {
        Self {
            gpu_demand: gpu_demand(shapes.iter().copied()),
            shapes,
            ..Self::default()
        }
        .with_fill()
        .with_groups()
    }

    /// Groups shapes that need the same GPUs (count, share, classes), each
    /// group's members sorted by CPU with running weight sums, so that a
    /// node's fragmentation costs one step per group rather than per shape.
    fn with_groups(mut self) -> Self {
        let mut groups: Vec<NeedGroup> = Vec::new();
        for (shape, weight) in &self.shapes {
            let key = (shape.milli_per_gpu, shape.gpus, shape.classes);
            let group = match groups
                .iter_mut()
                .find(|g| (g.milli_per_gpu, g.gpus, g.classes) == key)
            {
                Some(g) => g,
                None => {
                    groups.push(NeedGroup {
                        milli_per_gpu: shape.milli_per_gpu,
                        gpus: shape.gpus,
                        classes: shape.classes,
                        members: Vec::new(),
                        weights_below: Vec::new(),
                        max_memory: 0,
                        total: 0.0,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            group
                .members
                .push((shape.cpu_milli, shape.memory_mib, *weight));
        }
        for g in &mut groups {
            g.members.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut sum = 0.0;
            g.weights_below = g
                .members
                .iter()
                .map(|m| {
                    sum += m.2;
                    sum
                })
                .collect();
            g.total = sum;
            g.max_memory = g.members.iter().map(|m| m.1).max().unwrap_or(0);
        }
        self.groups = groups;
        self
    }

    /// Computes [`WorkloadModel::fills`] from the model's shapes.
    fn with_fill(mut self) -> Self {
        self.fills = ClassFills::of(&self.shapes);
        let shares = self
            .shapes
            .iter()
            .filter(|(s, _)| s.gpus > 0 && s.milli_per_gpu < MILLI_PER_GPU);
        self.smallest_share = shares
            .clone()
            .map(|(s, _)| s.cpu_milli)
            .min()
            .zip(shares.map(|(s, _)| s.memory_mib).min());
        self
    }

    /// Sets the pinned work for the pool as it is now: the GPU shapes that
    /// cannot run on every kind of node with free GPU.
    ///
    /// Nodes of one *kind* have the same card classes, card count, CPU and
    /// memory. A shape whose classes, cards, CPU or memory rule out some
    /// kinds is *pinned* to the rest. Spread over the whole pool, a shape
    /// with share `s` of the GPU demand would claim `s` of every node; the
    /// nodes where it can start now hold `F_fit` of the `F_total` free GPU,
    /// and of those it claims `s × F_total / F_fit`. Its weight is the
    /// excess, `s × (F_total / F_fit − 1)`, at most 1: it grows as the
    /// nodes it fits on go, and is 1 once what is left of them is all
    /// spoken for. Fragmenting
    /// a node for such work costs what fragmenting it for the work that
    /// fills the pool does, times that weight ([`scores::ScarceCapacity`]).
    ///
    /// [`scores::ScarceCapacity`]: crate::plugins::scores::ScarceCapacity
    pub fn with_pressure(mut self, cluster: &Cluster) -> Self {
        let shapes = pinned_work(&self.gpu_demand, &cluster.nodes);
        self.pinned = (!shapes.is_empty()).then(|| {
            Box::new(
                Self {
                    shapes,
                    ..Self::default()
                }
                .with_groups(),
            )
        });
        self
    }

    /// The pinned work and its weights (see [`WorkloadModel::with_pressure`]).
    pub fn pinned_work(&self) -> Option<&WorkloadModel> {
        self.pinned.as_deref()
    }

    /// Free milli-GPU on a card of `class` that no combination of the
    /// typical shapes allowed there can take: what the card will waste
    /// however it is filled. Zero when the model has no GPU shape.
    pub fn unfillable(&self, class: ClassIdx, free: u32) -> u32 {
        self.fills.unfillable(class, free)
    }

    pub fn from_tasks<'a>(
        tasks: impl IntoIterator<Item = &'a Task>,
        coverage: f64,
        weighting: Weighting,
    ) -> Self {
        let mut counts = HashMap::new();
        for t in tasks {
            *counts.entry(Shape::of(t)).or_insert(0) += 1;
        }
        Self::from_counts(&counts, coverage, weighting)
    }

    /// CPU and memory per milli-GPU of GPU work, or `None` when no GPU
    /// task was observed.
    pub fn companion(&self) -> Option<Companion> {
        self.companion
    }

    /// Expected fragmentation (in milli-GPU) of `node` if `choice` took
    /// `milli` from each chosen card and `cpu`/`memory` from the node.
    pub fn fragmentation_after(
        &self,
        node: &NodeState,
        choice: Choice,
        cpu_milli: u64,
        memory_mib: u64,
    ) -> f64 {
        let view = NodeView::after(node, choice, cpu_milli, memory_mib);
        self.fragmentation(&view)
    }

    /// Expected fragmentation of `node` as it is.
    pub fn fragmentation_now(&self, node: &NodeState) -> f64 {
        self.fragmentation_after(node, Choice::NO_GPU, 0, 0)
    }

    pub fn fragmentation(&self, view: &NodeView) -> f64 {
        let total = view.total_free() as f64;
        let mut expected = 0.0;
        for g in &self.groups {
            // Weight of the members that fit the node's CPU and memory.
            let by_cpu = g.members.partition_point(|m| m.0 <= view.cpu_free);
            let mut fitting = if by_cpu == 0 {
                0.0
            } else {
                g.weights_below[by_cpu - 1]
            };
            if g.max_memory > view.memory_free {
                fitting -= g.members[..by_cpu]
                    .iter()
                    .filter(|m| m.1 > view.memory_free)
                    .map(|m| m.2)
                    .sum::<f64>();
            }
            let for_fitting = view.fragment_by_gpu(g.milli_per_gpu, g.gpus, g.classes) as f64;
            expected += fitting * for_fitting + (g.total - fitting) * total;
        }
        expected
    }

    /// [`WorkloadModel::fragmentation`] shape by shape: the definition, for tests.
    pub fn fragmentation_by_shape(&self, view: &NodeView) -> f64 {
        self.shapes
            .iter()
            .map(|(shape, weight)| weight * view.fragment_for(shape) as f64)
            .sum()
    }
}

/// Nodes of one kind: same classes, card count, CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NodeKind {
    classes: ClassSet,
    gpus: usize,
    cpu_milli: u64,
    memory_mib: u64,
}

impl NodeKind {
    fn of(node: &NodeState) -> Self {
        Self {
            classes: node.classes,
            gpus: node.gpus.len(),
            cpu_milli: node.cpu_milli,
            memory_mib: node.memory_mib,
        }
    }

    /// Whether an empty node of this kind could run `shape`.
    fn can_run(&self, shape: &Shape) -> bool {
        shape.gpus as usize <= self.gpus
            && shape.cpu_milli <= self.cpu_milli
            && shape.memory_mib <= self.memory_mib
            && !shape.classes.intersect(self.classes).is_empty()
    }
}

/// A node as pinned work sees it: its kind, and what it has free now.
struct FreeNode {
    kind: NodeKind,
    gpu: u64,
    cpu: u64,
    memory: u64,
    idle_cards: u32,
    largest_share: u32,
}

impl FreeNode {
    fn of(node: &NodeState) -> Self {
        Self {
            kind: NodeKind::of(node),
            gpu: node.free_gpu_milli(),
            cpu: node.free_cpu_milli(),
            memory: node.free_memory_mib(),
            idle_cards: node.idle_gpus() as u32,
            largest_share: node.gpus.iter().map(|g| g.free_milli()).max().unwrap_or(0),
        }
    }

    /// Whether `shape` could start here now.
    fn fits(&self, shape: &Shape) -> bool {
        self.kind.can_run(shape)
            && self.cpu >= shape.cpu_milli
            && self.memory >= shape.memory_mib
            && if shape.milli_per_gpu >= MILLI_PER_GPU {
                self.idle_cards >= shape.gpus
            } else {
                self.largest_share >= shape.milli_per_gpu
            }
    }
}

/// See [`WorkloadModel::with_pressure`].
fn pinned_work(gpu_demand: &[(Shape, f64)], nodes: &[NodeState]) -> Vec<(Shape, f64)> {
    let free: Vec<FreeNode> = nodes
        .iter()
        .map(FreeNode::of)
        .filter(|n| n.gpu > 0)
        .collect();
    let total_free: u64 = free.iter().map(|n| n.gpu).sum();
    let mut kinds: Vec<NodeKind> = free.iter().map(|n| n.kind).collect();
    kinds.sort_by_key(|k| (k.classes.0, k.gpus, k.cpu_milli, k.memory_mib));
    kinds.dedup();
    let mut pinned = Vec::new();
    for (shape, share) in gpu_demand {
        // Work every kind of node with free GPU could run is not pinned.
        if kinds.iter().all(|k| k.can_run(shape)) {
            continue;
        }
        let fit: u64 = free.iter().filter(|n| n.fits(shape)).map(|n| n.gpu).sum();
        if fit == 0 {
            continue;
        }
        let weight = (share * (total_free as f64 / fit as f64 - 1.0)).min(1.0);
        if weight > 0.0 {
            pinned.push((*shape, weight));
        }
    }
    pinned
}

/// Shapes with one GPU need, differing in CPU and memory.
#[derive(Debug, Clone, PartialEq)]
struct NeedGroup {
    milli_per_gpu: u32,
    gpus: u32,
    classes: ClassSet,
    /// (CPU, memory, weight), by CPU.
    members: Vec<(u64, u64, f64)>,
    /// weights_below[i]: the summed weight of members[..=i].
    weights_below: Vec<f64>,
    max_memory: u64,
    total: f64,
}

/// Per card class, fill[f]: the most of a card's free `f` milli-GPU that
/// the GPU shapes allowed on the class can take, combined (an unbounded
/// subset sum). Classes whose allowed shapes are the same share a table.
#[derive(Debug, Clone, Default, PartialEq)]
struct ClassFills {
    /// Index into `tables`, per class.
    table_of: Vec<u8>,
    tables: Vec<Vec<u16>>,
}

impl ClassFills {
    fn of(shapes: &[(Shape, f64)]) -> Self {
        if !shapes.iter().any(|(s, _)| s.gpus > 0) {
            return Self::default();
        }
        let mut fills = Self::default();
        let mut size_sets: Vec<Vec<usize>> = Vec::new();
        for class in 0..MAX_CLASSES as ClassIdx {
            let mut sizes: Vec<usize> = shapes
                .iter()
                .filter(|(s, _)| s.gpus > 0 && s.classes.contains(class))
                .map(|(s, _)| s.milli_per_gpu.min(MILLI_PER_GPU) as usize)
                .filter(|m| *m > 0)
                .collect();
            sizes.sort_unstable();
            sizes.dedup();
            let table = match size_sets.iter().position(|known| *known == sizes) {
                Some(t) => t,
                None => {
                    fills.tables.push(subset_sums(&sizes));
                    size_sets.push(sizes);
                    size_sets.len() - 1
                }
            };
            fills.table_of.push(table as u8);
        }
        fills
    }

    fn unfillable(&self, class: ClassIdx, free: u32) -> u32 {
        let Some(table) = self.table_of.get(class as usize) else {
            return 0;
        };
        match self.tables[*table as usize].get(free as usize) {
            Some(fill) => free - *fill as u32,
            None => 0,
        }
    }
}

/// fill[f] for f in 0..=1000: the largest sum of `sizes` (each usable any
/// number of times) that is at most f.
fn subset_sums(sizes: &[usize]) -> Vec<u16> {
    let mut fill = vec![0u16; MILLI_PER_GPU as usize + 1];
    for f in 1..fill.len() {
        let mut best = fill[f - 1];
        for &m in sizes {
            if m <= f {
                best = best.max(fill[f - m] + m as u16);
            }
        }
        fill[f] = best;
    }
    fill
}

/// GPU shapes by their share of the GPU demand of `counts` (how many of
/// each, or their weights), sorted so the result is deterministic.
fn gpu_demand(counts: impl Iterator<Item = (Shape, f64)>) -> Vec<(Shape, f64)> {
    let mut shapes: Vec<(Shape, f64)> = counts
        .filter(|(s, n)| s.gpus > 0 && *n > 0.0)
        .map(|(s, n)| (s, n * s.demand_milli() as f64))
        .collect();
    let total: f64 = shapes.iter().map(|s| s.1).sum();
    shapes.iter_mut().for_each(|s| s.1 /= total);
    shapes.sort_by(|a, b| {
        (
            a.0.gpus,
            a.0.milli_per_gpu,
            a.0.cpu_milli,
            a.0.memory_mib,
            a.0.classes.0,
        )
            .cmp(&(
                b.0.gpus,
                b.0.milli_per_gpu,
                b.0.cpu_milli,
                b.0.memory_mib,
                b.0.classes.0,
            ))
    });
    shapes
}

/// CPU and memory per milli-GPU over every observed GPU task.
fn companion(counts: &HashMap<Shape, u64>) -> Option<Companion> {
    let (mut gpu, mut cpu, mut memory) = (0.0, 0.0, 0.0);
    for (shape, n) in counts {
        if shape.gpus > 0 {
            let n = *n as f64;
            gpu += n * shape.demand_milli() as f64;
            cpu += n * shape.cpu_milli as f64;
            memory += n * shape.memory_mib as f64;
        }
    }
    (gpu > 0.0).then(|| Companion {
        cpu_per_milli: cpu / gpu,
        memory_per_milli: memory / gpu,
    })
}

/// A node's free resources, with the free GPU shares sorted so a shape's
/// fragment is a prefix sum.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Free milli per card, ascending.
    free: [u32; MAX_GPUS_PER_NODE],
    len: usize,
    /// prefix[i] = sum of free[..i].
    prefix: [u64; MAX_GPUS_PER_NODE + 1],
    /// Cards entirely free.
    idle: u32,
    cpu_free: u64,
    memory_free: u64,
    /// The node's classes, when it has exactly one (the fast path).
    classes: ClassSet,
    single_class: bool,
    /// Per-card classes, for nodes with several.
    mixed: Option<Vec<(u8, u32)>>,
}

impl NodeView {
    /// The node after `choice` (and `cpu`/`memory`) were taken.
    pub fn after(node: &NodeState, choice: Choice, cpu_milli: u64, memory_mib: u64) -> Self {
        let mut free = [0u32; MAX_GPUS_PER_NODE];
        let len = node.gpus.len();
        let mut idle = 0;
        for (i, g) in node.gpus.iter().enumerate() {
            let chosen = choice.gpus & (1 << i) != 0;
            free[i] = g.free_milli() - if chosen { choice.milli } else { 0 };
            if !chosen && g.is_idle() {
                idle += 1;
            }
        }
        let single_class = node.classes.0.count_ones() <= 1;
        let mixed = (!single_class).then(|| {
            node.gpus
                .iter()
                .enumerate()
                .map(|(i, g)| (g.class, free[i]))
                .collect::<Vec<_>>()
        });
        free[..len].sort_unstable();
        let mut prefix = [0u64; MAX_GPUS_PER_NODE + 1];
        for i in 0..len {
            prefix[i + 1] = prefix[i] + free[i] as u64;
        }
        Self {
            free,
            len,
            prefix,
            idle,
            cpu_free: node.free_cpu_milli().saturating_sub(cpu_milli),
            memory_free: node.free_memory_mib().saturating_sub(memory_mib),
            classes: node.classes,
            single_class,
            mixed,
        }
    }

    pub fn total_free(&self) -> u64 {
        self.prefix[self.len]
    }

    /// Free GPU the shape cannot use here, in milli-GPU.
    pub fn fragment_for(&self, shape: &Shape) -> u64 {
        if self.cpu_free < shape.cpu_milli || self.memory_free < shape.memory_mib {
            return self.total_free();
        }
        self.fragment_by_gpu(shape.milli_per_gpu, shape.gpus, shape.classes)
    }

    /// Free GPU a shape that fits the node's CPU and memory cannot use.
    fn fragment_by_gpu(&self, milli_per_gpu: u32, gpus: u32, classes: ClassSet) -> u64 {
        let total = self.total_free();
        if !self.single_class {
            return self.fragment_mixed(&Shape {
                milli_per_gpu,
                gpus,
                cpu_milli: 0,
                memory_mib: 0,
                classes,
            });
        }
        // CPU-only work can use none of the node's GPU.
        if gpus == 0 {
            return total;
        }
        if self.classes.intersect(classes).is_empty() {
            return total;
        }
        if milli_per_gpu >= MILLI_PER_GPU {
            if self.idle < gpus {
                return total;
            }
            // Every card not entirely free is a fragment for whole-GPU work.
            return total - self.idle as u64 * MILLI_PER_GPU as u64;
        }
        // Cards with less free than the share are fragments.
        let below = self.free[..self.len].partition_point(|&f| f < milli_per_gpu);
        if below == self.len {
            return total;
        }
        self.prefix[below]
    }

    fn fragment_mixed(&self, shape: &Shape) -> u64 {
        let cards = self.mixed.as_deref().unwrap_or(&[]);
        let total = self.total_free();
        if shape.gpus == 0 {
            return total;
        }
        let usable = |class: u8, free: u32| {
            shape.classes.contains(class) && free >= shape.milli_per_gpu.min(MILLI_PER_GPU)
        };
        let fits = cards.iter().filter(|(c, f)| usable(*c, *f)).count() as u32
            >= shape.gpus.min(if shape.milli_per_gpu < MILLI_PER_GPU {
                1
            } else {
                shape.gpus
            });
        if !fits {
            return total;
        }
        cards
            .iter()
            .filter(|(c, f)| !usable(*c, *f))
            .map(|(_, f)| *f as u64)
            .sum()
    }
}

/// What a node has free in all after a choice: all that stranding reads
/// (no per-card view to build, as fragmentation needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeTotals {
    pub gpu_milli: u64,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

impl FreeTotals {
    /// `node`'s free totals once `choice` and the task's CPU and memory
    /// are taken (the totals of [`NodeView::after`]).
    pub fn after(node: &NodeState, choice: Choice, cpu_milli: u64, memory_mib: u64) -> Self {
        let cards = node.gpus.len() as u32;
        let mask = if cards >= u64::BITS {
            u64::MAX
        } else {
            (1u64 << cards) - 1
        };
        let chosen = u64::from((choice.gpus & mask).count_ones());
        Self {
            gpu_milli: node.free_gpu_milli() - chosen * u64::from(choice.milli),
            cpu_milli: node.free_cpu_milli().saturating_sub(cpu_milli),
            memory_mib: node.free_memory_mib().saturating_sub(memory_mib),
        }
    }

    /// Free GPU the node's free CPU and memory cannot feed, if GPU work
    /// brings `companion` CPU and memory along: a node out of CPU strands
    /// its GPUs.
    pub fn stranded(&self, companion: Companion) -> f64 {
        let gpu = self.gpu_milli as f64;
        let by_cpu = if companion.cpu_per_milli > 0.0 {
            self.cpu_milli as f64 / companion.cpu_per_milli
        } else {
            f64::INFINITY
        };
        let by_memory = if companion.memory_per_milli > 0.0 {
            self.memory_mib as f64 / companion.memory_per_milli
        } else {
            f64::INFINITY
        };
        (gpu - by_cpu.min(by_memory)).max(0.0)
    }
}

/// Below this distance a new workload model is not worth adopting.
const SETTLED_DISTANCE: f64 = 0.02;

impl WorkloadModel {
    /// How far apart two models are: the total variation distance between
    /// their shape weights, or the relative change in CPU per milli-GPU if
    /// that is larger.
    pub fn distance(&self, other: &WorkloadModel) -> f64 {
        let mut tv = 0.0;
        for (shape, w) in &self.shapes {
            let o = other
                .shapes
                .iter()
                .find(|(s, _)| s == shape)
                .map_or(0.0, |(_, w)| *w);
            tv += (w - o).abs();
        }
        for (shape, w) in &other.shapes {
            if !self.shapes.iter().any(|(s, _)| s == shape) {
                tv += w;
            }
        }
        let ratio = match (self.companion, other.companion) {
            (Some(a), Some(b)) if b.cpu_per_milli > 0.0 => {
                ((a.cpu_per_milli - b.cpu_per_milli) / b.cpu_per_milli).abs()
            }
            (None, None) => 0.0,
            _ => 1.0,
        };
        (tv / 2.0).max(ratio)
    }
}

/// Counts arriving task shapes and keeps a workload model of them, rebuilt
/// each time arrivals double, so that the model is learned online from what
/// actually arrives rather than read in advance, and settles as it firms up.
#[derive(Debug, Clone)]
pub struct OnlineWorkload {
    counts: HashMap<Shape, u64>,
    seen: u64,
    next_rebuild: u64,
    coverage: f64,
    weighting: Weighting,
    model: WorkloadModel,
    version: u64,
}

impl OnlineWorkload {
    pub fn new(coverage: f64, weighting: Weighting) -> Self {
        Self {
            counts: HashMap::new(),
            seen: 0,
            next_rebuild: 1,
            coverage,
            weighting,
            model: WorkloadModel::default(),
            version: 0,
        }
    }

    /// Records an arrival; returns true when the model changed.
    pub fn observe(&mut self, task: &Task) -> bool {
        *self.counts.entry(Shape::of(task)).or_insert(0) += 1;
        self.seen += 1;
        if self.seen < self.next_rebuild {
            return false;
        }
        self.next_rebuild = self.seen * 2;
        let model = WorkloadModel::from_counts(&self.counts, self.coverage, self.weighting);
        // Keep the model while it barely moves: every change rescores the
        // pool, and a settled workload needs no new model.
        if model.distance(&self.model) < SETTLED_DISTANCE {
            return false;
        }
        self.model = model;
        self.version += 1;
        true
    }

    pub fn model(&self) -> &WorkloadModel {
        &self.model
    }

    /// Changes whenever [`OnlineWorkload::model`] does.
    pub fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::cluster::GpuState;

    pub(crate) fn node(used: &[u32]) -> NodeState {
        let mut n = NodeState::new(
            "n",
            8000,
            64_000,
            used.iter()
                .enumerate()
                .map(|(i, _)| GpuState::new(i as u32, 0, 16_000))
                .collect(),
        );
        for (g, u) in n.gpus.iter_mut().zip(used) {
            g.used_milli = *u;
            if *u > 0 {
                g.jobs = 1;
            }
        }
        n
    }

    pub(crate) fn shape(milli: u32, gpus: u32, cpu: u64) -> Shape {
        Shape {
            milli_per_gpu: milli,
            gpus,
            cpu_milli: cpu,
            memory_mib: 0,
            classes: ClassSet::ALL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{node, shape};
    use super::*;

    #[test]
    fn fragments_follow_the_definition() {
        // Free: 1000, 1000, 500, 200.
        let v = NodeView::after(&node(&[0, 0, 500, 800]), Choice::NO_GPU, 0, 0);
        assert_eq!(v.total_free(), 2700);
        // A 300m share can use all but the 200m card.
        assert_eq!(v.fragment_for(&shape(300, 1, 0)), 200);
        // A 600m share can use only the idle cards.
        assert_eq!(v.fragment_for(&shape(600, 1, 0)), 700);
        // A whole GPU: partial cards are fragments.
        assert_eq!(v.fragment_for(&shape(1000, 1, 0)), 700);
        // Three whole GPUs cannot fit: everything is a fragment.
        assert_eq!(v.fragment_for(&shape(1000, 3, 0)), 2700);
        // Not enough CPU: everything is a fragment.
        assert_eq!(v.fragment_for(&shape(100, 1, 9000)), 2700);
        // A CPU-only shape can use no GPU: all of it is a fragment.
        assert_eq!(v.fragment_for(&shape(0, 0, 1000)), 2700);
    }

    /// Stranding reads only the totals, and takes them without building
    /// the per-card view: the two must agree on every choice.
    #[test]
    fn free_totals_are_the_views_totals() {
        let n = node(&[0, 300, 1000, 650, 0, 0, 900, 0]);
        let choices = [
            Choice::NO_GPU,
            Choice {
                gpus: 0b0000_0001,
                milli: 1000,
                memory_mib: None,
                slice: None,
            },
            Choice {
                gpus: 0b1011_0001,
                milli: 1000,
                memory_mib: None,
                slice: None,
            },
            Choice {
                gpus: 0b0000_1000,
                milli: 350,
                memory_mib: Some(0),
                slice: None,
            },
            Choice {
                gpus: 0b0000_0010,
                milli: 700,
                memory_mib: Some(0),
                slice: None,
            },
        ];
        for (cpu, memory) in [(0, 0), (2500, 10_000), (9000, 70_000)] {
            for choice in choices {
                let view = NodeView::after(&n, choice, cpu, memory);
                let totals = FreeTotals::after(&n, choice, cpu, memory);
                assert_eq!(
                    totals,
                    FreeTotals {
                        gpu_milli: view.total_free(),
                        cpu_milli: view.cpu_free,
                        memory_mib: view.memory_free,
                    },
                    "{choice:?}, {cpu} CPU, {memory} MiB"
                );
            }
        }
    }

    #[test]
    fn the_view_after_a_choice_takes_its_share() {
        let n = node(&[0, 0, 0, 0]);
        let v = NodeView::after(
            &n,
            Choice {
                gpus: 0b0001,
                milli: 700,
                memory_mib: Some(0),
                slice: None,
            },
            1000,
            0,
        );
        assert_eq!(v.total_free(), 3300);
        assert_eq!(v.fragment_for(&shape(500, 1, 0)), 300);
        assert_eq!(
            v.fragment_for(&shape(1000, 4, 0)),
            3300,
            "four whole GPUs no longer fit"
        );
    }

    fn pinned(milli: u32, classes: &[ClassIdx]) -> Shape {
        let mut set = ClassSet(0);
        for c in classes {
            set.insert(*c);
        }
        Shape {
            classes: set,
            ..shape(milli, 1, 0)
        }
    }

    /// A pool of `(class, cards, used milli per card)` nodes, each with
    /// 8 cores and 64 GB.
    fn pool(nodes: &[(ClassIdx, usize, u32)]) -> Cluster {
        let nodes = nodes
            .iter()
            .map(|(class, cards, used)| {
                let mut n = node(&vec![*used; *cards]);
                n.gpus.iter_mut().for_each(|g| g.class = *class);
                n.classes = ClassSet::single(*class);
                n
            })
            .collect();
        Cluster::new(Vec::new(), nodes)
    }

    fn pinned_weights(model: &WorkloadModel) -> Vec<(Shape, f64)> {
        model
            .pinned_work()
            .map(|p| p.shapes.clone())
            .unwrap_or_default()
    }

    #[test]
    fn pinned_work_weighs_its_excess_claim_on_its_kinds() {
        // Class 0: 6 free cards, class 1: 2; a tenth of the GPU demand can
        // run on class 1 only. Spread over the pool it would claim a tenth
        // of every node; on class 1 alone it claims 0.1 x 8000 / 2000, an
        // excess of 0.1 x (8000 / 2000 - 1).
        let model =
            WorkloadModel::of_shapes(vec![(shape(1000, 1, 0), 0.9), (pinned(1000, &[1]), 0.1)]);
        let set = model.clone().with_pressure(&pool(&[(0, 6, 0), (1, 2, 0)]));
        let weights = pinned_weights(&set);
        assert_eq!(
            weights.len(),
            1,
            "the shape allowed everywhere is not pinned"
        );
        assert_eq!(weights[0].0, pinned(1000, &[1]));
        assert!((weights[0].1 - 0.1 * (8000.0 / 2000.0 - 1.0)).abs() < 1e-12);
        // A node it no longer fits on does not count for it: the same work
        // leans harder on what is left, up to 1.
        let shared = model
            .clone()
            .with_pressure(&pool(&[(0, 6, 0), (1, 2, 0), (1, 2, 500)]));
        assert!((pinned_weights(&shared)[0].1 - 0.1 * (9000.0 / 2000.0 - 1.0)).abs() < 1e-12);
        let scarce = model.with_pressure(&pool(&[(0, 30, 0), (1, 2, 0)]));
        assert_eq!(pinned_weights(&scarce)[0].1, 1.0);
        // Nothing pinned, no pinned work; none set, none either.
        let free = WorkloadModel::of_shapes(vec![(shape(500, 1, 0), 1.0)])
            .with_pressure(&pool(&[(0, 6, 0), (1, 2, 0)]));
        assert!(free.pinned_work().is_none());
        assert!(WorkloadModel::default().pinned_work().is_none());
    }

    #[test]
    fn a_class_the_pool_lacks_does_not_pin() {
        let everywhere = WorkloadModel::of_shapes(vec![
            (shape(1000, 1, 0), 0.5),
            (pinned(1000, &[0, 1, 5]), 0.5),
        ])
        .with_pressure(&pool(&[(0, 4, 0), (1, 3, 0)]));
        assert!(everywhere.pinned_work().is_none());
    }

    #[test]
    fn size_pins_work_too() {
        // One 8-card node and four 2-card nodes of one class; one 8-card
        // task arrives per eight 1-card tasks (half the demand by milli),
        // and fits the big node only: half the free GPU.
        let model = WorkloadModel::of_shapes(vec![
            (shape(1000, 1, 0), 8.0 / 9.0),
            (shape(1000, 8, 0), 1.0 / 9.0),
        ])
        .with_pressure(&pool(&[
            (0, 8, 0),
            (0, 2, 0),
            (0, 2, 0),
            (0, 2, 0),
            (0, 2, 0),
        ]));
        let weights = pinned_weights(&model);
        assert_eq!(weights.len(), 1);
        assert_eq!(weights[0].0.gpus, 8);
        assert!((weights[0].1 - 0.5 * (16_000.0 / 8000.0 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn models_keep_the_typical_shapes_and_normalise() {
        let mut counts = HashMap::new();
        counts.insert(shape(1000, 1, 0), 90);
        counts.insert(shape(500, 1, 0), 8);
        counts.insert(shape(1000, 8, 0), 2);
        let m = WorkloadModel::from_counts(&counts, 0.95, Weighting::Count);
        assert_eq!(m.shapes.len(), 2, "the 8-GPU shape is outside 95% coverage");
        let sum: f64 = m.shapes.iter().map(|s| s.1).sum();
        assert!((sum - 1.0).abs() < 1e-12);
        let d = WorkloadModel::from_counts(&counts, 1.0, Weighting::Demand);
        let eight = d.shapes.iter().find(|s| s.0.gpus == 8).unwrap().1;
        let half = d
            .shapes
            .iter()
            .find(|s| s.0.milli_per_gpu == 500)
            .unwrap()
            .1;
        assert!(eight > half, "by demand, 2 x 8 GPUs outweigh 8 x 0.5");
    }
}
