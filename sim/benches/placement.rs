//! The shared scheduling cycle (what every driver runs, and what
//! `finpool bench scheduler` times): a queue arriving in batches of 1,000
//! on a pool, finpool's policy against best-fit. Run with
//! `cargo bench -p finpool-sim`.

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
            batch: 1_000,
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
