//! The standalone executor: runs each placed job as a local process in its
//! sandbox (see [`crate::sandbox`]; or, with the sandbox off, as a plain
//! child in its own working directory and process group), with the GPUs
//! it was given in `CUDA_VISIBLE_DEVICES`, its output piped into a per-job
//! log the server writes, and its end recorded from the exit code.
//!
//! One actor task owns the table of running jobs; each job has a watcher
//! task that waits for the process, stops it on cancel, preemption, max
//! runtime or shutdown (SIGTERM, then SIGKILL after the grace period),
//! kills whatever of it is left, and records how it ended.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{Job, JobId, JobState, Placement, RestartPolicy, Timestamp};
use finpool_store::{Change, Store, StoreError};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::sandbox::procs::JobProcs;
use crate::sandbox::{self, Sandbox};

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Per-job directories (`<jobs_dir>/<id>/work`, `<jobs_dir>/<id>/output.log`).
    pub jobs_dir: PathBuf,
    /// The pool's base-model cache; a job's model is `<model_cache_dir>/<name>`.
    pub model_cache_dir: PathBuf,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// For jobs that set no max runtime.
    pub default_max_runtime: Duration,
    /// Where jobs run; `None`: as plain child processes of the server.
    pub sandbox: Option<Arc<Sandbox>>,
}

impl ExecutorConfig {
    pub fn log_path(&self, job: JobId) -> PathBuf {
        self.jobs_dir.join(job.to_string()).join("output.log")
    }

    pub fn work_dir(&self, job: JobId) -> PathBuf {
        self.jobs_dir.join(job.to_string()).join("work")
    }
}

/// Why a running job is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopKind {
    /// A user or operator cancelled it.
    Cancel,
    /// The scheduler reclaimed its GPUs; it goes back to the queue.
    Preempt,
    /// The server is shutting down.
    Shutdown,
}

enum Command {
    Start(Box<Job>),
    Stop {
        job: JobId,
        kind: StopKind,
        reason: String,
    },
    Finished(JobId),
    Shutdown(oneshot::Sender<()>),
}

/// A handle to the executor actor.
#[derive(Clone)]
pub struct Executor {
    tx: mpsc::Sender<Command>,
}

struct StopOrder {
    kind: StopKind,
    reason: String,
}

impl Executor {
    pub fn spawn(store: Store, config: ExecutorConfig) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let actor = Actor {
            store,
            config,
            running: HashMap::new(),
            holding: HashMap::new(),
            tx: tx.clone(),
            watchers: JoinSet::new(),
        };
        tokio::spawn(actor.run(rx));
        Self { tx }
    }

    /// Starts an Admitted job (a no-op if it is already running here).
    pub async fn start(&self, job: Job) {
        let _ = self.tx.send(Command::Start(Box::new(job))).await;
    }

    pub async fn stop(&self, job: JobId, kind: StopKind, reason: impl Into<String>) {
        let _ = self
            .tx
            .send(Command::Stop {
                job,
                kind,
                reason: reason.into(),
            })
            .await;
    }

    /// Stops every running job (recording each per its restart policy) and
    /// waits for them to end.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

struct Actor {
    store: Store,
    config: ExecutorConfig,
    running: HashMap<JobId, mpsc::Sender<StopOrder>>,
    /// What each running job holds, so a job is never started on cards a
    /// stopping job (say, a preempted one in its grace period) still uses.
    holding: HashMap<JobId, (finpool_domain::TenantId, Placement)>,
    tx: mpsc::Sender<Command>,
    watchers: JoinSet<()>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut cancels = self.store.subscribe_cancels();
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Command::Start(job)) => self.start(*job).await,
                    Some(Command::Stop { job, kind, reason }) => self.stop(job, kind, reason).await,
                    Some(Command::Finished(job)) => {
                        self.running.remove(&job);
                        self.holding.remove(&job);
                    }
                    Some(Command::Shutdown(done)) => {
                        let ids: Vec<JobId> = self.running.keys().copied().collect();
                        for id in ids {
                            self.stop(id, StopKind::Shutdown, "server shut down".into()).await;
                        }
                        while self.watchers.join_next().await.is_some() {}
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                cancel = cancels.recv() => match cancel {
                    Ok((job, reason)) => self.stop(job, StopKind::Cancel, reason).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "cancel notices lagged; rechecking running jobs");
                        self.recheck_cancels().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                },
                Some(_) = self.watchers.join_next(), if !self.watchers.is_empty() => {}
            }
        }
    }

    /// After missed notices: stop every running job flagged for cancel.
    async fn recheck_cancels(&mut self) {
        let ids: Vec<JobId> = self.running.keys().copied().collect();
        for id in ids {
            if let Ok(job) = self.store.get_job(id).await
                && job.cancel_requested
            {
                self.stop(id, StopKind::Cancel, "cancelled".into()).await;
            }
        }
    }

    async fn stop(&mut self, job: JobId, kind: StopKind, reason: String) {
        if let Some(stopper) = self.running.get(&job) {
            let _ = stopper.send(StopOrder { kind, reason }).await;
        }
    }

    async fn start(&mut self, job: Job) {
        if self.running.contains_key(&job.id) || job.state != JobState::Admitted {
            return;
        }
        let Some(placement) = job.placement.clone() else {
            tracing::error!(job = %job.id, "admitted job has no placement");
            return;
        };
        if let Some(busy) = self.conflict(&job.tenant_id, &placement) {
            tracing::debug!(job = %job.id, %busy, "cards still in use; starting once they are free");
            return;
        }
        // The job counts as running here from now on (so neither a second
        // Start nor another job takes its cards), while its start is
        // recorded and its process spawned in its own task: one job's
        // start does not hold up the others', nor stops.
        let (stop_tx, stop_rx) = mpsc::channel(4);
        self.running.insert(job.id, stop_tx);
        self.holding
            .insert(job.id, (job.tenant_id.clone(), placement.clone()));
        let store = self.store.clone();
        let config = self.config.clone();
        let done = self.tx.clone();
        self.watchers.spawn(async move {
            let id = job.id;
            match launch(&store, &config, &job, &placement).await {
                Some(spawned) => {
                    let max_runtime = job
                        .spec
                        .max_runtime_ms
                        .map(Duration::from_millis)
                        .unwrap_or(config.default_max_runtime);
                    let watcher = Watcher {
                        store,
                        job_id: id,
                        restart_policy: job.spec.restart_policy,
                        grace: config.stop_grace,
                        max_runtime,
                        done,
                    };
                    watcher.watch(spawned, stop_rx).await;
                }
                None => {
                    let _ = done.send(Command::Finished(id)).await;
                }
            }
        });
    }

    /// A running job whose cards `placement` may not share: the same card
    /// (or MIG slice) held by another tenant, or held whole by anyone.
    fn conflict(&self, tenant: &finpool_domain::TenantId, placement: &Placement) -> Option<JobId> {
        self.holding.iter().find_map(|(id, (owner, held))| {
            let clash = held.node == placement.node
                && held.gpus.iter().any(|h| {
                    placement.gpus.iter().any(|p| {
                        h.index == p.index
                            && h.mig_slice == p.mig_slice
                            && (owner != tenant || h.milli >= 1000 || p.milli >= 1000)
                    })
                });
            clash.then_some(*id)
        })
    }
}

/// Records the start (Admitted to Running) and spawns the job's process;
/// `None` if it is not to run after all.
async fn launch(
    store: &Store,
    config: &ExecutorConfig,
    job: &Job,
    placement: &Placement,
) -> Option<Spawned> {
    let started = Change::new(
        JobState::Running,
        format!(
            "started on {} (GPUs {})",
            placement.node,
            describe_gpus(placement)
        ),
        Timestamp::now(),
    );
    match store
        .transition(job.id, Some(JobState::Admitted), started)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Conflict(why)) => {
            tracing::debug!(job = %job.id, %why, "not starting: the job moved on");
            return None;
        }
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "could not record the start; will retry");
            return None;
        }
    }
    match spawn_process(config, job, placement) {
        Ok(spawned) => {
            tracing::info!(job = %job.id, tenant = %job.tenant_id, node = %placement.node,
                gpus = %placement.visible_devices(), pid = spawned.child.id(), uid = spawned.uid,
                "job started");
            Some(spawned)
        }
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "could not start the job's process");
            let change = Change::new(
                JobState::Failed,
                format!("could not start: {e}"),
                Timestamp::now(),
            );
            record(store, job.id, change).await;
            None
        }
    }
}

fn spawn_process(
    config: &ExecutorConfig,
    job: &Job,
    placement: &Placement,
) -> std::io::Result<Spawned> {
    let job_dir = config.jobs_dir.join(job.id.to_string());
    let work_dir = config.work_dir(job.id);
    for dir in [&config.jobs_dir, &job_dir, &work_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // The server writes the log; the job only has a pipe into it.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(config.log_path(job.id))?;
    let (reader, writer) = std::io::pipe()?;
    let argv: Vec<String> = job
        .spec
        .command
        .iter()
        .chain(&job.spec.args)
        .cloned()
        .collect();
    if argv.is_empty() {
        return Err(std::io::Error::other("empty command"));
    }
    let model_dir = match &job.spec.model {
        Some(model) => {
            let path = config.model_cache_dir.join(model.as_str());
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&path)?;
            // Readable by the jobs' uids whatever the server's umask.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            Some(model.as_str().to_owned())
        }
        None => None,
    };
    let (home, models) = match &config.sandbox {
        Some(_) => (
            PathBuf::from(sandbox::JOB_WORK_DIR),
            PathBuf::from(sandbox::JOB_MODELS_DIR),
        ),
        None => (work_dir.clone(), config.model_cache_dir.clone()),
    };
    // The job's whole environment. The server's own (tokens, database
    // URLs) is not the job's business.
    let mut env: Vec<(OsString, OsString)> = vec![
        (
            "PATH".into(),
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".into(), home.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), "UTC".into()),
    ];
    env.extend(
        job.spec
            .env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    env.extend([
        (
            "CUDA_VISIBLE_DEVICES".into(),
            placement.visible_devices().into(),
        ),
        ("FINPOOL_JOB_ID".into(), job.id.to_string().into()),
        ("FINPOOL_TENANT_ID".into(), job.tenant_id.as_str().into()),
        ("FINPOOL_NODE".into(), placement.node.clone().into()),
    ]);
    if let finpool_domain::GpuRequest::Share { milli, memory_mib } = job.spec.resources.gpu {
        env.push(("FINPOOL_GPU_MILLI".into(), milli.to_string().into()));
        if memory_mib > 0 {
            env.push((
                "FINPOOL_GPU_MEMORY_MIB".into(),
                memory_mib.to_string().into(),
            ));
        }
    }
    if let Some(model) = model_dir {
        env.push(("FINPOOL_MODEL_PATH".into(), models.join(model).into()));
    }
    let (mut command, cgroup, cgroup_procs, sandbox_fds, uid) = match &config.sandbox {
        Some(sandbox) => {
            let p = sandbox.prepare_job(
                job.id,
                job.tenant_id.as_str(),
                placement,
                &work_dir,
                &config.model_cache_dir,
                &argv,
                &env,
            )?;
            (
                p.command,
                p.cgroup,
                p.cgroup_procs,
                Some((p.args, p.env_file)),
                Some(p.uid),
            )
        }
        None => {
            let mut command = tokio::process::Command::new(&argv[0]);
            command
                .args(&argv[1..])
                .current_dir(&work_dir)
                .env_clear()
                .envs(env);
            (command, None, None, None, None)
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .kill_on_drop(false)
        // Its own process group, so a stop reaches every child it forks
        // (unsandboxed; a sandboxed job is its PID namespace).
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    let join_cgroup = cgroup_procs.as_ref().map(|fd| fd.as_raw_fd());
    let pass: [libc::c_int; 2] = match &sandbox_fds {
        Some((args, env)) => [args.as_raw_fd(), env.as_raw_fd()],
        None => [-1, -1],
    };
    // SAFETY: only async-signal-safe calls (prctl, getppid, write, fcntl,
    // _exit) between fork and exec; the fds stay open in the parent until
    // spawn returns.
    unsafe {
        command.pre_exec(move || {
            // Die with the server, so no job outlives a crash unrecorded.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // Into the job's cgroup before anything can fork.
            if let Some(fd) = join_cgroup
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            // bubblewrap reads its arguments and the job's environment
            // from these fds: kept open across exec in this child only.
            for fd in pass {
                if fd >= 0 && libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Nothing else the server has open (or inherited from
            // whoever started it) reaches the job.
            close_fds_except(pass);
            Ok(())
        });
    }
    let child = command.spawn();
    drop(cgroup_procs);
    drop(sandbox_fds);
    // Our copies of the pipe's write end go with the command, so the
    // log sees end-of-file once the job's last process is gone.
    drop(command);
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            if let Some(cg) = cgroup {
                tokio::spawn(async move {
                    cg.kill_and_remove(Duration::ZERO).await;
                });
            }
            return Err(e);
        }
    };
    let pid = child.id().map(|p| p as libc::pid_t).unwrap_or(0);
    let procs = match config.sandbox {
        Some(_) => JobProcs::Sandboxed {
            monitor: pid,
            cgroup,
        },
        None => JobProcs::Group(pid),
    };
    Ok(Spawned {
        child,
        uid,
        procs,
        log: tokio::spawn(copy_log(reader, log)),
    })
}

/// Closes every fd from 3 up except those in `keep` (sorted or not; -1
/// for none). Async-signal-safe: for between fork and exec.
fn close_fds_except(keep: [libc::c_int; 2]) {
    let (a, b) = if keep[0] <= keep[1] {
        (keep[0], keep[1])
    } else {
        (keep[1], keep[0])
    };
    let mut from: libc::c_uint = 3;
    for k in [a, b] {
        if k >= from as libc::c_int {
            close_range(from, k as libc::c_uint - 1);
            from = k as libc::c_uint + 1;
        }
    }
    close_range(from, libc::c_uint::MAX);
}

fn close_range(first: libc::c_uint, last: libc::c_uint) {
    if first > last {
        return;
    }
    // SAFETY: close_range only closes descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r != 0 {
        // Before Linux 5.9: one by one, up to the fd limit.
        // SAFETY: sysconf and close have no memory-safety preconditions.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(0, 1 << 20) as libc::c_uint;
        for fd in first..=last.min(max) {
            unsafe {
                libc::close(fd as libc::c_int);
            }
        }
    }
}

/// A started job: its process, every process of it, and the task
/// copying its output into its log.
struct Spawned {
    child: Child,
    /// The tenant uid it runs as, when sandboxed.
    uid: Option<u32>,
    procs: JobProcs,
    log: tokio::task::JoinHandle<()>,
}

/// Copies the job's output pipe into its log until every process holding
/// the pipe is gone.
async fn copy_log(reader: std::io::PipeReader, log: std::fs::File) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "could not read a job's output");
            return;
        }
    };
    let mut log = tokio::fs::File::from_std(log);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = log.write_all(&buf[..n]).await {
                    tracing::warn!(error = %e, "could not write a job's log");
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading a job's output");
                break;
            }
        }
    }
    let _ = log.flush().await;
}

fn describe_gpus(p: &Placement) -> String {
    if p.gpus.is_empty() {
        "none".into()
    } else {
        p.visible_devices()
    }
}

struct Watcher {
    store: Store,
    job_id: JobId,
    restart_policy: RestartPolicy,
    grace: Duration,
    max_runtime: Duration,
    done: mpsc::Sender<Command>,
}

enum End {
    Exited(ExitStatus),
    Stopped(StopOrder, Option<ExitStatus>),
    TimedOut(Option<ExitStatus>),
}

impl Watcher {
    async fn watch(self, spawned: Spawned, mut stop: mpsc::Receiver<StopOrder>) {
        let Spawned {
            mut child,
            procs,
            log,
            ..
        } = spawned;
        let end = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => End::Exited(status),
                Err(e) => {
                    tracing::error!(job = %self.job_id, error = %e, "lost the job's process");
                    End::TimedOut(None)
                }
            },
            Some(order) = stop.recv() => End::Stopped(order, terminate(&mut child, &procs, self.grace).await),
            _ = tokio::time::sleep(self.max_runtime) => End::TimedOut(terminate(&mut child, &procs, self.grace).await),
        };
        // Whatever the job forked and left behind goes too.
        procs.finish().await;
        // Its output, to the last byte, is in the log before its end is
        // recorded. A sandboxed job's processes are all gone by now; an
        // unsandboxed one may have left a `setsid` child holding the pipe.
        if tokio::time::timeout(Duration::from_secs(2), log)
            .await
            .is_err()
        {
            tracing::warn!(job = %self.job_id, "a process outside the job's group still holds its output");
        }
        let now = Timestamp::now();
        let exit_code = |s: &Option<ExitStatus>| s.as_ref().and_then(|s| s.code());
        // Why a requeued job is back in the queue (its Pending reason).
        let mut then_requeue: Option<String> = None;
        let change = match end {
            End::Exited(status) => {
                let mut c = match status.code() {
                    Some(0) => Change::new(JobState::Succeeded, "exit code 0", now),
                    Some(code) => Change::new(JobState::Failed, format!("exit code {code}"), now),
                    None => Change::new(JobState::Failed, describe_signal(&status), now),
                };
                c.exit_code = status.code();
                c
            }
            End::Stopped(order, status) => {
                let to = match (&order.kind, self.restart_policy) {
                    (StopKind::Cancel, _) => JobState::Cancelled,
                    (StopKind::Preempt, _) | (StopKind::Shutdown, RestartPolicy::Requeue) => {
                        then_requeue = Some(format!("requeued: {}", order.reason));
                        JobState::Preempted
                    }
                    (StopKind::Shutdown, RestartPolicy::Fail) => JobState::Failed,
                };
                let mut c = Change::new(to, order.reason, now);
                c.exit_code = exit_code(&status);
                c
            }
            End::TimedOut(status) => {
                let mut c = Change::new(
                    JobState::Failed,
                    format!("max runtime {} exceeded", humantime_short(self.max_runtime)),
                    now,
                );
                c.exit_code = exit_code(&status);
                c
            }
        };
        tracing::info!(job = %self.job_id, state = %change.to, reason = %change.reason, "job ended");
        record(&self.store, self.job_id, change).await;
        if let Some(reason) = then_requeue {
            record(
                &self.store,
                self.job_id,
                Change::new(JobState::Pending, reason, Timestamp::now()),
            )
            .await;
        }
        let _ = self.done.send(Command::Finished(self.job_id)).await;
    }
}

/// SIGTERM to the job; SIGKILL to all of it if it is still there after
/// `grace`.
async fn terminate(child: &mut Child, procs: &JobProcs, grace: Duration) -> Option<ExitStatus> {
    procs.terminate();
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            procs.kill();
            child.wait().await.ok()
        }
    }
}

fn describe_signal(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(s) => format!("killed by signal {s}"),
        None => "ended without an exit code".into(),
    }
}

fn humantime_short(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// Records a job's change from Running (or Preempted), retrying while the
/// database is unavailable: how a job ended must not be lost.
pub(crate) async fn record(store: &Store, job: JobId, change: Change) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.transition(job, None, change.clone()).await {
            Ok(_) => return,
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(%job, error = %e, "database unavailable; retrying the job's end");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(%job, error = %e, to = %change.to, "could not record the job's change");
                return;
            }
        }
    }
}
