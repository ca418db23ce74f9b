//! `finpool simulate genai`: Alibaba's GenAI LoRA request trace
//! (cluster-trace-v2026-GenAI) replayed on a pool, to measure base-model
//! locality and fairness.
//!
//! Each request is a 1-GPU job: it arrives at `gmt_create`, runs for
//! `exec_time_seconds`, belongs to tenant `groupId` and needs base model
//! `checkpoint_model_version_id`. A card holds one resident model; starting
//! a job on a card without its model first loads it, taking a latency drawn
//! from the trace's measured load latencies. Arrival times are compressed
//! so that the offered load (work ÷ (span × GPUs)) equals the target.
//!
//! finpool runs through the shared scheduling cycle ([`SimPool`]: fair
//! share across tenants, placement scored with model locality, waits for
//! warm cards bounded by the model's load time); the baseline is
//! first-come, first-served onto the least-loaded node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::Read;
use std::time::Instant;

use std::sync::Arc;

use finpool_domain::{
    BaseModel, GpuRequest, Inventory, IsolationLevel, JobId, Name, Quota, Resources, Tenant,
    Timestamp,
};
use finpool_scheduler::{BorrowOrder, CycleConfig, Policy, QueuedJob};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::openb::TraceError;
use crate::pool::SimPool;
use crate::trace_csv::{field_error, non_negative, reader, rows};

/// One inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Seconds since the Unix epoch (the trace's times, read as UTC).
    pub arrival_s: f64,
    pub duration_ms: u64,
    pub tenant: String,
    /// None for the few requests that name no base model.
    pub model: Option<String>,
}

/// "2024-11-15 16:57:50" as seconds since the epoch (UTC).
fn parse_time(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<f64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

pub fn read_requests(file: &str, input: impl Read) -> Result<Vec<Request>, TraceError> {
    let (mut r, cols) = reader(file, input)?;
    let (at, exec, group, model) = (
        cols.index("gmt_create")?,
        cols.index("exec_time_seconds")?,
        cols.index("groupId")?,
        cols.index("checkpoint_model_version_id")?,
    );
    let mut out = Vec::new();
    for row in rows(file, &mut r) {
        let (line, record) = row?;
        let arrival_s = parse_time(&record[at]).ok_or_else(|| {
            field_error(
                file,
                line,
                "gmt_create",
                format!("{:?} is not a time", &record[at]),
            )
        })?;
        let seconds = non_negative(file, line, "exec_time_seconds", &record[exec], "a duration")?;
        out.push(Request {
            arrival_s,
            duration_ms: (seconds * 1000.0).round() as u64,
            tenant: record[group].to_owned(),
            model: Some(record[model].trim().to_owned()).filter(|m| !m.is_empty()),
        });
    }
    Ok(out)
}

/// Model load latencies (the `value` column, milliseconds).
pub fn read_latencies(file: &str, input: impl Read) -> Result<Vec<u64>, TraceError> {
    let (mut r, cols) = reader(file, input)?;
    let value = cols.index("value")?;
    let mut out = Vec::new();
    for row in rows(file, &mut r) {
        let (line, record) = row?;
        let ms = non_negative(file, line, "value", &record[value], "a latency")?;
        out.push(ms.round() as u64);
    }
    if out.is_empty() {
        return Err(TraceError::Format {
            file: file.into(),
            reason: "no latencies".into(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenaiPolicy {
    Finpool,
    LeastLoaded,
}

impl GenaiPolicy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Finpool => "finpool",
            Self::LeastLoaded => "least-loaded",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Finpool, Self::LeastLoaded]
            .into_iter()
            .find(|p| p.name() == value)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GenaiReport {
    pub policy: String,
    pub load: f64,
    pub requests: usize,
    pub gpus: usize,
    pub model_loads: u64,
    pub wait_p50_s: f64,
    pub wait_p95_s: f64,
    pub wait_p99_s: f64,
    pub mean_wait_s: f64,
    /// Work executed ÷ (GPUs × time from the first arrival to the last end).
    pub utilization: f64,
    /// The worst tenant's mean slowdown ÷ the median tenant's.
    pub tenant_fairness: f64,
    /// The median tenant's mean slowdown.
    pub median_tenant_slowdown: f64,
    /// The tenant with the worst mean slowdown, its requests and that
    /// slowdown (what the fairness figure is made of).
    pub worst_tenant: Option<WorstTenant>,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorstTenant {
    pub tenant: String,
    pub requests: u32,
    pub mean_slowdown: f64,
    pub mean_wait_s: f64,
    pub mean_run_s: f64,
}

struct Card {
    node: String,
    index: u32,
    busy_until: i64,
    resident: Option<u32>,
}

struct Job {
    arrival: i64,
    duration: i64,
    tenant: u32,
    model: Option<u32>,
    start: Option<i64>,
}

/// Slowdown is (wait + run) ÷ run, with runs shorter than this counted as
/// this long, so that a sub-second job waiting a second is not "3×
/// slower" (the usual bounded-slowdown floor).
const SLOWDOWN_FLOOR_MS: f64 = 1000.0;

/// One replay's knobs.
#[derive(Debug, Clone, Copy)]
pub struct GenaiSettings {
    /// Offered load: total work ÷ (span × GPUs) after compressing time.
    pub load: f64,
    pub seed: u64,
    /// finpool's fair-share half-life (the platform default unless set).
    pub fair_share_half_life_s: f64,
    /// finpool's order among borrowing jobs of tenants with equal share.
    pub borrow_order: BorrowOrder,
}

/// Replays `requests` on `inventory` (every card runs one job at a time).
pub fn run(
    inventory: &Inventory,
    requests: &[Request],
    latencies: &[u64],
    policy: GenaiPolicy,
    settings: &GenaiSettings,
) -> GenaiReport {
    run_observed(
        inventory,
        requests,
        latencies,
        policy,
        settings,
        &mut |_, _| {},
    )
}

/// Progress is reported at most this many times a replay.
pub const PROGRESS_STEPS: u64 = 200;

/// [`run`], reporting (requests arrived, requests) to `progress`, at most
/// [`PROGRESS_STEPS`] times and once when every request has arrived.
pub fn run_observed(
    inventory: &Inventory,
    requests: &[Request],
    latencies: &[u64],
    policy: GenaiPolicy,
    settings: &GenaiSettings,
    progress: &mut dyn FnMut(u64, u64),
) -> GenaiReport {
    let GenaiSettings {
        load,
        seed,
        fair_share_half_life_s,
        borrow_order,
    } = *settings;
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cards: Vec<Card> = inventory
        .nodes
        .iter()
        .flat_map(|n| {
            n.gpus.iter().map(|g| Card {
                node: n.name.clone(),
                index: g.index,
                busy_until: 0,
                resident: None,
            })
        })
        .collect();
    let gpus = cards.len().max(1);
    // Interned tenants and models, in order of appearance.
    let mut tenant_ids: HashMap<&str, u32> = HashMap::new();
    let mut model_ids: HashMap<&str, u32> = HashMap::new();
    let mut sorted: Vec<&Request> = requests.iter().collect();
    sorted.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    let first = sorted.first().map_or(0.0, |r| r.arrival_s);
    let span = sorted.last().map_or(1.0, |r| r.arrival_s) - first;
    let work: f64 = sorted.iter().map(|r| r.duration_ms as f64 / 1000.0).sum();
    // Compress arrivals so that work ÷ (span × GPUs) = load.
    let scale = if span > 0.0 {
        work / (gpus as f64 * load) / span
    } else {
        1.0
    };
    let mut jobs: Vec<Job> = sorted
        .iter()
        .map(|r| {
            let n = tenant_ids.len() as u32;
            let tenant = *tenant_ids.entry(r.tenant.as_str()).or_insert(n);
            let n = model_ids.len() as u32;
            let model = r.model.as_deref().map(|m| *model_ids.entry(m).or_insert(n));
            Job {
                arrival: ((r.arrival_s - first) * scale * 1000.0).round() as i64,
                duration: r.duration_ms as i64,
                tenant,
                model,
                start: None,
            }
        })
        .collect();
    let model_names: Vec<String> = {
        let mut v: Vec<(&str, u32)> = model_ids.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|x| x.1);
        v.into_iter().map(|(k, _)| model_name(k)).collect()
    };
    let tenant_names: Vec<String> = {
        let mut v: Vec<(&str, u32)> = tenant_ids.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|x| x.1);
        v.into_iter().map(|(k, _)| model_name(k)).collect()
    };
    let pool = (policy == GenaiPolicy::Finpool).then(|| {
        finpool_pool(
            inventory,
            &tenant_names,
            &model_names,
            latencies,
            fair_share_half_life_s,
            borrow_order,
        )
    });
    let mut state = Sim {
        cards: &mut cards,
        jobs: &mut jobs,
        latencies,
        loads: 0,
        running: Vec::new(),
        queue: Vec::new(),
        tenant_names: &tenant_names,
        model_names: &model_names,
        pool,
    };
    // Events: arrivals (by index) and ends (by time), in time order.
    let mut ends: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    let mut next_arrival = 0;
    let total = state.jobs.len() as u64;
    let step = total.div_ceil(PROGRESS_STEPS).max(1);
    let mut reported = 0u64;
    loop {
        let arrival_at = state.jobs.get(next_arrival).map(|j| j.arrival);
        let end_at = ends.peek().map(|Reverse((t, _))| *t);
        let now = match (arrival_at, end_at) {
            (None, None) => break,
            (Some(a), Some(e)) => a.min(e),
            (Some(a), None) => a,
            (None, Some(e)) => e,
        };
        while let Some(Reverse((t, job))) = ends.peek().copied() {
            if t > now {
                break;
            }
            ends.pop();
            state.finish(job, t);
        }
        while next_arrival < state.jobs.len() && state.jobs[next_arrival].arrival <= now {
            state.arrive(next_arrival);
            next_arrival += 1;
        }
        let arrived = next_arrival as u64;
        if arrived > reported && (arrived >= reported + step || arrived == total) {
            progress(arrived, total);
            reported = arrived;
        }
        for (job, end) in state.schedule(now, policy, &mut rng) {
            ends.push(Reverse((end, job)));
        }
    }
    state.report(policy, load, gpus, started.elapsed().as_secs_f64())
}

/// Base-model and tenant names as finpool names (lowercase labels).
fn model_name(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// finpool's pool for the replay: every tenant may use every card (no
/// guarantees, so fair share alone orders them), and every model's load
/// time is the trace's median measured load latency, as an operator who
/// measured it would register.
fn finpool_pool(
    inventory: &Inventory,
    tenant_names: &[String],
    model_names: &[String],
    latencies: &[u64],
    half_life_s: f64,
    borrow_order: BorrowOrder,
) -> SimPool {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    let all_gpus = inventory.gpu_count() as u32;
    let name = |s: &str| Name::parse("name", s).expect("trace ids are valid names");
    let config = CycleConfig {
        fair_share_half_life_ms: (half_life_s * 1000.0).round() as u64,
        explain_limit: 0,
        borrow_order,
        ..CycleConfig::default()
    };
    let pool = SimPool::new(config, Policy::finpool(), Arc::new(inventory.clone()));
    {
        let mut state = pool.state();
        state.set_tenants(
            tenant_names
                .iter()
                .map(|t| Tenant {
                    id: name(t),
                    display_name: String::new(),
                    quotas: inventory
                        .classes
                        .iter()
                        .map(|c| {
                            (
                                c.name.clone(),
                                Quota {
                                    guaranteed: 0,
                                    limit: all_gpus,
                                    lending_limit: None,
                                },
                            )
                        })
                        .collect(),
                    weight: 1,
                    isolation: IsolationLevel::SharedWithinTenant,
                    created_at: Timestamp(0),
                    suspended: None,
                })
                .collect(),
        );
        state.models = model_names
            .iter()
            .map(|m| BaseModel {
                name: name(m),
                size_mib: 1,
                min_gpu_memory_mib: 0,
                load_time_ms: Some(median),
                registered_at: Timestamp(0),
            })
            .collect();
    }
    pool
}

struct Sim<'a> {
    cards: &'a mut [Card],
    jobs: &'a mut [Job],
    latencies: &'a [u64],
    loads: u64,
    /// (job, card) running or loading.
    running: Vec<(usize, usize)>,
    queue: Vec<usize>,
    tenant_names: &'a [String],
    model_names: &'a [String],
    /// finpool's scheduler, when it is the policy replayed.
    pool: Option<SimPool>,
}

fn job_id(j: usize) -> JobId {
    JobId(uuid::Uuid::from_u128(j as u128 + 1))
}

impl Sim<'_> {
    fn arrive(&mut self, job: usize) {
        self.queue.push(job);
        if let Some(pool) = &self.pool {
            let j = &self.jobs[job];
            let name = |s: &str| Name::parse("name", s).expect("trace ids are valid names");
            pool.submit(QueuedJob {
                id: job_id(job),
                tenant: name(&self.tenant_names[j.tenant as usize]),
                priority: 0,
                submitted_at: Timestamp(j.arrival),
                resources: Resources {
                    gpu: GpuRequest::Whole { count: 1 },
                    gpu_classes: vec![],
                    cpu_milli: 0,
                    memory_mib: 0,
                },
                model: j.model.map(|m| name(&self.model_names[m as usize])),
                max_runtime_ms: Some(j.duration as u64),
            });
        }
    }

    fn finish(&mut self, job: usize, _now: i64) {
        if let Some(i) = self.running.iter().position(|(j, _)| *j == job) {
            self.running.swap_remove(i);
            if let Some(pool) = &self.pool {
                pool.finish(job_id(job));
            }
        }
    }

    /// Starts what can start now; returns (job, end time) for each.
    fn schedule(
        &mut self,
        now: i64,
        policy: GenaiPolicy,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, i64)> {
        if self.queue.is_empty() || self.running.len() == self.cards.len() {
            return Vec::new();
        }
        let chosen: Vec<(usize, usize)> = match policy {
            GenaiPolicy::LeastLoaded => self.least_loaded(),
            GenaiPolicy::Finpool => self.finpool(now),
        };
        let mut started = Vec::with_capacity(chosen.len());
        for (job, card) in chosen {
            let model = self.jobs[job].model;
            let load = match model {
                Some(m) if self.cards[card].resident != Some(m) => {
                    self.loads += 1;
                    self.latencies[rng.random_range(0..self.latencies.len())] as i64
                }
                _ => 0,
            };
            let end = now + load + self.jobs[job].duration;
            if model.is_some() {
                self.cards[card].resident = model;
            }
            self.cards[card].busy_until = end;
            self.jobs[job].start = Some(now + load);
            self.running.push((job, card));
            self.queue.retain(|j| *j != job);
            started.push((job, end));
        }
        started
    }

    fn free_cards(&self) -> Vec<usize> {
        let busy: std::collections::HashSet<usize> = self.running.iter().map(|(_, c)| *c).collect();
        (0..self.cards.len())
            .filter(|c| !busy.contains(c))
            .collect()
    }

    /// First come, first served, onto the node with the most free cards.
    fn least_loaded(&mut self) -> Vec<(usize, usize)> {
        let mut free = self.free_cards();
        let mut out = Vec::new();
        for &job in &self.queue {
            if free.is_empty() {
                break;
            }
            let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
            for &c in &free {
                *per_node.entry(self.cards[c].node.as_str()).or_default() += 1;
            }
            let best = free
                .iter()
                .enumerate()
                .max_by_key(|(_, c)| (per_node[self.cards[**c].node.as_str()], Reverse(**c)))
                .map(|(i, _)| i)
                .expect("free is not empty");
            out.push((job, free.swap_remove(best)));
        }
        out
    }

    /// The real scheduler: one cycle of the shared shell; the jobs it
    /// started, on their cards.
    fn finpool(&mut self, now: i64) -> Vec<(usize, usize)> {
        let card_of: HashMap<(&str, u32), usize> = self
            .cards
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.node.as_str(), c.index), i))
            .collect();
        let pool = self.pool.as_mut().expect("finpool runs with its pool");
        pool.cycle(Timestamp(now));
        let mut state = pool.state();
        let started = std::mem::take(&mut state.started);
        started
            .into_iter()
            .filter_map(|id| {
                let held = state.held.get(&id)?;
                let g = held.placement.gpus.first()?;
                let job = id.0.as_u128() as usize - 1;
                Some((job, card_of[&(held.placement.node.as_str(), g.index)]))
            })
            .collect()
    }

    fn report(
        &self,
        policy: GenaiPolicy,
        load: f64,
        gpus: usize,
        wall_seconds: f64,
    ) -> GenaiReport {
        let mut waits: Vec<f64> = self
            .jobs
            .iter()
            .filter_map(|j| j.start.map(|s| (s - j.arrival) as f64 / 1000.0))
            .collect();
        waits.sort_by(f64::total_cmp);
        let at = |q: f64| {
            waits
                .get(((waits.len() as f64 * q) as usize).min(waits.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        let first = self.jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
        let last = self
            .jobs
            .iter()
            .filter_map(|j| j.start.map(|s| s + j.duration))
            .max()
            .unwrap_or(first);
        let work: f64 = self.jobs.iter().map(|j| j.duration as f64).sum();
        // Per tenant: (sum of slowdowns, requests, sum of waits, sum of runs).
        let mut slowdown: BTreeMap<u32, (f64, u32, f64, f64)> = BTreeMap::new();
        for j in self.jobs.iter() {
            if let Some(s) = j.start {
                let d = (j.duration as f64).max(SLOWDOWN_FLOOR_MS);
                let e = slowdown.entry(j.tenant).or_default();
                e.0 += ((s - j.arrival) as f64 + d) / d;
                e.1 += 1;
                e.2 += (s - j.arrival) as f64 / 1000.0;
                e.3 += j.duration as f64 / 1000.0;
            }
        }
        let mut means: Vec<(f64, u32)> = slowdown
            .iter()
            .map(|(t, (sum, n, _, _))| (sum / *n as f64, *t))
            .collect();
        means.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let median = means.get(means.len() / 2).map_or(1.0, |m| m.0);
        let worst_tenant = means.last().map(|&(mean, t)| {
            let (_, n, wait, run) = slowdown[&t];
            WorstTenant {
                tenant: self.tenant_names[t as usize].clone(),
                requests: n,
                mean_slowdown: mean,
                mean_wait_s: wait / f64::from(n),
                mean_run_s: run / f64::from(n),
            }
        });
        GenaiReport {
            policy: policy.name().to_owned(),
            load,
            requests: self.jobs.len(),
            gpus,
            model_loads: self.loads,
            wait_p50_s: at(0.50),
            wait_p95_s: at(0.95),
            wait_p99_s: at(0.99),
            mean_wait_s: if waits.is_empty() {
                0.0
            } else {
                waits.iter().sum::<f64>() / waits.len() as f64
            },
            utilization: if last > first {
                work / (gpus as f64 * (last - first) as f64)
            } else {
                0.0
            },
            tenant_fairness: means.last().map_or(1.0, |m| m.0) / median,
            median_tenant_slowdown: median,
            worst_tenant,
            wall_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_times_are_utc_seconds() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0.0));
        assert_eq!(parse_time("2024-11-15 16:57:50"), Some(1_731_689_870.0));
        assert_eq!(parse_time("2024-13-01 00:00:00"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn bad_rows_name_their_line_and_field() {
        let csv = "gmt_create,exec_time_seconds,groupId,checkpoint_model_version_id\n2024-11-15 16:57:50,abc,G1,M1\n";
        let err = read_requests("r.csv", csv.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r.csv line 2: exec_time_seconds: \"abc\" is not a duration"
        );
    }
}

#[cfg(test)]
mod locality_tests {
    use super::*;

    fn request(at_s: f64, duration_ms: u64, tenant: &str, model: &str) -> Request {
        Request {
            arrival_s: at_s,
            duration_ms,
            tenant: tenant.into(),
            model: Some(model.into()),
        }
    }

    /// A burst of 400 requests on model m-a holds both cards busy for
    /// about 1000 s; one 1 s request on m-b (on no card) comes right
    /// after. It is passed over while the burst's jobs take each card that
    /// frees, but only for about its model's load time: then it loads. (It
    /// used to wait for the whole burst, the worst slowdown of the run.)
    #[test]
    fn a_job_whose_model_is_on_no_card_waits_about_one_load_in_a_busy_pool() {
        let mut requests: Vec<Request> = (0..400)
            .map(|_| request(0.0, 5_000, "busy", "m-a"))
            .collect();
        requests.push(request(1.0, 1_000, "lone", "m-b"));
        // Spreads the span, so that compression keeps the burst a burst.
        requests.push(request(100_000.0, 5_000, "busy", "m-a"));
        let settings = GenaiSettings {
            load: 0.9,
            seed: 1,
            fair_share_half_life_s: 3600.0,
            borrow_order: BorrowOrder::ResponseRatio,
        };
        let report = run(
            &crate::bench::pool(1, 2),
            &requests,
            &[10_000],
            GenaiPolicy::Finpool,
            &settings,
        );
        let worst = report.worst_tenant.expect("jobs ran");
        // busy waits ~500 s on 5 s jobs (slowdown ~100); lone, passed
        // over for one 10 s load time, waits well under 100 s on 1 s.
        assert_eq!(worst.tenant, "busy", "lone waited: {worst:?}");
    }
}
