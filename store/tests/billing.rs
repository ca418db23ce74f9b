//! Billing in the store, on every backend (SQLite always, PostgreSQL when
//! FINPOOL_TEST_DATABASE_URL is set): metering from job runs, the price
//! book, closing a period into invoices and a balanced ledger, frozen
//! periods, corrections, and replayed metering.

use std::collections::BTreeMap;

use finpool_billing::ledger::{EntryKind, entry_id};
use finpool_billing::{
    Aggregate, BillingConfig, CardShare, IntervalLength, JournalEntry, Kind, Period, PeriodLength,
    Posting, Price, PriceBook, Run, UsageEvent, meter_range, receivable_account,
};
use finpool_domain::{
    GpuAssignment, GpuRequest, IsolationLevel, Job, JobId, JobSpec, JobState, Name, Placement,
    Quota, Resources, RestartPolicy, Tenant, Timestamp,
};
use finpool_store::billing::CapacityClass;
use finpool_store::{Change, Store, StoreConfig, StoreError, testing};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::Connection;

const HOUR: i64 = 3_600_000;
/// A period of 4 h, starting here.
const B: i64 = 400_000 * HOUR;
const A100_MIB: u64 = 81_920;

struct Backend {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("finpool.db");
    let mut all = vec![Backend {
        store: Store::open(&StoreConfig::Sqlite(path.clone()))
            .await
            .unwrap(),
        url: format!("sqlite://{}", path.display()),
        _dir: Some(dir),
    }];
    if let Ok(base) = std::env::var(testing::TEST_DATABASE_URL_VAR) {
        let url = testing::fresh_postgres_database(&base)
            .await
            .unwrap_or_else(|e| panic!("{base} is set for tests but unusable: {e}"));
        all.push(Backend {
            store: Store::open(&StoreConfig::Postgres(url.clone()))
                .await
                .unwrap(),
            url,
            _dir: None,
        });
    }
    all
}

/// Runs SQL behind the store's back; the error's text on failure.
async fn raw(url: &str, sql: &str) -> Result<(), String> {
    let result = if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .map(|_| ())
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .map(|_| ())
    };
    result.map_err(|e| e.to_string())
}

fn config() -> BillingConfig {
    BillingConfig {
        interval: IntervalLength::HOUR,
        period: PeriodLength::fixed(4 * HOUR, IntervalLength::HOUR).unwrap(),
        settle_ms: 60_000,
    }
}

fn capacity() -> Vec<CapacityClass> {
    vec![CapacityClass {
        class: "A100".into(),
        cards: 4,
        card_memory_mib: A100_MIB,
    }]
}

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

fn tenant(id: &str, isolation: IsolationLevel) -> Tenant {
    Tenant {
        id: name(id),
        display_name: id.into(),
        quotas: [(
            "A100".to_owned(),
            Quota {
                guaranteed: 1,
                limit: 4,
                lending_limit: None,
            },
        )]
        .into(),
        weight: 1,
        isolation,
        created_at: Timestamp(1_000),
        suspended: None,
    }
}

fn spec(n: &str, cpu_milli: u64, memory_mib: u64) -> JobSpec {
    JobSpec {
        name: name(n),
        model: None,
        command: vec!["true".into()],
        args: vec![],
        env: BTreeMap::new(),
        resources: Resources {
            gpu: GpuRequest::Whole { count: 1 },
            gpu_classes: vec![],
            cpu_milli,
            memory_mib,
        },
        priority: 0,
        max_runtime_ms: None,
        min_runtime_ms: None,
        idempotency_key: None,
        labels: BTreeMap::new(),
        restart_policy: RestartPolicy::Fail,
    }
}

/// Submits a job and runs it on one card of node n1 from `from` to `to`
/// (still running when `to` is `None`).
#[allow(clippy::too_many_arguments)]
async fn run_job(
    s: &Store,
    t: &str,
    n: &str,
    card: u32,
    milli: u32,
    memory_mib: u64,
    from: i64,
    to: Option<i64>,
) -> JobId {
    let job = Job::new(
        JobId::new_random(),
        name(t),
        spec(n, 2000, 4096),
        Timestamp(from - 10),
    );
    let (job, _) = s.submit(job).await.unwrap();
    let mut admit = Change::new(JobState::Admitted, "placed", Timestamp(from - 5));
    admit.placement = Some(Placement {
        node: "n1".into(),
        gpus: vec![GpuAssignment {
            index: card,
            uuid: format!("GPU-{card}"),
            class: "A100".into(),
            milli,
            memory_mib,
            mig_slice: None,
        }],
    });
    s.transition(job.id, Some(JobState::Pending), admit)
        .await
        .unwrap();
    s.transition(
        job.id,
        Some(JobState::Admitted),
        Change::new(JobState::Running, "started", Timestamp(from)),
    )
    .await
    .unwrap();
    if let Some(to) = to {
        s.transition(
            job.id,
            Some(JobState::Running),
            Change::new(JobState::Succeeded, "done", Timestamp(to)),
        )
        .await
        .unwrap();
    }
    job.id
}

fn price(class: &str, kind: Kind, from: i64, rate: i64) -> Price {
    Price {
        class: class.into(),
        kind,
        effective_from: from,
        rate_fen: rate,
    }
}

async fn set_prices(s: &Store) {
    for p in [
        price("A100", Kind::GpuUsed, B, 2_000),
        price("A100", Kind::GpuHeldIdle, B, 1_000),
        price("", Kind::Cpu, B, 50),
        price("", Kind::Memory, B, 10),
        // A new version of the used rate halfway through.
        price("A100", Kind::GpuUsed, B + 2 * HOUR, 3_001),
    ] {
        s.set_price(&config(), &p, "op", B).await.unwrap();
    }
}

/// The invoices the period's job runs call for, computed from `job_runs`
/// by the pure library alone.
async fn ground_truth(s: &Store, period: Period) -> Vec<finpool_billing::Invoice> {
    let runs = s.billing_runs(period.start, period.end).await.unwrap();
    let memory: BTreeMap<String, u64> = [("A100".to_owned(), A100_MIB)].into();
    let events = meter_range(
        &runs,
        &BTreeMap::new(),
        &memory,
        period.start,
        period.end,
        IntervalLength::HOUR,
    )
    .unwrap();
    let book = PriceBook::new(s.prices().await.unwrap().into_iter().map(|p| p.price)).unwrap();
    finpool_billing::invoices(period, aggregate(&events, period, &book), &book).unwrap()
}

fn aggregate(events: &[UsageEvent], period: Period, book: &PriceBook) -> Vec<Aggregate> {
    let mut cuts = vec![period.start];
    cuts.extend(book.changes_within(period.start, period.end));
    let mut sums: BTreeMap<(String, String, Kind, i64), i64> = BTreeMap::new();
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

#[tokio::test]
async fn a_closed_period_invoices_reconcile_with_the_ledger_to_the_fen() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha", IsolationLevel::SharedWithinTenant))
            .await
            .unwrap();
        s.create_tenant(&tenant("beta", IsolationLevel::Exclusive))
            .await
            .unwrap();
        // 40 GiB of an 80 GiB card with no milli: half a card, 1.75 h.
        run_job(
            s,
            "alpha",
            "mem-only",
            0,
            0,
            40_960,
            B + HOUR / 2,
            Some(B + 9 * HOUR / 4),
        )
        .await;
        // A 1 MiB share holds card 2 alone for an hour.
        run_job(s, "alpha", "tiny", 2, 0, 1, B + HOUR, Some(B + 2 * HOUR)).await;
        // A whole card, still running when the period closes.
        run_job(s, "beta", "whole", 1, 1000, A100_MIB, B + HOUR, None).await;
        set_prices(s).await;

        let period = config().period.period_containing(B).unwrap();
        assert_eq!(
            period,
            Period {
                start: B,
                end: B + 4 * HOUR
            }
        );
        // Too early: the last interval has not settled.
        let err = s
            .close_period(&config(), period, "op", B + 4 * HOUR + 1)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument { ref field, .. } if field == "period"),
            "{err}"
        );
        let now = B + 4 * HOUR + 60_000;
        // Not metered yet: refused, naming what to do.
        assert!(matches!(
            s.close_period(&config(), period, "op", now).await,
            Err(StoreError::Conflict(_))
        ));
        let report = s.meter(&config(), &capacity(), now).await.unwrap();
        assert_eq!(report.to, B + 4 * HOUR);
        assert!(report.inserted > 0);
        // Metering again adds nothing.
        let again = s
            .meter_range(&config(), &capacity(), B, B + 4 * HOUR)
            .await
            .unwrap();
        assert_eq!(again.inserted, 0);
        assert_eq!(again.events as u64, report.inserted);

        let usage = s
            .usage_between(period.start, period.end, Some("alpha"))
            .await
            .unwrap();
        let q = |kind: Kind| {
            usage
                .iter()
                .filter(|u| u.kind == kind)
                .map(|u| u.quantity)
                .sum::<i64>()
        };
        assert_eq!(q(Kind::GpuUsed), 500 * 7 * HOUR / 4 + HOUR);
        assert_eq!(q(Kind::GpuHeldIdle), 500 * 7 * HOUR / 4 + 999 * HOUR);
        assert_eq!(q(Kind::Cpu), 2000 * (7 * HOUR / 4 + HOUR));

        let closed = s.close_period(&config(), period, "op", now).await.unwrap();
        assert!(!closed.already_closed);
        assert_eq!(closed.invoices, 2);
        assert!(closed.period.closed_at.is_some());

        // Every invoice: total = Σ lines = its receivable's movement, and
        // equals the ground truth computed from job_runs alone.
        let invoices = s.invoices(None, Some(period.start)).await.unwrap();
        let truth = ground_truth(s, period).await;
        assert_eq!(
            invoices
                .iter()
                .map(|i| i.invoice.clone())
                .collect::<Vec<_>>(),
            truth
        );
        let moves = s.account_movements(period.start).await.unwrap();
        assert_eq!(moves.values().sum::<i64>(), 0, "{moves:?}");
        for i in &invoices {
            assert_eq!(
                i.invoice.total_fen,
                i.invoice.lines.iter().map(|l| l.amount_fen).sum::<i64>()
            );
            assert_eq!(
                moves[&receivable_account(&i.invoice.tenant)],
                i.invoice.total_fen
            );
            assert!(i.invoice.total_fen > 0);
            assert_eq!(s.invoice(&i.invoice.id).await.unwrap(), *i);
        }
        // The used rate changed at B+2h: alpha's used time is two lines.
        let alpha = &invoices
            .iter()
            .find(|i| i.invoice.tenant == "alpha")
            .unwrap()
            .invoice;
        let used: Vec<_> = alpha
            .lines
            .iter()
            .filter(|l| l.kind == Kind::GpuUsed)
            .collect();
        assert_eq!(used.len(), 2, "{alpha:?}");
        // Conservation: Σ used + held idle + idle = capacity.
        let cap: i64 = s.capacity_between(period.start, period.end).await.unwrap()[0].capacity;
        assert_eq!(cap, 4 * 1000 * 4 * HOUR);
        let all = s
            .usage_between(period.start, period.end, None)
            .await
            .unwrap();
        let busy: i64 = all
            .iter()
            .filter(|u| u.kind.is_gpu())
            .map(|u| u.quantity)
            .sum();
        let idle = cap - busy;
        assert_eq!(busy, 1000 * (7 * HOUR / 4 + HOUR + 3 * HOUR));
        assert!(idle >= 0);

        // Closed means frozen.
        for sql in [
            "UPDATE postings SET amount_fen = amount_fen + 1",
            "DELETE FROM postings",
            "UPDATE journal_entries SET memo = 'x'",
            "DELETE FROM journal_entries",
            "UPDATE invoices SET total_fen = 0",
            "DELETE FROM invoice_lines",
            "DELETE FROM usage_events",
            "UPDATE prices SET rate_fen = 1",
            "UPDATE billing_periods SET closed_at = NULL",
            "DELETE FROM billing_periods",
        ] {
            assert!(raw(&b.url, sql).await.is_err(), "{sql} was allowed");
        }
        let sneak = format!(
            "INSERT INTO journal_entries (id, idempotency_key, period_start, tenant_id, kind, memo, posted_at, posted_by) \
             VALUES ('je-x', 'x', {B}, 'alpha', 'charge', '', 0, 'x')"
        );
        let err = raw(&b.url, &sneak).await.unwrap_err();
        assert!(err.contains("billing period is closed"), "{err}");
        if b.url.starts_with("postgres") {
            assert!(raw(&b.url, "TRUNCATE postings CASCADE").await.is_err());
        }
        // Prices inside a closed period are refused; edits are refused.
        assert!(matches!(
            s.set_price(&config(), &price("A100", Kind::GpuUsed, B + HOUR, 1), "op", now).await,
            Err(StoreError::InvalidArgument { ref field, .. }) if field == "effective_from"
        ));
        let later = B + 4 * HOUR;
        s.set_price(
            &config(),
            &price("A100", Kind::GpuUsed, later, 2_500),
            "op",
            now,
        )
        .await
        .unwrap();
        s.set_price(
            &config(),
            &price("A100", Kind::GpuUsed, later, 2_500),
            "op",
            now,
        )
        .await
        .unwrap();
        assert!(matches!(
            s.set_price(
                &config(),
                &price("A100", Kind::GpuUsed, later, 2_600),
                "op",
                now
            )
            .await,
            Err(StoreError::AlreadyExists(_))
        ));

        // Closing again changes nothing.
        let twice = s.close_period(&config(), period, "op", now).await.unwrap();
        assert!(twice.already_closed);
        assert_eq!(twice.total_fen, closed.total_fen);
        assert_eq!(s.account_movements(period.start).await.unwrap(), moves);

        // A correction: a new entry in the open period, naming the charge.
        let charge = s.journal(Some(period.start), Some("alpha")).await.unwrap();
        assert_eq!(charge.len(), 1);
        assert_eq!(charge[0].entry.kind, EntryKind::Charge);
        let key = "refund-alpha-1".to_owned();
        let fix = JournalEntry {
            id: entry_id(&key),
            idempotency_key: key,
            period_start: B + 4 * HOUR,
            tenant: Some("alpha".into()),
            kind: EntryKind::Adjustment,
            reference: Some(charge[0].entry.id.clone()),
            memo: "goodwill".into(),
            postings: vec![
                Posting {
                    account: receivable_account("alpha"),
                    amount_fen: -100,
                },
                Posting {
                    account: "revenue:A100:gpu_used".into(),
                    amount_fen: 100,
                },
            ],
        };
        let posted = s.post_adjustment(&config(), &fix, "op", now).await.unwrap();
        assert_eq!(posted.entry, fix);
        assert_eq!(
            s.post_adjustment(&config(), &fix, "op", now + 1)
                .await
                .unwrap(),
            posted
        );
        assert_eq!(
            s.account_movements(B + 4 * HOUR).await.unwrap()[&receivable_account("alpha")],
            -100
        );
        // Not into the closed period; not unbalanced.
        let mut into_closed = fix.clone();
        into_closed.idempotency_key = "refund-alpha-2".into();
        into_closed.id = entry_id(&into_closed.idempotency_key);
        into_closed.period_start = B;
        assert!(matches!(
            s.post_adjustment(&config(), &into_closed, "op", now).await,
            Err(StoreError::Conflict(_))
        ));
        let mut unbalanced = fix.clone();
        unbalanced.idempotency_key = "refund-alpha-3".into();
        unbalanced.postings[1].amount_fen = 99;
        assert!(
            s.post_adjustment(&config(), &unbalanced, "op", now)
                .await
                .is_err()
        );
    }
}

/// A random history of runs (card memory 80 GiB), for the replay test.
fn history(seed: u64, jobs: usize) -> Vec<Run> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..jobs)
        .map(|j| {
            let tenant = format!("t{}", rng.random_range(0..3));
            let card = rng.random_range(0..4u32) + 4 * (tenant.as_bytes()[1] - b'0') as u32;
            let start = B + rng.random_range(0..4 * HOUR);
            Run {
                job_id: format!("job-{j}"),
                attempt: 1,
                exclusive_cards: true,
                node: "n1".into(),
                gpus: vec![CardShare {
                    index: card,
                    class: "A100".into(),
                    milli: [0, 250, 1000][rng.random_range(0..3)],
                    memory_mib: rng.random_range(1..A100_MIB / 4),
                    mig: false,
                }],
                cpu_milli: rng.random_range(0..8000),
                memory_mib: rng.random_range(0..100_000),
                started_at: start,
                ended_at: rng
                    .random_bool(0.8)
                    .then(|| start + rng.random_range(1..3 * HOUR)),
                tenant,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Metering events replayed N times, shuffled, from several tasks at
    /// once give the same balances, invoices and ledger as one clean pass.
    #[test]
    fn replayed_metering_events_give_identical_balances(
        seed in any::<u64>(),
        jobs in 1usize..40,
        replays in 2usize..4,
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let period = Period { start: B, end: B + 4 * HOUR };
            let runs = history(seed, jobs);
            let memory: BTreeMap<String, u64> = [("A100".to_owned(), A100_MIB)].into();
            let events = meter_range(&runs, &BTreeMap::new(), &memory, period.start, period.end, IntervalLength::HOUR).unwrap();
            let book = {
                let b = backends().await;
                set_prices(&b[0].store).await;
                PriceBook::new(b[0].store.prices().await.unwrap().into_iter().map(|p| p.price)).unwrap()
            };
            let expected = finpool_billing::invoices(period, aggregate(&events, period, &book), &book).unwrap();
            for b in backends().await {
                let s = b.store.clone();
                let mut all: Vec<UsageEvent> = (0..replays).flat_map(|_| events.iter().cloned()).collect();
                all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 7));
                let tasks: Vec<_> = all
                    .chunks(all.len().div_ceil(4).max(1))
                    .map(|chunk| {
                        let s = s.clone();
                        let chunk = chunk.to_vec();
                        tokio::spawn(async move {
                            let mut n = 0;
                            for part in chunk.chunks(7) {
                                n += s.insert_usage_events(part).await.unwrap();
                            }
                            n
                        })
                    })
                    .collect();
                let inserted: u64 = futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).sum();
                assert_eq!(inserted as usize, events.len());
                let usage = s.usage_between(period.start, period.end, None).await.unwrap();
                let mut want: BTreeMap<(String, String, Kind), i64> = BTreeMap::new();
                for e in &events {
                    *want.entry((e.tenant.clone(), e.class.clone(), e.kind)).or_default() += e.quantity;
                }
                let got: BTreeMap<(String, String, Kind), i64> = usage
                    .into_iter()
                    .map(|u| ((u.tenant, u.class, u.kind), u.quantity))
                    .collect();
                assert_eq!(got, want);
                set_prices(&s).await;
                s.meter_range(&config(), &capacity(), period.start, period.end).await.unwrap();
                s.close_period(&config(), period, "op", period.end + HOUR).await.unwrap();
                let invoices: Vec<_> = s.invoices(None, Some(period.start)).await.unwrap().into_iter().map(|i| i.invoice).collect();
                assert_eq!(invoices, expected);
                let moves = s.account_movements(period.start).await.unwrap();
                assert_eq!(moves.values().sum::<i64>(), 0);
                for i in &expected {
                    assert_eq!(moves.get(&receivable_account(&i.tenant)).copied().unwrap_or(0), i.total_fen);
                }
            }
        });
    }
}

/// Two writers storing the same events in opposite orders, at once: each
/// waits on ids the other inserted and has not committed, and unless the
/// store takes ids in one order, PostgreSQL aborts one of them as a
/// deadlock (seen in CI: `replayed_metering_events_give_identical_balances`
/// failed with "deadlock detected"). Every event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_the_same_events_in_opposite_orders_both_succeed() {
    let events: Vec<UsageEvent> = (0..3000)
        .map(|i| UsageEvent {
            id: format!("ev-{i:05}"),
            tenant: "acme".into(),
            job_id: Some(format!("job-{}", i / 4)),
            attempt: Some(1),
            node: "n1".into(),
            gpu_index: None,
            class: "A100".into(),
            kind: Kind::GpuUsed,
            interval_start: B + (i as i64 % 4) * HOUR,
            interval_end: B + (i as i64 % 4 + 1) * HOUR,
            quantity: 1 + i as i64,
        })
        .collect();
    for b in backends().await {
        let (s1, s2) = (b.store.clone(), b.store.clone());
        let forward = events.clone();
        let backward: Vec<UsageEvent> = events.iter().rev().cloned().collect();
        let one = tokio::spawn(async move { s1.insert_usage_events(&forward).await });
        let two = tokio::spawn(async move { s2.insert_usage_events(&backward).await });
        let (one, two) = (one.await.unwrap(), two.await.unwrap());
        let inserted = one.unwrap_or_else(|e| panic!("{}: {e}", b.url))
            + two.unwrap_or_else(|e| panic!("{}: {e}", b.url));
        assert_eq!(inserted as usize, events.len(), "{}", b.url);
    }
}
