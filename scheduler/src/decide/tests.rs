use std::collections::BTreeMap;

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, IsolationLevel, Name, Node, Quota, Resources, Tenant, Timestamp,
};

use super::*;
use crate::snapshot::RunningJob;
use crate::wait::{QuotaBoundKind, QuotaHit, WaitReason};

pub(crate) fn tenant(id: &str, class: &str, guaranteed: u32, limit: u32) -> Tenant {
    Tenant {
        id: Name::parse("id", id).unwrap(),
        display_name: id.into(),
        quotas: [(
            class.to_owned(),
            Quota {
                guaranteed,
                limit,
                lending_limit: None,
            },
        )]
        .into(),
        weight: 1,
        isolation: IsolationLevel::SharedWithinTenant,
        created_at: Timestamp(0),
        suspended: None,
    }
}

pub(crate) fn node(name: &str, class: &str, gpus: u32) -> Node {
    Node {
        name: name.into(),
        labels: BTreeMap::new(),
        cpu_milli: 64_000,
        memory_mib: 512_000,
        gpus: (0..gpus)
            .map(|i| Gpu {
                index: i,
                uuid: format!("GPU-{name}-{i}"),
                class: class.into(),
                memory_mib: 81_920,
                mig: vec![],
            })
            .collect(),
        models: vec![],
    }
}

fn snapshot(nodes: Vec<Node>, tenants: Vec<Tenant>) -> Snapshot {
    Snapshot {
        now: Timestamp(0),
        classes: vec![
            GpuClass {
                name: "A100".into(),
                memory_mib: 81_920,
            },
            GpuClass {
                name: "L4".into(),
                memory_mib: 24_576,
            },
        ],
        nodes: nodes.into(),
        tenants,
        models: vec![],
        running: vec![],
        workload: None,
        default_max_runtime_ms: 3_600_000,
        ..Default::default()
    }
}

pub(crate) fn job(n: u128, tenant: &str, gpu: GpuRequest) -> QueuedJob {
    QueuedJob {
        id: JobId(uuid::Uuid::from_u128(n)),
        tenant: Name::parse("t", tenant).unwrap(),
        priority: 0,
        submitted_at: Timestamp(n as i64),
        resources: Resources {
            gpu,
            gpu_classes: vec![],
            cpu_milli: 1000,
            memory_mib: 1024,
        },
        model: None,
        max_runtime_ms: None,
    }
}

/// The job `admission` admitted for `tenant`, running since time 0.
pub(crate) fn holding(admission: &Admission, tenant: &str) -> RunningJob {
    RunningJob {
        id: admission.job,
        tenant: Name::parse("t", tenant).unwrap(),
        placement: admission.placement.clone(),
        cpu_milli: 1000,
        memory_mib: 1024,
        priority: 0,
        started_at: Some(Timestamp(0)),
        min_runtime_ms: 0,
        max_runtime_ms: None,
        model: None,
        displaced: vec![],
    }
}

fn ids(o: &Outcome) -> Vec<u128> {
    o.admitted.iter().map(|a| a.job.0.as_u128()).collect()
}

#[test]
fn work_over_the_limit_waits() {
    let snap = snapshot(
        vec![node("n0", "A100", 8)],
        vec![tenant("alpha", "A100", 1, 2)],
    );
    let queue: Vec<_> = (1..=3)
        .map(|i| job(i, "alpha", GpuRequest::Whole { count: 1 }))
        .collect();
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(ids(&o), vec![1, 2]);
    assert_eq!(o.waiting.len(), 1);
    assert_eq!(
        o.waiting[0].reason,
        WaitReason::QuotaLimit {
            hits: vec![QuotaHit {
                class: "A100".into(),
                bound: QuotaBoundKind::Limit,
                bound_milli: 2000,
                held_milli: 2000,
                asked_milli: 1000,
                guaranteed_milli: 1000,
                limit_milli: 2000,
            }]
        }
    );
    assert_eq!(
        o.waiting[0].reason.to_string(),
        "quota: A100 limit 2 GPUs (guaranteed 1 GPU + borrowing 1 GPU); holding 2, this job asks 1"
    );
    assert!(o.admitted[0].within_guarantee && !o.admitted[1].within_guarantee);
}

/// A class the tenant has no quota on is left out of the reason while one
/// it could use is named.
#[test]
fn quota_reasons_leave_out_classes_without_quota() {
    let snap = snapshot(
        vec![node("n0", "A100", 1), node("n1", "L4", 1)],
        vec![tenant("alpha", "A100", 0, 1)],
    );
    let queue: Vec<_> = (1..=2)
        .map(|i| job(i, "alpha", GpuRequest::Whole { count: 1 }))
        .collect();
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(ids(&o), vec![1]);
    assert_eq!(
        o.waiting[0].reason.to_string(),
        "quota: A100 limit 1 GPU; holding 1, this job asks 1"
    );
}

/// Borrowing stops at what the other tenants lend: the reason names the
/// pool's borrowing budget, not the tenant's own limit.
#[test]
fn borrowing_past_what_others_lend_names_the_budget() {
    let mut lender = tenant("beta", "A100", 2, 2);
    lender.quotas.get_mut("A100").unwrap().lending_limit = Some(1);
    let snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![tenant("alpha", "A100", 0, 2), lender],
    );
    let queue: Vec<_> = (1..=2)
        .map(|i| job(i, "alpha", GpuRequest::Whole { count: 1 }))
        .collect();
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(ids(&o), vec![1]);
    let WaitReason::QuotaLimit { hits } = &o.waiting[0].reason else {
        panic!("{:?}", o.waiting);
    };
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].bound, QuotaBoundKind::BorrowingBudget);
    assert_eq!(
        (hits[0].bound_milli, hits[0].held_milli, hits[0].asked_milli),
        (1000, 1000, 1000)
    );
    assert!(
        o.waiting[0].reason.to_string().contains("borrowing budget"),
        "{}",
        o.waiting[0].reason
    );
}

#[test]
fn guaranteed_work_is_admitted_before_borrowing() {
    // Two cards. beta borrows first in submit order, but alpha's job is
    // within its guarantee, so it goes first.
    let snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![tenant("alpha", "A100", 2, 2), tenant("beta", "A100", 0, 2)],
    );
    let queue = vec![
        job(1, "beta", GpuRequest::Whole { count: 1 }),
        job(2, "beta", GpuRequest::Whole { count: 1 }),
        job(3, "alpha", GpuRequest::Whole { count: 2 }),
    ];
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(ids(&o), vec![3]);
}

#[test]
fn allowed_classes_are_honoured() {
    let mut t = tenant("alpha", "A100", 4, 4);
    t.quotas.insert(
        "L4".into(),
        Quota {
            guaranteed: 4,
            limit: 4,
            lending_limit: None,
        },
    );
    let snap = snapshot(vec![node("a", "A100", 4), node("l", "L4", 4)], vec![t]);
    let mut j = job(1, "alpha", GpuRequest::Whole { count: 2 });
    j.resources.gpu_classes = vec!["L4".into()];
    let o = decide(&snap, &[j], &Policy::finpool()).unwrap();
    assert_eq!(o.admitted[0].placement.node, "l");
    assert!(o.admitted[0].placement.gpus.iter().all(|g| g.class == "L4"));
}

#[test]
fn shares_pack_within_a_tenant_and_never_across() {
    let snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![tenant("alpha", "A100", 1, 1), tenant("beta", "A100", 1, 1)],
    );
    let share = GpuRequest::Share {
        milli: 300,
        memory_mib: 1000,
    };
    let queue = vec![
        job(1, "alpha", share),
        job(2, "beta", share),
        job(3, "alpha", share),
        job(4, "beta", share),
    ];
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(o.admitted.len(), 4);
    let card = |n: u128| {
        o.admitted
            .iter()
            .find(|a| a.job.0.as_u128() == n)
            .unwrap()
            .placement
            .gpus[0]
            .index
    };
    assert_eq!(card(1), card(3), "alpha's shares share alpha's card");
    assert_eq!(card(2), card(4));
    assert_ne!(card(1), card(2), "alpha and beta never share a card");
}

#[test]
fn running_jobs_are_counted() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![tenant("alpha", "A100", 2, 2)],
    );
    let first = decide(
        &snap,
        &[job(1, "alpha", GpuRequest::Whole { count: 2 })],
        &Policy::finpool(),
    )
    .unwrap();
    snap.running = vec![holding(&first.admitted[0], "alpha")];
    let o = decide(
        &snap,
        &[job(2, "alpha", GpuRequest::Whole { count: 1 })],
        &Policy::finpool(),
    )
    .unwrap();
    assert!(o.admitted.is_empty());
    assert_eq!(o.admitted.len() + o.waiting.len(), 1);
}

#[test]
fn placements_carry_card_uuids() {
    let snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![tenant("alpha", "A100", 2, 2)],
    );
    let o = decide(
        &snap,
        &[job(1, "alpha", GpuRequest::Whole { count: 1 })],
        &Policy::finpool(),
    )
    .unwrap();
    assert_eq!(o.admitted[0].placement.gpus[0].uuid, "GPU-n0-0");
}

fn tenant_q(
    id: &str,
    class: &str,
    guaranteed: u32,
    limit: u32,
    lending: Option<u32>,
    weight: u32,
) -> Tenant {
    let mut t = tenant(id, class, guaranteed, limit);
    t.quotas.get_mut(class).unwrap().lending_limit = lending;
    t.weight = weight;
    t
}

fn running(
    n: u128,
    tenant: &str,
    node: &str,
    cards: &[u32],
    priority: i32,
    started_min_ago: i64,
) -> RunningJob {
    RunningJob {
        id: JobId(uuid::Uuid::from_u128(n)),
        tenant: Name::parse("t", tenant).unwrap(),
        placement: finpool_domain::Placement {
            node: node.into(),
            gpus: cards
                .iter()
                .map(|i| finpool_domain::GpuAssignment {
                    index: *i,
                    uuid: String::new(),
                    class: "A100".into(),
                    milli: 1000,
                    memory_mib: 81_920,
                    mig_slice: None,
                })
                .collect(),
        },
        cpu_milli: 1000,
        memory_mib: 1024,
        priority,
        started_at: Some(Timestamp(-started_min_ago * 60_000)),
        min_runtime_ms: 0,
        max_runtime_ms: Some(3_600_000),
        model: None,
        displaced: vec![],
    }
}

#[test]
fn a_tenant_under_its_guarantee_reclaims_borrowed_cards() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 4)],
        vec![
            tenant_q("alpha", "A100", 2, 4, None, 1),
            tenant_q("beta", "A100", 0, 4, None, 1),
        ],
    );
    // beta borrows all four cards: priorities 0, 0, 1, 0, started 40, 30, 20, 10 minutes ago.
    snap.running = vec![
        running(101, "beta", "n0", &[0], 0, 40),
        running(102, "beta", "n0", &[1], 0, 30),
        running(103, "beta", "n0", &[2], 1, 20),
        running(104, "beta", "n0", &[3], 0, 10),
    ];
    let queue = vec![
        job(1, "alpha", GpuRequest::Whole { count: 1 }),
        job(2, "alpha", GpuRequest::Whole { count: 1 }),
    ];
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    // Lowest priority first, then most recently started: 104, then 102.
    let victims: Vec<u128> = o.preempted.iter().map(|p| p.job.0.as_u128()).collect();
    assert_eq!(victims, vec![104, 102]);
    assert!(
        o.preempted[0]
            .to_string()
            .contains("reclaims its guaranteed GPUs")
    );
    assert_eq!(o.admitted.len(), 2);
    assert!(
        o.admitted
            .iter()
            .all(|a| a.within_guarantee && a.waits_for.len() == 1)
    );
}

#[test]
fn reclaim_honours_minimum_runtime_and_victim_guarantees() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 3)],
        vec![
            tenant_q("alpha", "A100", 1, 3, None, 1),
            tenant_q("beta", "A100", 2, 3, None, 1),
        ],
    );
    // beta holds 3 (guarantee 2), all started within their minimum runtime.
    snap.running = (0..3)
        .map(|i| {
            let mut r = running(101 + i as u128, "beta", "n0", &[i], 0, 3 - i as i64);
            r.min_runtime_ms = 10 * 60_000;
            r
        })
        .collect();
    let queue = vec![job(1, "alpha", GpuRequest::Whole { count: 1 })];
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert!(o.preempted.is_empty(), "{:?}", o.preempted);
    assert!(o.admitted.is_empty());
    // Once the minimum runtimes have passed, one job goes (the most
    // recently started), and only one: beta keeps its guarantee of 2.
    for r in &mut snap.running {
        r.min_runtime_ms = 0;
    }
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(
        o.preempted
            .iter()
            .map(|p| p.job.0.as_u128())
            .collect::<Vec<_>>(),
        vec![103]
    );
    let two = vec![
        queue[0].clone(),
        job(2, "alpha", GpuRequest::Whole { count: 1 }),
    ];
    assert_eq!(
        decide(&snap, &two, &Policy::finpool())
            .unwrap()
            .preempted
            .len(),
        1
    );
}

#[test]
fn higher_priority_preempts_lower_within_a_tenant() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![tenant_q("alpha", "A100", 2, 2, None, 1)],
    );
    snap.running = vec![
        running(101, "alpha", "n0", &[0], 0, 30),
        running(102, "alpha", "n0", &[1], 5, 30),
    ];
    let mut urgent = job(1, "alpha", GpuRequest::Whole { count: 1 });
    urgent.priority = 10;
    let o = decide(&snap, &[urgent], &Policy::finpool()).unwrap();
    assert_eq!(
        o.preempted
            .iter()
            .map(|p| p.job.0.as_u128())
            .collect::<Vec<_>>(),
        vec![101]
    );
    assert!(o.preempted[0].to_string().contains("higher-priority job"));
    // A low-priority job cannot do the same.
    let o = decide(
        &snap,
        &[job(2, "alpha", GpuRequest::Whole { count: 1 })],
        &Policy::finpool(),
    )
    .unwrap();
    assert!(o.preempted.is_empty());
}

#[test]
fn lenders_lend_at_most_their_lending_limit() {
    // Four cards, all guaranteed to alpha, which lends at most one.
    let snap = snapshot(
        vec![node("n0", "A100", 4)],
        vec![
            tenant_q("alpha", "A100", 4, 4, Some(1), 1),
            tenant_q("beta", "A100", 0, 4, None, 1),
        ],
    );
    let queue: Vec<_> = (1..=3)
        .map(|i| job(i, "beta", GpuRequest::Whole { count: 1 }))
        .collect();
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(o.admitted.len(), 1, "beta borrows one card only");
}

#[test]
fn idle_capacity_goes_by_weight() {
    let snap = snapshot(
        vec![node("n0", "A100", 8)],
        vec![
            tenant_q("light", "A100", 0, 8, None, 1),
            tenant_q("heavy", "A100", 0, 8, None, 3),
        ],
    );
    let mut queue = Vec::new();
    for i in 0..8 {
        queue.push(job(100 + i, "light", GpuRequest::Whole { count: 1 }));
        queue.push(job(200 + i, "heavy", GpuRequest::Whole { count: 1 }));
    }
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    let heavy = o
        .admitted
        .iter()
        .filter(|a| a.job.0.as_u128() >= 200)
        .count();
    assert_eq!((heavy, o.admitted.len() - heavy), (6, 2), "3:1 by weight");
}

#[test]
fn a_blocked_gang_reserves_a_node_and_only_short_jobs_backfill() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 8)],
        vec![tenant_q("alpha", "A100", 0, 16, None, 1)],
    );
    // Seven cards busy, ending 10..70 minutes from now (max runtime 1 h).
    snap.running = (0..7)
        .map(|i| running(100 + i as u128, "alpha", "n0", &[i], 0, 50 - 10 * i as i64))
        .collect();
    let mut gang = job(1, "alpha", GpuRequest::Whole { count: 8 });
    gang.priority = 1;
    let mut long = job(2, "alpha", GpuRequest::Whole { count: 1 });
    long.max_runtime_ms = Some(3 * 3_600_000);
    let mut short = job(3, "alpha", GpuRequest::Whole { count: 1 });
    short.max_runtime_ms = Some(60_000);
    let o = decide(&snap, &[gang, long, short], &Policy::finpool()).unwrap();
    let r = o.reservation.expect("the gang reserves the node");
    assert_eq!(r.job.0.as_u128(), 1);
    assert_eq!(
        r.at,
        Timestamp(70 * 60_000),
        "when the last running job must end"
    );
    let admitted: Vec<u128> = o.admitted.iter().map(|a| a.job.0.as_u128()).collect();
    assert_eq!(
        admitted,
        vec![3],
        "only the job ending before the reservation backfills"
    );
}

/// The fault outside testing found: reclaim ranked victims by priority
/// across tenants, so gamma, borrowing three cards at priority 9, pushed
/// alpha's reclaim onto beta's one borrowed card. Reclaim takes from the
/// tenant furthest above its guarantee, whatever its priorities.
#[test]
fn a_tenants_high_priority_does_not_push_reclaim_onto_another_tenant() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 4)],
        vec![
            tenant_q("alpha", "A100", 2, 4, None, 1),
            tenant_q("beta", "A100", 0, 4, None, 1),
            tenant_q("gamma", "A100", 0, 4, None, 1),
        ],
    );
    snap.running = vec![
        running(101, "beta", "n0", &[0], 0, 10),
        running(102, "gamma", "n0", &[1], 9, 40),
        running(103, "gamma", "n0", &[2], 9, 30),
        running(104, "gamma", "n0", &[3], 9, 20),
    ];
    let queue = [job(1, "alpha", GpuRequest::Whole { count: 1 })];
    let victims = |snap: &Snapshot| -> Vec<(u128, PreemptReason)> {
        decide(snap, &queue, &Policy::finpool())
            .unwrap()
            .preempted
            .into_iter()
            .map(|p| (p.job.0.as_u128(), p.reason))
            .collect()
    };
    let reclaim = PreemptReason::Reclaim {
        tenant: "alpha".into(),
    };
    // gamma's most recently started job, not beta's only one.
    assert_eq!(victims(&snap), vec![(104, reclaim.clone())]);
    // gamma's priorities change nothing.
    for r in snap
        .running
        .iter_mut()
        .filter(|r| r.tenant.as_str() == "gamma")
    {
        r.priority = -9;
    }
    assert_eq!(victims(&snap), vec![(104, reclaim)]);
}

/// Within guarantees, tenants take turns by the age of their work: gamma's
/// newer job at priority 9 does not take the last free card ahead of
/// alpha's older one (beta's borrowed card is not reclaimable yet).
#[test]
fn a_tenants_high_priority_does_not_jump_another_tenants_guaranteed_job() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![
            tenant_q("alpha", "A100", 1, 1, None, 1),
            tenant_q("beta", "A100", 0, 2, None, 1),
            tenant_q("gamma", "A100", 1, 1, None, 1),
        ],
    );
    let mut borrowed = running(101, "beta", "n0", &[0], 0, 1);
    borrowed.min_runtime_ms = 10 * 60_000;
    snap.running = vec![borrowed];
    let older = job(1, "alpha", GpuRequest::Whole { count: 1 });
    let mut urgent = job(2, "gamma", GpuRequest::Whole { count: 1 });
    urgent.priority = 9;
    let o = decide(&snap, &[older, urgent], &Policy::finpool()).unwrap();
    assert_eq!(ids(&o), vec![1]);
    assert!(o.preempted.is_empty(), "{:?}", o.preempted);
}

/// Within one victim tenant, its own priorities still pick which of its
/// jobs goes: beta's priority-0 job goes before its priority-5 one, though
/// the priority-5 one started more recently.
#[test]
fn reclaim_takes_the_victim_tenants_least_important_job_first() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 2)],
        vec![
            tenant_q("alpha", "A100", 1, 2, None, 1),
            tenant_q("beta", "A100", 0, 2, None, 1),
        ],
    );
    snap.running = vec![
        running(101, "beta", "n0", &[0], 0, 30),
        running(102, "beta", "n0", &[1], 5, 10),
    ];
    let o = decide(
        &snap,
        &[job(1, "alpha", GpuRequest::Whole { count: 1 })],
        &Policy::finpool(),
    )
    .unwrap();
    let victims: Vec<u128> = o.preempted.iter().map(|p| p.job.0.as_u128()).collect();
    assert_eq!(victims, vec![101]);
}

/// A job the pool no longer fits says so even past the jobs examined
/// closely each decision, so no such job waits as merely `Queued`.
#[test]
fn every_waiting_job_learns_it_fits_no_node() {
    let mut snap = snapshot(
        vec![node("n0", "A100", 1)],
        vec![tenant("alpha", "A100", 0, 0)],
    );
    snap.explain_limit = 1;
    let mut huge = job(3, "alpha", GpuRequest::Whole { count: 1 });
    huge.resources.cpu_milli = 128_000;
    let queue = vec![
        job(1, "alpha", GpuRequest::Whole { count: 1 }),
        job(2, "alpha", GpuRequest::Whole { count: 1 }),
        huge,
    ];
    let o = decide(&snap, &queue, &Policy::finpool()).unwrap();
    let reasons: Vec<(u128, WaitReason)> = o
        .waiting
        .iter()
        .map(|w| (w.job.0.as_u128(), w.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                1,
                WaitReason::QuotaLimit {
                    hits: vec![QuotaHit {
                        class: "A100".into(),
                        bound: QuotaBoundKind::Limit,
                        bound_milli: 0,
                        held_milli: 0,
                        asked_milli: 1000,
                        guaranteed_milli: 0,
                        limit_milli: 0,
                    }]
                }
            ),
            (2, WaitReason::Queued),
            (
                3,
                WaitReason::Infeasible {
                    resource: crate::wait::Infeasible::CpuMilli {
                        asked: 128_000,
                        largest: 64_000
                    }
                }
            ),
        ]
    );
}

#[test]
fn recorded_admissions_and_preemptions_read_back_as_their_kinds() {
    let admission = |within_guarantee, victims: usize| Admission {
        job: JobId::new_random(),
        placement: Placement {
            node: "gpu-1".into(),
            gpus: vec![],
        },
        within_guarantee,
        waits_for: (0..victims).map(|_| JobId::new_random()).collect(),
    };
    for (a, kind) in [
        (admission(true, 0), AdmissionKind::WithinGuarantee),
        (admission(true, 2), AdmissionKind::Reclaimed),
        (admission(false, 0), AdmissionKind::Borrowing),
        (admission(false, 1), AdmissionKind::Preempting),
    ] {
        assert_eq!(
            AdmissionKind::of(&a.describe()),
            Some(kind),
            "{}",
            a.describe()
        );
    }
    assert_eq!(AdmissionKind::of("pod running"), None);
    for reason in [
        PreemptReason::Reclaim {
            tenant: "alpha".into(),
        },
        PreemptReason::Priority,
    ] {
        let p = Preemption {
            job: JobId::new_random(),
            reason: reason.clone(),
            for_job: JobId::new_random(),
        };
        assert_eq!(PreemptReason::code_of(&p.to_string()), Some(reason.code()));
    }
    assert_eq!(PreemptReason::code_of("server restarted"), None);
}

#[test]
fn response_ratio_lets_a_short_request_past_an_older_long_one() {
    // One free card; alpha's 1-hour job came first, beta's 10 s job 60 s
    // later. By age alpha goes first; by response ratio beta's (waited
    // 60 s on 10 s: 7) beats alpha's (120 s on 1 h: ~1.03).
    let mut snap = snapshot(
        vec![node("n0", "A100", 1)],
        vec![tenant("alpha", "A100", 0, 1), tenant("beta", "A100", 0, 1)],
    );
    snap.now = Timestamp(120_000);
    let mut long = job(1, "alpha", GpuRequest::Whole { count: 1 });
    long.submitted_at = Timestamp(0);
    long.max_runtime_ms = Some(3_600_000);
    let mut short = job(2, "beta", GpuRequest::Whole { count: 1 });
    short.submitted_at = Timestamp(60_000);
    short.max_runtime_ms = Some(10_000);
    let queue = vec![long, short];
    let by_age = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(ids(&by_age), vec![1]);
    snap.borrow_order = BorrowOrder::ResponseRatio;
    let by_ratio = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(ids(&by_ratio), vec![2]);
    // Within a tenant too: alpha's short job goes before its older long one.
    let mut own_short = job(3, "alpha", GpuRequest::Whole { count: 1 });
    own_short.submitted_at = Timestamp(60_000);
    own_short.max_runtime_ms = Some(10_000);
    let queue = vec![queue[0].clone(), own_short];
    let within = decide(&snap, &queue, &Policy::finpool()).unwrap();
    assert_eq!(ids(&within), vec![3]);
}
