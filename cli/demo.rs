//! `finpool demo`: a throwaway pool, three brokerages with different quotas
//! and one base model, a burst of small real jobs from each, and a summary
//! of where they ran, how long they waited and how much quota they used.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use finpool_api::{Role, SigningKey};
use finpool_domain::Name;
use finpool_proto::v1 as pb;
use finpool_standalone::StandaloneConfig;
use tokio_stream::StreamExt;

use crate::args::{DemoArgs, Output};
use crate::client::Clients;
use crate::{output, progress};

/// The narrative: on stdout, or on stderr when stdout carries the
/// document (`-o json|yaml`).
macro_rules! say {
    ($doc:expr, $($arg:tt)*) => {
        if $doc { eprintln!($($arg)*) } else { println!($($arg)*) }
    };
}

/// The longest the demo waits for its jobs.
const DEADLINE: Duration = Duration::from_secs(50);

/// One brokerage in the demo: quotas per class (guaranteed, limit) and its jobs.
struct Brokerage {
    id: &'static str,
    name: &'static str,
    weight: i64,
    isolation: pb::IsolationLevel,
    /// (class index in the inventory, guaranteed, limit)
    quotas: &'static [(usize, i64, i64)],
    /// (job name, request, class index, seconds of work)
    jobs: &'static [(&'static str, Request, Option<usize>, f32)],
}

#[derive(Clone, Copy)]
enum Request {
    Gpus(i64),
    Share(i64),
}

const BROKERAGES: &[Brokerage] = &[
    Brokerage {
        id: "alpha-securities",
        name: "Alpha Securities",
        weight: 2,
        isolation: pb::IsolationLevel::SharedWithinTenant,
        quotas: &[(0, 4, 6)],
        jobs: &[
            ("risk-var-1", Request::Gpus(1), Some(0), 3.0),
            ("risk-var-2", Request::Gpus(1), Some(0), 3.0),
            ("risk-var-3", Request::Gpus(1), Some(0), 3.0),
            ("risk-var-4", Request::Gpus(1), Some(0), 3.0),
            ("kyc-extract", Request::Gpus(2), Some(0), 4.0),
            ("research-summary", Request::Gpus(2), Some(0), 4.0),
            ("news-sentiment", Request::Share(500), Some(0), 2.0),
            ("news-sentiment-2", Request::Share(500), Some(0), 2.0),
        ],
    },
    Brokerage {
        id: "beacon-capital",
        name: "Beacon Capital",
        weight: 1,
        isolation: pb::IsolationLevel::SharedWithinTenant,
        quotas: &[(0, 2, 4), (1, 2, 3)],
        jobs: &[
            ("chat-advisor", Request::Share(250), None, 2.0),
            ("chat-advisor-2", Request::Share(250), None, 2.0),
            ("chat-advisor-3", Request::Share(500), None, 2.0),
            ("doc-classify", Request::Gpus(1), Some(1), 3.0),
            ("doc-classify-2", Request::Gpus(1), Some(1), 3.0),
            ("fraud-scan", Request::Gpus(2), Some(0), 4.0),
            ("fraud-scan-2", Request::Gpus(2), Some(0), 4.0),
        ],
    },
    Brokerage {
        id: "cedar-brokerage",
        name: "Cedar Brokerage",
        weight: 1,
        isolation: pb::IsolationLevel::Exclusive,
        quotas: &[(1, 1, 2)],
        jobs: &[
            ("filing-qa", Request::Gpus(1), Some(1), 2.0),
            ("filing-qa-2", Request::Gpus(1), Some(1), 2.0),
            ("filing-qa-3", Request::Gpus(1), Some(1), 2.0),
            ("earnings-call", Request::Gpus(2), Some(1), 3.0),
        ],
    },
];

const MODEL: &str = "qwen2-7b-instruct";
/// The demo model's registered load time: how long a job may hold out for
/// a card that already holds it.
const MODEL_LOAD: Duration = Duration::from_secs(4);

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut config = StandaloneConfig::new(&data_dir, "127.0.0.1:0".parse()?);
    config.pool_file = args.pool.clone();
    config.stop_grace = Duration::from_secs(2);
    config.sandbox.mode = args.sandbox;
    let pool = finpool_standalone::start(config)
        .await
        .context("starting the demo pool")?;
    let result = drive(&pool, &data_dir, args.out.output).await;
    pool.shutdown().await;
    result
}

async fn drive(
    pool: &finpool_standalone::RunningPool,
    data_dir: &std::path::Path,
    out: Output,
) -> anyhow::Result<()> {
    let doc = out.is_document();
    let classes: Vec<String> = pool
        .inventory
        .classes
        .iter()
        .map(|c| c.name.clone())
        .collect();
    say!(
        doc,
        "finpool demo: a pool of {} nodes and {} GPUs ({}) from {}, listening on {}",
        pool.inventory.nodes.len(),
        pool.inventory.gpu_count(),
        classes.join(", "),
        pool.origin,
        pool.addr
    );
    say!(doc, "job sandbox: {}", pool.sandbox);
    let class = |i: usize| class_name(&classes, i);
    let key = SigningKey::load(data_dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let ttl = Duration::from_secs(3600);
    let addr = format!("http://{}", pool.addr);
    let operator_token = key.issue("demo-operator", Role::Operator, None, ttl, now)?;
    let mut operator = Clients::connect(&addr, Some(&operator_token)).await?;

    operator
        .models
        .register_model(pb::RegisterModelRequest {
            name: MODEL.into(),
            size_mib: 15_360,
            min_gpu_memory_mib: 20_480,
            load_time_ms: MODEL_LOAD.as_millis() as i64,
        })
        .await?;
    let mut submitted: Vec<(String, String)> = Vec::new(); // (tenant, job id)
    let mut clients = HashMap::new();
    for b in BROKERAGES {
        let mut quotas = HashMap::new();
        for (i, g, l) in b.quotas {
            let q = quotas.entry(class(*i)).or_insert(pb::Quota::default());
            q.guaranteed += g;
            q.limit += l;
        }
        let tenant = operator
            .tenants
            .create_tenant(pb::CreateTenantRequest {
                id: b.id.into(),
                display_name: b.name.into(),
                quotas,
                weight: b.weight,
                isolation: b.isolation as i32,
            })
            .await?
            .into_inner();
        let mut q: Vec<String> = tenant
            .quotas
            .iter()
            .map(|(c, q)| format!("{c} {}..{}", q.guaranteed, q.limit))
            .collect();
        q.sort();
        say!(doc, "  brokerage {:<18} quota {}", b.id, q.join(", "));
        let token = key.issue(
            b.id,
            Role::Tenant,
            Some(&Name::parse("tenant", b.id)?),
            ttl,
            now,
        )?;
        clients.insert(b.id, Clients::connect(&addr, Some(&token)).await?);
    }
    say!(
        doc,
        "  base model {MODEL} registered; submitting {} jobs…\n",
        BROKERAGES.iter().map(|b| b.jobs.len()).sum::<usize>()
    );

    // Every brokerage submits its whole burst at once.
    for b in BROKERAGES {
        let c = clients.get_mut(b.id).expect("client per brokerage");
        for (name, request, class_index, seconds) in b.jobs {
            let gpu = match request {
                Request::Gpus(n) => pb::gpu_request::Kind::WholeGpus(*n),
                Request::Share(m) => pb::gpu_request::Kind::Share(pb::GpuShare {
                    milli: *m,
                    memory_mib: 8_192,
                }),
            };
            let script = format!(
                "echo \"tenant=$FINPOOL_TENANT_ID node=$FINPOOL_NODE gpus=$CUDA_VISIBLE_DEVICES \
                 milli=${{FINPOOL_GPU_MILLI:-1000}} model=$(basename \"$FINPOOL_MODEL_PATH\")\"; sleep {seconds}"
            );
            let spec = pb::JobSpec {
                name: (*name).into(),
                model: MODEL.into(),
                command: vec!["sh".into(), "-c".into(), script],
                resources: Some(pb::Resources {
                    gpu: Some(pb::GpuRequest { kind: Some(gpu) }),
                    gpu_classes: class_index.map(|i| vec![class(i)]).unwrap_or_default(),
                    cpu_milli: 1000,
                    memory_mib: 2048,
                }),
                max_runtime: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                idempotency_key: format!("demo-{name}"),
                ..Default::default()
            };
            let job = c
                .jobs
                .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
                .await
                .with_context(|| format!("{} submitting {name}", b.id))?
                .into_inner()
                .job
                .context("no job returned")?;
            submitted.push((b.id.to_owned(), job.id));
        }
    }

    // Follow until every job has ended.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let bar = progress::bar(submitted.len() as u64, "jobs ended");
    let jobs = loop {
        let mut jobs = Vec::new();
        for (tenant, id) in &submitted {
            let c = clients.get_mut(tenant.as_str()).expect("client");
            jobs.push(
                c.jobs
                    .get_job(pb::GetJobRequest { id: id.clone() })
                    .await?
                    .into_inner(),
            );
        }
        let done = jobs.iter().filter(|j| is_terminal(j.state)).count();
        bar.set_position(done as u64);
        if done == jobs.len() {
            bar.finish_and_clear();
            break jobs;
        }
        if tokio::time::Instant::now() > deadline {
            bar.finish_and_clear();
            anyhow::bail!(
                "only {done} of {} jobs finished within {DEADLINE:?}",
                jobs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // What each job printed, to show the GPUs it saw.
    let mut printed = HashMap::new();
    for job in &jobs {
        let c = clients.get_mut(job.tenant_id.as_str()).expect("client");
        let mut stream = c
            .jobs
            .stream_logs(pb::StreamLogsRequest {
                id: job.id.clone(),
                follow: false,
            })
            .await?
            .into_inner();
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend(chunk?.data);
        }
        let text = String::from_utf8_lossy(&text);
        let gpus = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("gpus="))
            .unwrap_or("")
            .to_owned();
        printed.insert(job.id.clone(), gpus);
    }

    print_jobs(doc, &jobs, &printed);
    print_quota_use(doc, &jobs, &mut operator, &classes).await?;
    let utilization = utilization(&jobs, pool.inventory.gpu_count());
    let (worst_job, worst_wait) = worst_idle_wait(&jobs, &pool.inventory, &classes);
    // A cycle runs on every job event and at least this often.
    let bound = MODEL_LOAD + finpool_standalone::driver::IDLE_TICK;
    say!(
        doc,
        "\nGPU utilization over the demo: {:.0}% of {} GPUs from the first submit to the last end",
        utilization * 100.0,
        pool.inventory.gpu_count()
    );
    say!(
        doc,
        "longest wait while a card the job could use was idle: {} ({}); the bound is the model's \
         load time plus one cycle, {}",
        output::duration_ms(worst_wait as i64),
        worst_job,
        output::duration_ms(bound.as_millis() as i64),
    );
    let shared = shared_cards(&jobs);
    let all_ok = jobs
        .iter()
        .all(|j| j.state == pb::JobState::Succeeded as i32);
    say!(
        doc,
        "\nisolation: {}",
        if shared.is_empty() {
            "no GPU was ever shared by two tenants at the same time".to_owned()
        } else {
            format!("VIOLATED on {shared:?}")
        }
    );
    say!(
        doc,
        "result: {} of {} jobs succeeded across {} brokerages",
        jobs.iter()
            .filter(|j| j.state == pb::JobState::Succeeded as i32)
            .count(),
        jobs.len(),
        BROKERAGES.len()
    );
    if doc {
        let document = serde_json::json!({
            "jobs": jobs.iter().map(finpool_proto::to_json).collect::<Vec<_>>(),
            "succeeded": jobs
                .iter()
                .filter(|j| j.state == pb::JobState::Succeeded as i32)
                .count(),
            "brokerages": BROKERAGES.len(),
            "gpus": pool.inventory.gpu_count(),
            "gpu_utilization": utilization,
            "longest_idle_wait_ms": worst_wait,
            "longest_idle_wait_job": worst_job,
            "idle_wait_bound_ms": bound.as_millis() as u64,
            "isolation_violations": shared
                .iter()
                .map(|(node, gpu)| serde_json::json!({"node": node, "gpu": gpu}))
                .collect::<Vec<_>>(),
        });
        println!("{}", output::render(out, &document));
    }
    if !all_ok || !shared.is_empty() {
        anyhow::bail!("the demo did not complete cleanly");
    }
    if worst_wait > bound.as_millis() as u64 {
        anyhow::bail!(
            "{worst_job} waited {worst_wait} ms with a usable card idle, over the {} ms bound",
            bound.as_millis()
        );
    }
    Ok(())
}

/// The pool's `i`-th GPU class, or its last when it has fewer (a pool file
/// with one class runs the demo too).
fn class_name(classes: &[String], i: usize) -> String {
    classes
        .get(i)
        .or(classes.last())
        .cloned()
        .unwrap_or_default()
}

fn is_terminal(state: i32) -> bool {
    [
        pb::JobState::Succeeded,
        pb::JobState::Failed,
        pb::JobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

fn print_jobs(doc: bool, jobs: &[pb::Job], printed: &HashMap<String, String>) {
    let rows = jobs
        .iter()
        .map(|j| {
            let created = output::millis(&j.created_at).unwrap_or(0);
            let started = output::millis(&j.started_at).unwrap_or(created);
            let finished = output::millis(&j.finished_at).unwrap_or(started);
            vec![
                j.tenant_id.clone(),
                j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                output::request(&j.spec),
                output::placement(&j.placement),
                printed.get(&j.id).cloned().unwrap_or_default(),
                output::duration_ms(started - created),
                output::duration_ms(finished - started),
                output::state(j.state),
            ]
        })
        .collect();
    say!(
        doc,
        "{}",
        output::table(
            &[
                "TENANT",
                "JOB",
                "ASKED",
                "RAN ON (node: GPUs)",
                "JOB SAW CUDA_VISIBLE_DEVICES",
                "WAITED",
                "RAN",
                "STATE"
            ],
            rows
        )
    );
}

/// Per tenant: jobs, the most cards held at once per class against the
/// quota, and metered GPU time.
async fn print_quota_use(
    doc: bool,
    jobs: &[pb::Job],
    operator: &mut Clients,
    classes: &[String],
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for b in BROKERAGES {
        let tenant = operator
            .tenants
            .get_tenant(pb::GetTenantRequest { id: b.id.into() })
            .await?
            .into_inner();
        let usage = operator
            .usage
            .get_usage(pb::GetUsageRequest {
                tenant_id: b.id.into(),
            })
            .await?
            .into_inner();
        let mine: Vec<&pb::Job> = jobs.iter().filter(|j| j.tenant_id == b.id).collect();
        let ok = mine
            .iter()
            .filter(|j| j.state == pb::JobState::Succeeded as i32)
            .count();
        for class in classes {
            let Some(quota) = tenant.quotas.get(class) else {
                continue;
            };
            let gpu_seconds = usage
                .classes
                .iter()
                .find(|c| &c.gpu_class == class)
                .map_or(0, |c| c.gpu_milli_seconds);
            rows.push(vec![
                b.id.to_owned(),
                format!("{ok}/{}", mine.len()),
                class.clone(),
                format!("{} / {}", quota.guaranteed, quota.limit),
                peak_cards(&mine, class).to_string(),
                format!("{:.1}", gpu_seconds as f64 / 1000.0),
            ]);
        }
    }
    say!(doc, "\nquota use per tenant");
    say!(
        doc,
        "{}",
        output::table(
            &[
                "TENANT",
                "SUCCEEDED",
                "CLASS",
                "GUARANTEED / LIMIT",
                "PEAK GPUS HELD",
                "GPU-SECONDS"
            ],
            rows
        )
    );
    Ok(())
}

/// One card held by one job, from its start to its end.
struct CardSpan {
    start: i64,
    end: i64,
    card: (String, u32),
    class: String,
    tenant: String,
}

fn spans(jobs: &[&pb::Job]) -> Vec<CardSpan> {
    let mut out = Vec::new();
    for j in jobs {
        let (Some(start), Some(end), Some(p)) = (
            output::millis(&j.started_at),
            output::millis(&j.finished_at),
            &j.placement,
        ) else {
            continue;
        };
        for g in &p.gpus {
            out.push(CardSpan {
                start,
                end,
                card: (p.node.clone(), g.index),
                class: g.gpu_class.clone(),
                tenant: j.tenant_id.clone(),
            });
        }
    }
    out
}

/// The most distinct cards of `class` held at once.
fn peak_cards(jobs: &[&pb::Job], class: &str) -> usize {
    let spans: Vec<CardSpan> = spans(jobs)
        .into_iter()
        .filter(|s| s.class == class)
        .collect();
    spans
        .iter()
        .map(|at| {
            spans
                .iter()
                .filter(|s| s.start <= at.start && at.start < s.end)
                .map(|s| &s.card)
                .collect::<BTreeSet<_>>()
                .len()
        })
        .max()
        .unwrap_or(0)
}

/// Cards that two tenants held at overlapping times (should be none).
fn shared_cards(jobs: &[pb::Job]) -> Vec<(String, u32)> {
    let all: Vec<&pb::Job> = jobs.iter().collect();
    let mut by_card: BTreeMap<(String, u32), Vec<CardSpan>> = BTreeMap::new();
    for s in spans(&all) {
        by_card.entry(s.card.clone()).or_default().push(s);
    }
    by_card
        .into_iter()
        .filter(|(_, v)| {
            v.iter().any(|a| {
                v.iter()
                    .any(|b| a.tenant != b.tenant && a.start < b.end && b.start < a.end)
            })
        })
        .map(|(k, _)| k)
        .collect()
}

/// Allocated GPU time over capacity, from the first submit to the last end
/// (shares count their fraction of a card).
fn utilization(jobs: &[pb::Job], gpus: usize) -> f64 {
    let first = jobs
        .iter()
        .filter_map(|j| output::millis(&j.created_at))
        .min();
    let last = jobs
        .iter()
        .filter_map(|j| output::millis(&j.finished_at))
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return 0.0;
    };
    let busy: f64 = jobs
        .iter()
        .filter_map(|j| {
            let (start, end) = (
                output::millis(&j.started_at)?,
                output::millis(&j.finished_at)?,
            );
            let cards: f64 = j
                .placement
                .as_ref()?
                .gpus
                .iter()
                .map(|g| f64::from(g.milli.min(1000)) / 1000.0)
                .sum();
            Some(cards * (end - start).max(0) as f64)
        })
        .sum();
    let span = (last - first).max(1) as f64 * gpus.max(1) as f64;
    busy / span
}

/// Worked out from the outside, from the jobs' records alone: for each job,
/// how long it stayed queued while a card it could have used was idle (of
/// a class it allows, with its tenant under its limit there, and for a
/// share, a card of its own tenant with room would do too). Returns the
/// worst job and its wait in milliseconds.
fn worst_idle_wait(
    jobs: &[pb::Job],
    inventory: &finpool_domain::Inventory,
    classes: &[String],
) -> (String, u64) {
    let class = |i: usize| class_name(classes, i);
    let limit = |tenant: &str, c: &str| -> i64 {
        BROKERAGES.iter().find(|b| b.id == tenant).map_or(0, |b| {
            b.quotas
                .iter()
                .filter(|(i, _, _)| class(*i) == c)
                .map(|(_, _, l)| *l)
                .sum()
        })
    };
    let span = |j: &pb::Job| -> Option<(i64, i64, i64)> {
        Some((
            output::millis(&j.created_at)?,
            output::millis(&j.started_at)?,
            output::millis(&j.finished_at)?,
        ))
    };
    let mut times: Vec<i64> = jobs
        .iter()
        .filter_map(span)
        .flat_map(|(c, s, f)| [c, s, f])
        .collect();
    times.sort_unstable();
    times.dedup();
    let mut waited: HashMap<&str, u64> = HashMap::new();
    for w in times.windows(2) {
        let (t, dt) = (w[0], (w[1] - w[0]) as u64);
        // Who holds each card at t, and with how much of it.
        let mut on_card: BTreeMap<(&str, u32), (Vec<&str>, i64)> = BTreeMap::new();
        for j in jobs {
            let (Some((_, s, f)), Some(p)) = (span(j), &j.placement) else {
                continue;
            };
            if s <= t && t < f {
                for g in &p.gpus {
                    let e = on_card.entry((p.node.as_str(), g.index)).or_default();
                    e.0.push(j.tenant_id.as_str());
                    e.1 += i64::from(g.milli);
                }
            }
        }
        let held = |tenant: &str, c: &str| -> i64 {
            inventory
                .nodes
                .iter()
                .flat_map(|n| n.gpus.iter().map(move |g| (n, g)))
                .filter(|(n, g)| {
                    g.class == c
                        && on_card
                            .get(&(n.name.as_str(), g.index))
                            .is_some_and(|(ts, _)| ts.contains(&tenant))
                })
                .count() as i64
        };
        for j in jobs {
            let Some((c, s, _)) = span(j) else { continue };
            if !(c <= t && t < s) {
                continue;
            }
            let Some(spec) = &j.spec else { continue };
            let allowed = |c: &str| {
                spec.resources.as_ref().is_none_or(|r| {
                    r.gpu_classes.is_empty() || r.gpu_classes.iter().any(|x| x == c)
                })
            };
            let kind = spec
                .resources
                .as_ref()
                .and_then(|r| r.gpu.as_ref())
                .and_then(|g| g.kind);
            let tenant = j.tenant_id.as_str();
            let usable = inventory.nodes.iter().any(|n| {
                let idle: Vec<&finpool_domain::Gpu> = n
                    .gpus
                    .iter()
                    .filter(|g| {
                        allowed(&g.class) && !on_card.contains_key(&(n.name.as_str(), g.index))
                    })
                    .collect();
                match &kind {
                    Some(pb::gpu_request::Kind::WholeGpus(count)) => classes.iter().any(|c| {
                        let here = idle.iter().filter(|g| &g.class == c).count() as i64;
                        here >= *count && held(tenant, c) + count <= limit(tenant, c)
                    }),
                    Some(pb::gpu_request::Kind::Share(share)) => {
                        idle.iter()
                            .any(|g| held(tenant, &g.class) < limit(tenant, &g.class))
                            || n.gpus.iter().any(|g| {
                                allowed(&g.class)
                                    && on_card.get(&(n.name.as_str(), g.index)).is_some_and(
                                        |(ts, milli)| {
                                            ts.iter().all(|x| *x == tenant)
                                                && milli + share.milli <= 1000
                                        },
                                    )
                            })
                    }
                    _ => false,
                }
            });
            if usable {
                *waited
                    .entry(j.spec.as_ref().map_or("", |s| s.name.as_str()))
                    .or_default() += dt;
            }
        }
    }
    waited
        .into_iter()
        .max_by_key(|(name, w)| (*w, std::cmp::Reverse(*name)))
        .map_or((String::new(), 0), |(n, w)| (n.to_owned(), w))
}
