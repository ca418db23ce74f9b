//! `finpool simulate fairness`: tenants with weights and guarantees
//! competing for a pool over time, driven through the real `decide` in
//! scheduling cycles. It reports each tenant's long-run share against its
//! weighted max-min target, how long each tenant that starts asking took to
//! get its guarantee back, and how many jobs were preempted.
//!
//! Every job takes one GPU for a fixed time. A preempted job keeps its card
//! for the grace period (SIGTERM, then SIGKILL), then goes back to the
//! queue; the job that reclaimed the card starts then.

use std::collections::BTreeMap;

use finpool_domain::{
    Gpu, GpuAssignment, GpuClass, GpuRequest, IsolationLevel, JobId, Name, Node, Placement, Quota,
    Resources, Tenant, Timestamp,
};
use finpool_scheduler::{Policy, QueuedJob, RunningJob, Snapshot, decide};
use serde::{Deserialize, Serialize};

const GPUS_PER_NODE: u32 = 8;

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// GPUs in the pool (one class, nodes of eight).
    pub gpus: u32,
    pub duration_s: u64,
    /// Time between scheduling cycles.
    pub cycle_s: u64,
    /// SIGTERM to SIGKILL for a preempted job.
    pub grace_s: u64,
    /// How long a job runs on average (each runs between half and one and
    /// a half times this, so that jobs do not end in lockstep).
    pub job_duration_s: u64,
    /// Fair share forgets past borrowing at this half-life.
    pub half_life_s: f64,
    /// The long-run share is measured from this long after the last demand
    /// change to the end.
    #[serde(default = "default_settle")]
    pub settle_s: u64,
    pub tenants: Vec<ScenarioTenant>,
}

fn default_settle() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioTenant {
    pub name: String,
    pub weight: u32,
    pub guaranteed: u32,
    /// The most it may hold; all the pool by default.
    pub limit: Option<u32>,
    pub lending_limit: Option<u32>,
    /// From each time on, how many jobs it keeps waiting (0: idle).
    pub demand: Vec<Phase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub from_s: u64,
    pub pending: u32,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if s.gpus == 0 || !s.gpus.is_multiple_of(GPUS_PER_NODE) {
            return Err(format!(
                "gpus: must be a positive multiple of {GPUS_PER_NODE}"
            ));
        }
        if s.cycle_s == 0 || s.job_duration_s == 0 || s.duration_s == 0 {
            return Err("cycle_s, job_duration_s and duration_s must be positive".into());
        }
        if s.tenants.is_empty() {
            return Err("tenants: at least one".into());
        }
        let guaranteed: u32 = s.tenants.iter().map(|t| t.guaranteed).sum();
        if guaranteed > s.gpus {
            return Err(format!(
                "tenants: guarantees ({guaranteed}) exceed the pool ({})",
                s.gpus
            ));
        }
        for (i, t) in s.tenants.iter().enumerate() {
            Name::parse(&format!("tenants[{i}].name"), &t.name).map_err(|e| e.to_string())?;
            if t.weight == 0 {
                return Err(format!("tenants[{i}].weight: must be at least 1"));
            }
            if t.demand.is_empty() {
                return Err(format!("tenants[{i}].demand: at least one phase"));
            }
            if t.limit.is_some_and(|l| l < t.guaranteed) {
                return Err(format!("tenants[{i}].limit: below its guarantee"));
            }
        }
        Ok(s)
    }

    fn demand(&self, t: usize, at_s: u64) -> u32 {
        self.tenants[t]
            .demand
            .iter()
            .filter(|p| p.from_s <= at_s)
            .max_by_key(|p| p.from_s)
            .map_or(0, |p| p.pending)
    }

    fn limit(&self, t: usize) -> u32 {
        self.tenants[t].limit.unwrap_or(self.gpus)
    }

    /// Weighted max-min shares (GPUs) for the demand in force at `at_s`:
    /// guarantees first (up to demand), then the rest by weight, each capped
    /// by its limit and demand, with what a capped tenant cannot take
    /// poured over the others.
    pub fn targets(&self, at_s: u64) -> Vec<f64> {
        let n = self.tenants.len();
        // A tenant with any demand wants everything it may hold.
        let cap: Vec<f64> = (0..n)
            .map(|t| {
                if self.demand(t, at_s) > 0 {
                    self.limit(t) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let mut share: Vec<f64> = (0..n)
            .map(|t| (self.tenants[t].guaranteed as f64).min(cap[t]))
            .collect();
        let mut left = self.gpus as f64 - share.iter().sum::<f64>();
        loop {
            let open: Vec<usize> = (0..n).filter(|&t| share[t] + 1e-9 < cap[t]).collect();
            if open.is_empty() || left <= 1e-9 {
                return share;
            }
            let weights: f64 = open.iter().map(|&t| self.tenants[t].weight as f64).sum();
            let mut poured = 0.0;
            for &t in &open {
                let give = (left * self.tenants[t].weight as f64 / weights).min(cap[t] - share[t]);
                share[t] += give;
                poured += give;
            }
            left -= poured;
            if poured <= 1e-9 {
                return share;
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantResult {
    pub tenant: String,
    pub weight: u32,
    pub guaranteed: u32,
    /// Of the pool, over the measured window.
    pub target_share: f64,
    pub long_run_share: f64,
    /// (long-run − target) ÷ target.
    pub relative_error: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reclaim {
    pub tenant: String,
    /// When it went from idle to asking.
    pub at_s: u64,
    /// How long until it held its guarantee.
    pub took_s: u64,
    /// Whether that was within one cycle plus the grace period.
    pub within_bound: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FairnessReport {
    pub gpus: u32,
    pub duration_s: u64,
    pub cycle_s: u64,
    pub grace_s: u64,
    /// The window the long-run shares are measured over.
    pub window_s: (u64, u64),
    pub tenants: Vec<TenantResult>,
    pub reclaims: Vec<Reclaim>,
    pub preemptions: usize,
}

/// A job's runtime: spread over [0.5, 1.5) × the mean, by its number.
fn runtime(s: &Scenario, id: JobId) -> u64 {
    let spread = (id.0.as_u128() % 97) as f64 / 97.0;
    ((s.job_duration_s as f64) * (0.5 + spread))
        .round()
        .max(1.0) as u64
}

/// A scenario job: one whole GPU, number `n`, submitted at `submitted_ms`.
fn one_gpu_job(s: &Scenario, tenant: &Tenant, n: u128, submitted_ms: i64) -> QueuedJob {
    let id = JobId(uuid::Uuid::from_u128(n));
    QueuedJob {
        id,
        tenant: tenant.id.clone(),
        priority: 0,
        submitted_at: Timestamp(submitted_ms),
        resources: Resources {
            gpu: GpuRequest::Whole { count: 1 },
            gpu_classes: vec![],
            cpu_milli: 0,
            memory_mib: 0,
        },
        model: None,
        max_runtime_ms: Some(runtime(s, id) * 1000),
    }
}

struct Running {
    id: JobId,
    tenant: usize,
    card: u32,
    started_s: u64,
    ends_s: u64,
    /// Being preempted: it holds its card until this time.
    stopping_until: Option<u64>,
    displaced: Vec<JobId>,
}

pub fn run(s: &Scenario) -> FairnessReport {
    let nodes: Vec<Node> = (0..s.gpus / GPUS_PER_NODE)
        .map(|n| Node {
            name: format!("node-{n}"),
            labels: BTreeMap::new(),
            cpu_milli: 1_000_000,
            memory_mib: 1_000_000,
            gpus: (0..GPUS_PER_NODE)
                .map(|g| Gpu {
                    index: g,
                    uuid: format!("GPU-{n}-{g}"),
                    class: "GPU".into(),
                    memory_mib: 81_920,
                    mig: vec![],
                })
                .collect(),
            models: vec![],
        })
        .collect();
    let tenants: Vec<Tenant> = s
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| Tenant {
            id: Name::parse("name", &t.name).expect("checked when parsed"),
            display_name: t.name.clone(),
            quotas: [(
                "GPU".to_owned(),
                Quota {
                    guaranteed: t.guaranteed,
                    limit: s.limit(i),
                    lending_limit: t.lending_limit,
                },
            )]
            .into(),
            weight: t.weight,
            isolation: IsolationLevel::SharedWithinTenant,
            created_at: Timestamp(0),
        })
        .collect();
    let policy = Policy::finpool();
    let card_of = |node: &str, index: u32| -> u32 {
        node.trim_start_matches("node-").parse::<u32>().unwrap_or(0) * GPUS_PER_NODE + index
    };
    let assignment = |card: u32| Placement {
        node: format!("node-{}", card / GPUS_PER_NODE),
        gpus: vec![GpuAssignment {
            index: card % GPUS_PER_NODE,
            uuid: String::new(),
            class: "GPU".into(),
            milli: 1000,
            memory_mib: 81_920,
            mig_slice: None,
        }],
    };
    let n = s.tenants.len();
    let mut running: Vec<Running> = Vec::new();
    let mut queued: Vec<Vec<QueuedJob>> = vec![Vec::new(); n];
    let mut next_id = 1u128;
    let mut preemptions = 0;
    // Held GPU-seconds per tenant in the measurement window.
    let last_change = s
        .tenants
        .iter()
        .flat_map(|t| t.demand.iter().map(|p| p.from_s))
        .max()
        .unwrap_or(0);
    let window = ((last_change + s.settle_s).min(s.duration_s), s.duration_s);
    let mut held_seconds = vec![0.0f64; n];
    // Decayed average of what each tenant held above its guarantee.
    let mut recent = vec![0.0f64; n];
    let lambda = std::f64::consts::LN_2 / s.half_life_s.max(1e-3);
    let mut reclaims: Vec<Reclaim> = Vec::new();
    let mut waiting_for_guarantee: Vec<Option<u64>> = vec![None; n];
    let mut was_idle: Vec<bool> = (0..n).map(|t| s.demand(t, 0) == 0).collect();
    let mut reservation = None;
    let mut now = 0u64;
    while now < s.duration_s {
        // Jobs end; preempted jobs let go of their cards.
        running.retain(|r| match r.stopping_until {
            Some(until) => until > now,
            None => r.ends_s > now,
        });
        // Demand: each tenant keeps its current number of jobs waiting.
        for t in 0..n {
            let want = s.demand(t, now) as usize;
            if want > 0 && was_idle[t] && now > 0 {
                waiting_for_guarantee[t] = Some(now);
            }
            was_idle[t] = want == 0;
            queued[t].truncate(want);
            while queued[t].len() < want {
                queued[t].push(one_gpu_job(
                    s,
                    &tenants[t],
                    next_id,
                    now as i64 * 1000 + next_id as i64 % 1000,
                ));
                next_id += 1;
            }
        }
        let held = |t: usize, running: &[Running]| {
            running
                .iter()
                .filter(|r| r.tenant == t && r.stopping_until.is_none())
                .count()
        };
        let snapshot = Snapshot {
            now: Timestamp(now as i64 * 1000),
            classes: vec![GpuClass {
                name: "GPU".into(),
                memory_mib: 81_920,
            }],
            nodes: nodes.clone(),
            tenants: tenants.clone(),
            running: running
                .iter()
                .filter(|r| r.stopping_until.is_none())
                .map(|r| RunningJob {
                    id: r.id,
                    tenant: tenants[r.tenant].id.clone(),
                    placement: assignment(r.card),
                    cpu_milli: 0,
                    memory_mib: 0,
                    priority: 0,
                    started_at: Some(Timestamp(r.started_s as i64 * 1000)),
                    min_runtime_ms: 0,
                    max_runtime_ms: Some((r.ends_s - r.started_s) * 1000),
                    model: None,
                    displaced: r.displaced.clone(),
                })
                .collect(),
            usage: (0..n)
                .map(|t| {
                    (
                        tenants[t].id.clone(),
                        [("GPU".to_owned(), recent[t])].into(),
                    )
                })
                .collect(),
            default_max_runtime_ms: s.job_duration_s * 1000,
            reservation: reservation.clone(),
            ..Default::default()
        };
        let queue: Vec<QueuedJob> = queued.iter().flatten().cloned().collect();
        let outcome = decide(&snapshot, &queue, &policy).expect("a valid scenario");
        reservation = outcome.reservation.clone();
        for p in &outcome.preempted {
            preemptions += 1;
            if let Some(r) = running.iter_mut().find(|r| r.id == p.job) {
                r.stopping_until = Some(now + s.grace_s);
                // The preempted job goes back to its tenant's queue.
                queued[r.tenant].insert(
                    0,
                    one_gpu_job(s, &tenants[r.tenant], next_id, r.started_s as i64 * 1000),
                );
                next_id += 1;
            }
        }
        for a in &outcome.admitted {
            let Some(t) = queued.iter().position(|q| q.iter().any(|j| j.id == a.job)) else {
                continue;
            };
            queued[t].retain(|j| j.id != a.job);
            // A job reclaiming cards starts once their holders are gone.
            let start = if a.waits_for.is_empty() {
                now
            } else {
                now + s.grace_s
            };
            let card = card_of(&a.placement.node, a.placement.gpus[0].index);
            running.push(Running {
                id: a.job,
                tenant: t,
                card,
                started_s: start,
                ends_s: start + runtime(s, a.job),
                stopping_until: None,
                displaced: a.waits_for.clone(),
            });
        }
        // Advance to the next cycle, accounting holdings second by second.
        let next = (now + s.cycle_s).min(s.duration_s);
        for second in now..next {
            for (t, recent_t) in recent.iter_mut().enumerate() {
                let h = running
                    .iter()
                    .filter(|r| {
                        r.tenant == t
                            && r.started_s <= second
                            && second < r.ends_s
                            && r.stopping_until.is_none_or(|u| second < u)
                    })
                    .count() as f64;
                if second >= window.0 && second < window.1 {
                    held_seconds[t] += h;
                }
                let borrowed = (h - s.tenants[t].guaranteed as f64).max(0.0) * 1000.0;
                *recent_t = borrowed + (*recent_t - borrowed) * (-lambda).exp();
                if let Some(asked) = waiting_for_guarantee[t]
                    && h >= s.tenants[t].guaranteed as f64
                {
                    let took = second - asked;
                    reclaims.push(Reclaim {
                        tenant: s.tenants[t].name.clone(),
                        at_s: asked,
                        took_s: took,
                        within_bound: took <= s.cycle_s + s.grace_s,
                    });
                    waiting_for_guarantee[t] = None;
                }
            }
        }
        let _ = held;
        now = next;
    }
    let targets = s.targets(window.0);
    let span = (window.1 - window.0).max(1) as f64;
    FairnessReport {
        gpus: s.gpus,
        duration_s: s.duration_s,
        cycle_s: s.cycle_s,
        grace_s: s.grace_s,
        window_s: window,
        tenants: (0..n)
            .map(|t| {
                let target = targets[t] / s.gpus as f64;
                let share = held_seconds[t] / span / s.gpus as f64;
                TenantResult {
                    tenant: s.tenants[t].name.clone(),
                    weight: s.tenants[t].weight,
                    guaranteed: s.tenants[t].guaranteed,
                    target_share: target,
                    long_run_share: share,
                    relative_error: if target > 0.0 {
                        (share - target) / target
                    } else {
                        share
                    },
                }
            })
            .collect(),
        reclaims,
        preemptions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(tenants: &str) -> Scenario {
        Scenario::parse(&format!(
            "gpus = 16\nduration_s = 3600\ncycle_s = 10\ngrace_s = 20\njob_duration_s = 300\nhalf_life_s = 300\nsettle_s = 900\n{tenants}"
        ))
        .unwrap()
    }

    #[test]
    fn targets_are_weighted_max_min_over_guarantees() {
        let s = scenario(
            "[[tenants]]\nname = \"a\"\nweight = 1\nguaranteed = 4\ndemand = [{ from_s = 0, pending = 100 }]\n\
             [[tenants]]\nname = \"b\"\nweight = 3\nguaranteed = 0\ndemand = [{ from_s = 0, pending = 100 }]\n\
             [[tenants]]\nname = \"c\"\nweight = 1\nguaranteed = 0\nlimit = 1\ndemand = [{ from_s = 0, pending = 100 }]\n",
        );
        // 16 GPUs: a gets 4, c is capped at 1, the other 11 go 1:3 to a and b.
        let t = s.targets(0);
        assert!((t[2] - 1.0).abs() < 1e-9);
        assert!((t[0] - (4.0 + 11.0 / 4.0)).abs() < 1e-9, "{t:?}");
        assert!((t[1] - 33.0 / 4.0).abs() < 1e-9);
    }

    #[test]
    fn bad_scenarios_are_refused() {
        assert!(Scenario::parse("gpus = 10\nduration_s = 1\ncycle_s = 1\ngrace_s = 0\njob_duration_s = 1\nhalf_life_s = 1\ntenants = []").is_err());
        let err = Scenario::parse(
            "gpus = 8\nduration_s = 1\ncycle_s = 1\ngrace_s = 0\njob_duration_s = 1\nhalf_life_s = 1\n\
             [[tenants]]\nname = \"a\"\nweight = 1\nguaranteed = 9\ndemand = [{ from_s = 0, pending = 1 }]\n",
        )
        .unwrap_err();
        assert!(err.contains("guarantees"), "{err}");
    }

    #[test]
    fn a_small_pool_reaches_its_targets_and_reclaims_in_time() {
        let s = scenario(
            "[[tenants]]\nname = \"a\"\nweight = 1\nguaranteed = 4\ndemand = [{ from_s = 0, pending = 100 }]\n\
             [[tenants]]\nname = \"b\"\nweight = 2\nguaranteed = 2\ndemand = [{ from_s = 0, pending = 100 }]\n\
             [[tenants]]\nname = \"c\"\nweight = 1\nguaranteed = 4\ndemand = [{ from_s = 0, pending = 0 }, { from_s = 1200, pending = 100 }]\n",
        );
        let r = run(&s);
        for t in &r.tenants {
            assert!(t.relative_error.abs() < 0.05, "{t:?}");
        }
        assert_eq!(r.reclaims.len(), 1);
        assert!(r.reclaims[0].within_bound, "{:?}", r.reclaims);
        // Jobs run longer than a cycle plus the grace period: only
        // preemption could give c its guarantee back in time.
        assert!(r.preemptions > 0);
    }
}
