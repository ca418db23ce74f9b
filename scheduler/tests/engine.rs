//! The engine's cached placement is exactly the exhaustive placement:
//! same node, same cards, same score, step after step, with tenants, MIG
//! slices, base models and quotas in play.

use finpool_domain::{GpuRequest, Quota};
use finpool_scheduler::cluster::{Allocation, Choice, ClassInfo};
use finpool_scheduler::plugins::workload::{OnlineWorkload, Weighting, WorkloadModel};
use finpool_scheduler::{
    ClassSet, Cluster, Ctx, Engine, EngineCache, GpuState, ModelFit, NodeState, Policy, QuotaBound,
    Request, ScoreInputs, Task, TenantBook,
};
use proptest::prelude::*;

fn arb_cluster() -> impl Strategy<Value = Cluster> {
    prop::collection::vec((0..2u8, 1..=8u32, 4..=64u64, any::<bool>()), 1..24).prop_map(|nodes| {
        Cluster::new(
            vec![
                ClassInfo {
                    name: "A".into(),
                    memory_mib: 40_000,
                },
                ClassInfo {
                    name: "B".into(),
                    memory_mib: 80_000,
                },
            ],
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, (class, gpus, cores, mig))| {
                    let memory = if class == 0 { 40_000 } else { 80_000 };
                    NodeState::new(
                        format!("n{i}"),
                        cores * 1000,
                        cores * 4096,
                        (0..gpus)
                            .map(|g| {
                                let gpu = GpuState::new(g, class, memory);
                                // Some nodes have their first card in MIG mode.
                                if mig && g == 0 {
                                    gpu.with_slices([(428, 20_000), (285, 10_000), (142, 5_000)])
                                } else {
                                    gpu
                                }
                            })
                            .collect(),
                    )
                })
                .collect(),
        )
    })
}

fn arb_task() -> impl Strategy<Value = Task> {
    (
        prop_oneof![
            3 => (1..=4u32).prop_map(|count| GpuRequest::Whole { count }),
            4 => (prop::sample::select(vec![100u32, 250, 300, 500, 800]), prop::sample::select(vec![0u64, 5_000, 20_000]))
                .prop_map(|(milli, memory_mib)| GpuRequest::Share { milli, memory_mib }),
            1 => Just(GpuRequest::None),
        ],
        prop::sample::select(vec![1_000u64, 4_000, 12_000]),
        prop::option::of(0..4u32),
        prop::sample::select(vec![ClassSet::ALL, ClassSet::single(0), ClassSet::single(1)]),
        prop::option::of(0..3u32),
        prop::sample::select(vec![ModelFit::Any, ModelFit::Warm, ModelFit::Balanced]),
    )
        .prop_map(|(gpu, cpu, tenant, classes, model, model_fit)| Task {
            tenant,
            gpu,
            classes,
            cpu_milli: cpu,
            memory_mib: cpu * 2,
            min_gpu_memory_mib: 0,
            model,
            // Tenant 3 isolates its shares on MIG slices.
            mig: tenant == Some(3),
            // Some wait for a card already holding their model, or for
            // balance between models.
            model_fit,
        })
}

fn tenants() -> TenantBook {
    let mut book = TenantBook::default();
    for (i, (g, l)) in [(2, 4), (1, 2), (0, 8), (1, 3)].into_iter().enumerate() {
        let t = book.push(
            format!("t{i}"),
            vec![
                Quota {
                    guaranteed: g,
                    limit: l,
                    lending_limit: None
                };
                2
            ],
            1,
        );
        book.set_mig(t, i == 3);
    }
    book
}

/// What the indexes' scores read besides the nodes, for `cluster`.
fn score_inputs(cluster: &Cluster, model: &WorkloadModel, book: &TenantBook) -> ScoreInputs {
    ScoreInputs {
        workload: model.clone(),
        tenants: book.clone(),
        classes: cluster.classes.clone(),
        model_demand: cluster.model_demand.clone(),
        models: Vec::new(),
        nodes: cluster.nodes.len(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn engine_matches_exhaustive_placement(
        cluster in arb_cluster(),
        tasks in prop::collection::vec(arb_task(), 1..120),
        bound in prop::sample::select(vec![QuotaBound::Unbounded, QuotaBound::Limit, QuotaBound::Guaranteed]),
    ) {
        let book = tenants();
        let trace_model = WorkloadModel::from_tasks(&tasks, 0.95, Weighting::Count);
        for policy in [Policy::finpool(), Policy::best_fit(), Policy::fgd(trace_model)] {
            let mut online = OnlineWorkload::new(0.95, Weighting::Demand);
            let mut engine = Engine::new(&policy, cluster.clone());
            for task in &tasks {
                online.observe(task);
                let request = Request::new(&book, bound, online.model(), online.version());
                let cached = engine.place(&request, task);
                let ctx = Ctx::new(engine.cluster(), &book, bound, online.model());
                let exhaustive = policy.place(&ctx, task);
                prop_assert_eq!(
                    cached.map(|p| (p.node, p.choice, p.score.to_bits())),
                    exhaustive.map(|p| (p.node, p.choice, p.score.to_bits())),
                    "{}", policy.name
                );
                if let Some(p) = cached {
                    let allocation = p.allocation(task);
                    prop_assert!(engine.cluster().fits(&allocation));
                    engine.apply(&allocation);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Indexes carried from one decision to the next (with the pool
    /// changed in between, and trials undone within) place exactly as
    /// scanning every node does, nodes to avoid included.
    #[test]
    fn carried_indexes_match_exhaustive_placement(
        cluster in arb_cluster(),
        rounds in prop::collection::vec(
            prop::collection::vec((arb_task(), prop::option::weighted(0.2, 0..24u32)), 1..40),
            1..5,
        ),
        releases in prop::collection::vec(any::<prop::sample::Index>(), 0..32),
        bound in prop::sample::select(vec![QuotaBound::Unbounded, QuotaBound::Limit, QuotaBound::Guaranteed]),
    ) {
        let book = tenants();
        let all: Vec<Task> = rounds.iter().flatten().map(|(t, _)| *t).collect();
        let model = WorkloadModel::from_tasks(&all, 0.95, Weighting::Demand);
        let policy = Policy::finpool();
        let inputs = |c: &Cluster| score_inputs(c, &model, &book);
        let mut cache = EngineCache::default();
        let mut cluster = cluster;
        let mut placed = Vec::new();
        let mut releases = releases.into_iter();
        for round in rounds {
            let mut engine = Engine::resume(&policy, cluster.clone(), &mut cache, inputs(&cluster));
            for (task, avoid) in round {
                let mut request = Request::new(&book, bound, &model, 0);
                request.avoid_node = avoid.filter(|n| (*n as usize) < engine.cluster().nodes.len());
                let cached = engine.place(&request, &task);
                let mut ctx = Ctx::new(engine.cluster(), &book, bound, &model);
                ctx.avoid_node = request.avoid_node;
                let exhaustive = policy.place(&ctx, &task);
                prop_assert_eq!(
                    cached.map(|p| (p.node, p.choice, p.score.to_bits())),
                    exhaustive.map(|p| (p.node, p.choice, p.score.to_bits()))
                );
                if let Some(p) = cached {
                    let allocation = p.allocation(&task);
                    engine.apply(&allocation);
                    // A trial that is undone leaves the indexes as they were.
                    engine.release_trial(&allocation);
                    engine.apply_trial(&allocation);
                    engine.settle(allocation.node);
                    placed.push(allocation);
                }
            }
            cluster = engine.cluster().clone();
            engine.keep(&mut cache);
            // Between decisions some jobs end.
            for _ in 0..8 {
                if let Some(i) = releases.next().filter(|_| !placed.is_empty()) {
                    let a = placed.swap_remove(i.index(placed.len()));
                    cluster.release(&a);
                }
            }
        }
    }
}

/// Three nodes of four 40 GB cards of one class, all idle.
fn three_idle_nodes() -> Cluster {
    Cluster::new(
        vec![ClassInfo {
            name: "A".into(),
            memory_mib: 40_000,
        }],
        (0..3)
            .map(|i| {
                NodeState::new(
                    format!("n{i}"),
                    32_000,
                    131_072,
                    (0..4).map(|g| GpuState::new(g, 0, 40_000)).collect(),
                )
            })
            .collect(),
    )
}

/// Half of `node`'s first card (and some of its CPU and memory) for
/// `tenant`, or whole cards by `gpus` mask.
fn held(node: u32, tenant: u32, gpus: u64, milli: u32) -> Allocation {
    Allocation {
        node,
        choice: Choice {
            gpus,
            milli,
            memory_mib: (milli < 1000).then_some(10_000),
            slice: None,
        },
        tenant: Some(tenant),
        cpu_milli: 4_000,
        memory_mib: 8_192,
        model: None,
    }
}

fn half_card(node: u32, tenant: u32) -> Allocation {
    held(node, tenant, 1, 500)
}

/// A share of a card (400 milli), of `tenant` or of none.
fn share(tenant: Option<u32>) -> Task {
    Task {
        tenant,
        gpu: GpuRequest::Share {
            milli: 400,
            memory_mib: 5_000,
        },
        classes: ClassSet::ALL,
        cpu_milli: 2_000,
        memory_mib: 4_096,
        min_gpu_memory_mib: 0,
        model: None,
        mig: false,
        model_fit: ModelFit::Any,
    }
}

/// The engine places `task` where scanning every node would.
fn assert_matches_exhaustive(
    engine: &mut Engine<'_>,
    book: &TenantBook,
    model: &WorkloadModel,
    task: &Task,
) {
    let request = Request::new(book, QuotaBound::Unbounded, model, 0);
    let cached = engine.place(&request, task);
    let ctx = Ctx::new(engine.cluster(), book, QuotaBound::Unbounded, model);
    let exhaustive = engine.policy().place(&ctx, task);
    assert_eq!(
        cached.map(|p| (p.node, p.choice, p.score.to_bits())),
        exhaustive.map(|p| (p.node, p.choice, p.score.to_bits())),
        "tenant {:?}",
        task.tenant
    );
}

/// Nodes alike but for which tenant holds their cards are one class: the
/// indexes serve only tasks of no tenant or of a tenant holding nothing
/// there, for which a held card is taken whoever holds it. Placements stay
/// those of scanning every node, for the holders' own shares too.
#[test]
fn who_holds_a_card_does_not_split_alike_nodes() {
    let book = tenants();
    let policy = Policy::finpool();
    let model = WorkloadModel::default();
    let mut engine = Engine::new(&policy, three_idle_nodes());
    // Tenants 0 and 1 each hold half a card, on nodes 0 and 1.
    engine.apply(&half_card(0, 0));
    engine.apply(&half_card(1, 1));
    assert_eq!(
        engine.class_count(),
        2,
        "nodes 0 and 1 are alike, node 2 idle"
    );
    for tenant in [Some(0), Some(1), Some(2), None] {
        assert_matches_exhaustive(&mut engine, &book, &model, &share(tenant));
    }
    // Each holder's share joins its own card: the class they share does
    // not hide whose card is whose.
    let request = Request::new(&book, QuotaBound::Unbounded, &model, 0);
    assert_eq!(
        engine.place(&request, &share(Some(0))).map(|p| p.node),
        Some(0)
    );
    assert_eq!(
        engine.place(&request, &share(Some(1))).map(|p| p.node),
        Some(1)
    );
}

/// A card that changes holders between decisions, its use the same, keeps
/// its node's class; the engine must still learn the new holder, whose
/// shares go on its own card.
#[test]
fn a_card_that_changes_holders_between_decisions_is_the_new_holders() {
    let book = tenants();
    let policy = Policy::finpool();
    let model = WorkloadModel::default();
    let inputs = |c: &Cluster| score_inputs(c, &model, &book);
    let request = Request::new(&book, QuotaBound::Unbounded, &model, 0);
    let mut cache = EngineCache::default();
    // Decision 1: tenant 0 holds half of node 1's first card, and tenant 2
    // its other three, so no tenant but the first card's holder can use
    // node 1.
    let mut cluster = three_idle_nodes();
    cluster.apply(&half_card(1, 0));
    cluster.apply(&held(1, 2, 0b1110, 1000));
    let mut engine = Engine::resume(&policy, cluster.clone(), &mut cache, inputs(&cluster));
    assert_eq!(
        engine.place(&request, &share(Some(0))).map(|p| p.node),
        Some(1)
    );
    engine.keep(&mut cache);
    // Between decisions its job ends and tenant 1's alike job takes the card.
    cluster.release(&half_card(1, 0));
    cluster.apply(&half_card(1, 1));
    let mut engine = Engine::resume(&policy, cluster.clone(), &mut cache, inputs(&cluster));
    for tenant in [0, 1, 2] {
        assert_matches_exhaustive(&mut engine, &book, &model, &share(Some(tenant)));
    }
    assert_eq!(
        engine.place(&request, &share(Some(1))).map(|p| p.node),
        Some(1)
    );
}

/// A tenant's full card takes none of its shares, so the engine does not
/// offer it (most held cards run whole-GPU work); the card comes back to
/// its holder's shares as soon as a job on it ends, within a decision and
/// across decisions.
#[test]
fn a_full_card_returns_to_its_holders_shares_when_it_has_room() {
    let book = tenants();
    let policy = Policy::finpool();
    let model = WorkloadModel::default();
    let inputs = |c: &Cluster| score_inputs(c, &model, &book);
    let request = Request::new(&book, QuotaBound::Unbounded, &model, 0);
    let mut cache = EngineCache::default();
    // Tenant 0 holds node 1's first card whole, and tenant 2 the other
    // three: no share fits on node 1.
    let mut cluster = three_idle_nodes();
    let whole = held(1, 0, 1, 1000);
    cluster.apply(&whole);
    cluster.apply(&held(1, 2, 0b1110, 1000));
    let mut engine = Engine::resume(&policy, cluster.clone(), &mut cache, inputs(&cluster));
    assert_matches_exhaustive(&mut engine, &book, &model, &share(Some(0)));
    assert_ne!(
        engine.place(&request, &share(Some(0))).map(|p| p.node),
        Some(1)
    );
    // Within the decision: the whole-card job ends, a half-card job of the
    // same tenant starts there; its next share joins it.
    engine.release(&whole);
    engine.apply(&half_card(1, 0));
    assert_matches_exhaustive(&mut engine, &book, &model, &share(Some(0)));
    assert_eq!(
        engine.place(&request, &share(Some(0))).map(|p| p.node),
        Some(1)
    );
    // Its next share fills the card's compute: no share fits there until
    // the next decision finds room again.
    let filler = held(1, 0, 1, 500);
    engine.apply(&filler);
    assert_matches_exhaustive(&mut engine, &book, &model, &share(Some(0)));
    engine.keep(&mut cache);
    cluster.release(&whole);
    cluster.apply(&half_card(1, 0));
    let mut engine = Engine::resume(&policy, cluster.clone(), &mut cache, inputs(&cluster));
    assert_matches_exhaustive(&mut engine, &book, &model, &share(Some(0)));
    assert_eq!(
        engine.place(&request, &share(Some(0))).map(|p| p.node),
        Some(1)
    );
}
