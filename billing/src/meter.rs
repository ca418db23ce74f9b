//! Metering: job runs → usage events, one interval at a time.
//!
//! For each closed interval `[start, end)` and each run overlapping it:
//!
//! - `gpu_used`, per run and GPU class: on each card, the job's share
//!   `min(1000, max(milli, ⌈memory_mib × 1000 / card memory⌉))` milli-GPU
//!   times the milliseconds it ran in the interval. Should the shares on
//!   one card ever add up to more than the card (milli and memory are
//!   checked apart), the card's 1000 milli are split among them in
//!   proportion, by largest remainder, so no card is metered above itself.
//! - `gpu_held_idle`, per tenant and card: while a tenant's jobs hold a card
//!   that no other tenant may share (every isolation level but MIG, whose
//!   slices sit beside other tenants), the rest of that card.
//! - `cpu`: milli-CPU × milliseconds; `memory`: MiB × milliseconds.
//!
//! Quantities are integers in those units (milli-GPU-ms, milli-CPU-ms,
//! MiB-ms), so sums are exact and capacity is conserved to the unit: per
//! class and interval, Σ used + Σ held idle + idle = cards × 1000 × length.
//!
//! Every event's id is its interval start followed by a hash of what it
//! counts (job id, run, interval start, kind and class; or tenant, card,
//! interval start and kind), so
//! metering the same runs again gives the same ids, and a store that
//! inserts them with `ON CONFLICT DO NOTHING` counts each once.

use std::collections::{BTreeMap, BTreeSet};

use crate::period::IntervalLength;
use crate::{BillingError, event_id, invalid};

/// What is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Milli-GPU-ms a job's share used.
    GpuUsed,
    /// Milli-GPU-ms of cards a tenant held alone but did not use.
    GpuHeldIdle,
    /// Milli-CPU-ms.
    Cpu,
    /// MiB-ms.
    Memory,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::GpuUsed, Kind::GpuHeldIdle, Kind::Cpu, Kind::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::GpuUsed => "gpu_used",
            Self::GpuHeldIdle => "gpu_held_idle",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, BillingError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("must be gpu_used, gpu_held_idle, cpu or memory, got {s:?}"),
                )
            })
    }

    /// GPU kinds are priced per GPU class; CPU and memory are not.
    pub fn is_gpu(self) -> bool {
        matches!(self, Self::GpuUsed | Self::GpuHeldIdle)
    }

    /// The unit of an event's quantity.
    pub fn unit(self) -> &'static str {
        match self {
            Self::GpuUsed | Self::GpuHeldIdle => "milli-GPU-ms",
            Self::Cpu => "milli-CPU-ms",
            Self::Memory => "MiB-ms",
        }
    }

    /// The unit a rate is per.
    pub fn rate_unit(self) -> &'static str {
        match self {
            Self::GpuUsed | Self::GpuHeldIdle => "GPU-hour",
            Self::Cpu => "core-hour",
            Self::Memory => "GiB-hour",
        }
    }

    /// How many quantity units make one rate unit: 1000 milli × 3.6e6 ms
    /// for GPU- and core-hours, 1024 MiB × 3.6e6 ms for GiB-hours.
    pub fn units_per_rate_unit(self) -> i128 {
        match self {
            Self::GpuUsed | Self::GpuHeldIdle | Self::Cpu => 1000 * 3_600_000,
            Self::Memory => 1024 * 3_600_000,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One card (or MIG slice) a run was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardShare {
    pub index: u32,
    pub class: String,
    /// Milli-GPU given (1000 for a whole card).
    pub milli: u32,
    /// GPU memory given, MiB.
    pub memory_mib: u64,
    /// On a MIG slice: other tenants may be on the same card.
    pub mig: bool,
}

/// One run of a job (a start to its end), as `job_runs` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub job_id: String,
    pub attempt: i64,
    pub tenant: String,
    /// Whether the tenant's cards are its own alone (any isolation but
    /// MIG): the rest of such a card is metered to it as held idle.
    pub exclusive_cards: bool,
    pub node: String,
    pub gpus: Vec<CardShare>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub started_at: i64,
    /// `None` while the run goes on.
    pub ended_at: Option<i64>,
}

impl Run {
    /// The part of `[start, end)` this run covers, if any. An open run
    /// covers up to `end` (only closed intervals are metered).
    fn clip(&self, start: i64, end: i64) -> Option<(i64, i64)> {
        let a = self.started_at.max(start);
        let b = self.ended_at.unwrap_or(end).min(end);
        (b > a).then_some((a, b))
    }
}

/// One metered quantity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageEvent {
    /// Deterministic: see the module's doc.
    pub id: String,
    pub tenant: String,
    /// `None` for held idle, which is per card.
    pub job_id: Option<String>,
    pub attempt: Option<i64>,
    pub node: String,
    /// The card, for held idle.
    pub gpu_index: Option<u32>,
    /// The GPU class; empty for CPU and memory.
    pub class: String,
    pub kind: Kind,
    pub interval_start: i64,
    pub interval_end: i64,
    /// In [`Kind::unit`]s; always positive (nothing is emitted for zero).
    pub quantity: i64,
}

fn to_i64(what: &str, v: i128) -> Result<i64, BillingError> {
    i64::try_from(v).map_err(|_| BillingError::Overflow(what.to_owned()))
}

/// A job's share of a card, in milli-GPU (see the module's doc).
pub fn share_milli(card: &CardShare, card_memory_mib: u64) -> u32 {
    let by_memory = if card_memory_mib == 0 {
        0
    } else {
        (card.memory_mib as u128 * 1000).div_ceil(card_memory_mib as u128)
    };
    (card.milli as u128).max(by_memory).min(1000) as u32
}

/// Meters one interval `[start, end)`. `card_memory` gives each GPU
/// class's card memory (MiB). The events come sorted by id.
pub fn meter_interval<'a>(
    runs: impl IntoIterator<Item = &'a Run>,
    card_memory: &BTreeMap<String, u64>,
    start: i64,
    end: i64,
) -> Result<Vec<UsageEvent>, BillingError> {
    if end <= start {
        return Err(invalid(
            "interval",
            format!("end {end} must be after start {start}"),
        ));
    }
    let start_s = start.to_string();
    let mut out = Vec::new();
    // Card → its shares in this interval: (from, to, share, run).
    struct Holding<'r> {
        from: i64,
        to: i64,
        share: u32,
        /// A MIG slice: its card may hold other tenants, so it is never
        /// held alone.
        mig: bool,
        run: &'r Run,
    }
    let mut cards: BTreeMap<(&str, u32, &str), Vec<Holding<'a>>> = BTreeMap::new();
    for run in runs {
        let Some((a, b)) = run.clip(start, end) else {
            continue;
        };
        let dur = (b - a) as i128;
        let attempt = run.attempt.to_string();
        for (kind, per_ms) in [(Kind::Cpu, run.cpu_milli), (Kind::Memory, run.memory_mib)] {
            if per_ms == 0 {
                continue;
            }
            let quantity = to_i64(kind.as_str(), per_ms as i128 * dur)?;
            out.push(UsageEvent {
                id: event_id(
                    start,
                    &[
                        "usage-v1",
                        &run.job_id,
                        &attempt,
                        &start_s,
                        kind.as_str(),
                        "",
                    ],
                ),
                tenant: run.tenant.clone(),
                job_id: Some(run.job_id.clone()),
                attempt: Some(run.attempt),
                node: run.node.clone(),
                gpu_index: None,
                class: String::new(),
                kind,
                interval_start: start,
                interval_end: end,
                quantity,
            });
        }
        for g in &run.gpus {
            let memory = *card_memory
                .get(&g.class)
                .ok_or_else(|| BillingError::UnknownClass {
                    class: g.class.clone(),
                    at: crate::rfc3339(start),
                })?;
            cards
                .entry((run.node.as_str(), g.index, g.class.as_str()))
                .or_default()
                .push(Holding {
                    from: a,
                    to: b,
                    share: share_milli(g, memory),
                    mig: g.mig,
                    run,
                });
        }
    }
    // Per (run, class): milli-GPU-ms used. Per (tenant, node, card, class):
    // held idle.
    let mut used: BTreeMap<(&str, i64, &str), (i128, &Run)> = BTreeMap::new();
    let mut idle: BTreeMap<(&str, &str, u32, &str), i128> = BTreeMap::new();
    for ((node, index, class), mut holdings) in cards {
        // Deterministic whatever order the runs came in.
        holdings.sort_by(|x, y| {
            (x.run.job_id.as_str(), x.run.attempt, x.from).cmp(&(
                y.run.job_id.as_str(),
                y.run.attempt,
                y.from,
            ))
        });
        let mut points: Vec<i64> = holdings.iter().flat_map(|h| [h.from, h.to]).collect();
        points.sort_unstable();
        points.dedup();
        for w in points.windows(2) {
            let (p, q) = (w[0], w[1]);
            let active: Vec<&Holding> = holdings
                .iter()
                .filter(|h| h.from <= p && h.to >= q)
                .collect();
            if active.is_empty() {
                continue;
            }
            let dur = (q - p) as i128;
            let total: u64 = active.iter().map(|h| h.share as u64).sum();
            let alloc: Vec<u64> = if total <= 1000 {
                active.iter().map(|h| h.share as u64).collect()
            } else {
                // Largest remainder, ties to the earlier job id.
                let mut alloc: Vec<u64> = active
                    .iter()
                    .map(|h| h.share as u64 * 1000 / total)
                    .collect();
                let mut order: Vec<usize> = (0..active.len()).collect();
                order.sort_by_key(|&i| std::cmp::Reverse(active[i].share as u64 * 1000 % total));
                let left = 1000 - alloc.iter().sum::<u64>();
                for &i in order.iter().take(left as usize) {
                    alloc[i] += 1;
                }
                alloc
            };
            for (h, a) in active.iter().zip(&alloc) {
                let e = used
                    .entry((h.run.job_id.as_str(), h.run.attempt, class))
                    .or_insert((0, h.run));
                e.0 += *a as i128 * dur;
            }
            let tenants: BTreeSet<&str> = active.iter().map(|h| h.run.tenant.as_str()).collect();
            let alone =
                tenants.len() == 1 && active.iter().all(|h| !h.mig && h.run.exclusive_cards);
            let rest = 1000 - alloc.iter().sum::<u64>();
            if alone && rest > 0 {
                let tenant = tenants.into_iter().next().expect("one tenant");
                *idle.entry((tenant, node, index, class)).or_default() += rest as i128 * dur;
            }
        }
    }
    for ((job_id, attempt, class), (q, run)) in used {
        if q == 0 {
            continue;
        }
        out.push(UsageEvent {
            id: event_id(
                start,
                &[
                    "usage-v1",
                    job_id,
                    &attempt.to_string(),
                    &start_s,
                    Kind::GpuUsed.as_str(),
                    class,
                ],
            ),
            tenant: run.tenant.clone(),
            job_id: Some(job_id.to_owned()),
            attempt: Some(attempt),
            node: run.node.clone(),
            gpu_index: None,
            class: class.to_owned(),
            kind: Kind::GpuUsed,
            interval_start: start,
            interval_end: end,
            quantity: to_i64("gpu_used", q)?,
        });
    }
    for ((tenant, node, index, class), q) in idle {
        out.push(UsageEvent {
            id: event_id(
                start,
                &[
                    "held-idle-v1",
                    tenant,
                    node,
                    &index.to_string(),
                    class,
                    &start_s,
                ],
            ),
            tenant: tenant.to_owned(),
            job_id: None,
            attempt: None,
            node: node.to_owned(),
            gpu_index: Some(index),
            class: class.to_owned(),
            kind: Kind::GpuHeldIdle,
            interval_start: start,
            interval_end: end,
            quantity: to_i64("gpu_held_idle", q)?,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Meters every interval of `[from, to)` (both aligned). `card_memory`
/// gives, per interval start, each class's card memory; an interval
/// missing from it takes `default_memory`.
pub fn meter_range(
    runs: &[Run],
    card_memory: &BTreeMap<i64, BTreeMap<String, u64>>,
    default_memory: &BTreeMap<String, u64>,
    from: i64,
    to: i64,
    interval: IntervalLength,
) -> Result<Vec<UsageEvent>, BillingError> {
    let len = interval.millis();
    if !interval.is_aligned(from) || !interval.is_aligned(to) {
        return Err(invalid(
            "range",
            format!("{from}..{to} must be aligned to the metering interval ({len} ms)"),
        ));
    }
    // Runs bucketed by the intervals they touch.
    let mut buckets: BTreeMap<i64, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        let a = interval.floor(run.started_at.max(from));
        let b = run.ended_at.unwrap_or(to).min(to);
        let mut s = a;
        while s < b {
            buckets.entry(s).or_default().push(run);
            s += len;
        }
    }
    let mut out = Vec::new();
    for (start, runs) in buckets {
        let memory = card_memory.get(&start).unwrap_or(default_memory);
        out.extend(meter_interval(runs, memory, start, start + len)?);
    }
    Ok(out)
}
