//! Crash and restart: SIGKILL the server while jobs are queued and
//! running, start it again on the same data dir, and check that every
//! acknowledged job is there, none is duplicated, none is stuck Running,
//! and the old processes are gone.

mod common;

use std::time::Duration;

use common::*;
use finpool_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_job_and_leaves_none_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 2, 4).await;
    let mut alpha = server.tenant("alpha").await;

    // Long jobs leave a child running; we find every process of a job on
    // the host by the job id in its environment, so we can check they die
    // with the server.
    // One child escapes into its own session, as a tenant trying to
    // outlive a crash would.
    let script = |_: &str| "setsid sleep 600 & sleep 600 & echo started; wait".to_owned();
    let mut acknowledged = Vec::new();
    for i in 0..2 {
        let name = format!("fail-{i}");
        acknowledged.push(
            submit(&mut alpha, shell_job(&name, whole(1), &script(&name)))
                .await
                .id,
        );
    }
    let mut requeued = Vec::new();
    for i in 0..2 {
        let name = format!("requeue-{i}");
        let mut spec = shell_job(&name, whole(1), &script(&name));
        spec.restart_policy = pb::RestartPolicy::Requeue as i32;
        spec.idempotency_key = format!("key-{name}");
        let id = submit(&mut alpha, spec).await.id;
        requeued.push(id.clone());
        acknowledged.push(id);
    }
    let first_four = acknowledged.clone();
    // More than the limit of 4: these wait in the queue.
    for i in 0..3 {
        acknowledged.push(
            submit(
                &mut alpha,
                shell_job(&format!("queued-{i}"), whole(1), "sleep 600"),
            )
            .await
            .id,
        );
    }
    wait_for(
        &mut alpha,
        Duration::from_secs(30),
        "four running jobs",
        |jobs| {
            jobs.iter()
                .filter(|j| j.state == pb::JobState::Running as i32)
                .count()
                == 4
                && first_four.iter().all(|id| running_sleeps(id) >= 2)
        },
    )
    .await;
    let old_pids: Vec<i32> = first_four.iter().flat_map(|id| job_pids(id)).collect();
    // At least the shell and its two sleeps for each of the four.
    assert!(old_pids.len() >= 12, "{old_pids:?}");

    server.kill();

    let server = Server::start(dir.path());
    let mut alpha = server.tenant("alpha").await;
    // The old processes (the shells and their children) are gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for pid in &old_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(*pid),
            "process {pid} of a job outlived the server"
        );
    }

    let jobs = list_all(&mut alpha).await;
    let mut ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    ids.sort();
    let mut expected = acknowledged.clone();
    expected.sort();
    assert_eq!(ids, expected, "every acknowledged job, exactly once");

    for job in &jobs {
        let name = job.spec.as_ref().unwrap().name.clone();
        let full = alpha
            .jobs
            .get_job(pb::GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        if name.starts_with("fail-") {
            assert_eq!(full.state, pb::JobState::Failed as i32, "{name}");
            assert_eq!(full.reason, "server restarted");
        }
        if name.starts_with("requeue-") {
            let reasons: Vec<&str> = full.history.iter().map(|t| t.reason.as_str()).collect();
            assert!(reasons.contains(&"server restarted"), "{name}: {reasons:?}");
            assert!(
                full.history
                    .iter()
                    .any(|t| t.to == pb::JobState::Pending as i32
                        && t.from == Some(pb::JobState::Preempted as i32)),
                "{name} was requeued"
            );
        }
    }
    // Whatever runs now is a fresh start on this server, not a leftover:
    // the requeued jobs start again (attempt 2) and write new PID files.
    let jobs = wait_for(
        &mut alpha,
        Duration::from_secs(30),
        "requeued jobs to run again",
        |jobs| {
            requeued.iter().all(|id| {
                job_pids(id).iter().any(|p| !old_pids.contains(p)) && running_sleeps(id) >= 1
            }) && jobs
                .iter()
                .filter(|j| j.state == pb::JobState::Running as i32)
                .count()
                == 4
        },
    )
    .await;
    for job in jobs
        .iter()
        .filter(|j| j.state == pb::JobState::Running as i32)
    {
        let name = &job.spec.as_ref().unwrap().name;
        let expected_attempts = if name.starts_with("requeue-") { 2 } else { 1 };
        assert_eq!(job.attempts, expected_attempts, "{name}");
    }

    // The idempotency key still names the same job after the restart.
    let mut again = shell_job("requeue-0", whole(1), &script("requeue-0"));
    again.restart_policy = pb::RestartPolicy::Requeue as i32;
    again.idempotency_key = "key-requeue-0".into();
    let response = alpha
        .jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(again) })
        .await
        .unwrap()
        .into_inner();
    assert!(!response.created);
    assert_eq!(response.job.unwrap().id, acknowledged[2]);
    assert_eq!(list_all(&mut alpha).await.len(), acknowledged.len());
}

/// Every live process carrying `FINPOOL_JOB_ID=<job>` in its environment.
fn job_pids(job: &str) -> Vec<i32> {
    let want = format!("FINPOOL_JOB_ID={job}").into_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_slice()))
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

/// How many of the job's processes are its `sleep 600`.
fn running_sleeps(job: &str) -> usize {
    job_pids(job)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x00600\x00")
        })
        .count()
}

fn is_zombie(pid: i32) -> bool {
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

/// A clean stop (SIGTERM) stops running jobs and records each per its
/// restart policy, instead of leaving them for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_records_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 2, 2).await;
    let mut alpha = server.tenant("alpha").await;
    let failing = submit(&mut alpha, shell_job("stops", whole(1), "sleep 600")).await;
    let mut spec = shell_job("requeues", whole(1), "sleep 600");
    spec.restart_policy = pb::RestartPolicy::Requeue as i32;
    let requeued = submit(&mut alpha, spec).await;
    wait_for(
        &mut alpha,
        Duration::from_secs(20),
        "both running",
        |jobs| {
            jobs.iter()
                .filter(|j| j.state == pb::JobState::Running as i32)
                .count()
                == 2
        },
    )
    .await;
    let mut server = server;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let status = server.child.wait().unwrap();
    assert!(
        status.success(),
        "finpool up exits cleanly on SIGTERM:\n{}",
        server.logs()
    );
    drop(server);

    let server = Server::start(dir.path());
    let mut alpha = server.tenant("alpha").await;
    let get = |id: String| {
        let mut c = alpha.clone();
        async move {
            c.jobs
                .get_job(pb::GetJobRequest { id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let f = get(failing.id.clone()).await;
    assert_eq!(f.state, pb::JobState::Failed as i32);
    assert_eq!(f.reason, "server shut down");
    let r = get(requeued.id.clone()).await;
    let path: Vec<i32> = r.history.iter().map(|t| t.to).collect();
    assert!(
        path.windows(2)
            .any(|w| w == [pb::JobState::Preempted as i32, pb::JobState::Pending as i32]),
        "requeued on shutdown: {path:?}"
    );
    let _ = list_all(&mut alpha).await;
}
