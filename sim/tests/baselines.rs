//! Each baseline behaves as its definition says, on hand-made cases.

use finpool_domain::GpuRequest;
use finpool_scheduler::cluster::ClassInfo;
use finpool_scheduler::plugins::workload::{Shape, WorkloadModel};
use finpool_scheduler::{
    Allocation, Choice, ClassSet, Cluster, Ctx, GpuState, NodeState, Policy, QuotaBound, Task,
    TenantBook,
};

/// Nodes given as per-card used milli, with plenty of CPU and memory.
fn cluster(nodes: &[&[u32]]) -> Cluster {
    let mut c = Cluster::new(
        vec![ClassInfo {
            name: "G".into(),
            memory_mib: 0,
        }],
        nodes
            .iter()
            .enumerate()
            .map(|(i, cards)| {
                NodeState::new(
                    format!("n{i}"),
                    64_000,
                    256_000,
                    (0..cards.len() as u32)
                        .map(|g| GpuState::new(g, 0, 0))
                        .collect(),
                )
            })
            .collect(),
    );
    for (n, cards) in nodes.iter().enumerate() {
        for (g, used) in cards.iter().enumerate() {
            if *used > 0 {
                c.apply(&Allocation {
                    node: n as u32,
                    choice: Choice {
                        gpus: 1 << g,
                        milli: *used,
                        memory_mib: Some(0),
                        slice: None,
                    },
                    tenant: None,
                    cpu_milli: 0,
                    memory_mib: 0,
                    model: None,
                });
            }
        }
    }
    c
}

fn place(policy: &Policy, c: &Cluster, task: Task, model: &WorkloadModel) -> (u32, Vec<usize>) {
    let tenants = TenantBook::default();
    let ctx = Ctx::new(c, &tenants, QuotaBound::Unbounded, model);
    let p = policy.place(&ctx, &task).expect("the task fits");
    (p.node, p.choice.positions().collect())
}

fn share(milli: u32) -> Task {
    Task::new(
        GpuRequest::Share {
            milli,
            memory_mib: 0,
        },
        1000,
        1000,
    )
}

fn whole(count: u32) -> Task {
    Task::new(GpuRequest::Whole { count }, 1000, 1000)
}

fn shape(milli: u32, gpus: u32) -> Shape {
    Shape {
        milli_per_gpu: milli,
        gpus,
        cpu_milli: 1000,
        memory_mib: 1000,
        classes: ClassSet::ALL,
    }
}

#[test]
fn best_fit_takes_the_node_and_card_left_fullest() {
    let c = cluster(&[&[0, 0, 0, 0], &[1000, 1000, 1000, 0], &[0, 0]]);
    let none = WorkloadModel::default();
    assert_eq!(
        place(&Policy::best_fit(), &c, whole(1), &none),
        (1, vec![3])
    );
    // Shares go to the card with the least room left after them.
    let c = cluster(&[&[0, 700, 200]]);
    assert_eq!(
        place(&Policy::best_fit(), &c, share(300), &none),
        (0, vec![1])
    );
}

#[test]
fn random_fit_is_seeded_and_spreads() {
    let c = cluster(&[&[0, 0], &[0, 0], &[0, 0], &[0, 0]]);
    let none = WorkloadModel::default();
    let picks: Vec<u32> = (0..20)
        .map(|seed| place(&Policy::random(seed), &c, whole(1), &none).0)
        .collect();
    assert!(
        picks
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "{picks:?}"
    );
    let again: Vec<u32> = (0..20)
        .map(|seed| place(&Policy::random(seed), &c, whole(1), &none).0)
        .collect();
    assert_eq!(picks, again, "the same seed picks the same");
}

#[test]
fn fgd_minimises_the_growth_of_expected_fragmentation() {
    // Workload: 500m shares. Card A has 700 free, card B is idle.
    // A 300m share on A leaves 400 (a fragment for 500m work); on B it
    // leaves 700 (still usable). Best-fit takes A; FGD takes B.
    let c = cluster(&[&[300, 0]]);
    let model = WorkloadModel::of_shapes(vec![(shape(500, 1), 1.0)]);
    assert_eq!(
        place(&Policy::best_fit(), &c, share(300), &model),
        (0, vec![0])
    );
    assert_eq!(
        place(&Policy::fgd(model.clone()), &c, share(300), &model),
        (0, vec![1])
    );

    // Workload: whole GPUs. A share on the already-broken node keeps the
    // other node's cards whole.
    let c = cluster(&[&[0, 0], &[500, 0]]);
    let model = WorkloadModel::of_shapes(vec![(shape(1000, 1), 1.0)]);
    assert_eq!(
        place(&Policy::fgd(model.clone()), &c, share(300), &model),
        (1, vec![0])
    );
}

#[test]
fn fragmentation_by_need_group_matches_the_definition() {
    use finpool_scheduler::plugins::workload::NodeView;
    let model = WorkloadModel::of_shapes(vec![
        (shape(1000, 1), 0.4),
        (
            Shape {
                cpu_milli: 50_000,
                ..shape(500, 1)
            },
            0.2,
        ),
        (shape(500, 1), 0.2),
        (shape(1000, 2), 0.1),
        (
            Shape {
                gpus: 0,
                milli_per_gpu: 0,
                ..shape(0, 0)
            },
            0.1,
        ),
    ]);
    for cards in [
        &[0u32, 0, 0, 0][..],
        &[500, 0, 700, 1000],
        &[1000, 1000, 900, 100],
    ] {
        let c = cluster(&[cards]);
        for cpu in [0, 20_000, 63_000] {
            let view = NodeView::after(&c.nodes[0], Choice::NO_GPU, cpu, 0);
            let grouped = model.fragmentation(&view);
            let by_shape = model.fragmentation_by_shape(&view);
            assert!(
                (grouped - by_shape).abs() < 1e-9,
                "{cards:?} cpu {cpu}: {grouped} vs {by_shape}"
            );
        }
    }
}
