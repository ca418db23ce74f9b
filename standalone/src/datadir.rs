//! The data dir: private to the server (0700, its files 0600), and held by
//! one server at a time through an exclusive lock on `finpool.lock`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "finpool.lock";
/// Files the server keeps there, made 0600 if an older server left them
/// readable.
const PRIVATE_FILES: &[&str] = &[
    "finpool.db",
    "finpool.db-wal",
    "finpool.db-shm",
    "jwt-signing-key.pk8",
    "audit-signing-key.pk8",
    crate::sandbox::UID_FILE,
];

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data dir {dir} is in use by another finpool server{holder} (it holds the lock on {lock}); \
         stop it, or give this one another --data-dir"
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("data dir {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Held for as long as the server runs; the lock goes with the process.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Whether a server holds the data dir's lock now (it is starting or
/// running). Reads only: a missing lock file means no.
pub fn is_served(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).open(dir.join(LOCK_FILE)) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own; released when it closes.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

/// Creates (or tightens) the data dir and takes its lock.
pub fn open(dir: &Path, sqlite: bool) -> Result<DataDirLock, DataDirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataDirError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;

    let lock_path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = fs::read_to_string(&lock_path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(DataDirError::Locked {
                dir: dir.to_path_buf(),
                lock: lock_path,
                holder,
            });
        }
        return Err(DataDirError::Io {
            path: lock_path,
            source: err,
        });
    }
    file.set_len(0).map_err(io(&lock_path))?;
    writeln!(file, "{}", std::process::id()).map_err(io(&lock_path))?;

    for name in PRIVATE_FILES {
        let path = dir.join(name);
        match fs::set_permissions(&path, fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataDirError::Io { path, source: e }),
        }
    }
    // SQLite gives its -wal and -shm files the database file's mode, so a
    // database created 0600 keeps them private too.
    if sqlite {
        let db = dir.join("finpool.db");
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&db)
            .map_err(io(&db))?;
    }
    let jobs = dir.join("jobs");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&jobs)
        .map_err(io(&jobs))?;
    fs::set_permissions(&jobs, fs::Permissions::from_mode(0o700)).map_err(io(&jobs))?;
    // The model cache is bound read-only into sandboxed jobs, which run as
    // other uids: it must be readable by them (the data dir above it is
    // not reachable from outside).
    let models = dir.join("models");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&models)
        .map_err(io(&models))?;
    fs::set_permissions(&models, fs::Permissions::from_mode(0o755)).map_err(io(&models))?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_and_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("jwt-signing-key.pk8"), b"k").unwrap();
        fs::set_permissions(
            dir.join("jwt-signing-key.pk8"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let lock = open(&dir, true).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("jwt-signing-key.pk8")), 0o600);
        assert_eq!(mode(&dir.join("finpool.db")), 0o600);
        assert_eq!(mode(&dir.join(LOCK_FILE)), 0o600);
        assert_eq!(mode(&dir.join("jobs")), 0o700);
        // flock locks belong to the open file, so a second open in this
        // process is refused just as another process would be.
        match open(&dir, true) {
            Err(DataDirError::Locked { holder, .. }) => {
                assert_eq!(holder, format!(" (pid {})", std::process::id()))
            }
            other => panic!("expected the lock to be held: {other:?}"),
        }
        drop(lock);
        open(&dir, true).expect("free again once the holder is gone");
    }
}
