//! A cap on each caller's open streams (job watches and log follows). A
//! stream holds a slot for as long as it is open, and gives it back when it
//! ends for any reason (the client went away, the job ended, the server
//! closed it), so a closed stream costs nothing. One tenant's streams
//! therefore cannot use up the server's file descriptors or memory for
//! everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;

use crate::auth::Principal;
use crate::state::ApiState;

/// How often an open stream re-checks its caller.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Resolves when an open stream must end: the caller's tenant was
/// suspended, its subject revoked or its token expired (access is checked
/// while the stream lasts, not only when it opens), or the server is
/// shutting down. The status says which.
pub async fn lapse(state: ApiState, who: Principal) -> Status {
    let mut closing = state.closing.subscribe();
    loop {
        if *closing.borrow_and_update() {
            return Status::unavailable("the server is shutting down; reconnect");
        }
        if let Err(e) = state.revocations.check(&who) {
            return Status::unauthenticated(e.to_string());
        }
        if who.expired_at(jsonwebtoken::get_current_timestamp()) {
            return Status::unauthenticated("invalid token: the token has expired");
        }
        tokio::select! {
            _ = closing.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// The default cap on one caller's open streams.
pub const DEFAULT_STREAMS_PER_CALLER: u32 = 64;

/// The default cap on all callers' open streams together.
pub const DEFAULT_STREAMS_TOTAL: u32 = 4096;

/// The key under which the total is counted (no caller's bucket has it).
const TOTAL: &str = "";

#[derive(Debug)]
pub struct StreamSlots {
    cap: u32,
    /// All callers together: each open stream holds a connection, and the
    /// process's file descriptors are finite, so many tenants together
    /// must not use them up either.
    total_cap: u32,
    open: Mutex<HashMap<String, u32>>,
}

/// One open stream's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: String,
}

impl StreamSlots {
    pub fn new(cap: u32, total_cap: u32) -> Arc<Self> {
        Arc::new(Self {
            cap,
            total_cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `who` (a tenant's callers share their tenant's), or
    /// RESOURCE_EXHAUSTED when it has `cap` streams open.
    pub fn acquire(self: &Arc<Self>, who: &Principal) -> Result<StreamSlot, Status> {
        let key = who.bucket();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key.clone()).or_default();
        if *count >= self.cap {
            tracing::debug!(caller = %key, cap = self.cap, "stream refused: too many open");
            return Err(Status::resource_exhausted(format!(
                "streams: this caller already has {} open, the most allowed; close one first",
                self.cap
            )));
        }
        *count += 1;
        let total = open.entry(TOTAL.to_owned()).or_default();
        if *total >= self.total_cap {
            tracing::warn!(
                cap = self.total_cap,
                "stream refused: the server's stream cap is reached"
            );
            let count = open.get_mut(&key).expect("counted above");
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
            return Err(Status::resource_exhausted(format!(
                "streams: the server has {} open, the most it serves; retry later",
                self.total_cap
            )));
        }
        *total += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            key,
        })
    }

    /// How many streams `who` has open.
    pub fn open_for(&self, who: &Principal) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&who.bucket()).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        for key in [self.key.as_str(), TOTAL] {
            if let Some(count) = open.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use finpool_domain::Name;

    fn tenant(t: &str, subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            role: Role::Tenant,
            tenant: Some(Name::parse("t", t).unwrap()),
            issued_at: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_tenant_is_capped_across_its_callers_and_slots_come_back() {
        let slots = StreamSlots::new(2, 100);
        let a1 = tenant("alpha", "desk-1");
        let a2 = tenant("alpha", "desk-2");
        let b = tenant("beta", "desk-1");
        let first = slots.acquire(&a1).unwrap();
        let _second = slots.acquire(&a2).unwrap();
        let refused = slots.acquire(&a1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        // Another tenant is not affected.
        let _other = slots.acquire(&b).unwrap();
        drop(first);
        assert_eq!(slots.open_for(&a1), 1);
        assert!(slots.acquire(&a1).is_ok());
    }

    #[test]
    fn the_total_caps_many_tenants_together_and_comes_back() {
        let slots = StreamSlots::new(2, 3);
        let a = slots.acquire(&tenant("alpha", "s")).unwrap();
        let _b = slots.acquire(&tenant("beta", "s")).unwrap();
        let _c = slots.acquire(&tenant("gamma", "s")).unwrap();
        let refused = slots.acquire(&tenant("delta", "s")).unwrap_err();
        assert!(refused.message().contains("server"), "{refused:?}");
        // The refusal did not count against delta.
        assert_eq!(slots.open_for(&tenant("delta", "s")), 0);
        drop(a);
        assert!(slots.acquire(&tenant("delta", "s")).is_ok());
    }
}
