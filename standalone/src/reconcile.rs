//! Start-up reconciliation. When the server died, so did its jobs'
//! processes (they are bound to it); jobs the store still shows as running
//! are settled so that none stays Running forever, and anything of theirs
//! still alive (in their cgroups, or carrying their job id) is killed.

use std::collections::HashSet;

use finpool_domain::{JobId, JobState, RestartPolicy, Timestamp};
use finpool_store::{Change, Store, StoreError};

use crate::sandbox::Sandbox;

/// What reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub failed: Vec<JobId>,
    pub requeued: Vec<JobId>,
    /// Processes of those jobs found still alive and killed.
    pub orphans_killed: usize,
}

pub const SERVER_RESTARTED: &str = "server restarted";

pub async fn after_restart(
    store: &Store,
    sandbox: Option<&Sandbox>,
) -> Result<Reconciled, StoreError> {
    let now = Timestamp::now();
    let mut out = Reconciled::default();
    let mut changes = Vec::new();
    let mut requeue_after = Vec::new();
    for job in store.active_jobs().await? {
        match job.state {
            JobState::Running => match job.spec.restart_policy {
                RestartPolicy::Fail => {
                    changes.push((
                        job.id,
                        Some(JobState::Running),
                        Change::new(JobState::Failed, SERVER_RESTARTED, now),
                    ));
                    out.failed.push(job.id);
                }
                RestartPolicy::Requeue => {
                    changes.push((
                        job.id,
                        Some(JobState::Running),
                        Change::new(JobState::Preempted, SERVER_RESTARTED, now),
                    ));
                    requeue_after.push(job.id);
                }
            },
            // Admitted but never started: its placement is stale; queue it again.
            JobState::Admitted => {
                changes.push((
                    job.id,
                    Some(JobState::Admitted),
                    Change::new(
                        JobState::Pending,
                        "requeued: server restarted before it started",
                        now,
                    ),
                ));
            }
            // Preempted and not yet requeued when the server stopped.
            JobState::Preempted => requeue_after.push(job.id),
            _ => {}
        }
    }
    let touched: HashSet<JobId> = changes
        .iter()
        .map(|(id, _, _)| *id)
        .chain(requeue_after.iter().copied())
        .collect();
    if let Some(sandbox) = sandbox {
        out.orphans_killed += sandbox.kill_leftovers().await;
    }
    out.orphans_killed += kill_orphans(&touched);
    for result in store.transition_many(changes).await? {
        result?;
    }
    let requeues = requeue_after
        .iter()
        .map(|id| {
            (
                *id,
                Some(JobState::Preempted),
                Change::new(JobState::Pending, "requeued after server restart", now),
            )
        })
        .collect();
    for result in store.transition_many(requeues).await? {
        result?;
    }
    out.requeued = requeue_after;
    if !out.failed.is_empty() || !out.requeued.is_empty() {
        tracing::warn!(
            failed = out.failed.len(),
            requeued = out.requeued.len(),
            orphans = out.orphans_killed,
            "reconciled jobs left running by the previous server"
        );
    }
    Ok(out)
}

/// Kills processes still carrying one of `jobs`' ids in their environment
/// (a job's grandchildren can outlive the server even though its direct
/// child cannot). Linux only; elsewhere nothing is found.
fn kill_orphans(jobs: &HashSet<JobId>) -> usize {
    if jobs.is_empty() {
        return 0;
    }
    let wanted: HashSet<Vec<u8>> = jobs
        .iter()
        .map(|id| format!("FINPOOL_JOB_ID={id}").into_bytes())
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|var| wanted.contains(var)) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}
