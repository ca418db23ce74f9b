//! One unprivileged uid (and gid of the same number) per tenant, from a
//! configured range. A tenant's uid is first looked for at a slot derived
//! from its id (so it is the same on every server with the same range),
//! probing on for a free one on a collision; once given it is kept in
//! `<data dir>/sandbox-uids` (0600), so it never changes and no two tenants
//! ever share one.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::str::FromStr;

/// `START:COUNT`: uids START .. START+COUNT-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub start: u32,
    pub count: u32,
}

impl Default for UidRange {
    /// Far above login users (1000..) and the usual subordinate-uid ranges
    /// for rootless containers (100000..).
    fn default() -> Self {
        Self {
            start: 1_500_000_000,
            count: 1_000_000,
        }
    }
}

impl FromStr for UidRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (start, count) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected START:COUNT, e.g. 1500000000:1000000"))?;
        let start: u32 = start.parse().map_err(|e| format!("{s:?}: start: {e}"))?;
        let count: u32 = count.parse().map_err(|e| format!("{s:?}: count: {e}"))?;
        if start < 1000 {
            return Err(format!(
                "{s:?}: the range must start at 1000 or above, clear of system users"
            ));
        }
        if count == 0
            || start
                .checked_add(count)
                .is_none_or(|end| end > u32::MAX - 1)
        {
            return Err(format!(
                "{s:?}: count must be at least 1 and the range below 2^32-1"
            ));
        }
        Ok(Self { start, count })
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.start, self.count)
    }
}

#[derive(Debug)]
pub struct UidMap {
    path: PathBuf,
    range: UidRange,
    by_tenant: HashMap<String, u32>,
    used: HashSet<u32>,
}

impl UidMap {
    pub fn load(path: PathBuf, range: UidRange) -> io::Result<Self> {
        let mut map = Self {
            path,
            range,
            by_tenant: HashMap::new(),
            used: HashSet::new(),
        };
        match fs::read_to_string(&map.path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let parsed = line
                        .split_once(' ')
                        .and_then(|(t, u)| Some((t.to_owned(), u.trim().parse::<u32>().ok()?)));
                    let Some((tenant, uid)) = parsed else {
                        return Err(io::Error::other(format!(
                            "{} line {}: expected `TENANT UID`",
                            map.path.display(),
                            n + 1
                        )));
                    };
                    map.used.insert(uid);
                    map.by_tenant.insert(tenant, uid);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(map)
    }

    /// The tenant's uid, allocating (and saving) one on first use.
    pub fn uid_for(&mut self, tenant: &str) -> io::Result<u32> {
        if let Some(uid) = self.by_tenant.get(tenant) {
            return Ok(*uid);
        }
        let count = u64::from(self.range.count);
        let first = fnv1a(tenant.as_bytes()) % count;
        let uid = (0..count)
            .map(|i| self.range.start + ((first + i) % count) as u32)
            .find(|uid| !self.used.contains(uid))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "every sandbox uid in {} is taken; widen --sandbox-uids",
                    self.range
                ))
            })?;
        self.by_tenant.insert(tenant.to_owned(), uid);
        self.used.insert(uid);
        if let Err(e) = self.save() {
            self.by_tenant.remove(tenant);
            self.used.remove(&uid);
            return Err(e);
        }
        Ok(uid)
    }

    fn save(&self) -> io::Result<()> {
        let mut lines: Vec<(&String, &u32)> = self.by_tenant.iter().collect();
        lines.sort();
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(
            f,
            "# tenant uid: each tenant's jobs run as this uid and gid"
        )?;
        for (tenant, uid) in lines {
            writeln!(f, "{tenant} {uid}")?;
        }
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_distinct_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox-uids");
        // A range of two forces a collision to be probed past.
        let range = UidRange {
            start: 5000,
            count: 2,
        };
        let mut map = UidMap::load(path.clone(), range).unwrap();
        let a = map.uid_for("alpha").unwrap();
        let b = map.uid_for("beta").unwrap();
        assert_ne!(a, b);
        assert!((5000..5002).contains(&a) && (5000..5002).contains(&b));
        assert_eq!(map.uid_for("alpha").unwrap(), a);
        assert!(map.uid_for("gamma").is_err(), "the range is full");
        let mut again = UidMap::load(path.clone(), range).unwrap();
        assert_eq!(again.uid_for("beta").unwrap(), b);
        assert_eq!(again.uid_for("alpha").unwrap(), a);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(
            "200000:10".parse::<UidRange>().unwrap(),
            UidRange {
                start: 200000,
                count: 10
            }
        );
        assert!("0:10".parse::<UidRange>().is_err());
        assert!("2000:0".parse::<UidRange>().is_err());
        assert!("2000".parse::<UidRange>().is_err());
        assert!("4294967000:1000".parse::<UidRange>().is_err());
    }
}
