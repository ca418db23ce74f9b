//! `finpool simulate …`: replay public traces through the scheduler.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use finpool_sim::experiment::{ExperimentReport, MAX_PERCENT};
use finpool_sim::{Experiment, PolicyKind, check, openb, plot, run_experiment};

use crate::args::{Format, SimulateCheckArgs, SimulateCommand, SimulateOpenbArgs};
use crate::output;

pub fn run(command: SimulateCommand) -> anyhow::Result<()> {
    match command {
        SimulateCommand::Openb(args) => openb_experiment(args),
        SimulateCommand::Check(args) => check_placements(args),
    }
}

/// "42..51" (inclusive) or "42,43,50".
pub fn parse_seeds(value: &str) -> anyhow::Result<Vec<u64>> {
    let bad =
        || anyhow::anyhow!("--seeds {value:?}: expected a range like 42..51 or a list like 42,43");
    if let Some((a, b)) = value.split_once("..") {
        let (a, b): (u64, u64) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b {
            return Err(bad());
        }
        return Ok((a..=b).collect());
    }
    value
        .split(',')
        .map(|s| s.trim().parse().map_err(|_| bad()))
        .collect()
}

fn open(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))
}

/// "default" from ".../openb_pod_list_default.csv".
fn workload_name(pods: &Path) -> String {
    let stem = pods
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("workload");
    stem.strip_prefix("openb_pod_list_")
        .unwrap_or(stem)
        .to_owned()
}

fn openb_experiment(args: SimulateOpenbArgs) -> anyhow::Result<()> {
    let policies = args
        .policy
        .iter()
        .map(|p| {
            PolicyKind::parse(p)
                .with_context(|| format!("--policy {p:?}: one of finpool, fgd, bestfit, random"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seeds = parse_seeds(&args.seeds)?;
    if !(args.tune > 0.0 && args.tune <= 10.0) {
        anyhow::bail!("--tune {}: must be in (0, 10]", args.tune);
    }
    let nodes = openb::read_nodes(&args.nodes.display().to_string(), open(&args.nodes)?)?;
    let pods = openb::read_pods(&args.pods.display().to_string(), open(&args.pods)?)?;
    let workload = workload_name(&args.pods);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut placements = args
        .placements
        .as_ref()
        .map(|p| -> anyhow::Result<_> {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            writeln!(f, "policy,{}", check::HEADER)?;
            Ok(f)
        })
        .transpose()?;
    let experiment = Experiment {
        workload: &workload,
        nodes: &nodes,
        pods: &pods,
        seeds: &seeds,
        tune: args.tune,
        threads,
        record: placements.is_some(),
    };
    let mut reports = Vec::new();
    for kind in policies {
        let (report, runs) = run_experiment(&experiment, kind);
        if let Some(f) = placements.as_mut() {
            for run in &runs {
                for row in run.placements.iter().flatten() {
                    writeln!(f, "{},{}", kind.name(), check::line(run.seed, row))?;
                }
            }
        }
        reports.push(report);
    }
    if let Some(mut f) = placements {
        f.flush()?;
    }
    if let Some(svg) = &args.plot {
        plot::allocation_svg(
            svg,
            &format!("openb {workload}: GPU allocation vs. requested"),
            &reports,
        )
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", svg.display()))?;
    }
    match args.format {
        Format::Json if reports.len() == 1 => {
            println!("{}", serde_json::to_string_pretty(&reports[0])?)
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Format::Table => print_table(&workload, &seeds, &reports),
    }
    Ok(())
}

fn print_table(workload: &str, seeds: &[u64], reports: &[ExperimentReport]) {
    println!(
        "openb {workload}: GPU allocated (% of capacity) when requests reach x% of capacity; mean of seeds {}",
        seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let rows = reports
        .iter()
        .map(|r| {
            let mut row = vec![r.policy.clone()];
            for p in [90, 100, 110, 120, MAX_PERCENT] {
                row.push(format!("{:.2}", r.at(p)));
            }
            let (lo, hi) = r
                .per_seed
                .values()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            row.push(format!("{lo:.2}..{hi:.2}"));
            row.push(format!("{:.0}", r.failed_pods));
            row.push(format!("{:.1}", r.wall_seconds));
            row.push(format!("{:.0}", r.decisions_per_second));
            row
        })
        .collect();
    println!(
        "{}",
        output::table(
            &[
                "POLICY",
                "@90%",
                "@100%",
                "@110%",
                "@120%",
                "@130%",
                "SEED RANGE @130%",
                "FAILED PODS",
                "WALL S",
                "DECISIONS/S"
            ],
            rows
        )
    );
}

fn check_placements(args: SimulateCheckArgs) -> anyhow::Result<()> {
    let nodes = openb::read_nodes(&args.nodes.display().to_string(), open(&args.nodes)?)?;
    let text = std::fs::read_to_string(&args.placements)
        .with_context(|| format!("reading {}", args.placements.display()))?;
    // One report per policy: the first column names it.
    let mut by_policy: std::collections::BTreeMap<String, String> = Default::default();
    let mut lines = text.lines();
    let header = lines.next().context("the placements file is empty")?;
    let inner_header = header
        .strip_prefix("policy,")
        .context("expected a header starting with policy,")?;
    for line in lines {
        let (policy, rest) = line.split_once(',').context("a line without a policy")?;
        let entry = by_policy
            .entry(policy.to_owned())
            .or_insert_with(|| format!("{inner_header}\n"));
        entry.push_str(rest);
        entry.push('\n');
    }
    let mut reports = std::collections::BTreeMap::new();
    for (policy, csv) in by_policy {
        let report =
            check::check(&nodes, csv.as_bytes()).map_err(|e| anyhow::anyhow!("{policy}: {e}"))?;
        reports.insert(policy, report);
    }
    println!("{}", serde_json::to_string_pretty(&reports)?);
    if reports.values().any(|r| !r.violations.is_empty()) {
        anyhow::bail!("the placements violate capacity or constraints");
    }
    Ok(())
}
