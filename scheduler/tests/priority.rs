//! Priority orders a tenant's own jobs only. Over random pools, tenants and
//! histories (cycles of arrivals, jobs ending, reclaims and requeues), each
//! decision is taken twice: once as the history goes, and once with the
//! priorities of one tenant's jobs (queued and running) redrawn. No other
//! tenant's admissions may change, nor which of its jobs are preempted.
//!
//! That tenant (the subject) submits jobs of one shape, so that which of
//! its jobs goes first changes only which job it is: its priorities may
//! then decide among its own jobs and nothing else. Decisions where, in
//! either run, the subject preempts its own work by priority are left out
//! (and counted): that is priority's one lawful effect, and what the
//! subject starts then may change what others get, as any start would.

use std::collections::{BTreeMap, BTreeSet};

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, IsolationLevel, JobId, MigSlice, Name, Node, Quota, Resources,
    Tenant, Timestamp,
};
use finpool_scheduler::{Outcome, Policy, PreemptReason, QueuedJob, RunningJob, Snapshot, decide};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const CLASSES: [(&str, u64); 2] = [("A100", 81_920), ("L4", 24_576)];
const MINUTE: i64 = 60_000;
/// The tenant whose priorities are redrawn.
const SUBJECT: usize = 0;

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (0..2usize, 1..=6u32, 8..=64u64, any::<bool>()).prop_map(move |(class, gpus, cpus, mig)| {
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

/// The subject always has a guarantee to reclaim with; the others may
/// have none and only borrow.
fn arb_tenant(i: usize) -> impl Strategy<Value = Tenant> {
    let least = if i == SUBJECT { 1 } else { 0 };
    (
        prop::collection::vec((least..4u32, 0..6u32, prop::option::of(0..4u32)), 2),
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

/// What one job asks for and how long it runs.
#[derive(Debug, Clone, Copy)]
struct Shape {
    gpu: GpuRequest,
    class: Option<usize>,
    cpu: u64,
    runtime_minutes: u64,
}

fn arb_shape() -> impl Strategy<Value = Shape> {
    let gpu = prop_oneof![
        3 => (1..=3u32).prop_map(|count| GpuRequest::Whole { count }),
        2 => (prop::sample::select(vec![100u32, 250, 400, 700]), 0..=10_000u64)
            .prop_map(|(milli, memory_mib)| GpuRequest::Share { milli, memory_mib }),
        1 => Just(GpuRequest::None),
    ];
    (gpu, prop::option::of(0..2usize), 0..8_000u64, 5..60u64).prop_map(
        |(gpu, class, cpu, runtime_minutes)| Shape {
            gpu,
            class,
            cpu,
            runtime_minutes,
        },
    )
}

/// Whole GPUs only: a share's card depends on which jobs share it, so two
/// shares of one shape are not interchangeable.
fn arb_subject_shape() -> impl Strategy<Value = Shape> {
    (1..=2u32, prop::option::of(0..2usize), 0..4_000u64, 5..60u64).prop_map(
        |(count, class, cpu, runtime_minutes)| Shape {
            gpu: GpuRequest::Whole { count },
            class,
            cpu,
            runtime_minutes,
        },
    )
}

#[derive(Debug, Clone)]
struct Arrival {
    tenant: usize,
    /// `None`: the subject's shape.
    shape: Option<Shape>,
    priority: i32,
}

fn arb_arrival(tenants: usize) -> impl Strategy<Value = Arrival> {
    prop_oneof![
        2 => (1..tenants, arb_shape(), -1..2i32).prop_map(|(tenant, shape, priority)| Arrival {
            tenant,
            shape: Some(shape),
            priority,
        }),
        1 => (-2..3i32).prop_map(|priority| Arrival {
            tenant: SUBJECT,
            shape: None,
            priority,
        }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    nodes: Vec<Node>,
    tenants: Vec<Tenant>,
    subject: Shape,
    cycles: Vec<Vec<Arrival>>,
    /// The subject's other priorities, by job number (cyclically).
    redrawn: Vec<i32>,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (1..4usize, 3..5usize).prop_flat_map(|(nodes, tenants)| {
        (
            (0..nodes).map(arb_node).collect::<Vec<_>>(),
            (0..tenants).map(arb_tenant).collect::<Vec<_>>(),
            arb_subject_shape(),
            prop::collection::vec(prop::collection::vec(arb_arrival(tenants), 0..16), 3..9),
            prop::collection::vec(-3..4i32, 16),
        )
            .prop_map(|(nodes, tenants, subject, cycles, redrawn)| Case {
                nodes,
                tenants,
                subject,
                cycles,
                redrawn,
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

/// The outcome with the subject's priorities redrawn from `redrawn`.
fn redrawn(case: &Case, snap: &Snapshot, queue: &[QueuedJob], policy: &Policy) -> Outcome {
    let subject = &case.tenants[SUBJECT].id;
    let priority = |id: JobId| case.redrawn[id.0.as_u128() as usize % case.redrawn.len()];
    let mut snap = snap.clone();
    for r in snap.running.iter_mut().filter(|r| &r.tenant == subject) {
        r.priority = priority(r.id);
    }
    let queue: Vec<QueuedJob> = queue
        .iter()
        .cloned()
        .map(|mut j| {
            if &j.tenant == subject {
                j.priority = priority(j.id);
            }
            j
        })
        .collect();
    decide(&snap, &queue, policy).unwrap()
}

/// What the other tenants see of a decision: their admitted jobs and their
/// preempted ones.
fn others(case: &Case, o: &Outcome, tenant_of: &BTreeMap<JobId, Name>) -> [BTreeSet<JobId>; 2] {
    let subject = &case.tenants[SUBJECT].id;
    let other = |id: &JobId| &tenant_of[id] != subject;
    [
        o.admitted.iter().map(|a| a.job).filter(other).collect(),
        o.preempted.iter().map(|p| p.job).filter(other).collect(),
    ]
}

/// How often the cases reach what the property is about.
#[derive(Debug, Default)]
struct Reach {
    /// Decisions where the subject's priorities differ between the runs
    /// and another tenant loses a job to reclaim.
    others_reclaimed: usize,
    /// ... where the subject loses a job to reclaim.
    subject_reclaimed: usize,
    /// ... where the subject reclaims.
    subject_reclaims: usize,
    /// Decisions compared.
    compared: usize,
    /// Decisions left out: the subject preempted its own work in one run.
    own_preemption: usize,
}

/// Runs the case's history, checking each decision against its redrawn
/// twin.
fn run_case(case: &Case, reach: &mut Reach) -> Result<(), TestCaseError> {
    let policy = Policy::finpool();
    let subject = case.tenants[SUBJECT].id.clone();
    let mut running: Vec<RunningJob> = vec![];
    let mut pending: Vec<QueuedJob> = vec![];
    let mut all: BTreeMap<JobId, QueuedJob> = BTreeMap::new();
    let mut tenant_of: BTreeMap<JobId, Name> = BTreeMap::new();
    let mut next = 1u128;
    for (cycle, arrivals) in case.cycles.iter().enumerate() {
        let now = cycle as i64 * 10 * MINUTE;
        for a in arrivals {
            let shape = a.shape.unwrap_or(case.subject);
            let job = QueuedJob {
                id: JobId(uuid::Uuid::from_u128(next)),
                tenant: case.tenants[a.tenant].id.clone(),
                priority: a.priority,
                submitted_at: Timestamp(now + next as i64),
                resources: Resources {
                    gpu: shape.gpu,
                    gpu_classes: shape
                        .class
                        .map(|c| vec![CLASSES[c].0.to_string()])
                        .unwrap_or_default(),
                    cpu_milli: shape.cpu,
                    memory_mib: shape.cpu,
                },
                model: None,
                max_runtime_ms: Some(shape.runtime_minutes * MINUTE as u64),
            };
            next += 1;
            tenant_of.insert(job.id, job.tenant.clone());
            all.insert(job.id, job.clone());
            pending.push(job);
        }
        running.retain(|r| r.started_at.unwrap().0 + r.max_runtime_ms.unwrap() as i64 > now);
        let snap = snapshot(case, now, &running);
        let outcome = decide(&snap, &pending, &policy).unwrap();
        let twin = redrawn(case, &snap, &pending, &policy);
        // Priority may let the subject preempt its own work: what it
        // starts then (a gang no longer reserving a node, say) may change
        // what others get, as any start would. Those decisions are left
        // out; every other decision must agree.
        let own_preemption = |o: &Outcome| {
            o.preempted
                .iter()
                .any(|p| p.reason == PreemptReason::Priority && tenant_of[&p.job] == subject)
        };
        if own_preemption(&outcome) || own_preemption(&twin) {
            reach.own_preemption += 1;
        } else {
            reach.compared += 1;
            let [admitted, preempted] = others(case, &outcome, &tenant_of);
            let [twin_admitted, twin_preempted] = others(case, &twin, &tenant_of);
            prop_assert_eq!(
                &admitted,
                &twin_admitted,
                "cycle {}: the subject's priorities changed other tenants' admissions",
                cycle
            );
            prop_assert_eq!(
                &preempted,
                &twin_preempted,
                "cycle {}: the subject's priorities changed other tenants' victims",
                cycle
            );
        }

        let differs = running
            .iter()
            .filter(|r| r.tenant == subject)
            .map(|r| (r.id, r.priority))
            .chain(
                pending
                    .iter()
                    .filter(|j| j.tenant == subject)
                    .map(|j| (j.id, j.priority)),
            )
            .any(|(id, p)| p != case.redrawn[id.0.as_u128() as usize % case.redrawn.len()]);
        if differs {
            for p in &outcome.preempted {
                if let PreemptReason::Reclaim { tenant } = &p.reason {
                    if tenant_of[&p.job] == subject {
                        reach.subject_reclaimed += 1;
                    } else {
                        reach.others_reclaimed += 1;
                    }
                    if tenant == subject.as_str() {
                        reach.subject_reclaims += 1;
                    }
                }
            }
        }

        // Go on as the history goes: victims requeue, admissions start.
        for a in &outcome.admitted {
            running.retain(|r| !a.waits_for.contains(&r.id));
            let job = &all[&a.job];
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
        }
        pending.retain(|j| !outcome.admitted.iter().any(|a| a.job == j.id));
        for p in &outcome.preempted {
            pending.push(all[&p.job].clone());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_tenants_priorities_never_change_other_tenants_outcomes(case in arb_case()) {
        run_case(&case, &mut Reach::default())?;
    }
}

/// The property is worth something only if the cases reach reclaim with
/// the subject's priorities in play, on either side of it.
#[test]
fn the_cases_reach_reclaim_on_both_sides() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut reach = Reach::default();
    for _ in 0..400 {
        let case = arb_case().new_tree(&mut runner).unwrap().current();
        run_case(&case, &mut reach).unwrap();
    }
    assert!(
        reach.others_reclaimed > 40
            && reach.subject_reclaimed > 15
            && reach.subject_reclaims > 8
            && reach.compared > 2 * reach.own_preemption,
        "{reach:?}"
    );
}
