//! Per-caller request rate limits: a token bucket per key (a tenant, an
//! operator's or regulator's subject, or a source address for callers
//! without a token). Each caller drains only its own bucket, so one
//! tenant's flood is refused without slowing anyone else; the lock is held
//! for a few arithmetic operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::{Principal, Role};

/// Buckets kept before full (idle) ones are dropped: memory stays bounded
/// however many addresses call.
const MAX_BUCKETS: usize = 100_000;

/// A sustained rate and a burst, per caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl RateLimit {
    /// Per source address, for callers without a valid token: enough for
    /// health probes and reflection, not for guessing tokens.
    pub const ANONYMOUS: RateLimit = RateLimit {
        per_second: 20.0,
        burst: 40.0,
    };
}

impl Default for RateLimit {
    /// Generous for people and scripts; a runaway loop is cut off.
    fn default() -> Self {
        Self {
            per_second: 200.0,
            burst: 400.0,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets; `None` limit admits everything.
#[derive(Debug, Default)]
pub struct RateLimiter {
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; `Err` holds the seconds
    /// until the next request would be admitted.
    pub fn admit(&self, key: &str) -> Result<(), f64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Result<(), f64> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // A bucket refilled to its burst is the same as no bucket.
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * limit.per_second
                    < limit.burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - bucket.tokens) / limit.per_second.max(1e-9))
        }
    }
}

impl Principal {
    /// The rate-limit bucket: a tenant's callers share one.
    pub fn bucket(&self) -> String {
        match (self.role, &self.tenant) {
            (Role::Tenant, Some(t)) => format!("tenant/{t}"),
            (role, _) => format!("{role}/{}", self.subject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finpool_domain::Name;
    use std::time::Duration;

    fn tenant(t: &str) -> String {
        Principal {
            subject: "s".into(),
            role: Role::Tenant,
            tenant: Some(Name::parse("t", t).unwrap()),
            issued_at: None,
            expires_at: None,
        }
        .bucket()
    }

    #[test]
    fn a_flooding_tenant_is_cut_off_and_others_are_not() {
        let limiter = RateLimiter::new(Some(RateLimit {
            per_second: 10.0,
            burst: 5.0,
        }));
        let t0 = Instant::now();
        let a = tenant("alpha");
        let b = tenant("beta");
        for _ in 0..5 {
            assert!(limiter.admit_at(&a, t0).is_ok());
        }
        let wait = limiter.admit_at(&a, t0).unwrap_err();
        assert!((wait - 0.1).abs() < 1e-6, "{wait}");
        assert!(limiter.admit_at(&b, t0).is_ok());
        // Refills at the sustained rate.
        assert!(
            limiter
                .admit_at(&a, t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            limiter
                .admit_at(&a, t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn no_limit_admits_everything() {
        let limiter = RateLimiter::new(None);
        for _ in 0..10_000 {
            assert!(limiter.admit(&tenant("alpha")).is_ok());
        }
    }
}
