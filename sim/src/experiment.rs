//! One simulated run (a policy, a seed) and an experiment (a policy over
//! several seeds), measured as in the FGD paper: allocated GPU as a share of
//! capacity, each time the requested GPU first reaches another percent of
//! capacity.

use std::collections::BTreeMap;
use std::time::Instant;

use std::sync::Arc;

use finpool_domain::{Name, Placement, Timestamp};
use finpool_scheduler::{CycleConfig, Task};
use serde::Serialize;

use crate::openb::{self, OpenbNode, OpenbPod};
pub use crate::policies::PolicyKind;
use crate::pool::SimPool;
use crate::workload;

/// The curve runs from 1% to this many percent of capacity arrived.
pub const MAX_PERCENT: usize = 130;

/// Scheduling cycles per percent of capacity arrived. Pods arriving
/// between two cycles are decided together, each seen by the workload
/// learner before any is placed.
pub const CYCLES_PER_PERCENT: u64 = 2;

/// Where one pod went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRow {
    pub pod: OpenbPod,
    /// (node, [(gpu index, milli)]) or None when it fit nowhere.
    pub placed: Option<(String, Vec<(u32, u32)>)>,
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub seed: u64,
    /// alloc_pct[i]: allocated % of capacity when arrivals first reached i+1 %.
    pub alloc_pct: Vec<f64>,
    pub pods: usize,
    pub failed: usize,
    /// Allocated % of capacity once every pod has arrived (the same as the
    /// 130% point unless the trace alone is larger than the tuned load).
    pub end_pct: f64,
    pub placements: Option<Vec<PlacementRow>>,
    pub seconds: f64,
}

impl RunResult {
    pub fn final_pct(&self) -> f64 {
        self.alloc_pct[MAX_PERCENT - 1]
    }
}

/// Runs one seed of one policy over the tuned workload, through the shared
/// scheduling cycle: pods arrive in order, and a cycle runs each time the
/// arrived demand reaches another step of capacity
/// ([`CYCLES_PER_PERCENT`]). As in the paper, a pod the cycle cannot place
/// fails: it
/// leaves the queue.
pub fn run_once(
    nodes: &[OpenbNode],
    pods: &[OpenbPod],
    kind: PolicyKind,
    seed: u64,
    tune: f64,
    record: bool,
) -> RunResult {
    run_once_observed(nodes, pods, kind, seed, tune, record, &|| {})
}

/// [`run_once`], calling `point` each time the curve gains a point:
/// [`MAX_PERCENT`] calls in all, for progress.
pub fn run_once_observed(
    nodes: &[OpenbNode],
    pods: &[OpenbPod],
    kind: PolicyKind,
    seed: u64,
    tune: f64,
    record: bool,
    point: &(dyn Fn() + Sync),
) -> RunResult {
    let start = Instant::now();
    let cluster = openb::cluster(nodes);
    let capacity = cluster.gpu_capacity_milli();
    let trace_tasks: Vec<Task> = pods.iter().map(|p| openb::task(&cluster, p)).collect();
    let trace_model = crate::policies::paper_model(&trace_tasks);
    let arrivals = workload::tuned(pods, capacity, tune, seed);
    let (policy, online) = kind.build(seed, &trace_model);
    let config = CycleConfig {
        tenantless: true,
        explain_limit: 0,
        learn_workload: false,
        ..CycleConfig::default()
    };
    let mut pool = SimPool::new(config, policy, Arc::new(openb::inventory(nodes)));
    pool.cycle_mut().set_workload_learner(online);
    let tenant = Name::parse("tenant", "trace").expect("a valid name");

    let mut alloc_pct = Vec::with_capacity(MAX_PERCENT);
    let mut arrived = 0u64;
    let mut allocated = 0u64;
    let mut failed = 0;
    let mut rows = record.then(|| vec![None; arrivals.len()]);
    let mut cycles = 0u64;
    let mut tick = 0i64;
    for (i, pod) in arrivals.iter().enumerate() {
        pool.submit(openb::queued_job(pod, i, &tenant));
        arrived += pod.gpu_demand();
        // A cycle each time arrivals reach the next step of capacity.
        let step = arrived * 100 * CYCLES_PER_PERCENT >= capacity * (cycles + 1);
        if !step && i + 1 < arrivals.len() {
            continue;
        }
        cycles = arrived * 100 * CYCLES_PER_PERCENT / capacity.max(1);
        tick += 1;
        let report = pool.cycle(Timestamp(tick));
        for a in &report.plan.admit {
            let n = a.job.0.as_u128() as usize;
            allocated += arrivals[n].gpu_demand();
            if let Some(rows) = rows.as_mut() {
                rows[n] = Some(describe(&a.placement));
            }
        }
        {
            let mut state = pool.state();
            failed += state.queued.len();
            state.queued.clear();
            state.started.clear();
        }
        while alloc_pct.len() < MAX_PERCENT
            && arrived * 100 >= capacity * (alloc_pct.len() as u64 + 1)
        {
            alloc_pct.push(percent(allocated, capacity));
            point();
        }
    }
    // Percentages the arrivals never reached read the final state.
    while alloc_pct.len() < MAX_PERCENT {
        alloc_pct.push(percent(allocated, capacity));
        point();
    }
    RunResult {
        seed,
        alloc_pct,
        pods: arrivals.len(),
        failed,
        end_pct: percent(allocated, capacity),
        placements: rows.map(|rows| {
            arrivals
                .iter()
                .zip(rows)
                .map(|(pod, placed)| PlacementRow {
                    pod: pod.clone(),
                    placed,
                })
                .collect()
        }),
        seconds: start.elapsed().as_secs_f64(),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn describe(p: &Placement) -> (String, Vec<(u32, u32)>) {
    (
        p.node.clone(),
        p.gpus.iter().map(|g| (g.index, g.milli)).collect(),
    )
}

/// A policy over several seeds, as the CLI prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentReport {
    pub workload: String,
    pub policy: String,
    pub seeds: Vec<u64>,
    /// Mean over seeds, keyed "1" to "130".
    pub alloc_pct: BTreeMap<String, f64>,
    /// Each seed's value at 130%.
    pub per_seed: BTreeMap<String, f64>,
    /// Mean pods per seed that fit nowhere.
    pub failed_pods: f64,
    pub failed_pods_per_seed: BTreeMap<String, usize>,
    pub pods_per_seed: BTreeMap<String, usize>,
    pub wall_seconds: f64,
    pub decisions_per_second: f64,
}

impl ExperimentReport {
    pub fn at(&self, percent: usize) -> f64 {
        self.alloc_pct[&percent.to_string()]
    }
}

/// A workload and the protocol's settings, to run policies over.
#[derive(Debug, Clone, Copy)]
pub struct Experiment<'a> {
    pub workload: &'a str,
    pub nodes: &'a [OpenbNode],
    pub pods: &'a [OpenbPod],
    pub seeds: &'a [u64],
    pub tune: f64,
    /// Seeds run in parallel.
    pub threads: usize,
    /// Keep every pod's placement.
    pub record: bool,
}

/// Runs `kind` for every seed of the experiment.
pub fn run_experiment(e: &Experiment<'_>, kind: PolicyKind) -> (ExperimentReport, Vec<RunResult>) {
    run_experiment_observed(e, kind, &mut |_, _| {})
}

/// [`run_experiment`], reporting progress to `progress` as (done, total)
/// curve points over every seed (total: seeds × [`MAX_PERCENT`]); calls
/// come one at a time, with `done` rising by one each.
pub fn run_experiment_observed(
    e: &Experiment<'_>,
    kind: PolicyKind,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> (ExperimentReport, Vec<RunResult>) {
    let start = Instant::now();
    let total = (e.seeds.len() * MAX_PERCENT) as u64;
    let done = std::sync::Mutex::new((0u64, progress));
    let point = || {
        let mut done = done.lock().unwrap_or_else(|p| p.into_inner());
        done.0 += 1;
        let n = done.0;
        (done.1)(n, total);
    };
    let point: &(dyn Fn() + Sync) = &point;
    let mut results: Vec<RunResult> = Vec::with_capacity(e.seeds.len());
    for batch in e.seeds.chunks(e.threads.max(1)) {
        let done: Vec<RunResult> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&seed| {
                    s.spawn(move || {
                        run_once_observed(e.nodes, e.pods, kind, seed, e.tune, e.record, point)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a simulation thread panicked"))
                .collect()
        });
        results.extend(done);
    }
    let wall = start.elapsed().as_secs_f64();
    let n = results.len().max(1) as f64;
    let alloc_pct = (0..MAX_PERCENT)
        .map(|i| {
            (
                (i + 1).to_string(),
                results.iter().map(|r| r.alloc_pct[i]).sum::<f64>() / n,
            )
        })
        .collect();
    let decisions: usize = results.iter().map(|r| r.pods).sum();
    let report = ExperimentReport {
        workload: e.workload.to_owned(),
        policy: kind.name().to_owned(),
        seeds: e.seeds.to_vec(),
        alloc_pct,
        per_seed: results
            .iter()
            .map(|r| (r.seed.to_string(), r.final_pct()))
            .collect(),
        failed_pods: results.iter().map(|r| r.failed as f64).sum::<f64>() / n,
        failed_pods_per_seed: results
            .iter()
            .map(|r| (r.seed.to_string(), r.failed))
            .collect(),
        pods_per_seed: results
            .iter()
            .map(|r| (r.seed.to_string(), r.pods))
            .collect(),
        wall_seconds: wall,
        decisions_per_second: if wall > 0.0 {
            decisions as f64 / wall
        } else {
            0.0
        },
    };
    (report, results)
}
