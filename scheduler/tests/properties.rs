//! Properties of `decide` over random pools (some cards in MIG mode),
//! tenants (guarantees, borrowing and lending limits, isolation levels)
//! and arrivals, run for several cycles with jobs ending and preempted jobs
//! requeued:
//!
//! - nothing is oversubscribed (milli, GPU memory, CPU, memory) and no card
//!   is time-shared by two tenants (MIG slices hold one job each);
//! - no tenant exceeds its limit (guarantee plus borrowing limit);
//! - borrowing never takes more than unguaranteed capacity plus what
//!   lenders may lend;
//! - reclaim never takes a tenant below its guarantee;
//! - no preemption cycle;
//! - decisions are deterministic.

use std::collections::{BTreeMap, BTreeSet};

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, IsolationLevel, JobId, MigSlice, Name, Node, Quota, Resources,
    Tenant, Timestamp,
};
use finpool_scheduler::{Outcome, Policy, QueuedJob, RunningJob, Snapshot, decide};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const CLASSES: [(&str, u64); 2] = [("A100", 81_920), ("L4", 24_576)];
const MINUTE: i64 = 60_000;

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (0..2usize, 1..=8u32, 8..=96u64, any::<bool>()).prop_map(move |(class, gpus, cpus, mig)| {
        let (cname, cmem) = CLASSES[class];
        Node {
            name: format!("node-{i}"),
            labels: BTreeMap::new(),
            cpu_milli: cpus * 1000,
            memory_mib: cpus * 8192,
            gpus: (0..gpus)
                .map(|g| Gpu {
                    index: g,
                    uuid: format!("GPU-{i}-{g}"),
                    class: cname.into(),
                    memory_mib: cmem,
                    mig: if mig && g == 0 && class == 0 {
                        ["3g.40gb", "2g.20gb", "1g.10gb"]
                            .iter()
                            .enumerate()
                            .map(|(s, p)| {
                                MigSlice::from_profile(p, format!("MIG-{i}-{s}")).unwrap()
                            })
                            .collect()
                    } else {
                        vec![]
                    },
                })
                .collect(),
            models: vec![],
        }
    })
}

fn arb_tenant(i: usize) -> impl Strategy<Value = Tenant> {
    (
        prop::collection::vec((0..4u32, 0..4u32, prop::option::of(0..4u32)), 2),
        1..4u32,
        prop::sample::select(vec![
            IsolationLevel::SharedWithinTenant,
            IsolationLevel::Mig,
        ]),
    )
        .prop_map(move |(q, weight, isolation)| Tenant {
            id: name(&format!("tenant-{i}")),
            display_name: format!("Tenant {i}"),
            quotas: CLASSES
                .iter()
                .zip(q)
                .map(|((c, _), (g, extra, lend))| {
                    (
                        c.to_string(),
                        Quota {
                            guaranteed: g,
                            limit: g + extra,
                            lending_limit: lend.map(|l| l.min(g)),
                        },
                    )
                })
                .collect(),
            weight,
            isolation,
            created_at: Timestamp(0),
            suspended: None,
        })
}

fn arb_request() -> impl Strategy<Value = GpuRequest> {
    prop_oneof![
        3 => (1..=4u32).prop_map(|count| GpuRequest::Whole { count }),
        3 => (prop::sample::select(vec![100u32, 250, 400, 700]), 0..=10_000u64)
            .prop_map(|(milli, memory_mib)| GpuRequest::Share { milli, memory_mib }),
        1 => Just(GpuRequest::None),
    ]
}

#[derive(Debug, Clone)]
struct Arrival {
    tenant: usize,
    gpu: GpuRequest,
    class: Option<usize>,
    cpu: u64,
    priority: i32,
    runtime_minutes: u64,
}

fn arb_arrival(tenants: usize) -> impl Strategy<Value = Arrival> {
    (
        0..tenants,
        arb_request(),
        prop::option::of(0..2usize),
        0..8_000u64,
        -1..2i32,
        1..30u64,
    )
        .prop_map(
            |(tenant, gpu, class, cpu, priority, runtime_minutes)| Arrival {
                tenant,
                gpu,
                class,
                cpu,
                priority,
                runtime_minutes,
            },
        )
}

#[derive(Debug, Clone)]
struct Case {
    nodes: Vec<Node>,
    tenants: Vec<Tenant>,
    /// Arrivals per cycle.
    cycles: Vec<Vec<Arrival>>,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (1..6usize, 2..5usize).prop_flat_map(|(nodes, tenants)| {
        (
            (0..nodes).map(arb_node).collect::<Vec<_>>(),
            (0..tenants).map(arb_tenant).collect::<Vec<_>>(),
            prop::collection::vec(prop::collection::vec(arb_arrival(tenants), 0..12), 1..6),
        )
            .prop_map(|(nodes, tenants, cycles)| Case {
                nodes,
                tenants,
                cycles,
            })
    })
}

fn snapshot(case: &Case, now: i64, running: &[RunningJob]) -> Snapshot {
    Snapshot {
        now: Timestamp(now),
        classes: CLASSES
            .iter()
            .map(|(n, m)| GpuClass {
                name: n.to_string(),
                memory_mib: *m,
            })
            .collect(),
        nodes: case.nodes.clone().into(),
        tenants: case.tenants.clone(),
        running: running.to_vec(),
        default_max_runtime_ms: 60 * MINUTE as u64,
        ..Default::default()
    }
}

/// Per (node, card): used milli, used memory, owners and MIG slices taken.
fn check_capacity(
    case: &Case,
    running: &[RunningJob],
    queued: &BTreeMap<JobId, QueuedJob>,
) -> Result<(), TestCaseError> {
    #[derive(Default)]
    struct Card {
        milli: u32,
        memory: u64,
        tenants: BTreeSet<String>,
        slices: BTreeSet<u32>,
        timeshared: bool,
    }
    let mut cards: BTreeMap<(String, u32), Card> = BTreeMap::new();
    let mut nodes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut held: BTreeMap<(String, String), u64> = BTreeMap::new();
    for job in running {
        let node = case
            .nodes
            .iter()
            .find(|n| n.name == job.placement.node)
            .unwrap();
        let (cpu, mem) = nodes.entry(node.name.clone()).or_default();
        *cpu += job.cpu_milli;
        *mem += job.memory_mib;
        prop_assert!(
            *cpu <= node.cpu_milli && *mem <= node.memory_mib,
            "node {} CPU or memory oversubscribed",
            node.name
        );
        let spec = &queued[&job.id];
        for a in &job.placement.gpus {
            let gpu = node.gpus.iter().find(|g| g.index == a.index).unwrap();
            prop_assert!(
                spec.resources.gpu_classes.is_empty()
                    || spec.resources.gpu_classes.contains(&gpu.class)
            );
            let card = cards.entry((node.name.clone(), a.index)).or_default();
            match a.mig_slice {
                Some(s) => {
                    prop_assert!(card.slices.insert(s), "MIG slice {s} holds two jobs");
                    let slice = &gpu.mig[s as usize];
                    prop_assert!(a.milli == slice.milli);
                    *held
                        .entry((job.tenant.to_string(), gpu.class.clone()))
                        .or_default() += slice.milli as u64;
                }
                None => {
                    prop_assert!(gpu.mig.is_empty(), "time-shared work on a MIG card");
                    card.milli += a.milli;
                    card.memory += a.memory_mib;
                    card.timeshared = true;
                    prop_assert!(
                        card.milli <= 1000 && card.memory <= gpu.memory_mib,
                        "card oversubscribed"
                    );
                    if card.tenants.insert(job.tenant.to_string()) {
                        *held
                            .entry((job.tenant.to_string(), gpu.class.clone()))
                            .or_default() += 1000;
                    }
                    prop_assert!(card.tenants.len() == 1, "a card time-shared by two tenants");
                }
            }
        }
    }
    for ((tenant, class), milli) in held {
        let t = case
            .tenants
            .iter()
            .find(|t| t.id.as_str() == tenant)
            .unwrap();
        prop_assert!(
            milli <= t.quota(&class).limit as u64 * 1000,
            "{tenant} holds {milli} of {class}, over its limit"
        );
    }
    Ok(())
}

fn held_milli(case: &Case, running: &[RunningJob], tenant: &str, class: &str) -> u64 {
    let mut cards = BTreeSet::new();
    let mut total = 0;
    for job in running.iter().filter(|j| j.tenant.as_str() == tenant) {
        let node = case
            .nodes
            .iter()
            .find(|n| n.name == job.placement.node)
            .unwrap();
        for a in &job.placement.gpus {
            let gpu = node.gpus.iter().find(|g| g.index == a.index).unwrap();
            if gpu.class != class {
                continue;
            }
            match a.mig_slice {
                Some(s) => total += gpu.mig[s as usize].milli as u64,
                None => {
                    if cards.insert((node.name.clone(), a.index)) {
                        total += 1000;
                    }
                }
            }
        }
    }
    total
}

/// Borrowed (above guarantees) and lendable (unguaranteed + lendable idle guarantees), per class.
fn budget(case: &Case, running: &[RunningJob], class: &str) -> (u64, u64) {
    let capacity = case
        .nodes
        .iter()
        .flat_map(|n| &n.gpus)
        .filter(|g| g.class == class)
        .count() as u64
        * 1000;
    let guaranteed: u64 = case
        .tenants
        .iter()
        .map(|t| t.quota(class).guaranteed as u64 * 1000)
        .sum();
    let (mut borrowed, mut lendable) = (0, capacity.saturating_sub(guaranteed));
    for t in &case.tenants {
        let q = t.quota(class);
        let g = q.guaranteed as u64 * 1000;
        let held = held_milli(case, running, t.id.as_str(), class);
        borrowed += held.saturating_sub(g);
        let idle = g.saturating_sub(held);
        lendable += q.lending_limit.map_or(idle, |l| idle.min(l as u64 * 1000));
    }
    (borrowed, lendable)
}

/// Replays the outcome in decision order, checking the budget after each
/// borrowing admission and each reclaim's victim tenants.
fn apply_outcome(
    case: &Case,
    outcome: &Outcome,
    running: &mut Vec<RunningJob>,
    queued: &BTreeMap<JobId, QueuedJob>,
    now: i64,
) -> Result<(), TestCaseError> {
    for a in &outcome.admitted {
        let job = &queued[&a.job];
        // The budget before this admission, its victims still holding: an
        // admission is the preemptions it makes plus its placement.
        let before: Vec<(u64, u64)> = CLASSES
            .iter()
            .map(|(class, _)| budget(case, running, class))
            .collect();
        for victim in &a.waits_for {
            let v = running
                .iter()
                .position(|r| r.id == *victim)
                .expect("victims are running");
            let victim = running.remove(v);
            if victim.tenant != job.tenant {
                // Reclaim keeps the victim's tenant at or above its guarantee.
                let t = case.tenants.iter().find(|t| t.id == victim.tenant).unwrap();
                for class in victim
                    .placement
                    .gpus
                    .iter()
                    .map(|g| g.class.clone())
                    .collect::<BTreeSet<_>>()
                {
                    let held = held_milli(case, running, victim.tenant.as_str(), &class);
                    prop_assert!(
                        held >= t.quota(&class).guaranteed as u64 * 1000,
                        "reclaim took {} below its guarantee",
                        victim.tenant
                    );
                }
            }
        }
        running.push(RunningJob {
            id: a.job,
            tenant: job.tenant.clone(),
            placement: a.placement.clone(),
            cpu_milli: job.resources.cpu_milli,
            memory_mib: job.resources.memory_mib,
            priority: job.priority,
            started_at: Some(Timestamp(now)),
            min_runtime_ms: 0,
            max_runtime_ms: job.max_runtime_ms,
            model: None,
            displaced: a.waits_for.clone(),
        });
        if !a.within_guarantee {
            for (c, (class, _)) in CLASSES.iter().enumerate() {
                let (borrowed, lendable) = budget(case, running, class);
                let before = before[c];
                // A borrowing admission never pushes borrowing past what may be lent
                // (nor makes an existing excess, left by a reclaim in progress, worse).
                prop_assert!(
                    borrowed <= lendable
                        || borrowed.saturating_sub(lendable) <= before.0.saturating_sub(before.1),
                    "{class}: borrowed {borrowed} > lendable {lendable}"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn cycles_keep_every_invariant(case in arb_case()) {
        run_case(case)?;
    }
}

fn run_case(case: Case) -> Result<(), TestCaseError> {
    let policy = Policy::finpool();
    let mut running: Vec<RunningJob> = vec![];
    let mut pending: Vec<QueuedJob> = vec![];
    let mut all: BTreeMap<JobId, QueuedJob> = BTreeMap::new();
    let mut preempted_by: BTreeMap<JobId, BTreeSet<JobId>> = BTreeMap::new();
    let mut next_id = 1u128;
    for (cycle, arrivals) in case.cycles.iter().enumerate() {
        let now = cycle as i64 * 10 * MINUTE;
        for a in arrivals {
            let job = QueuedJob {
                id: JobId(uuid::Uuid::from_u128(next_id)),
                tenant: case.tenants[a.tenant].id.clone(),
                priority: a.priority,
                submitted_at: Timestamp(now + next_id as i64),
                resources: Resources {
                    gpu: a.gpu,
                    gpu_classes: a
                        .class
                        .map(|c| vec![CLASSES[c].0.to_string()])
                        .unwrap_or_default(),
                    cpu_milli: a.cpu,
                    memory_mib: a.cpu,
                },
                model: None,
                max_runtime_ms: Some(a.runtime_minutes * MINUTE as u64),
            };
            next_id += 1;
            all.insert(job.id, job.clone());
            pending.push(job);
        }
        // Jobs past their runtime end.
        running.retain(|r| r.started_at.unwrap().0 + r.max_runtime_ms.unwrap() as i64 > now);
        let snap = snapshot(&case, now, &running);
        let outcome = decide(&snap, &pending, &policy).unwrap();
        prop_assert_eq!(
            &outcome,
            &decide(&snap, &pending, &policy).unwrap(),
            "deterministic"
        );
        // No cycle: a job never preempts one that preempted it.
        for p in &outcome.preempted {
            prop_assert!(
                !preempted_by
                    .get(&p.for_job)
                    .is_some_and(|s| s.contains(&p.job)),
                "{} preempts {} back",
                p.for_job,
                p.job
            );
            preempted_by.entry(p.job).or_default().insert(p.for_job);
            prop_assert!(!outcome.admitted.iter().any(|a| a.job == p.job));
        }
        apply_outcome(&case, &outcome, &mut running, &all, now)?;
        check_capacity(&case, &running, &all)?;
        let admitted: BTreeSet<JobId> = outcome.admitted.iter().map(|a| a.job).collect();
        pending.retain(|j| !admitted.contains(&j.id));
        // Preempted jobs go back to the queue.
        for p in &outcome.preempted {
            pending.push(all[&p.job].clone());
        }
    }
    Ok(())
}

/// A case proptest found: a tenant taking its guarantee from a free card
/// leaves borrowing above the budget until reclaim; a later borrowing
/// admission that preempts must not be blamed for it.
#[test]
fn a_guarantee_taken_from_a_free_card_is_not_blamed_on_later_borrowing() {
    let l4 = |i: usize, n: u32| Node {
        name: format!("node-{i}"),
        labels: BTreeMap::new(),
        cpu_milli: 11000,
        memory_mib: 90112,
        gpus: (0..n)
            .map(|g| Gpu {
                index: g,
                uuid: format!("GPU-{i}-{g}"),
                class: "L4".into(),
                memory_mib: 24576,
                mig: vec![],
            })
            .collect(),
        models: vec![],
    };
    let a100 = |i: usize, n: u32| Node {
        name: format!("node-{i}"),
        labels: BTreeMap::new(),
        cpu_milli: 8000,
        memory_mib: 65536,
        gpus: (0..n)
            .map(|g| Gpu {
                index: g,
                uuid: format!("GPU-{i}-{g}"),
                class: "A100".into(),
                memory_mib: 81920,
                mig: vec![],
            })
            .collect(),
        models: vec![],
    };
    let t = |i: usize, g: u32, l: u32, lend: Option<u32>, iso: IsolationLevel| Tenant {
        id: name(&format!("tenant-{i}")),
        display_name: String::new(),
        quotas: [
            (
                "A100".to_string(),
                Quota {
                    guaranteed: 0,
                    limit: 0,
                    lending_limit: None,
                },
            ),
            (
                "L4".to_string(),
                Quota {
                    guaranteed: g,
                    limit: l,
                    lending_limit: lend,
                },
            ),
        ]
        .into(),
        weight: 1,
        isolation: iso,
        created_at: Timestamp(0),
        suspended: None,
    };
    let arr = |tenant: usize, gpu: GpuRequest, priority: i32, runtime_minutes: u64| Arrival {
        tenant,
        gpu,
        class: None,
        cpu: 0,
        priority,
        runtime_minutes,
    };
    let case = Case {
        nodes: vec![a100(0, 5), a100(1, 2), l4(2, 4)],
        tenants: vec![
            t(0, 2, 2, Some(1), IsolationLevel::SharedWithinTenant),
            t(1, 1, 1, None, IsolationLevel::Mig),
            t(2, 0, 2, None, IsolationLevel::SharedWithinTenant),
            t(3, 0, 1, None, IsolationLevel::SharedWithinTenant),
        ],
        cycles: vec![
            vec![
                arr(2, GpuRequest::Whole { count: 2 }, 0, 11),
                arr(3, GpuRequest::Whole { count: 1 }, 0, 11),
            ],
            vec![
                arr(1, GpuRequest::Whole { count: 1 }, 0, 1),
                arr(
                    3,
                    GpuRequest::Share {
                        milli: 100,
                        memory_mib: 0,
                    },
                    1,
                    1,
                ),
            ],
        ],
    };
    run_case(case).unwrap();
}

/// The cases above are worth something only if they reach the interesting
/// paths: sample them and count reclaims, borrowing and MIG placements.
#[test]
fn the_cases_exercise_preemption_borrowing_and_mig() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let policy = Policy::finpool();
    let (mut preemptions, mut borrowing, mut mig) = (0, 0, 0);
    for _ in 0..200 {
        let case = arb_case().new_tree(&mut runner).unwrap().current();
        let mut running: Vec<RunningJob> = vec![];
        let mut pending: Vec<QueuedJob> = vec![];
        let mut all: BTreeMap<JobId, QueuedJob> = BTreeMap::new();
        let mut next = 1u128;
        for (cycle, arrivals) in case.cycles.iter().enumerate() {
            let now = cycle as i64 * 10 * MINUTE;
            for a in arrivals {
                let job = QueuedJob {
                    id: JobId(uuid::Uuid::from_u128(next)),
                    tenant: case.tenants[a.tenant].id.clone(),
                    priority: a.priority,
                    submitted_at: Timestamp(now + next as i64),
                    resources: Resources {
                        gpu: a.gpu,
                        gpu_classes: vec![],
                        cpu_milli: a.cpu,
                        memory_mib: a.cpu,
                    },
                    model: None,
                    max_runtime_ms: Some(a.runtime_minutes * MINUTE as u64),
                };
                next += 1;
                all.insert(job.id, job.clone());
                pending.push(job);
            }
            running.retain(|r| r.started_at.unwrap().0 + r.max_runtime_ms.unwrap() as i64 > now);
            let outcome = decide(&snapshot(&case, now, &running), &pending, &policy).unwrap();
            preemptions += outcome.preempted.len();
            borrowing += outcome
                .admitted
                .iter()
                .filter(|a| !a.within_guarantee)
                .count();
            mig += outcome
                .admitted
                .iter()
                .filter(|a| a.placement.gpus.iter().any(|g| g.mig_slice.is_some()))
                .count();
            apply_outcome(&case, &outcome, &mut running, &all, now).unwrap();
            pending.retain(|j| !outcome.admitted.iter().any(|a| a.job == j.id));
            for p in &outcome.preempted {
                pending.push(all[&p.job].clone());
            }
        }
    }
    assert!(
        preemptions > 10 && borrowing > 50 && mig > 10,
        "preemptions {preemptions}, borrowing {borrowing}, MIG {mig}"
    );
}
