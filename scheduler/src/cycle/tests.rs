use finpool_domain::{GpuClass, GpuRequest, Timestamp};

use super::*;
use crate::decide::tests::{holding, job, node, tenant};

fn inputs(now: i64, queued: Vec<QueuedJob>, holding: Vec<RunningJob>) -> CycleInputs {
    CycleInputs {
        now: Timestamp(now),
        classes: vec![GpuClass {
            name: "A100".into(),
            memory_mib: 81_920,
        }],
        nodes: vec![node("node-0", "A100", 4)],
        tenants: vec![tenant("alpha", "A100", 0, 4)],
        models: vec![],
        queued,
        holding,
    }
}

fn one_gpu(n: u128) -> QueuedJob {
    job(n, "alpha", GpuRequest::Whole { count: 1 })
}

/// Fair share changes with every admission and end; storing every
/// tenant's average each time would cost a pool of thousands of tenants
/// more than deciding. It is stored at checkpoints, and on a clean stop.
#[test]
fn fair_share_alone_is_stored_at_checkpoints() {
    let mut cycle = Cycle::new(CycleConfig::default(), Policy::finpool());
    let interval = cycle.config.memory_checkpoint_ms as i64;
    let plan = cycle.run(inputs(0, vec![one_gpu(1)], vec![])).unwrap();
    assert_eq!(plan.admit.len(), 1, "{plan:?}");
    // The first change is stored at once (no store yet).
    assert!(cycle.take_dirty());
    let running = holding(&plan.admit[0], "alpha");
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
        .run(inputs(interval + 1, vec![one_gpu(2)], vec![]))
        .unwrap();
    assert_eq!(plan.admit.len(), 1);
    assert!(!cycle.take_dirty());
    assert!(cycle.take_unsaved());
}
