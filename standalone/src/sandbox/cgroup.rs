//! A pids cgroup per job: the limit on how many processes a job may have,
//! and a handle on all of them (double forks and `setsid` included) for
//! the kill at the end and at start-up reconciliation.
//!
//! cgroup v2 is used when its hierarchy offers the `pids` controller, else
//! the v1 `pids` hierarchy. Jobs live in
//! `<server's cgroup>/finpool/<data dir's scope>/<job id>`: one scope per
//! data dir, which only the server holding that data dir's lock uses, so
//! at start it can empty and remove whatever its previous run left there.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use finpool_domain::JobId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where this server's job cgroups live.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
    version: Version,
}

/// One job's cgroup.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    version: Version,
}

impl Cgroups {
    /// Finds a pids controller and prepares `<own cgroup>/finpool/<scope>`.
    /// The error says what is missing.
    pub fn detect(scope: &str) -> Result<Self, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let mounts = parse_mounts(&mountinfo);
        // cgroup v2, when it has the pids controller.
        if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2")
            && let Some(path) = own_path(&own, |controllers| controllers.is_empty())
        {
            let dir = m.dir_of(path);
            let controllers =
                fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "pids") {
                return setup_v2(&dir, scope).map(|base| Self {
                    base,
                    version: Version::V2,
                });
            }
        }
        let Some(m) = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "pids"))
        else {
            return Err("a cgroup pids controller (neither a cgroup v1 `pids` hierarchy nor cgroup v2 with `pids` is mounted)".into());
        };
        let Some(path) = own_path(&own, |controllers| {
            controllers.split(',').any(|c| c == "pids")
        }) else {
            return Err("a cgroup pids controller (this process is in no v1 pids cgroup)".into());
        };
        let base = m.dir_of(path).join("finpool").join(scope);
        fs::create_dir_all(&base)
            .map_err(|e| format!("a writable cgroup pids hierarchy ({}: {e})", base.display()))?;
        Ok(Self {
            base,
            version: Version::V1,
        })
    }

    pub fn describe(&self) -> String {
        let v = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        format!("cgroup {v} {}", self.base.display())
    }

    /// A fresh cgroup for `job` allowing `pids_max` processes.
    pub fn create(&self, job: JobId, pids_max: u32) -> io::Result<JobCgroup> {
        let cg = self.job(job);
        if cg.dir.exists() {
            // Left over by an earlier attempt of this job: empty it first.
            cg.kill_all();
            let _ = fs::remove_dir(&cg.dir);
        }
        fs::create_dir(&cg.dir)?;
        fs::write(cg.dir.join("pids.max"), pids_max.to_string())?;
        Ok(cg)
    }

    /// Empties and removes every job cgroup in this scope: at start, none
    /// of this data dir's jobs runs, so anything found there is left over
    /// from the previous run. Returns how many processes it killed.
    pub async fn clear(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.base) else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let cg = JobCgroup {
                    dir: entry.path(),
                    version: self.version,
                };
                killed += cg.kill_and_remove(Duration::ZERO).await;
            }
        }
        killed
    }

    /// The cgroup `job` has (or would have).
    pub fn job(&self, job: JobId) -> JobCgroup {
        JobCgroup {
            dir: self.base.join(job.to_string()),
            version: self.version,
        }
    }
}

impl JobCgroup {
    /// Opened in the server; the job's first process writes "0" to it
    /// before it execs, so it is in the cgroup before it can fork.
    pub fn procs_file(&self) -> io::Result<OwnedFd> {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(f.into())
    }

    /// The processes in the cgroup now.
    pub fn procs(&self) -> Vec<libc::pid_t> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL to every process in it, once.
    pub fn kill_all(&self) -> usize {
        if self.version == Version::V2 {
            // cgroup.kill (Linux 5.14+) kills atomically, forks included.
            let _ = fs::OpenOptions::new()
                .write(true)
                .open(self.dir.join("cgroup.kill"))
                .and_then(|mut f| f.write_all(b"1"));
        }
        let procs = self.procs();
        for pid in &procs {
            super::procs::signal(*pid, libc::SIGKILL);
        }
        procs.len()
    }

    /// Removes it, first giving its processes `settle` to end by
    /// themselves (a PID namespace's init is still being torn down just
    /// after the job's main process is reaped), then killing whatever is
    /// left until it is empty. Returns how many processes it had to kill.
    pub async fn kill_and_remove(&self, settle: Duration) -> usize {
        if !self.dir.exists() {
            return 0;
        }
        let start = std::time::Instant::now();
        let mut killed = 0;
        for _ in 0..500 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return killed,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return killed,
                // Busy while its processes are dying or not yet reaped.
                Err(_) => {
                    if start.elapsed() >= settle {
                        killed += self.kill_all();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "could not remove a job's cgroup");
        killed
    }
}

struct Mount {
    root: String,
    mount_point: PathBuf,
    fstype: String,
    super_options: String,
}

impl Mount {
    /// The directory of cgroup `path` (as /proc/self/cgroup names it)
    /// under this mount.
    fn dir_of(&self, path: &str) -> PathBuf {
        let rel = path
            .strip_prefix(self.root.as_str())
            .filter(|_| self.root != "/")
            .unwrap_or(path);
        self.mount_point.join(rel.trim_start_matches('/'))
    }
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?.to_owned();
            let _source = right.next()?;
            let super_options = right.next().unwrap_or_default().to_owned();
            Some(Mount {
                root: unescape(left.get(3)?),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                fstype,
                super_options,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// This process's cgroup path in the hierarchy whose controller list
/// (the second field of /proc/self/cgroup) matches.
fn own_path(cgroup: &str, matches: impl Fn(&str) -> bool) -> Option<&str> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        matches(controllers).then_some(path)
    })
}

/// cgroup v2: `pids` must be enabled for `own`'s children, and for those
/// of each level down to the scope. A cgroup that holds processes cannot
/// enable controllers for children, so the server first moves itself into
/// a leaf, `own/server`, as delegated services do.
fn setup_v2(own: &Path, scope: &str) -> Result<PathBuf, String> {
    let enable = |dir: &Path| {
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.subtree_control"))
            .and_then(|mut f| f.write_all(b"+pids"))
    };
    if enable(own).is_err() {
        let leaf = own.join("server");
        fs::create_dir_all(&leaf)
            .and_then(|()| fs::write(leaf.join("cgroup.procs"), "0"))
            .and_then(|()| enable(own))
            .map_err(|e| {
                format!(
                    "a cgroup v2 pids controller for jobs (enabling pids below {}: {e})",
                    own.display()
                )
            })?;
    }
    let mut dir = own.to_path_buf();
    for level in ["finpool", scope] {
        dir.push(level);
        fs::create_dir_all(&dir)
            .and_then(|()| enable(&dir))
            .map_err(|e| {
                format!(
                    "a cgroup v2 pids controller for jobs ({}: {e})",
                    dir.display()
                )
            })?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_and_v2_mounts_and_paths() {
        let info = "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    50 31 0:40 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        let mounts = parse_mounts(info);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].fstype, "cgroup");
        assert!(mounts[0].super_options.contains("pids"));
        assert_eq!(mounts[1].fstype, "cgroup2");
        let own = "8:pids:/system.slice/finpool.service\n4:memory:/docker/abc/x\n0::/";
        let pids = own_path(own, |c| c.split(',').any(|c| c == "pids")).unwrap();
        assert_eq!(
            mounts[0].dir_of(pids),
            PathBuf::from("/sys/fs/cgroup/pids/system.slice/finpool.service")
        );
        let mem = own_path(own, |c| c == "memory").unwrap();
        assert_eq!(
            mounts[2].dir_of(mem),
            PathBuf::from("/sys/fs/cgroup/memory/x")
        );
        assert_eq!(own_path(own, |c| c.is_empty()), Some("/"));
    }
}
