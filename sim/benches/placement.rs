//! The placement hot path (the engine behind `decide`, the simulator and
//! `finpool bench scheduler`): placing a queue of tasks one by one on a
//! pool, finpool's policy against best-fit. Run with `cargo bench -p finpool-sim`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use finpool_sim::PolicyKind;
use finpool_sim::bench::{BenchConfig, queue, run};

fn placement(c: &mut Criterion) {
    for tenants in [0, 1_000] {
        let config = BenchConfig {
            nodes: 2_000,
            gpus_per_node: 8,
            pending: 20_000,
            seed: 42,
            pods: None,
            tenants,
        };
        let tasks = queue(&config);
        let mut group =
            c.benchmark_group(format!("place 20k tasks on 2k nodes, {tenants} tenants"));
        group.throughput(Throughput::Elements(tasks.len() as u64));
        group.sample_size(10);
        for kind in [PolicyKind::Finpool, PolicyKind::BestFit] {
            group.bench_function(kind.name(), |b| {
                b.iter_batched(
                    || (),
                    |_| run(&config, kind, &tasks),
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, placement);
criterion_main!(benches);
