//! `finpool bench scheduler`: the placement hot path at scale, finpool's
//! policy against best-fit in the same run. `finpool bench submit`:
//! durable submissions through a real server, against the database's raw
//! insert rate in the same run.

use anyhow::Context;
use finpool_sim::PolicyKind;
use finpool_sim::bench::{self, BenchConfig};
use serde::Serialize;

use crate::args::{BenchCloseArgs, BenchCommand, BenchSchedulerArgs, BenchSubmitArgs};
use crate::{output, progress};

#[derive(Serialize)]
struct Report {
    nodes: usize,
    gpus: u64,
    pending: usize,
    queue: String,
    /// Tenants the queue is spread over (0: tenant-less).
    tenants: usize,
    seed: u64,
    /// Untimed runs per policy before the timed ones.
    warmup_runs: usize,
    /// Per policy, its median timed run (by decisions per second).
    results: Vec<PolicyResult>,
    /// finpool's median decisions per second ÷ best-fit's, measured in
    /// this run.
    finpool_to_bestfit_speed: f64,
}

#[derive(Serialize)]
struct PolicyResult {
    #[serde(flatten)]
    median: bench::BenchResult,
    /// Every timed run's decisions per second, in the order they ran.
    runs_decisions_per_second: Vec<f64>,
}

/// Each policy's median run; runs of one policy must agree on what they
/// placed (the cycle is deterministic).
fn medians(
    kinds: &[PolicyKind],
    mut runs: Vec<Vec<bench::BenchResult>>,
) -> anyhow::Result<Vec<PolicyResult>> {
    kinds
        .iter()
        .zip(runs.iter_mut())
        .map(|(kind, runs)| {
            if runs.iter().any(|r| r.placed != runs[0].placed) {
                anyhow::bail!(
                    "{}'s runs placed different numbers of jobs: {:?} (the cycle should be deterministic)",
                    kind.name(),
                    runs.iter().map(|r| r.placed).collect::<Vec<_>>()
                );
            }
            let rates = runs.iter().map(|r| r.decisions_per_second).collect();
            runs.sort_by(|a, b| a.decisions_per_second.total_cmp(&b.decisions_per_second));
            Ok(PolicyResult {
                median: runs.swap_remove(runs.len() / 2),
                runs_decisions_per_second: rates,
            })
        })
        .collect()
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Scheduler(args) => scheduler(args),
        BenchCommand::Submit(args) => submit(args).await,
        BenchCommand::Close(args) => close(args).await,
        BenchCommand::Index(args) => {
            if args.nodes == 0 || args.pods == 0 {
                anyhow::bail!("--nodes and --pods must be positive");
            }
            let report = finpool_k8s_scheduler::bench::run(args.nodes, args.pods);
            output::serialized(args.out.output.document(), &report)
        }
    }
}

#[derive(Serialize)]
struct SubmitReport {
    db: String,
    clients: usize,
    jobs: usize,
    seconds: f64,
    submits_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Single-row committed INSERTs per second on the same database.
    raw_insert_per_second: f64,
    /// submits_per_second ÷ raw_insert_per_second, from this run.
    submit_to_raw_insert: f64,
    /// How the server ran: rate limits off, the scheduling loop paused.
    server: &'static str,
}

async fn submit(args: BenchSubmitArgs) -> anyhow::Result<()> {
    use finpool_proto::v1 as pb;
    if args.clients == 0 || args.jobs == 0 || args.raw_rows == 0 {
        anyhow::bail!("--clients, --jobs and --raw-rows must be positive");
    }
    let dir = tempfile::tempdir().context("creating a scratch data dir")?;
    let mut config = finpool_standalone::StandaloneConfig::new(dir.path(), "127.0.0.1:0".parse()?);
    let scratch_pg = match args.db.as_str() {
        "postgres" => {
            let base = args.database_url.as_deref().context(
                "--db postgres needs --database-url (or FINPOOL_DATABASE_URL), e.g. postgres://postgres@127.0.0.1:5432/test",
            )?;
            let url = finpool_store::testing::fresh_postgres_database(base)
                .await
                .with_context(|| "creating a scratch database on the PostgreSQL server")?;
            config.database_url = Some(url.clone());
            Some((base.to_owned(), url))
        }
        _ => None,
    };
    // The API alone: no rate limit, no cap below the run, no scheduling
    // (which would compete for the same database).
    config.api.rate_limit = None;
    config.api.pending_cap = u32::try_from(args.jobs)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    config.schedule = false;
    // No job runs, so none needs a sandbox (nor the host one).
    config.sandbox.mode = finpool_standalone::SandboxMode::Off;
    let pool = finpool_standalone::start(config)
        .await
        .context("starting the server")?;
    let key = finpool_api::SigningKey::load(dir.path())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let ttl = std::time::Duration::from_secs(3600);
    let addr = format!("http://{}", pool.addr);
    let op_token = key.issue("bench", finpool_api::Role::Operator, None, ttl, now)?;
    let mut op = crate::client::Clients::connect(&addr, Some(&op_token)).await?;
    let class = pool
        .inventory
        .classes
        .first()
        .context("the pool has no GPU class")?
        .name
        .to_string();
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let tenant = format!("bench-{c}");
        op.tenants
            .create_tenant(pb::CreateTenantRequest {
                id: tenant.clone(),
                display_name: tenant.clone(),
                quotas: [(
                    class.clone(),
                    pb::Quota {
                        guaranteed: 1,
                        limit: 1,
                        ..Default::default()
                    },
                )]
                .into(),
                weight: 1,
                isolation: 0,
            })
            .await?;
        let name = finpool_domain::Name::parse("tenant", &tenant)?;
        let token = key.issue("bench", finpool_api::Role::Tenant, Some(&name), ttl, now)?;
        clients.push(crate::client::Clients::connect(&addr, Some(&token)).await?);
    }
    let bar = progress::bar(args.jobs as u64, "submitting");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let share = args.jobs / args.clients + usize::from(c < args.jobs % args.clients);
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let spec = pb::JobSpec {
                    name: format!("bench-{i}"),
                    command: vec!["true".into()],
                    idempotency_key: format!("bench-{c}-{i}"),
                    resources: Some(pb::Resources {
                        gpu: Some(pb::GpuRequest {
                            kind: Some(pb::gpu_request::Kind::WholeGpus(1)),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let t = std::time::Instant::now();
                let r = client
                    .jobs
                    .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
                    .await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                bar.inc(1);
                anyhow::ensure!(r.into_inner().created, "a fresh key did not create a job");
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.jobs);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    // Every acknowledged submit is stored.
    let usage_total: u64 = {
        let mut total = 0;
        for c in 0..args.clients {
            total += pool
                .store
                .tenant_usage(
                    &finpool_domain::Name::parse("t", &format!("bench-{c}"))?,
                    finpool_domain::Timestamp::now(),
                )
                .await?
                .jobs_total;
        }
        total
    };
    anyhow::ensure!(
        usage_total as usize == args.jobs,
        "stored {usage_total} jobs, acknowledged {}",
        args.jobs
    );
    let raw = pool.store.raw_insert_rate(args.raw_rows).await?;
    let store_kind = pool.store.backend_kind();
    pool.shutdown().await;
    if let Some((base, url)) = scratch_pg {
        finpool_store::testing::drop_postgres_database(&base, &url).await;
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let submits_per_second = args.jobs as f64 / seconds;
    let report = SubmitReport {
        db: store_kind.to_owned(),
        clients: args.clients,
        jobs: args.jobs,
        seconds,
        submits_per_second,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        raw_insert_per_second: raw,
        submit_to_raw_insert: submits_per_second / raw,
        server: "in-process finpool server over gRPC on loopback; rate limits off; scheduling loop paused",
    };
    match args.out.output {
        o if o.is_document() => output::serialized(o, &report)?,
        _ => {
            println!(
                "{} submits from {} clients on {}: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); raw single-row inserts {:.0}/s; ratio {:.2}",
                report.jobs,
                report.clients,
                report.db,
                report.submits_per_second,
                report.p50_ms,
                report.p99_ms,
                report.raw_insert_per_second,
                report.submit_to_raw_insert
            );
        }
    }
    Ok(())
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
        batch: args.batch,
    };
    let tasks = bench::queue(&config);
    let kinds = [PolicyKind::Finpool, PolicyKind::BestFit];
    let per_run = tasks.len() as u64;
    let rounds = args.warmup + args.runs;
    let bar = progress::bar(per_run * (rounds * kinds.len()) as u64, "scheduling");
    // The policies take turns, round by round, so that a drift in the
    // machine's speed falls on both.
    let mut runs: Vec<Vec<bench::BenchResult>> = vec![Vec::new(); kinds.len()];
    for round in 0..rounds {
        for (i, kind) in kinds.iter().enumerate() {
            let offset = bar.position();
            bar.set_message(if round < args.warmup {
                format!("{} (warm-up)", kind.name())
            } else {
                kind.name().to_owned()
            });
            let result = bench::run_observed(&config, *kind, &tasks, &mut |done, _| {
                bar.set_position(offset + done)
            });
            bar.set_position(offset + per_run);
            if round >= args.warmup {
                runs[i].push(result);
            }
        }
    }
    bar.finish_and_clear();
    let results = medians(&kinds, runs)?;
    let report = Report {
        nodes: args.nodes,
        gpus: args.nodes as u64 * args.gpus_per_node as u64,
        pending: args.pending,
        queue,
        tenants: args.tenants,
        seed: args.seed,
        warmup_runs: args.warmup,
        finpool_to_bestfit_speed: results[0].median.decisions_per_second
            / results[1].median.decisions_per_second,
        results,
    };
    match args.out.output {
        o if o.is_document() => output::serialized(o, &report)?,
        _ => {
            println!(
                "{} nodes, {} GPUs, {} jobs through the scheduling cycle, {} per cycle ({}{})",
                report.nodes,
                report.gpus,
                report.pending,
                args.batch,
                report.queue,
                match report.tenants {
                    0 => String::new(),
                    n => format!(", {n} tenants within their limits"),
                }
            );
            let rows = report
                .results
                .iter()
                .map(|PolicyResult { median: r, .. }| {
                    vec![
                        r.policy.clone(),
                        format!("{:.0}", r.decisions_per_second),
                        format!("{:.1}", r.p50_us),
                        format!("{:.1}", r.p99_us),
                        format!("{:.0}", r.max_us),
                        r.placed.to_string(),
                        format!("{:.1}", r.cycle_p99_ms),
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
                        "CYCLE P99 ms"
                    ],
                    rows
                )
            );
            println!(
                "finpool runs at {:.2}x best-fit's speed in this run (each policy's median of {} timed run(s), after {} untimed)",
                report.finpool_to_bestfit_speed, args.runs, args.warmup
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct CloseReport {
    db: &'static str,
    tenants: usize,
    jobs: usize,
    period: String,
    usage_events: usize,
    invoices: usize,
    total_fen: i64,
    /// Metering the month's runs into usage events (1 h intervals).
    meter_seconds: f64,
    /// Closing the period: sums by tenant, class and kind × the price
    /// book, invoices, journal entries, freeze.
    close_seconds: f64,
    /// Metering and closing together.
    seconds: f64,
    jobs_per_second: f64,
    usage_events_per_second: f64,
    /// The same number of usage-event rows inserted raw (no key, no index,
    /// same batching), per second, in this run.
    raw_insert_rows_per_second: f64,
    /// usage_events_per_second ÷ raw_insert_rows_per_second.
    meter_to_raw_insert: f64,
    /// The regulator's report of the closed month, first made (its
    /// figures gathered, checked and kept) and rendered as JSON, CSV and
    /// HTML.
    report_seconds: f64,
    /// The same report again, from its kept figures.
    report_again_seconds: f64,
    report_html_bytes: usize,
}

/// `finpool bench close`: a month of runs for many tenants, metered and
/// closed on a scratch SQLite database with the store's durability settings.
async fn close(args: BenchCloseArgs) -> anyhow::Result<()> {
    use finpool_billing::{BillingConfig, Kind, PeriodLength, Price};
    if args.tenants == 0 || args.jobs == 0 {
        anyhow::bail!("--tenants and --jobs must be positive");
    }
    let dir = tempfile::tempdir().context("a scratch directory")?;
    let store = finpool_store::Store::open(&finpool_store::StoreConfig::Sqlite(
        dir.path().join("bench.db"),
    ))
    .await?;
    let config = BillingConfig::default();
    // January 2026, UTC.
    let period = PeriodLength::Monthly.period_containing(1_768_435_200_000)?;
    eprintln!("seeding {} jobs of {} tenants…", args.jobs, args.tenants);
    let seed = store
        .seed_billing_bench(args.tenants, args.jobs, period.start, period.end, args.seed)
        .await?;
    for (class, kind, rate) in [
        ("A100", Kind::GpuUsed, 1_800),
        ("A100", Kind::GpuHeldIdle, 900),
        ("", Kind::Cpu, 40),
        ("", Kind::Memory, 5),
    ] {
        store
            .set_price(
                &config,
                &Price {
                    class: class.into(),
                    kind,
                    effective_from: period.start,
                    rate_fen: rate,
                },
                "bench",
                period.start,
            )
            .await?;
    }
    let capacity = [finpool_store::billing::CapacityClass {
        class: "A100".into(),
        cards: seed.cards,
        card_memory_mib: finpool_store::BENCH_CARD_MIB,
    }];
    let now = period.end + config.settle_ms;
    eprintln!("metering…");
    let started = std::time::Instant::now();
    let metered = store.meter(&config, &capacity, now).await?;
    let meter_seconds = started.elapsed().as_secs_f64();
    eprintln!("closing…");
    let started = std::time::Instant::now();
    let closed = store.close_period(&config, period, "bench", now).await?;
    let close_seconds = started.elapsed().as_secs_f64();
    eprintln!("baseline…");
    let raw = store.raw_event_insert_rate(metered.events).await?;
    let seconds = meter_seconds + close_seconds;
    let events_per_second = metered.events as f64 / meter_seconds.max(1e-9);
    eprintln!("the regulator's report…");
    let inventory = bench_inventory(seed.cards);
    let render_all = |r: &finpool_report::Report| -> anyhow::Result<usize> {
        let _ = finpool_report::render::json(r);
        let _ = finpool_report::render::csv(r);
        Ok(finpool_report::render::html(r)?.len())
    };
    let (from, to) = (
        finpool_domain::Timestamp(period.start),
        finpool_domain::Timestamp(period.end),
    );
    let now_ts = finpool_domain::Timestamp(now);
    let started = std::time::Instant::now();
    let figures = finpool_api::reports::usage_report(&store, &inventory, from, to, now_ts).await?;
    let report_html_bytes = render_all(&figures)?;
    let report_seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let again = finpool_api::reports::usage_report(&store, &inventory, from, to, now_ts).await?;
    render_all(&again)?;
    let report_again_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        again == figures,
        "a closed month's report changed between two requests"
    );
    let report = CloseReport {
        db: "sqlite",
        tenants: args.tenants,
        jobs: args.jobs,
        period: period.label(),
        usage_events: metered.events,
        invoices: closed.invoices,
        total_fen: closed.total_fen,
        meter_seconds,
        close_seconds,
        seconds,
        jobs_per_second: args.jobs as f64 / seconds.max(1e-9),
        usage_events_per_second: events_per_second,
        raw_insert_rows_per_second: raw,
        meter_to_raw_insert: events_per_second / raw.max(1e-9),
        report_seconds,
        report_again_seconds,
        report_html_bytes,
    };
    output::serialized(args.out.output.document(), &report)
}

/// The bench pool as an inventory: `cards` A100 cards, eight per node, in
/// one location.
fn bench_inventory(cards: u32) -> finpool_domain::Inventory {
    use finpool_domain::{Gpu, GpuClass, Inventory, Node};
    let nodes = (0..cards.div_ceil(8))
        .map(|n| Node {
            name: format!("bench-{n:05}"),
            labels: [("location".to_owned(), "dc-1".to_owned())].into(),
            cpu_milli: 64_000,
            memory_mib: 512 * 1024,
            gpus: (0..8.min(cards - n * 8))
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-bench-{n}-{i}"),
                    class: "A100".into(),
                    memory_mib: finpool_store::BENCH_CARD_MIB,
                    mig: vec![],
                })
                .collect(),
            models: vec![],
        })
        .collect();
    Inventory {
        classes: vec![GpuClass {
            name: "A100".into(),
            memory_mib: finpool_store::BENCH_CARD_MIB,
        }],
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64, placed: usize) -> bench::BenchResult {
        bench::BenchResult {
            policy: "finpool".into(),
            decisions: 10,
            placed,
            failed: 10 - placed,
            cycles: 1,
            seconds: 10.0 / rate,
            decisions_per_second: rate,
            p50_us: 1.0,
            p99_us: 2.0,
            max_us: 3.0,
            cycle_p50_ms: 1.0,
            cycle_p99_ms: 2.0,
        }
    }

    #[test]
    fn each_policy_reports_its_median_run_and_every_rate() {
        let runs = vec![vec![run(300.0, 7), run(100.0, 7), run(200.0, 7)]];
        let out = medians(&[PolicyKind::Finpool], runs).unwrap();
        assert_eq!(out[0].median.decisions_per_second, 200.0);
        assert_eq!(out[0].runs_decisions_per_second, vec![300.0, 100.0, 200.0]);
    }

    #[test]
    fn runs_that_place_differently_are_an_error() {
        let runs = vec![vec![run(300.0, 7), run(100.0, 6)]];
        let err = medians(&[PolicyKind::Finpool], runs).err().unwrap();
        assert!(err.to_string().contains("[7, 6]"), "{err}");
    }
}
