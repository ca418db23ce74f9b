//! Metering and billing properties over random job histories.
//!
//! - Replay: metering the same runs again, in any order of runs, in any
//!   split into passes (a crash between two), and applying the events N
//!   times in random order from several threads into an idempotent sink,
//!   gives identical balances and invoices.
//! - Conservation: per class and interval, Σ used + Σ held idle + idle =
//!   capacity, with idle never negative, and used + held idle equal to the
//!   time the cards were busy, computed independently.
//! - Every invoice's total is the sum of its lines and its charge entry
//!   balances.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use finpool_billing::{
    Aggregate, CardShare, IntervalLength, JournalEntry, Kind, Period, Price, PriceBook, Run,
    UsageEvent, invoices, meter_interval, meter_range,
};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HOUR: i64 = 3_600_000;
const CLASSES: [(&str, u64); 2] = [("A100", 81_920), ("L40S", 49_152)];
/// node → cards (index, class)
const NODES: [(&str, &[(u32, usize)]); 3] = [
    ("n1", &[(0, 0), (1, 0), (2, 0), (3, 0)]),
    ("n2", &[(0, 1), (1, 1)]),
    ("n3", &[(0, 0), (1, 1)]),
];

fn memory() -> BTreeMap<String, u64> {
    CLASSES.iter().map(|(c, m)| (c.to_string(), *m)).collect()
}

/// A random, valid history over `[0, hours h)`: no card is shared by two
/// tenants at once, and shares on a card never add up past it. Tenant
/// `t3` is a MIG tenant (its cards are not its alone).
fn history(seed: u64, jobs: usize, hours: i64) -> Vec<Run> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut runs: Vec<Run> = Vec::new();
    for j in 0..jobs {
        let tenant = format!("t{}", rng.random_range(0..4));
        let (node, cards) = NODES[rng.random_range(0..NODES.len())];
        let start = rng.random_range(0..hours * HOUR);
        let len = rng.random_range(1..3 * HOUR);
        let ended_at = if rng.random_bool(0.15) {
            None
        } else {
            Some(start + len)
        };
        let whole = rng.random_bool(0.4);
        let gpus: Vec<CardShare> = if whole {
            let n = rng.random_range(1..=cards.len());
            cards[..n]
                .iter()
                .map(|(i, c)| CardShare {
                    index: *i,
                    class: CLASSES[*c].0.into(),
                    milli: 1000,
                    memory_mib: CLASSES[*c].1,
                    mig: false,
                })
                .collect()
        } else {
            let (i, c) = cards[rng.random_range(0..cards.len())];
            let milli = [0, 100, 250, 500][rng.random_range(0..4)];
            let mem = [1, 1024, 20_480, 40_960][rng.random_range(0..4)];
            vec![CardShare {
                index: i,
                class: CLASSES[c].0.into(),
                milli,
                memory_mib: mem,
                mig: tenant == "t3",
            }]
        };
        let run = Run {
            job_id: format!("job-{j:04}"),
            attempt: rng.random_range(1..3),
            tenant: tenant.clone(),
            exclusive_cards: tenant != "t3",
            node: node.into(),
            gpus,
            cpu_milli: rng.random_range(0..4000),
            memory_mib: rng.random_range(0..65_536),
            started_at: start,
            ended_at,
        };
        // Keep it only if it fits beside what overlaps it.
        let end = |r: &Run| r.ended_at.unwrap_or(i64::MAX);
        let fits = run.gpus.iter().all(|g| {
            let others: Vec<(&Run, &CardShare)> = runs
                .iter()
                .filter(|r| {
                    r.node == run.node && r.started_at < end(&run) && run.started_at < end(r)
                })
                .flat_map(|r| {
                    r.gpus
                        .iter()
                        .filter(|x| x.index == g.index)
                        .map(move |x| (r, x))
                })
                .collect();
            let other_tenant = others.iter().any(|(r, _)| r.tenant != run.tenant);
            let milli: u32 = others.iter().map(|(_, x)| x.milli).sum::<u32>() + g.milli;
            let mem: u64 = others.iter().map(|(_, x)| x.memory_mib).sum::<u64>() + g.memory_mib;
            let card = CLASSES.iter().find(|(c, _)| *c == g.class).unwrap().1;
            // The MIG tenant has card 0 of n3 to itself, in MIG mode.
            let mig_card = run.node == "n3" && g.index == 0;
            !other_tenant && milli <= 1000 && mem <= card && (run.tenant == "t3") == mig_card
        });
        if fits {
            runs.push(run);
        }
    }
    runs
}

type Balances = BTreeMap<(String, String, Kind), i64>;

fn balances<'a>(events: impl IntoIterator<Item = &'a UsageEvent>) -> Balances {
    let mut b = Balances::new();
    for e in events {
        *b.entry((e.tenant.clone(), e.class.clone(), e.kind))
            .or_default() += e.quantity;
    }
    b
}

fn book() -> PriceBook {
    let mut prices = vec![
        Price {
            class: String::new(),
            kind: Kind::Cpu,
            effective_from: 0,
            rate_fen: 37,
        },
        Price {
            class: String::new(),
            kind: Kind::Memory,
            effective_from: 0,
            rate_fen: 3,
        },
    ];
    for (class, _) in CLASSES {
        for (kind, rate) in [(Kind::GpuUsed, 1_999), (Kind::GpuHeldIdle, 1_201)] {
            prices.push(Price {
                class: class.into(),
                kind,
                effective_from: 0,
                rate_fen: rate,
            });
            // A new version part-way through.
            prices.push(Price {
                class: class.into(),
                kind,
                effective_from: 5 * HOUR,
                rate_fen: rate + 333,
            });
        }
    }
    PriceBook::new(prices).unwrap()
}

/// Aggregates per price segment, as the store does.
fn aggregates(events: &[UsageEvent], period: Period, book: &PriceBook) -> Vec<Aggregate> {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn replay_in_any_order_split_and_concurrency_gives_identical_balances(
        seed in any::<u64>(),
        jobs in 1usize..60,
        cut in 1i64..10,
        replays in 2usize..5,
    ) {
        let hours = 10;
        let runs = history(seed, jobs, hours);
        let interval = IntervalLength::HOUR;
        let none = BTreeMap::new();
        let once = meter_range(&runs, &none, &memory(), 0, hours * HOUR, interval).unwrap();

        // Runs in another order.
        let mut shuffled = runs.clone();
        shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 1));
        let mut again = meter_range(&shuffled, &none, &memory(), 0, hours * HOUR, interval).unwrap();
        again.sort();
        let mut sorted = once.clone();
        sorted.sort();
        prop_assert_eq!(&again, &sorted);

        // Two passes with a "crash" between them.
        let mut split = meter_range(&runs, &none, &memory(), 0, cut * HOUR, interval).unwrap();
        split.extend(meter_range(&runs, &none, &memory(), cut * HOUR, hours * HOUR, interval).unwrap());
        split.sort();
        prop_assert_eq!(&split, &sorted);

        // Every event replayed `replays` times, shuffled, from 4 threads,
        // into a sink keyed by id (INSERT … ON CONFLICT DO NOTHING).
        let mut all: Vec<UsageEvent> = (0..replays).flat_map(|_| once.iter().cloned()).collect();
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 2));
        let sink: Arc<Mutex<HashMap<String, UsageEvent>>> = Arc::default();
        std::thread::scope(|s| {
            for chunk in all.chunks(all.len().div_ceil(4).max(1)) {
                let sink = sink.clone();
                s.spawn(move || {
                    for e in chunk {
                        sink.lock().unwrap().entry(e.id.clone()).or_insert_with(|| e.clone());
                    }
                });
            }
        });
        let sink = sink.lock().unwrap();
        prop_assert_eq!(sink.len(), once.len());
        prop_assert_eq!(balances(sink.values()), balances(&once));

        // Ids are unique: nothing is counted twice by construction.
        let ids: BTreeSet<&str> = once.iter().map(|e| e.id.as_str()).collect();
        prop_assert_eq!(ids.len(), once.len());

        // The same invoices either way, each reconciling with its entry.
        let period = Period { start: 0, end: hours * HOUR };
        let b = book();
        let replayed: Vec<UsageEvent> = sink.values().cloned().collect();
        let a = invoices(period, aggregates(&once, period, &b), &b).unwrap();
        let r = invoices(period, aggregates(&replayed, period, &b), &b).unwrap();
        prop_assert_eq!(&a, &r);
        for inv in &a {
            prop_assert_eq!(inv.total_fen, inv.lines.iter().map(|l| l.amount_fen).sum::<i64>());
            if let Some(entry) = JournalEntry::charge(inv) {
                entry.validate().unwrap();
                let receivable: i64 = entry.postings.iter()
                    .filter(|p| p.account == finpool_billing::receivable_account(&inv.tenant))
                    .map(|p| p.amount_fen).sum();
                prop_assert_eq!(receivable, inv.total_fen);
            } else {
                prop_assert_eq!(inv.total_fen, 0);
            }
        }
    }

    #[test]
    fn capacity_is_conserved(seed in any::<u64>(), jobs in 1usize..80) {
        let hours = 6;
        let runs = history(seed, jobs, hours);
        let mem = memory();
        for h in 0..hours {
            let (s, e) = (h * HOUR, (h + 1) * HOUR);
            let events = meter_interval(&runs, &mem, s, e).unwrap();
            for (class, _) in CLASSES {
                let cards = NODES.iter().flat_map(|(_, c)| c.iter()).filter(|(_, c)| CLASSES[*c].0 == class).count() as i64;
                let capacity = cards * 1000 * (e - s);
                let used: i64 = events.iter().filter(|x| x.class == class && x.kind == Kind::GpuUsed).map(|x| x.quantity).sum();
                let held: i64 = events.iter().filter(|x| x.class == class && x.kind == Kind::GpuHeldIdle).map(|x| x.quantity).sum();
                let idle = capacity - used - held;
                prop_assert!(idle >= 0, "{class} h{h}: used {used} + held {held} > capacity {capacity}");
                prop_assert_eq!(used + held + idle, capacity);
                // Independently: for cards held by exclusive tenants, used +
                // held idle is 1000 milli × the time the card was busy.
                let mut busy: i64 = 0;
                let mig_jobs: BTreeSet<&str> = runs.iter().filter(|r| !r.exclusive_cards).map(|r| r.job_id.as_str()).collect();
                let mig_used: i64 = events.iter()
                    .filter(|x| x.kind == Kind::GpuUsed && x.class == class)
                    .filter(|x| x.job_id.as_deref().is_some_and(|j| mig_jobs.contains(j)))
                    .map(|x| x.quantity).sum();
                for (node, cards) in NODES {
                    for (index, c) in cards.iter() {
                        if CLASSES[*c].0 != class { continue; }
                        let mut spans: Vec<(i64, i64, bool)> = runs.iter()
                            .filter(|r| r.node == node && r.gpus.iter().any(|g| g.index == *index))
                            .filter_map(|r| {
                                let a = r.started_at.max(s);
                                let b = r.ended_at.unwrap_or(e).min(e);
                                (b > a).then_some((a, b, r.exclusive_cards))
                            })
                            .collect();
                        if spans.iter().any(|x| !x.2) {
                            // A MIG tenant's card: no held idle on it.
                            continue;
                        }
                        spans.sort();
                        let mut cur: Option<(i64, i64)> = None;
                        for (a, b, _) in spans {
                            match cur {
                                Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
                                Some((ca, cb)) => { busy += cb - ca; cur = Some((a, b)); }
                                None => cur = Some((a, b)),
                            }
                        }
                        if let Some((ca, cb)) = cur { busy += cb - ca; }
                    }
                }
                prop_assert_eq!(used + held, busy * 1000 + mig_used, "{} h{}", class, h);
            }
        }
    }
}

fn card(milli: u32, memory_mib: u64) -> CardShare {
    CardShare {
        index: 0,
        class: "A100".into(),
        milli,
        memory_mib,
        mig: false,
    }
}

fn run(job: &str, tenant: &str, gpus: Vec<CardShare>, from: i64, to: Option<i64>) -> Run {
    Run {
        job_id: job.into(),
        attempt: 1,
        tenant: tenant.into(),
        exclusive_cards: true,
        node: "n1".into(),
        gpus,
        cpu_milli: 2000,
        memory_mib: 1024,
        started_at: from,
        ended_at: to,
    }
}

fn sum(events: &[UsageEvent], kind: Kind) -> i64 {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.quantity)
        .sum()
}

/// The cases a user found: a memory-only share metered 0, a 1 MiB share
/// held a card for free, CPU and memory unmetered.
#[test]
fn shares_by_memory_and_held_cards_are_metered() {
    let mem = memory();
    // 40 GiB of an 80 GiB card, no milli: half a card.
    let e = meter_interval(
        &[run("a", "t", vec![card(0, 40_960)], 0, None)],
        &mem,
        0,
        HOUR,
    )
    .unwrap();
    assert_eq!(sum(&e, Kind::GpuUsed), 500 * HOUR);
    assert_eq!(sum(&e, Kind::GpuHeldIdle), 500 * HOUR);
    assert_eq!(sum(&e, Kind::Cpu), 2000 * HOUR);
    assert_eq!(sum(&e, Kind::Memory), 1024 * HOUR);
    // 1 MiB: one milli used (rounded up), the rest of the card held idle.
    let e = meter_interval(
        &[run("b", "t", vec![card(0, 1)], 0, Some(HOUR / 2))],
        &mem,
        0,
        HOUR,
    )
    .unwrap();
    assert_eq!(sum(&e, Kind::GpuUsed), HOUR / 2);
    assert_eq!(sum(&e, Kind::GpuHeldIdle), 999 * HOUR / 2);
    // Two of one tenant's shares on a card: held idle is what neither uses,
    // and only while either runs.
    let e = meter_interval(
        &[
            run("c", "t", vec![card(250, 1024)], 0, Some(HOUR / 2)),
            run("d", "t", vec![card(500, 1024)], HOUR / 4, Some(HOUR)),
        ],
        &mem,
        0,
        HOUR,
    )
    .unwrap();
    assert_eq!(sum(&e, Kind::GpuUsed), 250 * HOUR / 2 + 500 * 3 * HOUR / 4);
    assert_eq!(
        sum(&e, Kind::GpuHeldIdle),
        750 * HOUR / 4 + 250 * HOUR / 4 + 500 * HOUR / 2
    );
    // A MIG tenant's slice: no held idle.
    let mut mig = run("m", "t", vec![card(428, 40_960)], 0, None);
    mig.exclusive_cards = false;
    mig.gpus[0].mig = true;
    let e = meter_interval(&[mig], &mem, 0, HOUR).unwrap();
    assert_eq!(sum(&e, Kind::GpuUsed), 500 * HOUR);
    assert_eq!(sum(&e, Kind::GpuHeldIdle), 0);
    // Milli and memory checked apart can add past the card: the card is
    // split in proportion, never metered above itself.
    let e = meter_interval(
        &[
            run("x", "t", vec![card(600, 8_192)], 0, None),
            run("y", "t", vec![card(100, 61_440)], 0, None),
        ],
        &mem,
        0,
        HOUR,
    )
    .unwrap();
    assert_eq!(sum(&e, Kind::GpuUsed), 1000 * HOUR);
    assert_eq!(sum(&e, Kind::GpuHeldIdle), 0);
    // An unknown class is an error naming it, not a silent zero.
    let mut odd = run("z", "t", vec![card(0, 1)], 0, None);
    odd.gpus[0].class = "H200".into();
    let err = meter_interval(&[odd], &mem, 0, HOUR).unwrap_err();
    assert!(err.to_string().contains("H200"), "{err}");
}

/// Open runs meter up to the interval asked for; a run crossing intervals
/// is split at the boundary with distinct ids.
#[test]
fn runs_crossing_intervals_split_at_the_boundary() {
    let runs = [run("a", "t", vec![card(1000, 81_920)], HOUR / 2, None)];
    let e = meter_range(
        &runs,
        &BTreeMap::new(),
        &memory(),
        0,
        3 * HOUR,
        IntervalLength::HOUR,
    )
    .unwrap();
    let used: Vec<&UsageEvent> = e.iter().filter(|x| x.kind == Kind::GpuUsed).collect();
    assert_eq!(used.len(), 3);
    assert_eq!(sum(&e, Kind::GpuUsed), 1000 * 5 * HOUR / 2);
    let ids: BTreeSet<&str> = e.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids.len(), e.len());
}
