//! Properties of `decide` over random pools, quotas and queues: whatever it
//! admits fits (milli, GPU memory, CPU, memory), never puts two tenants on
//! one card, keeps every tenant within its limit, honours allowed classes,
//! and is deterministic.

use std::collections::BTreeMap;

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, IsolationLevel, JobId, Name, Node, Quota, Resources, Tenant,
    Timestamp,
};
use finpool_scheduler::{Policy, QueuedJob, RunningJob, Snapshot, decide};
use proptest::prelude::*;

const CLASSES: [(&str, u64); 3] = [("A100", 81_920), ("H100", 81_920), ("L4", 24_576)];

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (0..3usize, 0..=8u32, 1..=64u64, 1..=512u64).prop_map(move |(class, gpus, cpus, mem_gib)| {
        let (cname, cmem) = CLASSES[class];
        Node {
            name: format!("node-{i}"),
            labels: BTreeMap::new(),
            cpu_milli: cpus * 1000,
            memory_mib: mem_gib * 1024,
            gpus: (0..gpus)
                .map(|g| Gpu {
                    index: g,
                    uuid: format!("GPU-{i}-{g}"),
                    class: cname.into(),
                    memory_mib: cmem,
                })
                .collect(),
        }
    })
}

fn arb_tenant(i: usize) -> impl Strategy<Value = Tenant> {
    proptest::collection::vec((0..4u32, 0..6u32), 3).prop_map(move |q| Tenant {
        id: name(&format!("tenant-{i}")),
        display_name: format!("Tenant {i}"),
        quotas: CLASSES
            .iter()
            .zip(q)
            .map(|((c, _), (g, extra))| {
                (
                    c.to_string(),
                    Quota {
                        guaranteed: g,
                        limit: g + extra,
                    },
                )
            })
            .collect(),
        weight: 1,
        isolation: IsolationLevel::SharedWithinTenant,
        created_at: Timestamp(0),
    })
}

fn arb_request() -> impl Strategy<Value = GpuRequest> {
    prop_oneof![
        (1..=4u32).prop_map(|count| GpuRequest::Whole { count }),
        (1..=1000u32, 0..=40_000u64)
            .prop_map(|(milli, memory_mib)| GpuRequest::Share { milli, memory_mib }),
        Just(GpuRequest::None),
    ]
}

fn arb_job(tenants: usize, i: usize) -> impl Strategy<Value = QueuedJob> {
    (
        0..tenants,
        arb_request(),
        proptest::option::of(0..3usize),
        0..8_000u64,
        0..32_768u64,
        -2..3i32,
    )
        .prop_map(move |(t, gpu, class, cpu, mem, priority)| QueuedJob {
            id: JobId(uuid_for(i)),
            tenant: name(&format!("tenant-{t}")),
            priority,
            submitted_at: Timestamp(i as i64),
            resources: Resources {
                gpu,
                gpu_classes: class
                    .map(|c| vec![CLASSES[c].0.to_string()])
                    .unwrap_or_default(),
                cpu_milli: cpu,
                memory_mib: mem,
            },
            model: None,
        })
}

fn uuid_for(i: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(i as u128 + 1)
}

fn arb_case() -> impl Strategy<Value = (Snapshot, Vec<QueuedJob>, Vec<QueuedJob>)> {
    (1..6usize, 1..4usize).prop_flat_map(|(nodes, tenants)| {
        (
            (0..nodes).map(arb_node).collect::<Vec<_>>(),
            (0..tenants).map(arb_tenant).collect::<Vec<_>>(),
            (0..30usize)
                .map(move |i| arb_job(tenants, i))
                .collect::<Vec<_>>(),
            (30..60usize)
                .map(move |i| arb_job(tenants, i))
                .collect::<Vec<_>>(),
        )
            .prop_map(|(nodes, tenants, first, second)| {
                let snapshot = Snapshot {
                    now: Timestamp(0),
                    classes: CLASSES
                        .iter()
                        .map(|(n, m)| GpuClass {
                            name: n.to_string(),
                            memory_mib: *m,
                        })
                        .collect(),
                    nodes,
                    tenants,
                    models: vec![],
                    running: vec![],
                    workload: None,
                };
                (snapshot, first, second)
            })
    })
}

/// Replays every admission card by card and checks the invariants.
fn check(
    snapshot: &Snapshot,
    queue: &[QueuedJob],
    running: &[RunningJob],
) -> Result<(), TestCaseError> {
    // (node, gpu index) -> (used milli, used memory, owner)
    let mut cards: BTreeMap<(String, u32), (u32, u64, Option<String>)> = BTreeMap::new();
    let mut node_use: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for job in running {
        let spec = queue
            .iter()
            .find(|q| q.id == job.id)
            .expect("admitted jobs come from the queue");
        let node = snapshot
            .nodes
            .iter()
            .find(|n| n.name == job.placement.node)
            .unwrap();
        let (cpu, mem) = node_use.entry(node.name.clone()).or_default();
        *cpu += job.cpu_milli;
        *mem += job.memory_mib;
        prop_assert!(
            *cpu <= node.cpu_milli,
            "node {} CPU oversubscribed",
            node.name
        );
        prop_assert!(
            *mem <= node.memory_mib,
            "node {} memory oversubscribed",
            node.name
        );
        match spec.resources.gpu {
            GpuRequest::None => prop_assert!(job.placement.gpus.is_empty()),
            GpuRequest::Whole { count } => {
                prop_assert_eq!(job.placement.gpus.len() as u32, count);
            }
            GpuRequest::Share { milli, .. } => {
                prop_assert_eq!(job.placement.gpus.len(), 1);
                prop_assert_eq!(job.placement.gpus[0].milli, milli);
            }
        }
        for a in &job.placement.gpus {
            let gpu = node.gpus.iter().find(|g| g.index == a.index).unwrap();
            prop_assert_eq!(&a.class, &gpu.class);
            prop_assert!(
                spec.resources.gpu_classes.is_empty()
                    || spec.resources.gpu_classes.contains(&gpu.class),
                "class not allowed"
            );
            let card = cards
                .entry((node.name.clone(), a.index))
                .or_insert((0, 0, None));
            card.0 += a.milli;
            card.1 += a.memory_mib;
            prop_assert!(
                card.0 <= 1000,
                "GPU milli oversubscribed on {}/{}",
                node.name,
                a.index
            );
            prop_assert!(card.1 <= gpu.memory_mib, "GPU memory oversubscribed");
            match &card.2 {
                Some(owner) => {
                    prop_assert_eq!(owner, job.tenant.as_str(), "two tenants share a GPU")
                }
                None => card.2 = Some(job.tenant.to_string()),
            }
        }
    }
    // Held cards per tenant and class stay within the limit.
    let mut held: BTreeMap<(String, String), u32> = BTreeMap::new();
    for ((node, index), (_, _, owner)) in &cards {
        let class = snapshot
            .nodes
            .iter()
            .find(|n| &n.name == node)
            .and_then(|n| n.gpus.iter().find(|g| g.index == *index))
            .map(|g| g.class.clone())
            .unwrap();
        *held.entry((owner.clone().unwrap(), class)).or_default() += 1;
    }
    for ((tenant, class), n) in held {
        let t = snapshot
            .tenants
            .iter()
            .find(|t| t.id.as_str() == tenant)
            .unwrap();
        prop_assert!(
            n <= t.quota(&class).limit,
            "{tenant} holds {n} {class} over its limit"
        );
    }
    Ok(())
}

fn to_running(snapshot: &Snapshot, queue: &[QueuedJob], policy: &Policy) -> Vec<RunningJob> {
    let outcome = decide(snapshot, queue, policy).unwrap();
    outcome
        .admitted
        .into_iter()
        .map(|a| {
            let job = queue.iter().find(|q| q.id == a.job).unwrap();
            RunningJob {
                id: a.job,
                tenant: job.tenant.clone(),
                placement: a.placement,
                cpu_milli: job.resources.cpu_milli,
                memory_mib: job.resources.memory_mib,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn decisions_never_oversubscribe_share_or_exceed_limits(
        (snapshot, first, second) in arb_case()
    ) {
        for policy in [Policy::finpool(), Policy::best_fit(), Policy::random(7)] {
            let mut snap = snapshot.clone();
            let running_first = to_running(&snap, &first, &policy);
            snap.running = running_first.clone();
            let running_second = to_running(&snap, &second, &policy);
            let all_jobs: Vec<QueuedJob> = first.iter().chain(&second).cloned().collect();
            let all_running: Vec<RunningJob> =
                running_first.into_iter().chain(running_second).collect();
            check(&snapshot, &all_jobs, &all_running)?;
        }
    }

    #[test]
    fn decisions_are_deterministic((snapshot, first, _second) in arb_case()) {
        let policy = Policy::finpool();
        let a = decide(&snapshot, &first, &policy).unwrap();
        let b = decide(&snapshot, &first, &policy).unwrap();
        prop_assert_eq!(a, b);
        // Queue order in the input does not matter either.
        let mut reversed = first.clone();
        reversed.reverse();
        let c = decide(&snapshot, &reversed, &policy).unwrap();
        prop_assert_eq!(decide(&snapshot, &first, &policy).unwrap().admitted, c.admitted);
    }
}
