//! `finpool bench scheduler`: the placement hot path at scale, finpool's
//! policy against best-fit in the same run.

use anyhow::Context;
use finpool_sim::PolicyKind;
use finpool_sim::bench::{self, BenchConfig};
use serde::Serialize;

use crate::args::{BenchCommand, BenchSchedulerArgs, Format};
use crate::output;

#[derive(Serialize)]
struct Report {
    nodes: usize,
    gpus: u64,
    pending: usize,
    queue: String,
    /// Tenants the queue is spread over (0: tenant-less).
    tenants: usize,
    seed: u64,
    results: Vec<bench::BenchResult>,
    /// finpool's decisions per second ÷ best-fit's, measured in this run.
    finpool_to_bestfit_speed: f64,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let BenchCommand::Scheduler(args) = command;
    scheduler(args)
}

fn scheduler(args: BenchSchedulerArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.pending == 0 {
        anyhow::bail!("--nodes and --pending must be positive");
    }
    if args.gpus_per_node == 0
        || args.gpus_per_node as usize > finpool_scheduler::cluster::MAX_GPUS_PER_NODE
    {
        anyhow::bail!(
            "--gpus-per-node must be from 1 to {}",
            finpool_scheduler::cluster::MAX_GPUS_PER_NODE
        );
    }
    let pods = args
        .pods
        .as_ref()
        .map(|p| -> anyhow::Result<_> {
            let file =
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            Ok(finpool_sim::openb::read_pods(
                &p.display().to_string(),
                file,
            )?)
        })
        .transpose()?;
    let queue = match &args.pods {
        Some(p) => format!("drawn from {}", p.display()),
        None => "the built-in synthetic mix".to_owned(),
    };
    let config = BenchConfig {
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        pending: args.pending,
        seed: args.seed,
        pods,
        tenants: args.tenants,
    };
    let tasks = bench::queue(&config);
    let results: Vec<_> = [PolicyKind::Finpool, PolicyKind::BestFit]
        .into_iter()
        .map(|kind| bench::run(&config, kind, &tasks))
        .collect();
    let report = Report {
        nodes: args.nodes,
        gpus: args.nodes as u64 * args.gpus_per_node as u64,
        pending: args.pending,
        queue,
        tenants: args.tenants,
        seed: args.seed,
        finpool_to_bestfit_speed: results[0].decisions_per_second / results[1].decisions_per_second,
        results,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            println!(
                "{} nodes, {} GPUs, {} tasks placed one by one ({}{})",
                report.nodes,
                report.gpus,
                report.pending,
                report.queue,
                match report.tenants {
                    0 => String::new(),
                    n => format!(", {n} tenants within their limits"),
                }
            );
            let rows = report
                .results
                .iter()
                .map(|r| {
                    vec![
                        r.policy.clone(),
                        format!("{:.0}", r.decisions_per_second),
                        format!("{:.1}", r.p50_us),
                        format!("{:.1}", r.p99_us),
                        format!("{:.0}", r.max_us),
                        r.placed.to_string(),
                        r.node_classes_at_end.to_string(),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &[
                        "POLICY",
                        "DECISIONS/S",
                        "P50 µs",
                        "P99 µs",
                        "MAX µs",
                        "PLACED",
                        "NODE CLASSES"
                    ],
                    rows
                )
            );
            println!(
                "finpool runs at {:.2}x best-fit's speed in this run",
                report.finpool_to_bestfit_speed
            );
        }
    }
    Ok(())
}
