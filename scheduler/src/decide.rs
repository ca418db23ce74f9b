//! One scheduling cycle: admit and place queued jobs on a snapshot.

use finpool_domain::{JobId, Placement};

use crate::engine::Engine;
use crate::plugins::fragmentation::{Weighting, WorkloadModel};
use crate::plugins::{Policy, QuotaBound};
use crate::snapshot::{QueuedJob, Snapshot, SnapshotError};

/// A job the cycle admitted, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub job: JobId,
    pub placement: Placement,
    /// Admitted within the tenant's guarantee (rather than borrowing).
    pub within_guarantee: bool,
}

/// A job left in the queue, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub job: JobId,
    pub reason: String,
}

/// What one cycle decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub admitted: Vec<Admission>,
    pub waiting: Vec<Waiting>,
    /// Inconsistencies between the snapshot's jobs and its inventory.
    pub warnings: Vec<String>,
}

/// How many waiting jobs get a precise reason per cycle; the rest are
/// simply "queued". Explaining costs a placement attempt each.
const EXPLAINED_PER_CYCLE: usize = 256;

/// Admits and places queued jobs. Pure and deterministic: the same
/// snapshot, queue and policy give the same outcome.
///
/// Jobs go in priority order, then oldest first. A first pass admits only
/// what fits within each tenant's guarantee; a second lets tenants borrow
/// idle capacity up to their limit.
pub fn decide(
    snapshot: &Snapshot,
    queue: &[QueuedJob],
    policy: &Policy,
) -> Result<Outcome, SnapshotError> {
    let mut built = snapshot.build()?;
    let mut outcome = Outcome {
        warnings: std::mem::take(&mut built.warnings),
        ..Outcome::default()
    };
    let mut order: Vec<&QueuedJob> = queue.iter().collect();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.submitted_at.cmp(&b.submitted_at))
            .then(a.id.cmp(&b.id))
    });
    let mut tasks = Vec::with_capacity(order.len());
    for job in order {
        match built.task_for(job, &snapshot.models) {
            Ok(task) => tasks.push((job, task)),
            Err(reason) => outcome.waiting.push(Waiting {
                job: job.id,
                reason,
            }),
        }
    }
    // Without a workload from the driver, learn it from what is queued.
    let workload = snapshot.workload.clone().unwrap_or_else(|| {
        WorkloadModel::from_tasks(tasks.iter().map(|(_, t)| t), 0.95, Weighting::Demand)
    });
    let tenants = std::mem::take(&mut built.tenants);
    let cluster = std::mem::take(&mut built.cluster);
    let mut engine = Engine::new(policy, cluster);
    for bound in [QuotaBound::Guaranteed, QuotaBound::Limit] {
        let mut still_waiting = Vec::with_capacity(tasks.len());
        for (job, task) in tasks {
            match engine.place(&tenants, bound, &workload, 0, &task) {
                Some(p) => {
                    let placement = built.to_domain(engine.cluster(), &p, &snapshot.nodes);
                    engine.apply(&p.allocation(&task));
                    outcome.admitted.push(Admission {
                        job: job.id,
                        placement,
                        within_guarantee: bound == QuotaBound::Guaranteed,
                    });
                }
                None => still_waiting.push((job, task)),
            }
        }
        tasks = still_waiting;
    }
    for (i, (job, task)) in tasks.into_iter().enumerate() {
        let reason = if i >= EXPLAINED_PER_CYCLE {
            "queued".to_owned()
        } else if engine
            .place(&tenants, QuotaBound::Unbounded, &workload, 0, &task)
            .is_some()
        {
            "waiting: tenant quota limit reached".to_owned()
        } else {
            "waiting: no node has room".to_owned()
        };
        outcome.waiting.push(Waiting {
            job: job.id,
            reason,
        });
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use finpool_domain::{
        Gpu, GpuClass, GpuRequest, IsolationLevel, Name, Node, Quota, Resources, Tenant, Timestamp,
    };

    use super::*;
    use crate::snapshot::RunningJob;

    fn tenant(id: &str, class: &str, guaranteed: u32, limit: u32) -> Tenant {
        Tenant {
            id: Name::parse("id", id).unwrap(),
            display_name: id.into(),
            quotas: [(class.to_owned(), Quota { guaranteed, limit })].into(),
            weight: 1,
            isolation: IsolationLevel::SharedWithinTenant,
            created_at: Timestamp(0),
        }
    }

    fn node(name: &str, class: &str, gpus: u32) -> Node {
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
                })
                .collect(),
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
            nodes,
            tenants,
            models: vec![],
            running: vec![],
            workload: None,
        }
    }

    fn job(n: u128, tenant: &str, gpu: GpuRequest) -> QueuedJob {
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
        assert_eq!(o.waiting[0].reason, "waiting: tenant quota limit reached");
        assert!(o.admitted[0].within_guarantee && !o.admitted[1].within_guarantee);
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
        snap.running = vec![RunningJob {
            id: first.admitted[0].job,
            tenant: Name::parse("t", "alpha").unwrap(),
            placement: first.admitted[0].placement.clone(),
            cpu_milli: 1000,
            memory_mib: 1024,
        }];
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
}
