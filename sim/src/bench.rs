//! `finpool bench scheduler`: decisions per second and per-decision latency
//! of the placement hot path (the same [`Engine`] the simulator and the
//! standalone scheduler use) on a large synthetic pool.

use std::time::Instant;

use finpool_domain::{GpuRequest, Quota};
use finpool_scheduler::cluster::{ClassInfo, TenantIdx};
use finpool_scheduler::plugins::fragmentation::WorkloadModel;
use finpool_scheduler::{
    Cluster, Engine, GpuState, NodeState, QuotaBound, Request, Task, TenantBook,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::openb::OpenbPod;
use crate::policies::PolicyKind;

/// A synthetic task mix, used when no trace is given: mostly whole single
/// GPUs and GPU shares, some CPU-only work and a little multi-GPU work.
/// (weight, GPUs, milli per GPU, CPU milli, memory MiB)
const BUILT_IN_MIX: &[(u32, u32, u32, u64, u64)] = &[
    (40, 1, 1000, 12_000, 32_768),
    (8, 1, 1000, 8_000, 16_384),
    (10, 1, 800, 4_000, 12_288),
    (8, 1, 500, 8_000, 12_288),
    (6, 1, 500, 12_000, 16_384),
    (5, 1, 300, 4_000, 8_192),
    (4, 1, 250, 4_000, 8_192),
    (3, 1, 650, 12_000, 16_384),
    (12, 0, 0, 4_000, 8_192),
    (2, 2, 1000, 24_000, 65_536),
    (1, 4, 1000, 48_000, 131_072),
    (1, 8, 1000, 96_000, 262_144),
];

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub nodes: usize,
    pub gpus_per_node: u32,
    pub pending: usize,
    pub seed: u64,
    /// Sample the queue from these pods instead of the built-in mix.
    pub pods: Option<Vec<OpenbPod>>,
    /// Tenants the queue is spread over (0: tenant-less work).
    pub tenants: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub policy: String,
    pub decisions: usize,
    pub placed: usize,
    pub failed: usize,
    pub seconds: f64,
    pub decisions_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Distinct node states at the end (what the engine scores).
    pub node_classes_at_end: usize,
}

/// The pool: `nodes` nodes of `gpus_per_node` cards, with 12 CPUs and
/// 48 GiB of memory per card.
pub fn pool(nodes: usize, gpus_per_node: u32) -> Cluster {
    let classes = vec![ClassInfo {
        name: "GPU".into(),
        memory_mib: 81_920,
    }];
    let states = (0..nodes)
        .map(|i| {
            NodeState::new(
                format!("bench-node-{i}"),
                12_000 * gpus_per_node as u64,
                49_152 * gpus_per_node as u64,
                (0..gpus_per_node)
                    .map(|g| GpuState::new(g, 0, 81_920))
                    .collect(),
            )
        })
        .collect();
    Cluster::new(classes, states)
}

/// The queue: `pending` tasks drawn (seeded) from the trace's pods, or
/// from the built-in mix.
pub fn queue(config: &BenchConfig) -> Vec<Task> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let max_gpus = config.gpus_per_node;
    let mut tasks = draw(config, &mut rng, max_gpus);
    if config.tenants > 0 {
        for task in &mut tasks {
            task.tenant = Some(rng.random_range(0..config.tenants) as TenantIdx);
        }
    }
    tasks
}

/// Each of `count` tenants guarantees 60% of an even split of the pool
/// and may borrow up to 150% of it, so limits bind as the pool fills.
pub fn tenant_book(config: &BenchConfig) -> TenantBook {
    let mut book = TenantBook::default();
    let cards = config.nodes as u64 * config.gpus_per_node as u64;
    let even = cards as f64 / config.tenants.max(1) as f64;
    for t in 0..config.tenants {
        book.push(
            format!("tenant-{t}"),
            vec![Quota {
                guaranteed: (even * 0.6).floor() as u32,
                limit: (even * 1.5).ceil() as u32,
                lending_limit: None,
            }],
            1,
        );
    }
    book
}

fn draw(config: &BenchConfig, rng: &mut ChaCha8Rng, max_gpus: u32) -> Vec<Task> {
    match &config.pods {
        Some(pods) if !pods.is_empty() => (0..config.pending)
            .map(|_| {
                let p = &pods[rng.random_range(0..pods.len())];
                let request = match p.request() {
                    GpuRequest::Whole { count } => GpuRequest::Whole {
                        count: count.min(max_gpus),
                    },
                    other => other,
                };
                Task::new(request, p.cpu_milli, p.memory_mib)
            })
            .collect(),
        _ => {
            let total: u32 = BUILT_IN_MIX.iter().map(|m| m.0).sum();
            (0..config.pending)
                .map(|_| {
                    let mut pick = rng.random_range(0..total);
                    let (_, gpus, milli, cpu, memory) = *BUILT_IN_MIX
                        .iter()
                        .find(|m| {
                            if pick < m.0 {
                                true
                            } else {
                                pick -= m.0;
                                false
                            }
                        })
                        .expect("the pick is below the total weight");
                    let request = match (gpus, milli) {
                        (0, _) => GpuRequest::None,
                        (n, 1000) => GpuRequest::Whole {
                            count: n.min(max_gpus),
                        },
                        (_, m) => GpuRequest::Share {
                            milli: m,
                            memory_mib: 0,
                        },
                    };
                    Task::new(request, cpu, memory)
                })
                .collect()
        }
    }
}

/// Places every task of the queue in order with `kind`, timing each decision.
pub fn run(config: &BenchConfig, kind: PolicyKind, tasks: &[Task]) -> BenchResult {
    let (policy, mut online) = kind.build(config.seed, &WorkloadModel::default());
    let tenants = tenant_book(config);
    let bound = if config.tenants > 0 {
        QuotaBound::Limit
    } else {
        QuotaBound::Unbounded
    };
    let empty = WorkloadModel::default();
    let mut engine = Engine::new(&policy, pool(config.nodes, config.gpus_per_node));
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut placed = 0;
    let start = Instant::now();
    for task in tasks {
        let t0 = Instant::now();
        if let Some(o) = online.as_mut() {
            o.observe(task);
        }
        let (model, epoch) = online
            .as_ref()
            .map_or((&empty, 0), |o| (o.model(), o.version()));
        if let Some(p) = engine.place(&Request::new(&tenants, bound, model, epoch), task) {
            engine.apply(&p.allocation(task));
            placed += 1;
        }
        latencies.push(t0.elapsed().as_nanos() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |ns| *ns as f64 / 1000.0)
    };
    BenchResult {
        policy: kind.name().to_owned(),
        decisions: tasks.len(),
        placed,
        failed: tasks.len() - placed,
        seconds,
        decisions_per_second: if seconds > 0.0 {
            tasks.len() as f64 / seconds
        } else {
            0.0
        },
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: latencies.last().map_or(0.0, |ns| *ns as f64 / 1000.0),
        node_classes_at_end: engine.class_count(),
    }
}
