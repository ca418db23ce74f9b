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
        nodes: vec![node("node-0", "A100", 4)].into(),
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

/// A store between checkpoints writes what decisions act on as it is, and
/// the soft memory as of the last checkpoint; the next checkpoint, or a
/// clean stop, writes it as it is.
#[test]
fn stores_between_checkpoints_write_the_last_checkpoints_soft_memory() {
    let mut cycle = Cycle::new(CycleConfig::default(), Policy::finpool());
    let interval = cycle.config.memory_checkpoint_ms as i64;
    let stored = |cycle: &mut Cycle| -> DurableMemory {
        serde_json::from_str(&cycle.stored_memory().unwrap()).unwrap()
    };
    let plan = cycle.run(inputs(0, vec![one_gpu(1)], vec![])).unwrap();
    assert!(cycle.take_dirty());
    assert_eq!(&stored(&mut cycle), cycle.durable());
    let checkpointed = cycle.durable().clone();
    // Soft memory changes: the job ends, a load is measured.
    let running = holding(&plan.admit[0], "alpha");
    cycle.run(inputs(1_000, vec![], vec![running])).unwrap();
    cycle.record_load("node-0", "model-0", 20_000);
    cycle.run(inputs(2_000, vec![], vec![])).unwrap();
    assert!(!cycle.take_dirty(), "no checkpoint is due");
    // Memory a decision acts on changes (stops the driver could not send
    // are forgotten): stored at once, with the checkpoint's soft memory.
    cycle.forget_stops(&[]);
    assert!(cycle.take_dirty());
    let urgent = stored(&mut cycle);
    assert_eq!(urgent.fair_share, checkpointed.fair_share);
    assert_eq!(urgent.load_times, checkpointed.load_times);
    assert_ne!(cycle.durable().load_times, checkpointed.load_times);
    // The checkpoint writes the soft memory as it is.
    cycle.run(inputs(interval, vec![], vec![])).unwrap();
    assert!(cycle.take_dirty());
    assert_eq!(&stored(&mut cycle), cycle.durable());
    // So does a clean stop, between checkpoints.
    cycle.record_load("node-0", "model-0", 30_000);
    cycle.forget_stops(&[]);
    assert!(cycle.take_dirty());
    assert_ne!(&stored(&mut cycle), cycle.durable());
    assert!(cycle.take_unsaved());
    assert_eq!(&stored(&mut cycle), cycle.durable());
}
