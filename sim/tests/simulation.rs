//! The simulator on small generated traces (no shared data needed): it
//! never oversubscribes, tunes within budget, is deterministic per seed,
//! and an independent recount of its placements agrees with it.

use finpool_sim::experiment::{MAX_PERCENT, run_once};
use finpool_sim::openb::{OpenbNode, OpenbPod};
use finpool_sim::{PolicyKind, check, workload};
use proptest::prelude::*;

const MODELS: [(&str, u32, u64); 3] = [("G2", 8, 96_000), ("T4", 2, 104_000), ("P100", 2, 16_000)];

fn nodes(spec: &[usize]) -> Vec<OpenbNode> {
    spec.iter()
        .enumerate()
        .map(|(i, &m)| {
            let (model, gpus, cpu) = MODELS[m];
            OpenbNode {
                name: format!("node-{i:03}"),
                cpu_milli: cpu,
                memory_mib: 262_144,
                gpus,
                model: model.into(),
            }
        })
        .collect()
}

fn arb_pod() -> impl Strategy<Value = OpenbPod> {
    (
        prop_oneof![
            4 => (Just(1u32), Just(1000u32)),
            4 => (Just(1u32), prop::sample::select(vec![160u32, 230, 320, 470, 650, 810])),
            2 => (Just(0u32), Just(0u32)),
            1 => (prop::sample::select(vec![2u32, 4, 8]), Just(1000u32)),
        ],
        prop::sample::select(vec![2_000u64, 4_000, 8_000, 12_000]),
        prop::sample::select(vec![
            vec![],
            vec!["T4".to_string()],
            vec!["G2".to_string(), "P100".to_string()],
        ]),
    )
        .prop_map(|((num_gpu, gpu_milli), cpu_milli, gpu_spec)| OpenbPod {
            name: String::new(),
            cpu_milli,
            memory_mib: 8_192,
            num_gpu,
            gpu_milli,
            gpu_spec,
        })
}

fn arb_trace() -> impl Strategy<Value = (Vec<OpenbNode>, Vec<OpenbPod>)> {
    (
        prop::collection::vec(0..3usize, 3..12),
        prop::collection::vec(arb_pod(), 10..80),
    )
        .prop_map(|(spec, mut pods)| {
            for (i, p) in pods.iter_mut().enumerate() {
                p.name = format!("pod-{i:03}");
            }
            (nodes(&spec), pods)
        })
}

fn capacity(nodes: &[OpenbNode]) -> u64 {
    nodes.iter().map(|n| n.gpus as u64 * 1000).sum()
}

/// The placements file the CLI would write for one run.
fn placements_csv(seed: u64, rows: &[finpool_sim::experiment::PlacementRow]) -> String {
    let mut text = format!("{}\n", check::HEADER);
    for row in rows {
        text.push_str(&check::line(seed, row));
        text.push('\n');
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn runs_never_oversubscribe_and_the_recount_agrees((nodes, pods) in arb_trace(), seed in 0u64..1000) {
        for kind in PolicyKind::ALL {
            let run = run_once(&nodes, &pods, kind, seed, 1.3, true);
            let rows = run.placements.clone().unwrap();
            let report = check::check(&nodes, placements_csv(seed, &rows).as_bytes()).unwrap();
            prop_assert!(report.violations.is_empty(), "{}: {:?}", kind.name(), report.violations);
            let recount = &report.seeds[&seed.to_string()];
            prop_assert_eq!(recount.pods, run.pods);
            prop_assert_eq!(recount.failed, run.failed);
            prop_assert!((recount.alloc_pct - run.end_pct).abs() < 1e-9,
                "{}: recount {} vs simulator {}", kind.name(), recount.alloc_pct, run.end_pct);
            // The curve never goes down, and never above 100%.
            prop_assert!(run.alloc_pct.windows(2).all(|w| w[0] <= w[1]));
            prop_assert!(run.alloc_pct.iter().all(|p| *p <= 100.0 + 1e-9));
            prop_assert_eq!(run.alloc_pct.len(), MAX_PERCENT);
            // The recount at an arrival level reads what the curve read.
            for at in [90u64, 100, 110, 120, 130] {
                let report =
                    check::check_at(&nodes, placements_csv(seed, &rows).as_bytes(), Some(at)).unwrap();
                let recount = &report.seeds[&seed.to_string()];
                prop_assert!((recount.alloc_pct - run.alloc_pct[at as usize - 1]).abs() < 1e-9,
                    "{} at {at}%: recount {} vs curve {}", kind.name(), recount.alloc_pct,
                    run.alloc_pct[at as usize - 1]);
            }
        }
    }

    #[test]
    fn tuning_stays_within_the_budget((nodes, pods) in arb_trace(), seed in 0u64..1000, tune in 0.5f64..2.0) {
        let cap = capacity(&nodes);
        let tuned = workload::tuned(&pods, cap, tune, seed);
        let total: u64 = tuned.iter().map(OpenbPod::gpu_demand).sum();
        let original: u64 = pods.iter().map(OpenbPod::gpu_demand).sum();
        prop_assert!(total <= (tune * cap as f64).floor() as u64 || total == original,
            "{total} over {tune} x {cap}");
        // Every original pod is kept; copies only add.
        prop_assert!(tuned.len() >= pods.len());
        for p in &pods {
            prop_assert!(tuned.iter().any(|t| t.name == p.name));
        }
    }

    #[test]
    fn runs_are_deterministic_for_a_seed((nodes, pods) in arb_trace(), seed in 0u64..1000) {
        for kind in PolicyKind::ALL {
            let a = run_once(&nodes, &pods, kind, seed, 1.3, true);
            let b = run_once(&nodes, &pods, kind, seed, 1.3, true);
            prop_assert_eq!(&a.alloc_pct, &b.alloc_pct);
            prop_assert_eq!(a.placements, b.placements);
        }
    }
}

/// Progress comes one call at a time, one curve point each, up to seeds ×
/// MAX_PERCENT, from seeds run in parallel; the bench reports its jobs.
#[test]
fn progress_counts_every_curve_point_and_every_job() {
    let nodes = nodes(&[0, 1, 2, 1]);
    let pods: Vec<OpenbPod> = (0..30)
        .map(|i| OpenbPod {
            name: format!("pod-{i:03}"),
            cpu_milli: 4_000,
            memory_mib: 8_192,
            num_gpu: 1,
            gpu_milli: [1000, 470, 320][i % 3],
            gpu_spec: vec![],
        })
        .collect();
    let seeds = [1, 2, 3];
    let experiment = finpool_sim::Experiment {
        workload: "small",
        nodes: &nodes,
        pods: &pods,
        seeds: &seeds,
        tune: 1.3,
        threads: 3,
        record: false,
    };
    let mut seen = Vec::new();
    let (observed, _) =
        finpool_sim::run_experiment_observed(&experiment, PolicyKind::BestFit, &mut |d, t| {
            seen.push((d, t))
        });
    let total = (seeds.len() * MAX_PERCENT) as u64;
    assert_eq!(seen, (1..=total).map(|d| (d, total)).collect::<Vec<_>>());
    let (plain, _) = finpool_sim::run_experiment(&experiment, PolicyKind::BestFit);
    assert_eq!(
        observed.alloc_pct, plain.alloc_pct,
        "observing changes nothing"
    );

    let config = finpool_sim::bench::BenchConfig {
        nodes: 20,
        gpus_per_node: 8,
        pending: 1_000,
        seed: 7,
        pods: None,
        tenants: 0,
        batch: 3,
    };
    let jobs = finpool_sim::bench::queue(&config);
    let mut seen = Vec::new();
    finpool_sim::bench::run_observed(&config, PolicyKind::BestFit, &jobs, &mut |d, t| {
        seen.push((d, t))
    });
    assert!(seen.len() as u64 <= finpool_sim::bench::PROGRESS_STEPS + 1);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(seen.last(), Some(&(1_000, 1_000)));
}
