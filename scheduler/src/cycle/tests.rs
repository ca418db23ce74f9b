use std::collections::BTreeMap;

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, IsolationLevel, JobId, Name, Node, Quota, Resources, Tenant,
    Timestamp,
};

use super::*;

fn inputs(now: i64, queued: Vec<QueuedJob>, holding: Vec<RunningJob>) -> CycleInputs {
    CycleInputs {
        now: Timestamp(now),
        classes: vec![GpuClass {
            name: "A100".into(),
            memory_mib: 81_920,
        }],
        nodes: vec![Node {
            name: "node-0".into(),
            labels: BTreeMap::new(),
            cpu_milli: 64_000,
            memory_mib: 512_000,
            gpus: (0..4)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    class: "A100".into(),
                    memory_mib: 81_920,
                    mig: vec![],
                })
                .collect(),
            models: vec![],
        }],
        tenants: vec![Tenant {
            id: Name::parse("id", "alpha").unwrap(),
            display_name: "alpha".into(),
            quotas: [(
                "A100".to_owned(),
                Quota {
                    guaranteed: 0,
                    limit: 4,
                    lending_limit: None,
                },
            )]
            .into(),
            weight: 1,
            isolation: IsolationLevel::SharedWithinTenant,
            created_at: Timestamp(0),
            suspended: None,
        }],
        models: vec![],
        queued,
        holding,
    }
}

fn job(n: u128) -> QueuedJob {
    QueuedJob {
        id: JobId(uuid::Uuid::from_u128(n)),
        tenant: Name::parse("t", "alpha").unwrap(),
        priority: 0,
        submitted_at: Timestamp(0),
        resources: Resources {
            gpu: GpuRequest::Whole { count: 1 },
            gpu_classes: vec![],
            cpu_milli: 1000,
            memory_mib: 1024,
        },
        model: None,
        max_runtime_ms: None,
    }
}

fn holding(admission: &crate::decide::Admission) -> RunningJob {
    RunningJob {
        id: admission.job,
        tenant: Name::parse("t", "alpha").unwrap(),
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

/// Fair share changes with every admission and end; storing every
/// tenant's average each time would cost a pool of thousands of tenants
/// more than deciding. It is stored at checkpoints, and on a clean stop.
#[test]
fn fair_share_alone_is_stored_at_checkpoints() {
    let mut cycle = Cycle::new(CycleConfig::default(), Policy::finpool());
    let interval = cycle.config.memory_checkpoint_ms as i64;
    let plan = cycle.run(inputs(0, vec![job(1)], vec![])).unwrap();
    assert_eq!(plan.admit.len(), 1, "{plan:?}");
    // The first change is stored at once (no store yet).
    assert!(cycle.take_dirty());
    let running = holding(&plan.admit[0]);
    // The job borrows on: nothing changed.
    cycle.run(inputs(1_000, vec![], vec![running])).unwrap();
    assert!(!cycle.take_dirty());
    // It ends: the borrowing changed, but the checkpoint is not due.
    cycle.run(inputs(2_000, vec![], vec![])).unwrap();
    assert!(!cycle.take_dirty());
    assert!(cycle.durable().fair_share.current.is_empty());
    // A checkpoint interval after the last store, it is.
    cycle.run(inputs(interval, vec![], vec![])).unwrap();
    assert!(cycle.take_dirty());
    assert!(!cycle.take_unsaved(), "nothing left unsaved");
    // A change a stopping driver would otherwise lose.
    let plan = cycle
        .run(inputs(interval + 1, vec![job(2)], vec![]))
        .unwrap();
    assert_eq!(plan.admit.len(), 1);
    assert!(!cycle.take_dirty());
    assert!(cycle.take_unsaved());
}
