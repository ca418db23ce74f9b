//! Every process of one job, for stopping it.
//!
//! - Unsandboxed, a job is its process group (what `setsid` escapes).
//! - Sandboxed, a job is bubblewrap's monitor (the server's child) and
//!   the PID namespace under it. The namespace's init is bubblewrap's own
//!   (it ignores SIGTERM, as an init does), and when it dies the kernel
//!   kills everything else in the namespace, `setsid` or not. Its members
//!   are read from the job's cgroup when there is one, else found by
//!   their PID namespace.

use std::os::unix::fs::MetadataExt;

use super::cgroup::JobCgroup;

#[derive(Debug)]
pub enum JobProcs {
    /// A plain child in its own process group.
    Group(libc::pid_t),
    Sandboxed {
        /// bubblewrap's monitor process, the server's child.
        monitor: libc::pid_t,
        cgroup: Option<JobCgroup>,
    },
}

impl JobProcs {
    /// SIGTERM to the job's processes, so it may end cleanly.
    pub fn terminate(&self) {
        match self {
            JobProcs::Group(pgid) => signal(-pgid, libc::SIGTERM),
            JobProcs::Sandboxed { monitor, .. } => {
                // Not to the monitor: it would die at once and take the
                // namespace with it, with no grace period.
                for pid in self.members() {
                    if pid != *monitor {
                        signal(pid, libc::SIGTERM);
                    }
                }
            }
        }
    }

    /// SIGKILL to every process of the job.
    pub fn kill(&self) {
        match self {
            JobProcs::Group(pgid) => signal(-pgid, libc::SIGKILL),
            JobProcs::Sandboxed { monitor, cgroup } => {
                // The namespace's init first: its death kills the rest.
                if let Some(init) = init_of(*monitor) {
                    signal(init, libc::SIGKILL);
                }
                signal(*monitor, libc::SIGKILL);
                if let Some(cg) = cgroup {
                    cg.kill_all();
                }
            }
        }
    }

    /// After the job's process ended: nothing of it may remain. Kills
    /// what is left and removes its cgroup.
    pub async fn finish(&self) {
        match self {
            JobProcs::Group(pgid) => signal(-pgid, libc::SIGKILL),
            JobProcs::Sandboxed { cgroup, .. } => {
                if let Some(cg) = cgroup {
                    let left = cg
                        .kill_and_remove(std::time::Duration::from_millis(100))
                        .await;
                    if left > 0 {
                        tracing::warn!(processes = left, "killed processes a job left behind");
                    }
                }
            }
        }
    }

    fn members(&self) -> Vec<libc::pid_t> {
        match self {
            JobProcs::Group(_) => Vec::new(),
            JobProcs::Sandboxed {
                cgroup: Some(cg), ..
            } => cg.procs(),
            JobProcs::Sandboxed {
                monitor,
                cgroup: None,
            } => {
                let Some(init) = init_of(*monitor) else {
                    return Vec::new();
                };
                let Some(ns) = pid_ns(init) else {
                    return Vec::new();
                };
                all_pids()
                    .into_iter()
                    .filter(|pid| pid_ns(*pid) == Some(ns))
                    .collect()
            }
        }
    }
}

/// The PID namespace's init: the monitor's (only) child.
fn init_of(monitor: libc::pid_t) -> Option<libc::pid_t> {
    std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn pid_ns(pid: libc::pid_t) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?;
    Some((m.dev(), m.ino()))
}

fn all_pids() -> Vec<libc::pid_t> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// kill(2), ignoring a process (or group, for a negative pid) that is
/// already gone.
pub fn signal(pid: libc::pid_t, signal: libc::c_int) {
    if pid == 0 || pid == -1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; 0 and -1 (this
    // group, everyone) are refused above.
    unsafe {
        libc::kill(pid, signal);
    }
}
