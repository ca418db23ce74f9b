//! Reclaim on a real pool: a brokerage that wants its guaranteed GPUs back
//! preempts work another brokerage borrowed. The victim gets SIGTERM, the
//! grace period, then SIGKILL, and goes back to Pending with the reason,
//! which `finpool job get` and the Watch stream both show.

mod common;

use std::time::Duration;

use common::*;
use finpool_api::Role;
use finpool_proto::v1 as pb;
use tokio_stream::StreamExt;

/// Ignores SIGTERM (after noting when it came), so only SIGKILL ends it.
const STUBBORN: &str = "trap 'echo TERM at $(date +%s%3N)' TERM; echo started; \
                        while true; do sleep 0.05; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarantee_is_reclaimed_by_preempting_borrowed_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    // The pool has 6 A100s. alpha guarantees none but may borrow all six;
    // beta guarantees two, idle for now (so lent to alpha).
    create_tenant(&mut op, "alpha", 0, 6).await;
    create_tenant(&mut op, "beta", 2, 2).await;
    let mut alpha = server.tenant("alpha").await;
    let mut beta = server.tenant("beta").await;
    let mut events = alpha
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();

    let mut borrowed = Vec::new();
    for i in 0..6 {
        borrowed.push(
            submit(
                &mut alpha,
                shell_job(&format!("borrow-{i}"), whole(1), STUBBORN),
            )
            .await,
        );
    }
    wait_for(
        &mut alpha,
        Duration::from_secs(30),
        "alpha to borrow every A100",
        |jobs| {
            jobs.iter()
                .filter(|j| j.state == pb::JobState::Running as i32)
                .count()
                == 6
        },
    )
    .await;

    // beta now wants one of its guaranteed GPUs.
    let claim = submit(
        &mut beta,
        shell_job("claim", whole(1), "sleep 3; echo mine"),
    )
    .await;

    // alpha's Watch stream shows one job preempted, then requeued.
    let (victim, preempted, requeued) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut preempted: Option<pb::JobEvent> = None;
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            let t = event.transition.clone().unwrap();
            if t.to == pb::JobState::Preempted as i32 {
                preempted = Some(event);
            } else if t.to == pb::JobState::Pending as i32
                && let Some(p) = &preempted
                && p.job_id == event.job_id
            {
                return (event.job_id.clone(), p.transition.clone().unwrap(), t);
            }
        }
        panic!("alpha's watch stream ended");
    })
    .await
    .expect("a preemption within 30 s");
    assert!(borrowed.iter().any(|j| j.id == victim));
    assert!(
        preempted
            .reason
            .contains("tenant beta reclaims its guaranteed GPUs")
            && preempted.reason.contains(&claim.id),
        "{}",
        preempted.reason
    );
    assert!(
        requeued.reason.starts_with("requeued: preempted"),
        "{}",
        requeued.reason
    );

    // SIGTERM came first, was ignored, and SIGKILL followed a grace period
    // (the server's is 1 s) later.
    let logs = read_logs(&mut alpha, &victim).await;
    let term_at: i64 = logs
        .lines()
        .find_map(|l| l.strip_prefix("TERM at "))
        .unwrap_or_else(|| panic!("the victim got no SIGTERM; its log:\n{logs}"))
        .trim()
        .parse()
        .unwrap();
    let ended_after = millis(&preempted.at) - term_at;
    assert!(
        (900..10_000).contains(&ended_after),
        "SIGKILL {ended_after} ms after SIGTERM"
    );

    // `finpool job get` shows the job back in the queue with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finpool"))
        .args(["job", "get", &victim])
        .env("FINPOOL_ADDR", &server.addr)
        .env("FINPOOL_TOKEN", server.token(Role::Tenant, Some("alpha")))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("state").contains("pending"), "{shown}");
    assert!(
        line("preempted").contains("tenant beta reclaims"),
        "{shown}"
    );

    // beta's job ran on the reclaimed card; then the victim runs again.
    let jobs = wait_for(
        &mut beta,
        Duration::from_secs(30),
        "beta's job to finish",
        |jobs| {
            jobs.iter()
                .any(|j| j.id == claim.id && j.state == pb::JobState::Succeeded as i32)
        },
    )
    .await;
    assert_eq!(jobs.len(), 1, "beta sees only its own job");
    wait_for(
        &mut alpha,
        Duration::from_secs(30),
        "the victim to run again",
        |jobs| {
            jobs.iter()
                .any(|j| j.id == victim && j.state == pb::JobState::Running as i32)
        },
    )
    .await;
    // Only one of alpha's jobs had to make room.
    let alpha_jobs = list_all(&mut alpha).await;
    let preempted_jobs: Vec<_> = alpha_jobs
        .iter()
        .filter(|j| j.id != victim && j.state != pb::JobState::Running as i32)
        .collect();
    assert!(preempted_jobs.is_empty(), "{preempted_jobs:#?}");
}
