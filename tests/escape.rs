//! The escape suite: a tenant's job, run by a real `finpool up` with the
//! sandbox on (`--sandbox required`, the default), tries to get out, one
//! way per test, and each attempt must fail. Every test checks the
//! failure itself (the error the job saw, the file unchanged, the process
//! gone), not only that the job ran, and that the job ran as an
//! unprivileged uid.
//!
//! It needs root and bubblewrap, as CI has (`.ci/run` installs it).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use finpool_cli::client::Clients;
use finpool_proto::v1 as pb;

/// A server with two brokerages, alpha and beta.
async fn pool(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Server, Clients, Clients) {
    let server = Server::start_with_env(dir, extra, env);
    assert!(
        server.logs().contains("job sandbox: bubblewrap"),
        "the escape suite needs the sandbox on:\n{}",
        server.logs()
    );
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 2, 4).await;
    create_tenant(&mut op, "beta", 2, 4).await;
    let alpha = server.tenant("alpha").await;
    let beta = server.tenant("beta").await;
    (server, alpha, beta)
}

/// Every attack script starts by saying who it runs as.
fn attack(script: &str) -> String {
    format!("echo \"uid=$(id -u) gid=$(id -g)\"; {script}")
}

/// Submits `script` and waits for the job to end; its final state and log.
async fn run(c: &mut Clients, name: &str, script: &str) -> (pb::Job, String) {
    let job = submit(c, shell_job(name, whole(1), &attack(script))).await;
    let id = job.id.clone();
    let jobs = wait_for(c, Duration::from_secs(60), name, |jobs| {
        jobs.iter().any(|j| j.id == id && is_terminal(j.state))
    })
    .await;
    let job = jobs.into_iter().find(|j| j.id == id).unwrap();
    let log = read_logs(c, &id).await;
    assert_unprivileged(&log);
    (job, log)
}

/// The job ran as a tenant uid, never root or the server's user.
fn assert_unprivileged(log: &str) -> u32 {
    let uid: u32 = log
        .lines()
        .find_map(|l| l.strip_prefix("uid="))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("the job did not say its uid:\n{log}"));
    // SAFETY: getuid has no preconditions.
    let server_uid = unsafe { libc::getuid() };
    assert!(
        uid != 0 && uid != server_uid,
        "the job ran as uid {uid}:\n{log}"
    );
    uid
}

fn assert_has(log: &str, what: &str) {
    assert!(
        log.contains(what),
        "expected {what:?} in the job's log:\n{log}"
    );
}

/// Some line of the log names `what` and says `error`.
fn assert_line(log: &str, what: &str, error: &str) {
    assert!(
        log.lines().any(|l| l.contains(what) && l.contains(error)),
        "expected a line with {what:?} and {error:?} in the job's log:\n{log}"
    );
}

fn assert_lacks(log: &str, what: &str) {
    assert!(
        !log.contains(what),
        "{what:?} leaked into the job's log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_the_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    let key_path = dir.path().join("jwt-signing-key.pk8");
    let key = std::fs::read(&key_path).unwrap();
    let key_hex: String = key[key.len() - 16..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let k = key_path.display();
    let (_, log) = run(
        &mut alpha,
        "steal-key",
        &format!(
            "od -An -tx1 -v {k} | tr -d ' \\n'; echo; echo cat=$?; \
             od -An -tx1 -v /proc/1/root{k}; ls -la {d}; \
             ls /proc/1/root/ /proc/1/cwd/; echo end",
            d = dir.path().display()
        ),
    )
    .await;
    assert_line(&log, &k.to_string(), "No such file or directory");
    assert_line(&log, "/proc/1/root", "Permission denied");
    assert_lacks(&log, &key_hex);
    assert_has(&log, "end");
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        key,
        "the key is unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_or_write_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    let db = dir.path().join("finpool.db");
    let d = db.display();
    let (_, log) = run(
        &mut alpha,
        "steal-db",
        &format!(
            "head -c 16 {d}; echo read=$?; \
             printf PWNED-%s DB >> {d}; echo append=$?; \
             printf PWNED-%s DB >> {d}-wal; echo wal=$?; \
             mkdir -p {p} 2>&1; echo mkdir=$?; \
             printf fds=; ls /proc/self/fd | tr '\\n' ' '; echo; \
             for f in /proc/[0-9]*/fd/*; do head -c 16 \"$f\" 2>/dev/null; done; echo end",
            p = dir.path().display()
        ),
    )
    .await;
    assert_lacks(&log, "SQLite format 3");
    assert_line(&log, &format!("{d}'"), "No such file or directory");
    assert_has(&log, "read=1");
    // No descriptor of the server's (the database's, say) is inherited:
    // `ls` has its stdio and the directory it lists, nothing else.
    assert_has(&log, "fds=0 1 2 3 \n");
    assert_lacks(&log, "append=0");
    assert_lacks(&log, "wal=0");
    assert_has(&log, "end");
    // (The script itself is stored in the database, so the marker it
    // would write is put together only when it runs.)
    for name in ["finpool.db", "finpool.db-wal"] {
        let bytes = std::fs::read(dir.path().join(name)).unwrap_or_default();
        assert!(
            !bytes.windows(8).any(|w| w == b"PWNED-DB"),
            "the job wrote into {name}"
        );
    }
    // The store still works and still holds the job.
    assert_eq!(list_all(&mut alpha).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_another_tenants_log_or_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut alpha, mut beta) = pool(dir.path(), &[], &[]).await;
    // beta's job leaves a secret in its log and its work dir, and stays.
    let victim = submit(
        &mut beta,
        shell_job(
            "victim",
            whole(1),
            &attack("echo beta-secret-in-log; echo beta-secret-in-file > secret; sleep 120"),
        ),
    )
    .await;
    let beta_dir = dir.path().join("jobs").join(&victim.id);
    let secret = beta_dir.join("work").join("secret");
    let start = Instant::now();
    while !secret.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "beta's job never wrote its secret"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = beta_dir.display();
    let (_, log) = run(
        &mut alpha,
        "snoop",
        &format!(
            "cat {b}/output.log; echo log=$?; cat {b}/work/secret; echo file=$?; \
             ls {jobs}; ls /finpool; \
             for p in /proc/[0-9]*; do cat $p/cwd/secret $p/fd/1 2>/dev/null; done; echo end",
            jobs = dir.path().join("jobs").display()
        ),
    )
    .await;
    assert_lacks(&log, "beta-secret");
    assert_line(
        &log,
        &format!("{b}/output.log"),
        "No such file or directory",
    );
    assert_line(
        &log,
        &format!("{b}/work/secret"),
        "No such file or directory",
    );
    assert_has(&log, "log=1");
    assert_has(&log, "file=1");
    assert_has(&log, "end");
    // On the host: the secrets are there, private to beta's own uid.
    let alpha_uid = assert_unprivileged(&log);
    let beta_log = read_logs(&mut beta, &victim.id).await;
    assert_has(&beta_log, "beta-secret-in-log");
    let beta_uid = assert_unprivileged(&beta_log);
    assert_ne!(alpha_uid, beta_uid, "each tenant has its own uid");
    let work = std::fs::metadata(beta_dir.join("work")).unwrap();
    assert_eq!(work.permissions().mode() & 0o777, 0o700);
    assert_eq!(work.uid(), beta_uid);
    let log_file = std::fs::metadata(beta_dir.join("output.log")).unwrap();
    assert_eq!(log_file.permissions().mode() & 0o777, 0o600);
    assert_eq!(log_file.uid(), 0, "the server writes the log");
    assert_eq!(
        std::fs::metadata(&beta_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_write_the_model_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    let mut op = server.operator().await;
    op.models
        .register_model(pb::RegisterModelRequest {
            name: "base-7b".into(),
            size_mib: 1024,
            min_gpu_memory_mib: 1024,
            load_time_ms: 0,
        })
        .await
        .unwrap();
    let model_dir = dir.path().join("models").join("base-7b");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("weights.bin"), "genuine-weights\n").unwrap();
    let mut spec = shell_job(
        "plant",
        whole(1),
        &attack(
            "cat \"$FINPOOL_MODEL_PATH/weights.bin\"; \
             echo planted > \"$FINPOOL_MODEL_PATH/weights.bin\"; echo overwrite=$?; \
             echo planted > \"$FINPOOL_MODEL_PATH/new.bin\"; echo create=$?; \
             mkdir \"$FINPOOL_MODEL_PATH/../evil\"; echo mkdir=$?; \
             rm -f \"$FINPOOL_MODEL_PATH/weights.bin\"; echo rm=$?; echo end",
        ),
    );
    spec.model = "base-7b".into();
    let job = submit(&mut alpha, spec).await;
    wait_for(&mut alpha, Duration::from_secs(60), "plant", |jobs| {
        jobs.iter().any(|j| j.id == job.id && is_terminal(j.state))
    })
    .await;
    let log = read_logs(&mut alpha, &job.id).await;
    assert_unprivileged(&log);
    assert_has(&log, "genuine-weights");
    assert_has(&log, "Read-only file system");
    for attempt in ["overwrite=0", "create=0", "mkdir=0", "rm=0"] {
        assert_lacks(&log, attempt);
    }
    assert_has(&log, "end");
    assert_eq!(
        std::fs::read_to_string(model_dir.join("weights.bin")).unwrap(),
        "genuine-weights\n"
    );
    assert!(!model_dir.join("new.bin").exists());
    assert!(!dir.path().join("models").join("evil").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_signal_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    let pid = server.child.id();
    let (_, log) = run(
        &mut alpha,
        "signal",
        &format!(
            "kill -TERM {pid}; echo term=$?; kill -KILL {pid}; echo kill=$?; \
             kill -KILL 1; echo init=$?; kill -TERM -1; echo all=$?; sleep 1; echo end"
        ),
    )
    .await;
    for attempt in ["term=0", "kill=0", "init=0"] {
        assert_lacks(&log, attempt);
    }
    assert_has(&log, "No such process");
    assert_has(&log, "end");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died:\n{}",
        server.logs()
    );
    // Still serving.
    assert_eq!(list_all(&mut alpha).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_the_servers_environ() {
    let dir = tempfile::tempdir().unwrap();
    let canary = format!("canary-{}", uuid_like());
    let (server, mut alpha, _) = pool(
        dir.path(),
        &[],
        &[("FINPOOL_ESCAPE_CANARY", canary.as_str())],
    )
    .await;
    let pid = server.child.id();
    // The canary really is in the server's environment.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains(&canary));
    let (_, log) = run(
        &mut alpha,
        "environ",
        &format!(
            "cat /proc/{pid}/environ; echo server=$?; \
             for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null; done | grep canary-; \
             env | grep canary-; ps ax 2>/dev/null | grep -c finpool; echo end"
        ),
    )
    .await;
    assert_lacks(&log, &canary);
    assert_line(
        &log,
        &format!("/proc/{pid}/environ"),
        "No such file or directory",
    );
    assert_has(&log, "server=1");
    assert_has(&log, "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_child_does_not_survive_a_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    let marker = uuid_like();
    let escapee = format!("sleep 600; : escapee-{marker}");
    let double = format!("sleep 600; : double-{marker}");
    let script = attack(&format!(
        "setsid sh -c '{escapee}' & \
         sh -c \"setsid sh -c '{double}' &\" & \
         echo started; sleep 600"
    ));
    let job = submit(&mut alpha, shell_job("escape", whole(1), &script)).await;
    // Both escapees run, each in its own session, as the tenant's uid.
    let start = Instant::now();
    let found = loop {
        let found: Vec<(i32, String)> = [&escapee, &double]
            .iter()
            .flat_map(|cmd| processes_running(&["sh", "-c", cmd]))
            .collect();
        if found.len() == 2 {
            break found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the escapees never started: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (pid, _) in &found {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            fields[3],
            pid.to_string(),
            "process {pid} leads its own session"
        );
        let uid = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
        assert_ne!(uid, 0);
    }
    alpha
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: job.id.clone(),
            reason: "escape test".into(),
        })
        .await
        .unwrap();
    // The moment the job shows as cancelled, nothing of it is left.
    let id = job.id.clone();
    wait_for(&mut alpha, Duration::from_secs(30), "the cancel", |jobs| {
        let done = jobs
            .iter()
            .any(|j| j.id == id && j.state == pb::JobState::Cancelled as i32);
        if done {
            let left: Vec<(i32, String)> = [&escapee, &double]
                .iter()
                .flat_map(|cmd| processes_running(&["sh", "-c", cmd]))
                .collect();
            assert!(left.is_empty(), "outlived the cancel: {left:?}");
        }
        done
    })
    .await;
    for (pid, _) in &found {
        assert!(gone(*pid), "process {pid} outlived the cancel");
    }
}

/// The same escape when the job simply ends, or hits its max runtime:
/// its `setsid` child goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_child_does_not_outlive_its_jobs_end_or_max_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    let marker = uuid_like();
    let ends = format!("sleep 600; : ends-{marker}");
    let times_out = format!("sleep 600; : times-out-{marker}");
    let a = submit(
        &mut alpha,
        shell_job(
            "ends",
            whole(1),
            &attack(&format!("setsid sh -c '{ends}' & sleep 1; echo bye")),
        ),
    )
    .await;
    let mut spec = shell_job(
        "times-out",
        whole(1),
        &attack(&format!("setsid sh -c '{times_out}' & sleep 600")),
    );
    spec.max_runtime = Some(prost_types::Duration {
        seconds: 2,
        nanos: 0,
    });
    let b = submit(&mut alpha, spec).await;
    // Both escapees run before their jobs end.
    let start = Instant::now();
    while processes_running(&["sh", "-c", &ends]).is_empty()
        || processes_running(&["sh", "-c", &times_out]).is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the escapees never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, cmd, state) in [
        (&a.id, &ends, pb::JobState::Succeeded),
        (&b.id, &times_out, pb::JobState::Failed),
    ] {
        wait_for(
            &mut alpha,
            Duration::from_secs(30),
            "the job's end",
            |jobs| {
                let done = jobs.iter().any(|j| &j.id == id && j.state == state as i32);
                if done {
                    let left = processes_running(&["sh", "-c", cmd]);
                    assert!(left.is_empty(), "outlived its job: {left:?}");
                }
                done
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_fork_past_the_pids_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut alpha, _) = pool(dir.path(), &["--sandbox-pids-max", "32"], &[]).await;
    let (job, log) = run(
        &mut alpha,
        "fork-bomb",
        "i=0; while [ $i -lt 200 ]; do sleep 67 & i=$((i+1)); echo forked $i; done; echo all-forked",
    )
    .await;
    assert!(
        log.contains("Cannot fork") || log.contains("Resource temporarily unavailable"),
        "no fork failed:\n{log}"
    );
    assert_lacks(&log, "all-forked");
    let most = log
        .lines()
        .filter_map(|l| l.strip_prefix("forked "))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(most < 32, "{most} processes forked under a limit of 32");
    assert_eq!(job.state, pb::JobState::Failed as i32);
    // None of its sleeps outlived it.
    let left = processes_running(&["sleep", "67"]);
    assert!(left.is_empty(), "outlived the job: {left:?}");
}

/// The loader variables a tenant may set (`LD_AUDIT`, `LD_LIBRARY_PATH`,
/// ...) would load the tenant's code into any process that gets them. No
/// process of the job that runs as root (bubblewrap, its init, setpriv)
/// may have the job's environment; nor may it show on the host's process
/// list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_environment_never_reaches_a_root_process() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    let secret = format!("secret-{}", uuid_like());
    let mut spec = shell_job(
        "loader",
        whole(1),
        &attack("echo \"audit=$LD_AUDIT\"; sleep 60"),
    );
    spec.env = [
        ("LD_AUDIT".to_owned(), "/finpool/work/evil.so".to_owned()),
        ("LD_LIBRARY_PATH".to_owned(), "/finpool/work".to_owned()),
        ("API_TOKEN".to_owned(), secret.clone()),
    ]
    .into();
    let job = submit(&mut alpha, spec).await;
    let marker = format!("FINPOOL_JOB_ID={}", job.id);
    let start = Instant::now();
    let procs = loop {
        let procs: Vec<(i32, u32, String, String)> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                let env = String::from_utf8_lossy(&env).replace('\0', "\n");
                if !env.lines().any(|l| l == marker) {
                    return None;
                }
                let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                Some((
                    pid,
                    uid,
                    env,
                    String::from_utf8_lossy(&cmdline).into_owned(),
                ))
            })
            .collect();
        if procs.iter().any(|(_, _, _, cmd)| cmd.starts_with("sleep")) {
            break procs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job never started: {procs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = read_logs(&mut alpha, &job.id).await;
    assert_unprivileged(&log);
    assert_has(&log, "audit=/finpool/work/evil.so");
    assert!(
        procs.iter().any(|(_, uid, _, _)| *uid == 0),
        "bubblewrap runs as root: {procs:?}"
    );
    for (pid, uid, env, cmdline) in &procs {
        assert!(
            !cmdline.contains(&secret),
            "process {pid} shows the secret: {cmdline}"
        );
        if *uid == 0 {
            for var in ["LD_AUDIT", "LD_LIBRARY_PATH", "API_TOKEN"] {
                assert!(
                    !env.contains(var),
                    "root process {pid} ({cmdline}) got {var}:\n{env}"
                );
            }
        }
    }
    // Every process on the host: the secret is on none's command line.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&secret),
                "{:?} shows the secret",
                e.path()
            );
        }
    }
}

/// With `--sandbox-network none` a job has only its own loopback: the
/// server's port (or a database's on the host) is out of reach. With the
/// default, `host`, the same request gets through, which shows the check
/// is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_network_cannot_reach_the_host() {
    for (network, expect) in [("none", false), ("host", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (server, mut alpha, _) = pool(dir.path(), &["--sandbox-network", network], &[]).await;
        let (_, log) = run(
            &mut alpha,
            "connect",
            &format!(
                "curl -s -o /dev/null -m 5 {}/openapi.json; echo curl=$?",
                server.addr
            ),
        )
        .await;
        assert_eq!(
            log.contains("curl=0"),
            expect,
            "--sandbox-network {network}:\n{log}"
        );
    }
}

/// The data dir is private (0700, files 0600) and one server holds it:
/// a second `finpool up` on it exits with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_and_held_by_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut alpha, _) = pool(dir.path(), &[], &[]).await;
    // A job, so the database has written its WAL.
    let (job, _) = run(&mut alpha, "hello", "echo hello").await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    for f in [
        "finpool.db",
        "finpool.db-wal",
        "finpool.db-shm",
        "jwt-signing-key.pk8",
        "audit-signing-key.pk8",
        "finpool.lock",
        "sandbox-uids",
    ] {
        let path = dir.path().join(f);
        if f != "finpool.db-wal" && f != "finpool.db-shm" || path.exists() {
            assert_eq!(mode(&path), 0o600, "{f}");
        }
    }
    assert_eq!(mode(&dir.path().join("jobs")), 0o700);

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_finpool"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--pool")
        .arg(dir.path().join("pool.toml"))
        .env_remove("FINPOOL_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "a second server started:\n{stderr}"
    );
    assert!(
        stderr.contains("is in use by another finpool server")
            && stderr.contains(&format!("pid {}", server.child.id())),
        "{stderr}"
    );
    // A crash frees it: the lock goes with the process.
    server.kill();
    let again = Server::start(dir.path());
    let mut alpha = again.tenant("alpha").await;
    assert_eq!(list_all(&mut alpha).await.len(), 1);
}

/// Admit-to-process-start latency with the sandbox on: from the job's
/// Admitted transition to the first line its command prints (`date`, run
/// by its shell). Prints the figures, and the same with the sandbox off
/// for comparison.
///
/// The target, p95 at most 100 ms, is for the server as shipped: with
/// `FINPOOL_TEST_BIN=target/release/finpool` it is asserted. A debug build
/// (plain `cargo test`) spends much longer in the server itself, so then
/// only a gross regression (p95 over 500 ms) fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxed_jobs_start_within_100ms_of_admission_p95() {
    let off = start_latencies(&["--sandbox", "off"]).await;
    let on = start_latencies(&[]).await;
    let p95 = on.p95;
    let release = std::env::var_os("FINPOOL_TEST_BIN").is_some();
    println!(
        "admit-to-process-start latency, {} jobs each, {}:",
        on.n,
        finpool_bin().display()
    );
    println!("  sandbox on:  {on}");
    println!("  sandbox off: {off}");
    let limit = if release { 100.0 } else { 500.0 };
    assert!(
        p95 <= limit,
        "p95 {p95:.1} ms over {limit} ms with the sandbox on"
    );
}

struct Latencies {
    n: usize,
    p50: f64,
    p95: f64,
    max: f64,
    to_running: (f64, f64),
    spawn: (f64, f64),
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms \
             (admitted to Running recorded: p50 {:.1}, p95 {:.1}; \
             Running recorded to the command's first line: p50 {:.1}, p95 {:.1})",
            self.p50,
            self.p95,
            self.max,
            self.to_running.0,
            self.to_running.1,
            self.spawn.0,
            self.spawn.1
        )
    }
}

/// Ten waves of four 1-GPU jobs on a fresh server started with `extra`.
async fn start_latencies(extra: &[&str]) -> Latencies {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), extra);
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 2, 4).await;
    let mut alpha = server.tenant("alpha").await;
    let (mut latencies, mut to_running, mut spawn) = (Vec::new(), Vec::new(), Vec::new());
    for wave in 0..10 {
        let mut ids = Vec::new();
        for i in 0..4 {
            let spec = shell_job(&format!("start-{wave}-{i}"), whole(1), "date +started=%s%N");
            ids.push(submit(&mut alpha, spec).await.id);
        }
        wait_for(&mut alpha, Duration::from_secs(60), "a wave", |jobs| {
            ids.iter()
                .all(|id| jobs.iter().any(|j| &j.id == id && is_terminal(j.state)))
        })
        .await;
        for id in &ids {
            let full = alpha
                .jobs
                .get_job(pb::GetJobRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(full.state, pb::JobState::Succeeded as i32);
            let at = |state: pb::JobState| {
                full.history
                    .iter()
                    .find(|t| t.to == state as i32)
                    .map(|t| millis(&t.at) as f64)
                    .expect("the transition")
            };
            let admitted = at(pb::JobState::Admitted);
            let running = at(pb::JobState::Running);
            let log = read_logs(&mut alpha, id).await;
            let started_ns: i64 = log
                .trim()
                .strip_prefix("started=")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no start time in {log:?}"));
            let started = started_ns as f64 / 1e6;
            latencies.push(started - admitted);
            to_running.push(running - admitted);
            spawn.push(started - running);
        }
    }
    let (p50, p95, max) = quantiles(&mut latencies);
    let (r50, r95, _) = quantiles(&mut to_running);
    let (s50, s95, _) = quantiles(&mut spawn);
    Latencies {
        n: latencies.len(),
        p50,
        p95,
        max,
        to_running: (r50, r95),
        spawn: (s50, s95),
    }
}

/// p50, p95 and max, in place.
fn quantiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    (at(0.5), at(0.95), v[v.len() - 1])
}

/// Live processes whose argv is exactly `argv`, with their state.
fn processes_running(argv: &[&str]) -> Vec<(i32, String)> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|pid| !gone(*pid))
        .map(|pid| (pid, argv.join(" ")))
        .collect()
}

/// Gone, or a zombie waiting to be reaped.
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{t:x}-{}", std::process::id())
}

/// `--sandbox required` (the default) on a host that cannot sandbox jobs
/// (here: not root) refuses to start, naming what is missing;
/// `--sandbox best-effort` starts, and says jobs run unsandboxed.
#[test]
fn a_host_without_the_sandbox_refuses_to_start_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("pool.toml"), TEST_POOL).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let up = |mode: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(finpool_bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--metrics-addr",
                "off",
                "--sandbox",
                mode,
                "--data-dir",
            ])
            .arg(&data)
            .arg("--pool")
            .arg(data.join("pool.toml"))
            .env_remove("FINPOOL_DATABASE_URL")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let out = up("required").wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without a sandbox:\n{stderr}"
    );
    assert!(
        stderr.contains("--sandbox required: this host cannot sandbox jobs")
            && stderr.contains("missing: root"),
        "{stderr}"
    );
    let mut child = up("best-effort");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.starts_with("finpool is serving on") {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("job sandbox: off (--sandbox best-effort)"),
        "{seen}"
    );
}
