//! `finpool bench scheduler`: decisions per second of the shared
//! scheduling cycle (the one every driver runs) on a large synthetic pool.
//! The queue arrives in batches; each batch is one cycle through the same
//! shell the standalone pool runs, over in-memory ports. What a cycle
//! cannot place is dropped, so the pool fills as it would under load.

use std::sync::Arc;
use std::time::Instant;

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, Inventory, IsolationLevel, JobId, Name, Node, Quota, Resources,
    Tenant, Timestamp,
};
use finpool_scheduler::CycleConfig;
use finpool_scheduler::QueuedJob;
use finpool_scheduler::plugins::workload::WorkloadModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::openb::OpenbPod;
use crate::policies::PolicyKind;
use crate::pool::SimPool;

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
    /// Jobs arriving per cycle.
    pub batch: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub policy: String,
    pub decisions: usize,
    pub placed: usize,
    pub failed: usize,
    pub cycles: usize,
    pub seconds: f64,
    pub decisions_per_second: f64,
    /// Per decision: each cycle's time over the jobs it decided, as
    /// percentiles over cycles.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Whole cycles.
    pub cycle_p50_ms: f64,
    pub cycle_p99_ms: f64,
}

/// The pool: `nodes` nodes of `gpus_per_node` cards, with 12 CPUs and
/// 48 GiB of memory per card.
pub fn pool(nodes: usize, gpus_per_node: u32) -> Inventory {
    Inventory {
        classes: vec![GpuClass {
            name: "GPU".into(),
            memory_mib: 81_920,
        }],
        nodes: (0..nodes)
            .map(|i| Node {
                name: format!("bench-node-{i}"),
                labels: Default::default(),
                cpu_milli: 12_000 * gpus_per_node as u64,
                memory_mib: 49_152 * gpus_per_node as u64,
                gpus: (0..gpus_per_node)
                    .map(|g| Gpu {
                        index: g,
                        uuid: String::new(),
                        class: "GPU".into(),
                        memory_mib: 81_920,
                        mig: vec![],
                    })
                    .collect(),
                models: vec![],
            })
            .collect(),
    }
}

fn tenant_name(t: usize) -> Name {
    Name::parse("tenant", &format!("tenant-{t}")).expect("a valid name")
}

/// The queue: `pending` jobs drawn (seeded) from the trace's pods, or
/// from the built-in mix, each of a random tenant when there are tenants.
pub fn queue(config: &BenchConfig) -> Vec<QueuedJob> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let shapes = draw(config, &mut rng, config.gpus_per_node);
    let none = tenant_name(0);
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (gpu, cpu_milli, memory_mib))| QueuedJob {
            id: JobId(uuid::Uuid::from_u128(i as u128 + 1)),
            tenant: if config.tenants > 0 {
                tenant_name(rng.random_range(0..config.tenants))
            } else {
                none.clone()
            },
            priority: 0,
            submitted_at: Timestamp(i as i64),
            resources: Resources {
                gpu,
                gpu_classes: vec![],
                cpu_milli,
                memory_mib,
            },
            model: None,
            max_runtime_ms: None,
        })
        .collect()
}

/// Each of `count` tenants guarantees 60% of an even split of the pool
/// and may borrow up to 150% of it, so limits bind as the pool fills.
pub fn tenants(config: &BenchConfig) -> Vec<Tenant> {
    let cards = config.nodes as u64 * config.gpus_per_node as u64;
    let even = cards as f64 / config.tenants.max(1) as f64;
    (0..config.tenants)
        .map(|t| Tenant {
            id: tenant_name(t),
            display_name: String::new(),
            quotas: [(
                "GPU".to_owned(),
                Quota {
                    guaranteed: (even * 0.6).floor() as u32,
                    limit: (even * 1.5).ceil() as u32,
                    lending_limit: None,
                },
            )]
            .into(),
            weight: 1,
            isolation: IsolationLevel::SharedWithinTenant,
            created_at: Timestamp(0),
            suspended: None,
        })
        .collect()
}

fn draw(config: &BenchConfig, rng: &mut ChaCha8Rng, max_gpus: u32) -> Vec<(GpuRequest, u64, u64)> {
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
                (request, p.cpu_milli, p.memory_mib)
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
                    (request, cpu, memory)
                })
                .collect()
        }
    }
}

/// Runs the queue through the shared cycle with `kind`, a batch per cycle,
/// timing each cycle.
pub fn run(config: &BenchConfig, kind: PolicyKind, jobs: &[QueuedJob]) -> BenchResult {
    run_observed(config, kind, jobs, &mut |_, _| {})
}

/// Progress is reported at most this many times a run, so that reporting
/// costs nothing next to the cycles it measures.
pub const PROGRESS_STEPS: u64 = 200;

/// [`run`], reporting (jobs decided, jobs) to `progress` between cycles,
/// outside the timed cycles, at most [`PROGRESS_STEPS`] times and once at
/// the end.
pub fn run_observed(
    config: &BenchConfig,
    kind: PolicyKind,
    jobs: &[QueuedJob],
    progress: &mut dyn FnMut(u64, u64),
) -> BenchResult {
    let total = jobs.len() as u64;
    let step = total.div_ceil(PROGRESS_STEPS).max(1);
    let (mut decided, mut reported) = (0u64, 0u64);
    let (policy, online) = kind.build(config.seed, &WorkloadModel::default());
    let cycle = CycleConfig {
        tenantless: config.tenants == 0,
        explain_limit: 0,
        learn_workload: false,
        ..CycleConfig::default()
    };
    let mut pool = SimPool::new(
        cycle,
        policy,
        Arc::new(pool(config.nodes, config.gpus_per_node)),
    );
    pool.cycle_mut().set_workload_learner(online);
    pool.state().set_tenants(tenants(config));
    let mut per_decision = Vec::new();
    let mut cycles = Vec::new();
    let mut placed = 0;
    let start = Instant::now();
    for (i, batch) in jobs.chunks(config.batch.max(1)).enumerate() {
        for job in batch {
            pool.submit(job.clone());
        }
        let t0 = Instant::now();
        let report = pool.cycle(Timestamp(i as i64 + 1));
        let took = t0.elapsed().as_nanos() as u64;
        placed += report.admitted;
        cycles.push(took);
        per_decision.push(took / batch.len() as u64);
        {
            let mut state = pool.state();
            state.queued.clear();
            state.started.clear();
        }
        decided += batch.len() as u64;
        if decided >= reported + step || decided == total {
            progress(decided, total);
            reported = decided;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    per_decision.sort_unstable();
    cycles.sort_unstable();
    let at = |v: &[u64], q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .map_or(0.0, |ns| *ns as f64)
    };
    BenchResult {
        policy: kind.name().to_owned(),
        decisions: jobs.len(),
        placed,
        failed: jobs.len() - placed,
        cycles: cycles.len(),
        seconds,
        decisions_per_second: if seconds > 0.0 {
            jobs.len() as f64 / seconds
        } else {
            0.0
        },
        p50_us: at(&per_decision, 0.50) / 1000.0,
        p99_us: at(&per_decision, 0.99) / 1000.0,
        max_us: per_decision.last().map_or(0.0, |ns| *ns as f64 / 1000.0),
        cycle_p50_ms: at(&cycles, 0.50) / 1e6,
        cycle_p99_ms: at(&cycles, 0.99) / 1e6,
    }
}
