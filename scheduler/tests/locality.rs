//! Base-model locality, over random pools (two GPU classes), models (load
//! times, card memory), tenants (isolation levels) and queues, run through
//! the shared cycle every two seconds with jobs starting and ending:
//!
//! - no job waits longer than its model's load time plus one cycle while
//!   a card it could use is idle (counted here from the outside: a card
//!   with no job, of a class the job allows, with the memory its model
//!   needs, on a node with the CPU and memory to spare);
//! - every job left waiting carries a typed reason, never the catch-all.

use std::collections::{BTreeMap, BTreeSet};

use finpool_domain::{
    BaseModel, Gpu, GpuClass, GpuRequest, IsolationLevel, JobId, Name, Node, Placement, Quota,
    Resources, Tenant, Timestamp,
};
use finpool_scheduler::{
    Cycle, CycleConfig, CycleInputs, Policy, QueuedJob, RunningJob, WaitReason,
};
use proptest::prelude::*;

const CLASSES: [(&str, u64); 2] = [("A100", 81_920), ("L4", 24_576)];
const CYCLE_MS: i64 = 2_000;

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

#[derive(Debug, Clone)]
struct Arrival {
    at_cycle: usize,
    tenant: usize,
    share: bool,
    class: Option<usize>,
    model: Option<usize>,
    runtime_cycles: i64,
}

#[derive(Debug, Clone)]
struct Case {
    /// (class, cards) per node.
    nodes: Vec<(usize, u32)>,
    /// (load time ms, needs a big card) per model.
    models: Vec<(u64, bool)>,
    exclusive: Vec<bool>,
    arrivals: Vec<Arrival>,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0..2usize, 1..=3u32), 1..4),
        prop::collection::vec((2_000..30_000u64, any::<bool>()), 1..4),
        prop::collection::vec(any::<bool>(), 1..4),
    )
        .prop_flat_map(|(nodes, models, exclusive)| {
            let (m, t) = (models.len(), exclusive.len());
            let arrival = (
                0..12usize,
                0..t,
                any::<bool>(),
                prop::option::of(0..2usize),
                prop::option::weighted(0.8, 0..m),
                1..8i64,
            )
                .prop_map(
                    |(at_cycle, tenant, share, class, model, runtime_cycles)| Arrival {
                        at_cycle,
                        tenant,
                        share,
                        class,
                        model,
                        runtime_cycles,
                    },
                );
            (
                Just(nodes),
                Just(models),
                Just(exclusive),
                prop::collection::vec(arrival, 1..16),
            )
        })
        .prop_map(|(nodes, models, exclusive, arrivals)| Case {
            nodes,
            models,
            exclusive,
            arrivals,
        })
}

fn nodes(case: &Case) -> Vec<Node> {
    case.nodes
        .iter()
        .enumerate()
        .map(|(i, (class, cards))| Node {
            name: format!("node-{i}"),
            labels: BTreeMap::new(),
            cpu_milli: 64_000,
            memory_mib: 524_288,
            gpus: (0..*cards)
                .map(|g| Gpu {
                    index: g,
                    uuid: format!("GPU-{i}-{g}"),
                    class: CLASSES[*class].0.into(),
                    memory_mib: CLASSES[*class].1,
                    mig: vec![],
                })
                .collect(),
            models: vec![],
        })
        .collect()
}

fn model_name(m: usize) -> Name {
    name(&format!("model-{m}"))
}

fn models(case: &Case) -> Vec<BaseModel> {
    case.models
        .iter()
        .enumerate()
        .map(|(m, (load, big))| BaseModel {
            name: model_name(m),
            size_mib: 10_000,
            min_gpu_memory_mib: if *big { 40_000 } else { 10_000 },
            load_time_ms: Some(*load),
            registered_at: Timestamp(0),
        })
        .collect()
}

fn tenants(case: &Case, cards: u32) -> Vec<Tenant> {
    case.exclusive
        .iter()
        .enumerate()
        .map(|(t, exclusive)| Tenant {
            id: name(&format!("tenant-{t}")),
            display_name: String::new(),
            // No quota binds: only locality could hold a job back.
            quotas: CLASSES
                .iter()
                .map(|(c, _)| {
                    (
                        c.to_string(),
                        Quota {
                            guaranteed: 0,
                            limit: cards,
                            lending_limit: None,
                        },
                    )
                })
                .collect(),
            weight: 1,
            isolation: if *exclusive {
                IsolationLevel::Exclusive
            } else {
                IsolationLevel::SharedWithinTenant
            },
            created_at: Timestamp(0),
            suspended: None,
        })
        .collect()
}

/// Whether a card the job could use is idle: no job on it, a class it
/// allows, the memory its model needs.
fn idle_card_for(
    job: &QueuedJob,
    nodes: &[Node],
    models: &[BaseModel],
    holding: &[(RunningJob, i64)],
) -> bool {
    let busy: BTreeSet<(&str, u32)> = holding
        .iter()
        .flat_map(|(r, _)| {
            r.placement
                .gpus
                .iter()
                .map(|g| (r.placement.node.as_str(), g.index))
        })
        .collect();
    let needs = job
        .model
        .as_ref()
        .and_then(|m| models.iter().find(|b| &b.name == m))
        .map_or(0, |b| b.min_gpu_memory_mib);
    nodes.iter().any(|n| {
        n.gpus.iter().any(|g| {
            !busy.contains(&(n.name.as_str(), g.index))
                && (job.resources.gpu_classes.is_empty()
                    || job.resources.gpu_classes.contains(&g.class))
                && g.memory_mib >= needs
        })
    })
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let nodes = nodes(case);
    let models = models(case);
    let cards: u32 = case.nodes.iter().map(|(_, c)| c).sum();
    let tenants = tenants(case, cards);
    let mut cycle = Cycle::new(
        CycleConfig {
            default_max_runtime_ms: 20 * CYCLE_MS as u64,
            ..CycleConfig::default()
        },
        Policy::finpool(),
    );
    let mut queued: Vec<QueuedJob> = Vec::new();
    // Running jobs and the cycle they end.
    let mut holding: Vec<(RunningJob, i64)> = Vec::new();
    let mut idle_wait: BTreeMap<JobId, i64> = BTreeMap::new();
    let runtime: BTreeMap<JobId, i64> = case
        .arrivals
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                JobId(uuid::Uuid::from_u128(i as u128 + 1)),
                a.runtime_cycles,
            )
        })
        .collect();
    for k in 0..40i64 {
        let now = Timestamp(k * CYCLE_MS);
        holding.retain(|(_, end)| *end > k);
        for (i, a) in case.arrivals.iter().enumerate() {
            if a.at_cycle as i64 != k {
                continue;
            }
            queued.push(QueuedJob {
                id: JobId(uuid::Uuid::from_u128(i as u128 + 1)),
                tenant: tenants[a.tenant].id.clone(),
                priority: 0,
                submitted_at: Timestamp(now.0 + i as i64),
                resources: Resources {
                    gpu: if a.share {
                        GpuRequest::Share {
                            milli: 500,
                            memory_mib: 8_192,
                        }
                    } else {
                        GpuRequest::Whole { count: 1 }
                    },
                    gpu_classes: a
                        .class
                        .map(|c| vec![CLASSES[c].0.into()])
                        .unwrap_or_default(),
                    cpu_milli: 1_000,
                    memory_mib: 1_024,
                },
                model: a.model.map(model_name),
                max_runtime_ms: Some((a.runtime_cycles * CYCLE_MS) as u64),
            });
        }
        let plan = cycle
            .run(CycleInputs {
                now,
                classes: CLASSES
                    .iter()
                    .map(|(n, m)| GpuClass {
                        name: n.to_string(),
                        memory_mib: *m,
                    })
                    .collect(),
                nodes: nodes.clone().into(),
                tenants: tenants.clone(),
                models: models.clone(),
                queued: queued.clone(),
                holding: holding.iter().map(|(r, _)| r.clone()).collect(),
            })
            .unwrap();
        prop_assert!(
            plan.stop.is_empty(),
            "no quota binds, so nothing is preempted"
        );
        let admitted: BTreeMap<JobId, Placement> = plan
            .admit
            .iter()
            .map(|a| (a.job, a.placement.clone()))
            .collect();
        let reasons: BTreeMap<JobId, &WaitReason> =
            plan.waiting.iter().map(|(j, r)| (*j, r)).collect();
        let mut still = Vec::new();
        for job in queued.drain(..) {
            match admitted.get(&job.id) {
                Some(p) => holding.push((
                    RunningJob {
                        id: job.id,
                        tenant: job.tenant.clone(),
                        placement: p.clone(),
                        cpu_milli: job.resources.cpu_milli,
                        memory_mib: job.resources.memory_mib,
                        priority: 0,
                        started_at: Some(now),
                        min_runtime_ms: 0,
                        max_runtime_ms: job.max_runtime_ms,
                        model: job.model.clone(),
                        displaced: vec![],
                    },
                    k + runtime[&job.id],
                )),
                None => {
                    let reason = reasons.get(&job.id);
                    prop_assert!(
                        reason.is_some_and(|r| **r != WaitReason::Queued),
                        "job {} waits without a typed reason: {reason:?}",
                        job.id
                    );
                    still.push(job);
                }
            }
        }
        queued = still;
        for job in &queued {
            if idle_card_for(job, &nodes, &models, &holding) {
                let waited = idle_wait.entry(job.id).or_default();
                *waited += CYCLE_MS;
                let load = job
                    .model
                    .as_ref()
                    .and_then(|m| models.iter().find(|b| &b.name == m))
                    .and_then(|b| b.load_time_ms)
                    .unwrap_or(0) as i64;
                prop_assert!(
                    *waited <= load + CYCLE_MS,
                    "job {} waited {waited} ms with a usable card idle; its model loads in {load} ms: {:?}",
                    job.id,
                    reasons.get(&job.id)
                );
            }
        }
    }
    Ok(())
}

/// A case proptest found: jobs alike to one that held out for a warm card
/// skipped their own attempt (the failed-attempt cache), so their hold
/// clocks never ran while an A100 stayed idle.
#[test]
fn jobs_alike_to_one_holding_out_hold_out_on_the_clock_too() {
    let a = |at_cycle, tenant, model: Option<usize>, runtime_cycles| Arrival {
        at_cycle,
        tenant,
        share: false,
        class: None,
        model,
        runtime_cycles,
    };
    let case = Case {
        nodes: vec![(1, 3), (0, 3)],
        models: vec![(23652, true), (10406, false)],
        exclusive: vec![false, false],
        arrivals: vec![
            a(4, 0, Some(0), 7),
            a(6, 0, Some(0), 1),
            a(2, 0, None, 1),
            a(2, 1, Some(0), 4),
            a(1, 0, Some(0), 6),
            a(7, 1, Some(0), 7),
            a(2, 0, Some(0), 1),
            a(2, 1, Some(0), 1),
            a(2, 0, Some(0), 7),
        ],
    };
    run(&case).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn no_job_waits_past_its_load_time_with_a_usable_card_idle(case in arb_case()) {
        run(&case)?;
    }
}

/// The cases are worth something only if jobs do hold out for warm cards.
#[test]
fn the_cases_exercise_warm_waits() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut warm = 0;
    for _ in 0..64 {
        let case = arb_case().new_tree(&mut runner).unwrap().current();
        let nodes = nodes(&case);
        let models = models(&case);
        let cards: u32 = case.nodes.iter().map(|(_, c)| c).sum();
        let tenants = tenants(&case, cards);
        let mut cycle = Cycle::new(CycleConfig::default(), Policy::finpool());
        // Every job of model 0 at once, on a pool that holds it on one card.
        let queued: Vec<QueuedJob> = (0..4u128)
            .map(|i| QueuedJob {
                id: JobId(uuid::Uuid::from_u128(i + 1)),
                tenant: tenants[0].id.clone(),
                priority: 0,
                submitted_at: Timestamp(i as i64),
                resources: Resources {
                    gpu: GpuRequest::Whole { count: 1 },
                    gpu_classes: vec![],
                    cpu_milli: 1_000,
                    memory_mib: 1_024,
                },
                model: Some(model_name(0)),
                max_runtime_ms: Some(1_000),
            })
            .collect();
        let plan = cycle
            .run(CycleInputs {
                now: Timestamp(0),
                classes: vec![],
                nodes: nodes.clone().into(),
                tenants: tenants.clone(),
                models: models.clone(),
                queued: queued[..1].to_vec(),
                holding: vec![],
            })
            .unwrap();
        let Some(first) = plan.admit.first() else {
            continue;
        };
        let holding = vec![RunningJob {
            id: first.job,
            tenant: tenants[0].id.clone(),
            placement: first.placement.clone(),
            cpu_milli: 1_000,
            memory_mib: 1_024,
            priority: 0,
            started_at: Some(Timestamp(0)),
            min_runtime_ms: 0,
            max_runtime_ms: Some(1_000),
            model: Some(model_name(0)),
            displaced: vec![],
        }];
        let plan = cycle
            .run(CycleInputs {
                now: Timestamp(1),
                classes: vec![],
                nodes: nodes.into(),
                tenants,
                models,
                queued: queued[1..].to_vec(),
                holding,
            })
            .unwrap();
        warm += plan
            .waiting
            .iter()
            .filter(|(_, r)| matches!(r, WaitReason::WarmCard { .. }))
            .count();
    }
    assert!(warm > 0, "no case held a job for a warm card");
}

/// The cycle's memory shows which model it loaded on which card and which
/// models each node fetched (the API's node listing reads it); card memory
/// does not outlive a restart, so neither does that view.
#[test]
fn the_memory_shows_resident_and_cached_models_and_forgets_cards_on_restart() {
    let case = Case {
        nodes: vec![(0, 2)],
        models: vec![(5_000, false)],
        exclusive: vec![false],
        arrivals: vec![],
    };
    let mut cycle = Cycle::new(CycleConfig::default(), Policy::finpool());
    let job = QueuedJob {
        id: JobId(uuid::Uuid::from_u128(1)),
        tenant: name("tenant-0"),
        priority: 0,
        submitted_at: Timestamp(0),
        resources: Resources {
            gpu: GpuRequest::Whole { count: 1 },
            gpu_classes: vec![],
            cpu_milli: 1000,
            memory_mib: 1024,
        },
        model: Some(model_name(0)),
        max_runtime_ms: None,
    };
    let plan = cycle
        .run(CycleInputs {
            now: Timestamp(1000),
            classes: CLASSES
                .iter()
                .map(|(n, m)| GpuClass {
                    name: n.to_string(),
                    memory_mib: *m,
                })
                .collect(),
            nodes: nodes(&case).into(),
            tenants: tenants(&case, 2),
            models: models(&case),
            queued: vec![job],
            holding: vec![],
        })
        .unwrap();
    assert_eq!(plan.admit.len(), 1, "{plan:?}");
    let card = plan.admit[0].placement.gpus[0].index;
    let memory = cycle.durable().clone();
    assert_eq!(
        memory.resident["node-0"].get(&card).map(String::as_str),
        Some("model-0")
    );
    assert!(memory.cached["node-0"].contains("model-0"));
    assert!(cycle.take_dirty());

    let restarted = Cycle::restore(CycleConfig::default(), Policy::finpool(), memory);
    assert!(restarted.durable().resident.is_empty());
    assert!(restarted.durable().cached["node-0"].contains("model-0"));
}
