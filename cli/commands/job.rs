//! `finpool job …`

use std::io::Write;

use anyhow::Context;
use finpool_domain::JobSpecInput;
use finpool_domain::job::{GpuRequestInput, GpuShareInput};
use finpool_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::args::{Global, JobCommand, JobListArgs, JobSubmitArgs, Output};
use crate::client::Clients;
use crate::output;
use crate::watch;

pub async fn run(global: &Global, command: JobCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    let command = match command {
        JobCommand::Get { id, watch } => JobCommand::Get {
            id: resolve(&mut c, &id).await?,
            watch,
        },
        JobCommand::Cancel { id, reason } => JobCommand::Cancel {
            id: resolve(&mut c, &id).await?,
            reason,
        },
        JobCommand::Logs { id, follow } => JobCommand::Logs {
            id: resolve(&mut c, &id).await?,
            follow,
        },
        JobCommand::Wait { id, timeout } => JobCommand::Wait {
            id: resolve(&mut c, &id).await?,
            timeout,
        },
        JobCommand::Watch { id: Some(id) } => JobCommand::Watch {
            id: Some(resolve(&mut c, &id).await?),
        },
        other => other,
    };
    match command {
        JobCommand::Submit(args) => {
            let spec = spec_from_args(&args)?;
            let response = c
                .jobs
                .submit_job(pb::SubmitJobRequest {
                    spec: Some(finpool_api::convert::input_to_pb(&spec)),
                })
                .await?
                .into_inner();
            let job = response.job.context("the server returned no job")?;
            if global.output.is_document() {
                output::message(global.output, &job);
            } else if response.created {
                println!("job {} submitted ({})", job.id, output::state(job.state));
            } else {
                println!(
                    "job {} already exists for this idempotency key ({})",
                    job.id,
                    output::state(job.state)
                );
            }
        }
        JobCommand::List(args) => list(global, &mut c, args).await?,
        JobCommand::Get { id, watch: false } => {
            let job = c.jobs.get_job(pb::GetJobRequest { id }).await?.into_inner();
            println!("{}", job_text(global.output, &job).trim_end());
        }
        JobCommand::Get { id, watch: true } => {
            // Subscribe first, then read: no change between the two is missed.
            let changes = c
                .jobs
                .watch_jobs(pb::WatchJobsRequest { job_id: id.clone() })
                .await?
                .into_inner();
            let output = global.output;
            let fetch = || {
                let mut c = c.clone();
                let id = id.clone();
                async move {
                    let job = c.jobs.get_job(pb::GetJobRequest { id }).await?.into_inner();
                    Ok(watch::View {
                        document: finpool_proto::to_json(&job),
                        text: job_text(output, &job),
                    })
                }
            };
            watch::run(global.output, fetch, job_changes(changes)).await?;
        }
        JobCommand::Cancel { id, reason } => {
            let job = c
                .jobs
                .cancel_job(pb::CancelJobRequest { id, reason })
                .await?
                .into_inner();
            if global.output.is_document() {
                output::message(global.output, &job);
            } else {
                println!(
                    "job {}: {} ({})",
                    job.id,
                    output::state(job.state),
                    job.reason
                );
            }
        }
        JobCommand::Logs { id, follow } => {
            let mut stream = c
                .jobs
                .stream_logs(pb::StreamLogsRequest {
                    id: id.clone(),
                    follow,
                })
                .await?
                .into_inner();
            {
                let mut stdout = std::io::stdout().lock();
                while let Some(chunk) = stream.next().await {
                    stdout.write_all(&chunk?.data)?;
                    stdout.flush()?;
                }
            }
            if follow {
                // The output ended with the job: say how it ended.
                let job = c.jobs.get_job(pb::GetJobRequest { id }).await?.into_inner();
                outcome(&job)?;
            }
        }
        JobCommand::Wait { id, timeout } => {
            let job = wait(&mut c, &id, timeout).await?;
            if global.output.is_document() {
                output::message(global.output, &job);
            }
            outcome(&job)?;
        }
        JobCommand::Watch { id } => {
            let mut stream = c
                .jobs
                .watch_jobs(pb::WatchJobsRequest {
                    job_id: id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            while let Some(event) = stream.next().await {
                let event = event?;
                if global.output.is_document() {
                    let line = output::render_line(global.output, &finpool_proto::to_json(&event));
                    if !output::emit(&line)? {
                        break;
                    }
                    continue;
                }
                let t = event.transition.unwrap_or_default();
                let line = format!(
                    "{}  {}  {}  {} -> {}  {}",
                    output::timestamp(&t.at),
                    event.tenant_id,
                    event.job_id,
                    t.from.map_or_else(|| "new".into(), output::state),
                    output::state(t.to),
                    t.reason
                );
                // A reader that left ends the stream quietly.
                if !output::emit(&output::clean(&line))? {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// A job named by its full id, a unique prefix or suffix of its id, or
/// its unique name (among the jobs the caller may see), as its full id.
/// (Ids are UUIDv7: jobs submitted together share a prefix, the time, and
/// differ in their random suffix.)
async fn resolve(c: &mut Clients, given: &str) -> anyhow::Result<String> {
    if finpool_domain::JobId::parse("id", given).is_ok() {
        return Ok(given.to_owned());
    }
    let mut matches: Vec<(String, String)> = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .jobs
            .list_jobs(pb::ListJobsRequest {
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        for j in page.jobs {
            let name = j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if j.id.starts_with(given) || j.id.ends_with(given) || name == given {
                matches.push((j.id, name));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    match matches.len() {
        1 => Ok(matches.remove(0).0),
        0 => {
            anyhow::bail!("job {given:?}: no job has this name or an id starting or ending with it")
        }
        n => anyhow::bail!(
            "job {given:?}: {n} jobs match ({}); give more of the id",
            matches
                .iter()
                .take(5)
                .map(|(id, name)| format!("{id} {name}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Exit codes for a job's outcome (documented in the README).
pub const EXIT_FAILED: u8 = 3;
pub const EXIT_CANCELLED: u8 = 4;
pub const EXIT_STILL_RUNNING: u8 = 5;

fn is_ended(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

/// Ok for a job that succeeded; an [`Outcome`](crate::Outcome) with its
/// exit code otherwise.
fn outcome(job: &pb::Job) -> anyhow::Result<()> {
    let code = match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Succeeded) => return Ok(()),
        Ok(pb::JobState::Failed) => EXIT_FAILED,
        Ok(pb::JobState::Cancelled) => EXIT_CANCELLED,
        _ => EXIT_STILL_RUNNING,
    };
    Err(crate::Outcome {
        code,
        message: format!(
            "job {}: {}{}",
            job.id,
            output::state(job.state),
            if job.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", job.reason)
            }
        ),
    }
    .into())
}

/// Follows the job's changes until it ends or `timeout` passes; the job
/// as it then is.
async fn wait(
    c: &mut Clients,
    id: &str,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<pb::Job> {
    // Subscribe first, then read: an end between the two is not missed.
    let mut changes = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest {
            job_id: id.to_owned(),
        })
        .await?
        .into_inner();
    let job = c
        .jobs
        .get_job(pb::GetJobRequest { id: id.to_owned() })
        .await?
        .into_inner();
    if is_ended(job.state) {
        return Ok(job);
    }
    let until_ended = async {
        while let Some(event) = changes.next().await {
            if is_ended(event?.transition.unwrap_or_default().to) {
                break;
            }
        }
        anyhow::Ok(())
    };
    match timeout {
        Some(t) => {
            if let Ok(r) = tokio::time::timeout(t, until_ended).await {
                r?;
            }
        }
        None => until_ended.await?,
    }
    Ok(c.jobs
        .get_job(pb::GetJobRequest { id: id.to_owned() })
        .await?
        .into_inner())
}

/// The spec from `-f FILE` (if any), with flags on top.
pub fn spec_from_args(args: &JobSubmitArgs) -> anyhow::Result<JobSpecInput> {
    let mut spec = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_yaml_ng::from_str::<JobSpecInput>(&text)
                .with_context(|| format!("{}", path.display()))?
        }
        None => JobSpecInput::default(),
    };
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    if let Some(model) = &args.model {
        spec.model = model.clone();
    }
    if !args.command.is_empty() {
        spec.command = args.command.clone();
        spec.args.clear();
    }
    if let Some(n) = args.gpus {
        spec.resources.gpu = Some(GpuRequestInput {
            whole_gpus: Some(n),
            share: None,
        });
    } else if args.gpu_milli.is_some() || args.gpu_memory_mib.is_some() {
        spec.resources.gpu = Some(GpuRequestInput {
            whole_gpus: None,
            share: Some(GpuShareInput {
                milli: args.gpu_milli.unwrap_or(0),
                memory_mib: args.gpu_memory_mib.unwrap_or(0),
            }),
        });
    }
    if !args.classes.is_empty() {
        spec.resources.gpu_classes = args.classes.clone();
    }
    if let Some(v) = args.cpu_milli {
        spec.resources.cpu_milli = v;
    }
    if let Some(v) = args.memory_mib {
        spec.resources.memory_mib = v;
    }
    if let Some(v) = args.priority {
        spec.priority = v;
    }
    if let Some(d) = args.max_runtime {
        spec.max_runtime_ms = Some(d.as_millis().min(i64::MAX as u128) as i64);
    }
    if let Some(k) = &args.idempotency_key {
        spec.idempotency_key = k.clone();
    }
    for kv in &args.env {
        let (k, v) = super::key_value("env", kv)?;
        spec.env.insert(k, v);
    }
    for kv in &args.labels {
        let (k, v) = super::key_value("label", kv)?;
        spec.labels.insert(k, v);
    }
    if args.requeue_on_restart {
        spec.restart_policy = Some(finpool_domain::RestartPolicy::Requeue);
    }
    if spec.name.is_empty() {
        anyhow::bail!("name: give --name or a name in the job file");
    }
    Ok(spec)
}

/// The change stream of `job watch`, as a watch's triggers.
fn job_changes(stream: tonic::Streaming<pb::JobEvent>) -> watch::Changes {
    Box::pin(stream.map(|event| event.map(|_| ()).map_err(anyhow::Error::from)))
}

async fn list(global: &Global, c: &mut Clients, args: JobListArgs) -> anyhow::Result<()> {
    let states = args
        .states
        .iter()
        .map(|s| {
            finpool_domain::JobState::parse("--state", s)
                .map(|s| finpool_api::convert::state_to_pb(s) as i32)
                .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.watch {
        // Every change to a job the caller may see triggers a new list.
        let changes = c
            .jobs
            .watch_jobs(pb::WatchJobsRequest::default())
            .await?
            .into_inner();
        let output = global.output;
        let fetch = || {
            let mut c = c.clone();
            let states = states.clone();
            let args = args.clone();
            async move {
                let (jobs, _) = fetch_jobs(&mut c, &args, &states).await?;
                let values = jobs.iter().map(finpool_proto::to_json).collect();
                Ok(watch::View {
                    document: serde_json::Value::Array(values),
                    text: jobs_table(output, &jobs),
                })
            }
        };
        return watch::run(global.output, fetch, job_changes(changes)).await;
    }
    let (jobs, more) = fetch_jobs(c, &args, &states).await?;
    if more {
        eprintln!(
            "{} jobs shown, newest first; more exist: --all lists every page",
            jobs.len()
        );
    }
    if global.output.is_document() {
        output::list(global.output, &jobs);
        return Ok(());
    }
    println!("{}", jobs_table(global.output, &jobs));
    Ok(())
}

/// The first page of jobs (every page with --all), and whether more exist.
async fn fetch_jobs(
    c: &mut Clients,
    args: &JobListArgs,
    states: &[i32],
) -> anyhow::Result<(Vec<pb::Job>, bool)> {
    let mut jobs = Vec::new();
    let mut token = String::new();
    let more = loop {
        let page = c
            .jobs
            .list_jobs(pb::ListJobsRequest {
                page_size: args.page_size,
                page_token: token,
                states: states.to_vec(),
                tenant_id: args.tenant.clone().unwrap_or_default(),
            })
            .await?
            .into_inner();
        jobs.extend(page.jobs);
        if !args.all || page.next_page_token.is_empty() {
            break !page.next_page_token.is_empty();
        }
        token = page.next_page_token;
    };
    Ok((jobs, more))
}

/// The job list as a table; `-o wide` adds the node, the GPU indices,
/// attempts, model, priority and creation time.
fn jobs_table(output: Output, jobs: &[pb::Job]) -> String {
    let wide = output == Output::Wide;
    let now = finpool_domain::Timestamp::now().0;
    let rows = jobs
        .iter()
        .map(|j| {
            let created = output::millis(&j.created_at).unwrap_or(now);
            let waited = output::millis(&j.started_at).unwrap_or(now) - created;
            let spec = j.spec.clone().unwrap_or_default();
            let mut row = vec![
                j.id.clone(),
                j.tenant_id.clone(),
                spec.name.clone(),
                output::state(j.state),
                output::request(&j.spec),
                output::placement(&j.placement),
                output::duration_ms(waited),
                j.reason.clone(),
            ];
            if wide {
                let (node, cards) = match &j.placement {
                    Some(p) => (
                        p.node.clone(),
                        p.gpus
                            .iter()
                            .map(|g| g.index.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    None => ("-".into(), "-".into()),
                };
                row.extend([
                    node,
                    if cards.is_empty() { "-".into() } else { cards },
                    j.attempts.to_string(),
                    if spec.model.is_empty() {
                        "-".into()
                    } else {
                        spec.model
                    },
                    spec.priority.to_string(),
                    output::timestamp(&j.created_at),
                ]);
            }
            row
        })
        .collect();
    let mut headers = vec![
        "JOB", "TENANT", "NAME", "STATE", "REQUEST", "GPUS", "WAITED", "REASON",
    ];
    if wide {
        headers.extend([
            "NODE",
            "GPU INDICES",
            "ATTEMPTS",
            "MODEL",
            "PRIORITY",
            "CREATED",
        ]);
    }
    output::table(&headers, rows).to_string()
}

/// A pending job's place: exact within its tenant's queue; across the
/// pool, the jobs whose turns come first (borrowing reorders tenants by
/// fair share, which only the scheduler's cycle knows).
fn queue_line(tenant: &str, q: &pb::QueuePosition) -> String {
    let s = if q.ahead_in_pool == 1 { "" } else { "s" };
    format!(
        "queue      {} of {} in tenant {tenant}'s queue (priority, then age); \
         {} pending job{s} of {} in the pool ahead by turn order",
        q.in_tenant, q.tenant_pending, q.ahead_in_pool, q.pool_pending
    )
}

/// A job as `job get` prints it: a document (`-o json|yaml`), or its
/// description and history.
fn job_text(output: Output, job: &pb::Job) -> String {
    // Every line goes through `output::clean`: names, reasons and commands
    // are the caller's text.
    if output.is_document() {
        return output::render(output, &finpool_proto::to_json(job));
    }
    let mut text = String::new();
    macro_rules! line {
        ($($arg:tt)*) => {{
            text.push_str(&output::clean(&format!($($arg)*)));
            text.push('\n');
        }};
    }
    let spec = job.spec.clone().unwrap_or_default();
    let mut command = spec.command.clone();
    command.extend(spec.args.clone());
    line!("job        {}", job.id);
    line!("tenant     {}", job.tenant_id);
    line!("name       {}", spec.name);
    line!("state      {} ({})", output::state(job.state), job.reason);
    if let Some(q) = &job.queue_position {
        line!("{}", queue_line(&job.tenant_id, q));
    }
    line!("request    {}", output::request(&job.spec));
    line!("gpus       {}", output::placement(&job.placement));
    line!(
        "model      {}",
        if spec.model.is_empty() {
            "-"
        } else {
            &spec.model
        }
    );
    line!("command    {}", command.join(" "));
    line!("created    {}", output::timestamp(&job.created_at));
    line!("started    {}", output::timestamp(&job.started_at));
    line!("finished   {}", output::timestamp(&job.finished_at));
    if let Some(code) = job.exit_code {
        line!("exit code  {code}");
    }
    line!("attempts   {}", job.attempts);
    // The latest preemption stays in view while the job waits to rerun.
    if let Some(t) = job
        .history
        .iter()
        .rev()
        .find(|t| t.to == pb::JobState::Preempted as i32)
    {
        line!("preempted  {} ({})", output::timestamp(&t.at), t.reason);
    }
    let rows = job
        .history
        .iter()
        .map(|t| {
            vec![
                output::timestamp(&t.at),
                t.from.map_or_else(|| "-".into(), output::state),
                output::state(t.to),
                t.reason.clone(),
            ]
        })
        .collect();
    text.push_str(&output::table(&["AT", "FROM", "TO", "REASON"], rows).to_string());
    text
}
