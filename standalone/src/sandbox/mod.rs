//! The job sandbox: how a tenant's job is kept away from the server, the
//! pool's data and other tenants' jobs on one host.
//!
//! Each job runs under bubblewrap (`bwrap`), started by the server as root:
//!
//! - **Identity.** Inside, `setpriv` switches to the tenant's own
//!   unprivileged uid and gid (see [`uids`]), clears supplementary groups,
//!   every capability (bounding set included) and sets no-new-privs, then
//!   execs the job's command.
//! - **Files.** The root is a fresh tmpfs holding read-only binds of the
//!   system (`/usr`, `/etc`, the `/bin` and `/lib` links), a fresh `/proc`,
//!   a minimal `/dev`, a private `/tmp`, the job's own work dir at
//!   [`JOB_WORK_DIR`] (0700, owned by its uid) and the model cache
//!   read-only at [`JOB_MODELS_DIR`]. The data dir, with the key, the
//!   database and every other job's directory and log, is not in its view.
//!   Its stdout and stderr are a pipe the server drains into its log.
//! - **GPUs.** `/dev/nvidia<N>` of its own cards and the driver's control
//!   nodes, when present.
//! - **Processes.** Its own PID, IPC and UTS namespaces, so the server and
//!   other jobs are invisible and cannot be signalled; a pids cgroup with
//!   `pids.max` (see [`cgroup`]); `--die-with-parent` and a parent-death
//!   signal on bubblewrap, so the job dies with the server. Killing the
//!   namespace's init kills every process in it (see [`procs`]).

pub mod cgroup;
pub mod procs;
pub mod uids;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use finpool_domain::{JobId, Placement};
use thiserror::Error;

use self::cgroup::{Cgroups, JobCgroup};
use self::uids::UidMap;
pub use self::uids::UidRange;

/// Where a sandboxed job finds its work dir (also its `HOME`).
pub const JOB_WORK_DIR: &str = "/finpool/work";
/// Where a sandboxed job finds the model cache, read-only.
pub const JOB_MODELS_DIR: &str = "/finpool/models";
/// The job's environment, as a file in its view (read-only).
pub const JOB_ENV_FILE: &str = "/finpool/job.env";
/// What runs the job's command, as the tenant's uid: with only the
/// environment in [`JOB_ENV_FILE`].
const LOAD_ENV_AND_EXEC: &str =
    "unset PATH FINPOOL_JOB_ID; set -a; . /finpool/job.env || exit 127; set +a; exec \"$@\"";
/// The tenant-to-uid table in the data dir.
pub const UID_FILE: &str = "sandbox-uids";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Every job is sandboxed; a host that cannot do it refuses to start.
    #[default]
    Required,
    /// Sandbox what the host allows; warn about the rest.
    BestEffort,
    /// Jobs run as the server's user, as plain child processes.
    Off,
}

impl FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "required" => Ok(Self::Required),
            "best-effort" => Ok(Self::BestEffort),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?}: expected required, best-effort or off")),
        }
    }
}

impl std::fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Required => "required",
            Self::BestEffort => "best-effort",
            Self::Off => "off",
        })
    }
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// The uids (and gids) tenants' jobs run as.
    pub uids: UidRange,
    /// The most processes (and threads) one job may have.
    pub pids_max: u32,
    /// Whether jobs share the host's network or have none (loopback only).
    pub network: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            mode: SandboxMode::Required,
            uids: UidRange::default(),
            pids_max: 4096,
            network: true,
        }
    }
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error(
        "--sandbox required: this host cannot sandbox jobs; missing: {}. \
         Install what is missing, or start with --sandbox best-effort (or off) \
         to run jobs with less isolation",
        .0.join("; ")
    )]
    Unavailable(Vec<String>),
    #[error("sandbox uid table {path}: {source}")]
    Uids {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A host's sandbox, checked at start.
#[derive(Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    setpriv: PathBuf,
    /// The shell that loads the job's environment once `setpriv` has
    /// dropped root, then execs the job's command.
    sh: PathBuf,
    /// The read-only view of the system, as bubblewrap arguments (with a
    /// tmpfs over the data dir should it lie inside that view).
    system: Vec<OsString>,
    cgroups: Option<Cgroups>,
    pids_max: u32,
    network: bool,
    uids: Mutex<UidMap>,
    range: UidRange,
    /// Each NVIDIA card's device minor (`/dev/nvidia<minor>`) by UUID.
    gpu_minors: HashMap<String, u32>,
}

/// What a sandboxed job's start needs beyond the command.
pub struct Prepared {
    /// bubblewrap, with a minimal environment of its own. It reads its
    /// options from `args`, so the job does not see them (they name host
    /// paths) on its init's command line.
    pub command: tokio::process::Command,
    /// bubblewrap's options (a memfd, close-on-exec like `env_file`).
    pub args: OwnedFd,
    /// The job's environment, which bubblewrap copies into the sandbox
    /// (a memfd, close-on-exec: the child must clear that flag before it
    /// execs).
    pub env_file: OwnedFd,
    pub cgroup: Option<JobCgroup>,
    /// The cgroup's `cgroup.procs`, for the child to join before exec.
    pub cgroup_procs: Option<OwnedFd>,
    pub uid: u32,
}

impl Sandbox {
    /// Checks what the host offers against `config.mode`. `Ok(None)`:
    /// jobs run unsandboxed (mode off, or best-effort on a host with no
    /// sandbox at all).
    pub fn prepare(
        config: &SandboxConfig,
        data_dir: &Path,
    ) -> Result<Option<Sandbox>, SandboxError> {
        if config.mode == SandboxMode::Off {
            tracing::warn!(
                "--sandbox off: jobs run as the server's user and can reach its data dir"
            );
            return Ok(None);
        }
        let mut missing = Vec::new();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            missing.push(format!(
                "root (the server runs as uid {euid}; it must be root to switch each job to its tenant's uid)"
            ));
        }
        let bwrap = find_program("bwrap");
        if bwrap.is_none() {
            missing.push(
                "bubblewrap (`bwrap` is not on PATH; Debian: apt-get install bubblewrap)".into(),
            );
        }
        let setpriv = find_program("setpriv");
        if setpriv.is_none() {
            missing.push("setpriv (`setpriv` is not on PATH; Debian: util-linux)".into());
        }
        let sh = find_program("sh");
        if sh.is_none() {
            missing.push("a shell (`sh` is not on PATH)".into());
        }
        let mut system = system_view();
        if let Ok(data) = std::fs::canonicalize(data_dir)
            && system_dirs().any(|d| data.starts_with(d))
        {
            system.extend(["--tmpfs".into(), data.into_os_string()]);
        }
        let mut sandbox = None;
        if let (Some(bwrap), Some(setpriv), Some(sh), 0) = (bwrap, setpriv, sh, euid) {
            match trial(&bwrap, &setpriv, &system, config) {
                Ok(()) => sandbox = Some((bwrap, setpriv, sh)),
                Err(why) => missing.push(why),
            }
        }
        let cgroups = match Cgroups::detect(&cgroup_scope(data_dir)) {
            Ok(c) => Some(c),
            Err(why) => {
                missing.push(why);
                None
            }
        };
        if !missing.is_empty() {
            if config.mode == SandboxMode::Required {
                return Err(SandboxError::Unavailable(missing));
            }
            tracing::warn!(missing = %missing.join("; "),
                "--sandbox best-effort: jobs get less isolation than they should");
        }
        let Some((bwrap, setpriv, sh)) = sandbox else {
            tracing::warn!("--sandbox best-effort: jobs run unsandboxed, as the server's user");
            return Ok(None);
        };
        let path = data_dir.join(UID_FILE);
        let uids = UidMap::load(path.clone(), config.uids)
            .map_err(|source| SandboxError::Uids { path, source })?;
        Ok(Some(Sandbox {
            bwrap,
            setpriv,
            sh,
            system,
            cgroups,
            pids_max: config.pids_max,
            network: config.network,
            uids: Mutex::new(uids),
            range: config.uids,
            gpu_minors: gpu_minors(Path::new("/proc/driver/nvidia/gpus")),
        }))
    }

    /// One line for the server's start-up output.
    pub fn describe(&self) -> String {
        format!(
            "bubblewrap {}, tenant uids {}, {}, {}",
            self.bwrap.display(),
            self.range,
            if self.network {
                "host network"
            } else {
                "no network"
            },
            match &self.cgroups {
                Some(c) => format!("pids.max {} ({})", self.pids_max, c.describe()),
                None => "no pids limit (no cgroup pids controller)".into(),
            }
        )
    }

    /// At start (no job of this data dir runs yet): kills whatever the
    /// previous run's jobs left in their cgroups and removes them. Returns
    /// how many processes it found.
    pub async fn kill_leftovers(&self) -> usize {
        match &self.cgroups {
            Some(cgroups) => cgroups.clear().await,
            None => 0,
        }
    }

    /// Makes the job's work dir its tenant's, its cgroup, and the command
    /// that runs `argv` in the sandbox with exactly `env`.
    ///
    /// Nothing of the job's environment reaches a process that still runs
    /// as root: bubblewrap and `setpriv` get a minimal one (a tenant's
    /// `LD_AUDIT` or `LD_LIBRARY_PATH` must not load into them). The
    /// job's own goes into the sandbox as a file, [`JOB_ENV_FILE`], which
    /// a shell running as the tenant's uid loads before it execs the
    /// job's command; so it is never on a command line either.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_job(
        &self,
        job: JobId,
        tenant: &str,
        placement: &Placement,
        host_work_dir: &Path,
        host_models_dir: &Path,
        argv: &[String],
        env: &[(OsString, OsString)],
    ) -> std::io::Result<Prepared> {
        let uid = self
            .uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .uid_for(tenant)?;
        std::os::unix::fs::chown(host_work_dir, Some(uid), Some(uid))?;
        std::fs::set_permissions(host_work_dir, std::fs::Permissions::from_mode(0o700))?;

        let env_file = env_memfd(env)?;
        let mut args: Vec<OsString> = [
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        .map(OsString::from)
        .to_vec();
        if !self.network {
            args.push("--unshare-net".into());
        }
        args.extend(self.system.iter().cloned());
        args.extend(
            [
                "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
                "--perms", "0755", "--dir", "/finpool", "--bind",
            ]
            .map(OsString::from),
        );
        args.extend([host_work_dir.into(), JOB_WORK_DIR.into()]);
        if host_models_dir.is_dir() {
            args.extend([
                "--ro-bind".into(),
                host_models_dir.into(),
                JOB_MODELS_DIR.into(),
            ]);
        }
        for dev in gpu_devices(placement, &self.gpu_minors) {
            args.extend(["--dev-bind".into(), dev.clone().into(), dev.into()]);
        }
        args.extend([
            "--perms".into(),
            "0444".into(),
            "--ro-bind-data".into(),
            env_file.as_raw_fd().to_string().into(),
            JOB_ENV_FILE.into(),
        ]);
        args.extend(["--chdir".into(), JOB_WORK_DIR.into()]);
        let options = args_memfd(&args)?;
        let mut args: Vec<OsString> = vec![
            "--args".into(),
            options.as_raw_fd().to_string().into(),
            self.setpriv.clone().into(),
        ];
        args.extend(drop_to(uid).into_iter().map(OsString::from));
        args.extend([
            "--".into(),
            self.sh.clone().into(),
            "-c".into(),
            LOAD_ENV_AND_EXEC.into(),
            "finpool-job".into(),
        ]);
        args.extend(argv.iter().map(OsString::from));

        let cgroup = match &self.cgroups {
            Some(c) => Some(c.create(job, self.pids_max)?),
            None => None,
        };
        let cgroup_procs = match cgroup.as_ref().map(|c| c.procs_file()).transpose() {
            Ok(fd) => fd,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.kill_all();
                }
                return Err(e);
            }
        };
        let mut command = tokio::process::Command::new(&self.bwrap);
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            // So start-up reconciliation's scan finds bubblewrap too.
            .env("FINPOOL_JOB_ID", job.to_string());
        Ok(Prepared {
            command,
            args: options,
            env_file,
            cgroup,
            cgroup_procs,
            uid,
        })
    }
}

/// bubblewrap's options, each NUL-terminated, in a memfd read from its
/// start.
fn args_memfd(args: &[OsString]) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let mut bytes = Vec::new();
    for arg in args {
        if arg.as_bytes().contains(&0) {
            return Err(std::io::Error::other("a NUL byte in a path"));
        }
        bytes.extend_from_slice(arg.as_bytes());
        bytes.push(0);
    }
    memfd(c"finpool-bwrap-args", &bytes)
}

fn memfd(name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: a valid C string; the fd returned is ours to own.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file.into())
}

/// The job's environment as `export NAME='value'` lines, in a memfd read
/// from its start. Names are checked by job validation (and ours are
/// fixed); values are single-quoted, so nothing in them is interpreted.
fn env_memfd(env: &[(OsString, OsString)]) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let mut text = Vec::new();
    for (key, value) in env {
        let key = key.as_bytes();
        let valid = key
            .first()
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            && key.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !valid || value.as_bytes().contains(&0) {
            return Err(std::io::Error::other(format!(
                "environment variable {:?} cannot be passed on",
                String::from_utf8_lossy(key)
            )));
        }
        text.extend_from_slice(b"export ");
        text.extend_from_slice(key);
        text.extend_from_slice(b"='");
        for b in value.as_bytes() {
            if *b == b'\'' {
                text.extend_from_slice(b"'\\''");
            } else {
                text.push(*b);
            }
        }
        text.extend_from_slice(b"'\n");
    }
    memfd(c"finpool-job-env", &text)
}

/// The cgroup scope of a data dir: a digest of its canonical path.
fn cgroup_scope(data_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = path
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{digest:016x}")
}

/// setpriv's arguments: become `uid`/`uid` with no groups, no
/// capabilities (none to inherit, none to regain) and no new privileges.
fn drop_to(uid: u32) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--no-new-privs".into(),
    ]
}

/// The device nodes of the job's own cards, plus the driver's shared
/// control nodes, that exist on this host. A card's node is found by its
/// UUID when the driver lists it (the minor need not be the index), else
/// by its index.
fn gpu_devices(placement: &Placement, minors: &HashMap<String, u32>) -> Vec<PathBuf> {
    if placement.gpus.is_empty() {
        return Vec::new();
    }
    let mut indices: Vec<u32> = placement
        .gpus
        .iter()
        .map(|g| minors.get(&g.uuid).copied().unwrap_or(g.index))
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices
        .into_iter()
        .map(|i| PathBuf::from(format!("/dev/nvidia{i}")))
        .chain(
            [
                "/dev/nvidiactl",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidia-modeset",
            ]
            .map(PathBuf::from),
        )
        .filter(|p| p.exists())
        .collect()
}

/// The system directories a job sees, read-only.
fn system_dirs() -> impl Iterator<Item = &'static str> {
    [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
    ]
    .into_iter()
}

/// `Device Minor` by `GPU UUID` from the driver's
/// `/proc/driver/nvidia/gpus/<bus id>/information` files.
fn gpu_minors(dir: &Path) -> HashMap<String, u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path().join("information")).ok()?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            };
            Some((field("GPU UUID")?, field("Device Minor")?.parse().ok()?))
        })
        .collect()
}

/// Read-only binds of the system directories that exist, in order; the
/// merged-/usr links (`/bin -> usr/bin`) as links.
fn system_view() -> Vec<OsString> {
    let mut args = Vec::new();
    for dir in system_dirs() {
        let path = Path::new(dir);
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(path) {
                args.extend(["--symlink".into(), target.into_os_string(), dir.into()]);
            }
        } else if meta.is_dir() {
            args.extend(["--ro-bind".into(), dir.into(), dir.into()]);
        }
    }
    args
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// Runs `true` the way a job runs, to find out early whether it works.
fn trial(
    bwrap: &Path,
    setpriv: &Path,
    system: &[OsString],
    config: &SandboxConfig,
) -> Result<(), String> {
    let out = std::process::Command::new(bwrap)
        .args([
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ])
        .args((!config.network).then_some("--unshare-net"))
        .args(system)
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(["--perms", "1777", "--tmpfs", "/tmp"])
        .args(["--perms", "0755", "--dir", "/finpool"])
        .arg(setpriv)
        .args(drop_to(config.uids.start))
        .args(["--", "true"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("a working bubblewrap ({}: {e})", bwrap.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "a working bubblewrap (a trial sandbox failed, {}: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in ["required", "best-effort", "off"] {
            assert_eq!(m.parse::<SandboxMode>().unwrap().to_string(), m);
        }
        assert!("on".parse::<SandboxMode>().is_err());
        assert_eq!(SandboxMode::default(), SandboxMode::Required);
    }

    #[test]
    fn the_environment_file_quotes_every_value() {
        use std::io::Read;
        let env = [
            (OsString::from("A"), OsString::from("it's $HOME `x` \\n")),
            (OsString::from("B"), OsString::from("line\nbreak")),
        ];
        let mut text = String::new();
        std::fs::File::from(env_memfd(&env).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{text}\nprintf '%s|%s' \"$A\" \"$B\""))
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "it's $HOME `x` \\n|line\nbreak"
        );
        let bad = [(OsString::from("A B"), OsString::from("x"))];
        assert!(env_memfd(&bad).is_err());
    }

    #[test]
    fn no_gpu_nodes_for_a_cpu_job() {
        let p = Placement {
            node: "n".into(),
            gpus: vec![],
        };
        assert!(gpu_devices(&p, &HashMap::new()).is_empty());
    }

    #[test]
    fn gpu_minors_come_from_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let card = dir.path().join("0000:3b:00.0");
        std::fs::create_dir(&card).unwrap();
        std::fs::write(
            card.join("information"),
            "Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\nGPU UUID: \t GPU-1234\nDevice Minor: \t 3\n",
        )
        .unwrap();
        let minors = gpu_minors(dir.path());
        assert_eq!(minors.get("GPU-1234"), Some(&3));
    }
}
