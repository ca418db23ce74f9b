//! A steady stream of 1-GPU jobs must not starve an 8-GPU job: once it
//! heads the queue and cannot start, it gets a reservation, and it starts
//! no later than that.

use finpool_domain::{
    Gpu, GpuAssignment, GpuClass, GpuRequest, IsolationLevel, JobId, Name, Node, Placement, Quota,
    Resources, Tenant, Timestamp,
};
use finpool_scheduler::{Policy, QueuedJob, RunningJob, Snapshot, decide};

const MINUTE: i64 = 60_000;

fn job(n: u128, tenant: &str, count: u32, priority: i32, now: i64, runtime_min: u64) -> QueuedJob {
    QueuedJob {
        id: JobId(uuid::Uuid::from_u128(n)),
        tenant: Name::parse("t", tenant).unwrap(),
        priority,
        submitted_at: Timestamp(now),
        resources: Resources {
            gpu: GpuRequest::Whole { count },
            gpu_classes: vec![],
            cpu_milli: 1000,
            memory_mib: 1024,
        },
        model: None,
        max_runtime_ms: Some(runtime_min * MINUTE as u64),
    }
}

/// Runs a minute-by-minute simulation; returns the gang's first reservation
/// time (if it had to wait) and its start time.
fn run(guaranteed: u32, gang_priority: i32) -> (Option<Timestamp>, Timestamp) {
    let tenant = Tenant {
        id: Name::parse("t", "alpha").unwrap(),
        display_name: "alpha".into(),
        quotas: [(
            "A100".to_owned(),
            Quota {
                guaranteed,
                limit: 16,
                lending_limit: None,
            },
        )]
        .into(),
        weight: 1,
        isolation: IsolationLevel::SharedWithinTenant,
        created_at: Timestamp(0),
        suspended: None,
    };
    let node = Node {
        name: "n0".into(),
        labels: Default::default(),
        cpu_milli: 64_000,
        memory_mib: 512_000,
        gpus: (0..8)
            .map(|i| Gpu {
                index: i,
                uuid: format!("G{i}"),
                class: "A100".into(),
                memory_mib: 81_920,
                mig: vec![],
            })
            .collect(),
        models: vec![],
    };
    let policy = Policy::finpool();
    let mut running: Vec<(RunningJob, i64)> = vec![];
    let mut pending: Vec<QueuedJob> = vec![];
    let mut reservation = None;
    let mut first_reservation = None;
    let gang = JobId(uuid::Uuid::from_u128(1));
    let mut next = 100u128;
    for minute in 0..600 {
        let now = minute * MINUTE;
        running.retain(|(_, end)| *end > now);
        // Two small jobs arrive every minute, each running 7..13 minutes.
        for _ in 0..2 {
            pending.push(job(next, "alpha", 1, 0, now, 7 + (next % 7) as u64));
            next += 1;
        }
        if minute == 5 {
            pending.push(job(1, "alpha", 8, gang_priority, now, 30));
        }
        let snapshot = Snapshot {
            now: Timestamp(now),
            classes: vec![GpuClass {
                name: "A100".into(),
                memory_mib: 81_920,
            }],
            nodes: vec![node.clone()].into(),
            tenants: vec![tenant.clone()],
            running: running.iter().map(|(r, _)| r.clone()).collect(),
            default_max_runtime_ms: 60 * MINUTE as u64,
            reservation: reservation.clone(),
            ..Default::default()
        };
        let outcome = decide(&snapshot, &pending, &policy).unwrap();
        for a in &outcome.admitted {
            let j = pending.iter().find(|j| j.id == a.job).unwrap().clone();
            if j.id == gang {
                return (first_reservation, Timestamp(now));
            }
            let end = now + j.max_runtime_ms.unwrap() as i64;
            running.push((
                RunningJob {
                    id: j.id,
                    tenant: j.tenant.clone(),
                    placement: Placement {
                        node: a.placement.node.clone(),
                        gpus: a
                            .placement
                            .gpus
                            .iter()
                            .map(|g| GpuAssignment { ..g.clone() })
                            .collect(),
                    },
                    cpu_milli: 1000,
                    memory_mib: 1024,
                    priority: j.priority,
                    started_at: Some(Timestamp(now)),
                    min_runtime_ms: 0,
                    max_runtime_ms: j.max_runtime_ms,
                    model: None,
                    displaced: a.waits_for.clone(),
                },
                end,
            ));
        }
        pending.retain(|j| !outcome.admitted.iter().any(|a| a.job == j.id));
        if let Some(r) = &outcome.reservation
            && r.job == gang
        {
            first_reservation.get_or_insert(r.at);
        }
        reservation = outcome.reservation;
    }
    panic!("the 8-GPU job never started");
}

#[test]
fn a_gang_starts_by_its_reservation_while_small_jobs_borrow() {
    let (reserved, started) = run(0, 0);
    let reserved = reserved.expect("the gang waited with a reservation");
    assert!(
        started <= reserved,
        "started {started} after its reservation {reserved}"
    );
}

#[test]
fn a_gang_starts_by_its_reservation_while_small_jobs_use_the_guarantee() {
    // The small jobs stay within the tenant's guarantee; the gang does not.
    let (reserved, started) = run(8, 0);
    let reserved = reserved.expect("the gang waited with a reservation");
    assert!(
        started <= reserved,
        "started {started} after its reservation {reserved}"
    );
}

#[test]
fn a_higher_priority_gang_preempts_the_small_jobs_at_once() {
    let (reserved, started) = run(0, 5);
    assert_eq!(reserved, None);
    assert_eq!(
        started,
        Timestamp(5 * MINUTE),
        "it starts the minute it arrives"
    );
}
