//! Billing through a real `finpool up`: jobs run, the server is SIGKILLed
//! while a metering pass is in flight (twice) and restarted on the same
//! data dir, then every billing period the runs touched is closed. The
//! invoices and the ledger must equal, to the fen, the ground truth the
//! pure billing library computes from `job_runs`, and each period's GPU
//! capacity must be conserved (used + held idle + idle = capacity).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use finpool_billing::{Aggregate, IntervalLength, Period, PriceBook, UsageEvent};
use finpool_proto::v1 as pb;

const FLAGS: &[&str] = &[
    "--meter-interval",
    "1s",
    "--billing-period",
    "5s",
    "--meter-settle",
    "1s",
    "--meter-every",
    "1s",
];

fn card_memory() -> BTreeMap<String, u64> {
    [("A100".to_owned(), 81_920), ("L4".to_owned(), 24_576)].into()
}

fn aggregate(events: &[UsageEvent], period: Period, book: &PriceBook) -> Vec<Aggregate> {
    let mut cuts = vec![period.start];
    cuts.extend(book.changes_within(period.start, period.end));
    let mut sums: BTreeMap<(String, String, finpool_billing::Kind, i64), i64> = BTreeMap::new();
    for e in events {
        let seg = *cuts.iter().rev().find(|c| **c <= e.interval_start).unwrap();
        *sums
            .entry((e.tenant.clone(), e.class.clone(), e.kind, seg))
            .or_default() += e.quantity;
    }
    sums.into_iter()
        .map(
            |((tenant, class, kind, segment_start), quantity)| Aggregate {
                tenant,
                class,
                kind,
                segment_start,
                quantity,
            },
        )
        .collect()
}

async fn set_prices(op: &mut finpool_cli::client::Clients) {
    let from = prost_types::Timestamp {
        seconds: 1_577_836_800, // 2020-01-01
        nanos: 0,
    };
    for (class, kind, rate) in [
        ("A100", "gpu_used", 1_800_000),
        ("A100", "gpu_held_idle", 900_001),
        ("L4", "gpu_used", 700_000),
        ("L4", "gpu_held_idle", 350_000),
        ("", "cpu", 40_003),
        ("", "memory", 5_001),
    ] {
        op.billing
            .set_price(pb::SetPriceRequest {
                gpu_class: class.into(),
                kind: kind.into(),
                rate_fen: rate,
                effective_from: Some(from),
            })
            .await
            .unwrap();
    }
}

/// Starts a metering pass and kills the server while it is in flight.
async fn kill_while_metering(server: Server) {
    let mut op = server.operator().await;
    let pass = tokio::spawn(async move { op.billing.meter_usage(pb::MeterUsageRequest {}).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    server.kill();
    let _ = pass.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_metering_leaves_the_ledger_equal_to_the_job_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), FLAGS);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 2, 4).await;
    create_tenant(&mut op, "beta", 1, 2).await;
    set_prices(&mut op).await;
    let mut alpha = server.tenant("alpha").await;
    let mut beta = server.tenant("beta").await;
    // Shares by milli, a share by memory alone, whole cards.
    submit(&mut alpha, shell_job("a1", share(250), "sleep 2")).await;
    submit(&mut alpha, shell_job("a2", share(500), "sleep 3")).await;
    let mut mem_only = shell_job("a3", share(0), "sleep 2");
    if let Some(pb::gpu_request::Kind::Share(s)) = mem_only
        .resources
        .as_mut()
        .and_then(|r| r.gpu.as_mut())
        .and_then(|g| g.kind.as_mut())
    {
        s.memory_mib = 40_960;
    }
    submit(&mut alpha, mem_only).await;
    submit(&mut beta, shell_job("b1", whole(1), "sleep 4")).await;
    submit(&mut beta, shell_job("b2", whole(1), "sleep 1")).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    kill_while_metering(server).await;
    let server = Server::start_with(dir.path(), FLAGS);
    let mut alpha = server.tenant("alpha").await;
    submit(&mut alpha, shell_job("a4", whole(2), "sleep 2")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    kill_while_metering(server).await;
    let server = Server::start_with(dir.path(), FLAGS);
    let mut op = server.operator().await;
    let jobs = wait_for(
        &mut op,
        Duration::from_secs(60),
        "every job to end",
        |jobs| jobs.len() == 6 && jobs.iter().all(|j| is_terminal(j.state)),
    )
    .await;

    // Every period the runs touched, once all of them have settled.
    let store = finpool_store::Store::open(&finpool_store::StoreConfig::Sqlite(
        dir.path().join("finpool.db"),
    ))
    .await
    .unwrap();
    let first = jobs
        .iter()
        .filter_map(|j| j.started_at)
        .map(|t| millis(&Some(t)))
        .min()
        .unwrap();
    let runs_all = store.billing_runs(0, i64::MAX / 2).await.unwrap();
    assert!(runs_all.len() >= 6, "{runs_all:?}");
    assert!(runs_all.iter().all(|r| r.ended_at.is_some()));
    let last = runs_all.iter().filter_map(|r| r.ended_at).max().unwrap();
    let length = finpool_billing::PeriodLength::Fixed(5_000);
    let mut periods = Vec::new();
    let mut p = length.period_containing(first).unwrap();
    while p.start <= last {
        periods.push(p);
        p = length.period_containing(p.end).unwrap();
    }
    let wait = periods.last().unwrap().end + 2_500 - finpool_domain::Timestamp::now().0;
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }

    let book = PriceBook::new(store.prices().await.unwrap().into_iter().map(|p| p.price)).unwrap();
    let mut invoiced = 0;
    for period in &periods {
        let at = finpool_domain::Timestamp(period.start).to_rfc3339();
        let closed = op
            .billing
            .close_period(pb::ClosePeriodRequest { at: at.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(closed.closed);
        // The ground truth: this period's runs from job_runs, metered by
        // the pure library in one clean pass.
        let runs = store.billing_runs(period.start, period.end).await.unwrap();
        let events = finpool_billing::meter_range(
            &runs,
            &BTreeMap::new(),
            &card_memory(),
            period.start,
            period.end,
            IntervalLength::from_millis(1000).unwrap(),
        )
        .unwrap();
        let truth =
            finpool_billing::invoices(*period, aggregate(&events, *period, &book), &book).unwrap();
        let got = op
            .billing
            .list_invoices(pb::ListInvoicesRequest {
                tenant_id: String::new(),
                period: period.label(),
            })
            .await
            .unwrap()
            .into_inner()
            .invoices;
        assert_eq!(got.len(), truth.len(), "{at}: {got:#?} vs {truth:#?}");
        let moves = store.account_movements(period.start).await.unwrap();
        assert_eq!(
            moves.values().sum::<i64>(),
            0,
            "{at}: ledger does not balance"
        );
        for (g, t) in got.iter().zip(&truth) {
            assert_eq!(g.id, t.id);
            assert_eq!(g.tenant_id, t.tenant);
            assert_eq!(g.total_fen, t.total_fen, "{at} {}", t.tenant);
            let lines: Vec<(String, String, i64, i64, i64)> = g
                .lines
                .iter()
                .map(|l| {
                    (
                        l.gpu_class.clone(),
                        l.kind.clone(),
                        l.quantity,
                        l.rate_fen,
                        l.amount_fen,
                    )
                })
                .collect();
            let want: Vec<(String, String, i64, i64, i64)> = t
                .lines
                .iter()
                .map(|l| {
                    (
                        l.class.clone(),
                        l.kind.to_string(),
                        l.quantity,
                        l.rate_fen,
                        l.amount_fen,
                    )
                })
                .collect();
            assert_eq!(lines, want, "{at} {}", t.tenant);
            assert_eq!(
                g.total_fen,
                g.lines.iter().map(|l| l.amount_fen).sum::<i64>()
            );
            assert_eq!(
                moves
                    .get(&finpool_billing::receivable_account(&t.tenant))
                    .copied()
                    .unwrap_or(0),
                t.total_fen,
                "{at} {}: the invoice and the ledger differ",
                t.tenant
            );
            invoiced += 1;
        }
        // Conservation: used + held idle + idle = capacity, idle ≥ 0.
        let usage = op
            .billing
            .get_period_usage(pb::GetPeriodUsageRequest {
                tenant_id: String::new(),
                from: at,
                to: finpool_domain::Timestamp(period.end).to_rfc3339(),
            })
            .await
            .unwrap()
            .into_inner();
        for c in &usage.capacity {
            assert_eq!(c.used + c.held_idle + c.idle, c.capacity, "{c:?}");
            assert!(c.idle >= 0, "{c:?}");
            let cards = if c.gpu_class == "A100" { 6 } else { 2 };
            assert_eq!(
                c.capacity,
                cards * 1000 * (period.end - period.start),
                "{c:?}"
            );
        }
    }
    assert!(invoiced >= 2, "the runs were invoiced");
    // Closing again changes nothing; a closed period's ledger is frozen.
    let at = finpool_domain::Timestamp(periods[0].start).to_rfc3339();
    let again = op
        .billing
        .close_period(pb::ClosePeriodRequest { at })
        .await
        .unwrap()
        .into_inner();
    assert!(again.closed);

    // The CLI: a regulator's `finpool usage` without --tenant is everyone's
    // usage with the capacity; a tenant lists its own invoices only.
    let cli = |role: finpool_api::Role, tenant: Option<&str>, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_finpool"))
            .args(args)
            .env("FINPOOL_ADDR", &server.addr)
            .env("FINPOOL_TOKEN", server.token(role, tenant))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let from = finpool_domain::Timestamp(periods[0].start).to_rfc3339();
    let usage = cli(
        finpool_api::Role::Regulator,
        None,
        &["usage", "--from", &from],
    );
    assert!(
        usage.contains("alpha") && usage.contains("beta") && usage.contains("CAPACITY"),
        "{usage}"
    );
    let usage = cli(finpool_api::Role::Regulator, None, &["usage"]);
    assert!(usage.contains("alpha") && usage.contains("beta"), "{usage}");
    let mine = cli(
        finpool_api::Role::Tenant,
        Some("beta"),
        &["invoice", "list"],
    );
    assert!(mine.contains("beta") && !mine.contains("alpha"), "{mine}");
    let prices = cli(finpool_api::Role::Tenant, Some("beta"), &["price", "list"]);
    assert!(prices.contains("gpu_held_idle"), "{prices}");
    let periods_out = cli(finpool_api::Role::Operator, None, &["period", "list"]);
    assert!(periods_out.contains("closed"), "{periods_out}");
}
