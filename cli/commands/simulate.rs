//! `finpool simulate …`: replay public traces through the scheduler.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use finpool_sim::experiment::{ExperimentReport, MAX_PERCENT};
use finpool_sim::{Experiment, PolicyKind, check, openb, plot, run_experiment_observed};

use crate::args::{
    SimulateCheckArgs, SimulateCommand, SimulateFairnessArgs, SimulateGenaiArgs, SimulateOpenbArgs,
};
use crate::{output, progress};

pub fn run(command: SimulateCommand) -> anyhow::Result<()> {
    match command {
        SimulateCommand::Openb(args) => openb_experiment(args),
        SimulateCommand::Check(args) => check_placements(args),
        SimulateCommand::Genai(args) => genai(args),
        SimulateCommand::Fairness(args) => fairness(args),
    }
}

fn genai(args: SimulateGenaiArgs) -> anyhow::Result<()> {
    use finpool_sim::genai::{self, GenaiPolicy};
    let policies = args
        .policy
        .iter()
        .map(|p| {
            GenaiPolicy::parse(p)
                .with_context(|| format!("--policy {p:?}: finpool or least-loaded"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for load in &args.load {
        if !(*load > 0.0 && *load < 1.5) {
            anyhow::bail!("--load {load}: must be in (0, 1.5)");
        }
    }
    if !(args.half_life_s.is_finite() && args.half_life_s > 0.0) {
        anyhow::bail!(
            "--half-life-s {}: must be a positive number of seconds",
            args.half_life_s
        );
    }
    let borrow_order = match args.borrow_order.as_str() {
        "response-ratio" => finpool_scheduler::BorrowOrder::ResponseRatio,
        "age" => finpool_scheduler::BorrowOrder::Age,
        other => anyhow::bail!("--borrow-order {other:?}: response-ratio or age"),
    };
    let requests = genai::read_requests(&args.trace.display().to_string(), open(&args.trace)?)?;
    let latencies = genai::read_latencies(
        &args.load_latency.display().to_string(),
        open(&args.load_latency)?,
    )?;
    let text = std::fs::read_to_string(&args.pool)
        .with_context(|| format!("reading {}", args.pool.display()))?;
    let inventory = finpool_standalone::inventory::parse_pool_file(&text)?;
    let mut reports = Vec::new();
    let per_run = requests.len() as u64;
    let bar = progress::bar(
        per_run * (args.load.len() * policies.len()) as u64,
        "replaying",
    );
    for &load in &args.load {
        for &policy in &policies {
            let settings = genai::GenaiSettings {
                load,
                seed: args.seed,
                fair_share_half_life_s: args.half_life_s,
                borrow_order,
            };
            let offset = bar.position();
            bar.set_message(policy.name());
            reports.push(genai::run_observed(
                &inventory,
                &requests,
                &latencies,
                policy,
                &settings,
                &mut |done, _| bar.set_position(offset + done),
            ));
            bar.set_position(offset + per_run);
        }
    }
    bar.finish_and_clear();
    match args.out.output {
        o if o.is_document() && reports.len() == 1 => output::serialized(o, &reports[0])?,
        o if o.is_document() => output::serialized(o, &reports)?,
        _ => {
            println!(
                "GenAI trace: {} requests on {} GPUs ({})",
                requests.len(),
                inventory.gpu_count(),
                args.pool.display()
            );
            let rows = reports
                .iter()
                .map(|r| {
                    vec![
                        format!("{:.1}", r.load),
                        r.policy.clone(),
                        r.model_loads.to_string(),
                        format!("{:.1}", r.wait_p50_s),
                        format!("{:.1}", r.wait_p95_s),
                        format!("{:.1}", r.wait_p99_s),
                        format!("{:.3}", r.utilization),
                        format!("{:.2}", r.tenant_fairness),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &[
                        "LOAD",
                        "POLICY",
                        "MODEL LOADS",
                        "WAIT P50 s",
                        "WAIT P95 s",
                        "WAIT P99 s",
                        "UTILIZATION",
                        "TENANT FAIRNESS"
                    ],
                    rows
                )
            );
        }
    }
    Ok(())
}

fn fairness(args: SimulateFairnessArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading {}", args.scenario.display()))?;
    let scenario = finpool_sim::fairness::Scenario::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    let report = finpool_sim::fairness::run(&scenario);
    match args.out.output {
        o if o.is_document() => output::serialized(o, &report)?,
        _ => {
            println!(
                "{}: {} GPUs, {} tenants, {} s, cycle {} s, grace {} s; {} preemptions",
                args.scenario.display(),
                report.gpus,
                report.tenants.len(),
                report.duration_s,
                report.cycle_s,
                report.grace_s,
                report.preemptions
            );
            let rows = report
                .tenants
                .iter()
                .map(|t| {
                    vec![
                        t.tenant.clone(),
                        t.weight.to_string(),
                        t.guaranteed.to_string(),
                        format!("{:.3}", t.target_share),
                        format!("{:.3}", t.long_run_share),
                        format!("{:+.1}%", t.relative_error * 100.0),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &[
                        "TENANT",
                        "WEIGHT",
                        "GUARANTEED",
                        "TARGET SHARE",
                        "LONG-RUN SHARE",
                        "ERROR"
                    ],
                    rows
                )
            );
            for r in &report.reclaims {
                println!(
                    "reclaim: {} asked for its guarantee at {} s and had it back after {} s",
                    r.tenant, r.at_s, r.took_s
                );
            }
        }
    }
    Ok(())
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
    // Refused before the run, not after it.
    if let Some(path) = &args.plot {
        plot::FileType::from_path(path).map_err(|_| {
            anyhow::anyhow!(
                "--plot {}: the file type follows the extension: .{}",
                path.display(),
                plot::EXTENSIONS.join(" or .")
            )
        })?;
    }
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
    let per_policy = (seeds.len() * MAX_PERCENT) as u64;
    let bar = progress::bar(per_policy * policies.len() as u64, "simulating");
    for kind in policies {
        let offset = bar.position();
        bar.set_message(kind.name());
        let moved = bar.clone();
        let (report, runs) = run_experiment_observed(&experiment, kind, &mut move |done, _| {
            moved.set_position(offset + done)
        });
        if let Some(f) = placements.as_mut() {
            for run in &runs {
                for row in run.placements.iter().flatten() {
                    writeln!(f, "{},{}", kind.name(), check::line(run.seed, row))?;
                }
            }
        }
        reports.push(report);
    }
    bar.finish_and_clear();
    if let Some(mut f) = placements {
        f.flush()?;
    }
    if let Some(path) = &args.plot {
        plot::allocation(
            path,
            &format!("openb {workload}: GPU allocation vs. requested"),
            &reports,
        )
        .map_err(|e| anyhow::anyhow!("--plot: {e}"))?;
    }
    match args.out.output {
        o if o.is_document() && reports.len() == 1 => output::serialized(o, &reports[0])?,
        o if o.is_document() => output::serialized(o, &reports)?,
        _ => print_table(&workload, &seeds, &reports),
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
        let report = check::check_at(&nodes, csv.as_bytes(), args.at)
            .map_err(|e| anyhow::anyhow!("{policy}: {e}"))?;
        reports.insert(policy, report);
    }
    output::serialized(args.out.output.document(), &reports)?;
    if reports.values().any(|r| !r.violations.is_empty()) {
        anyhow::bail!("the placements violate capacity or constraints");
    }
    Ok(())
}
