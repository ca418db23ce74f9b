//! Revocation: suspended tenants and per-subject not-before times.
//!
//! The store holds both; the auth layer reads them from this in-memory
//! copy on every call, so a check costs a hash lookup. A write through this
//! server updates the copy at once; writes by another replica arrive with
//! the next refresh ([`REFRESH`]).

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

use finpool_domain::TenantId;
use finpool_store::{Store, StoreError};

use super::{AuthError, Principal, Role};

/// How often the copy is reloaded from the store.
pub const REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Revocations {
    suspended: RwLock<HashSet<TenantId>>,
    not_before: RwLock<HashMap<String, u64>>,
}

impl Revocations {
    /// Refuses a caller whose tenant is suspended, or whose token was
    /// issued before its subject's not-before. A token that does not say
    /// when it was issued is refused once its subject has a not-before.
    pub fn check(&self, who: &Principal) -> Result<(), AuthError> {
        if who.role == Role::Tenant
            && let Some(tenant) = &who.tenant
            && read(&self.suspended).contains(tenant)
        {
            return Err(AuthError::Revoked(format!("tenant {tenant} is suspended")));
        }
        if let Some(bar) = read(&self.not_before).get(&who.subject)
            && who.issued_at.is_none_or(|iat| iat < *bar)
        {
            return Err(AuthError::Revoked(format!(
                "tokens of {:?} issued before {bar} (unix seconds) are revoked",
                who.subject
            )));
        }
        Ok(())
    }

    pub fn set_suspended(&self, tenant: &TenantId, suspended: bool) {
        let mut set = write(&self.suspended);
        if suspended {
            set.insert(tenant.clone());
        } else {
            set.remove(tenant);
        }
    }

    pub fn set_not_before(&self, subject: &str, not_before: u64) {
        let mut map = write(&self.not_before);
        let bar = map.entry(subject.to_owned()).or_default();
        *bar = (*bar).max(not_before);
    }

    /// Replaces the copy with the store's.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let suspended: HashSet<TenantId> = store.suspended_tenants().await?.into_iter().collect();
        let not_before: HashMap<String, u64> =
            store.token_revocations().await?.into_iter().collect();
        *write(&self.suspended) = suspended;
        *write(&self.not_before) = not_before;
        Ok(())
    }

    /// Reloads every [`REFRESH`] until the store is dropped; a failed
    /// reload keeps the last copy (and says so).
    pub fn spawn_refresh(self: std::sync::Arc<Self>, store: Store) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                if let Err(e) = self.reload(&store).await {
                    tracing::warn!(error = %e, "could not refresh token revocations; keeping the last copy");
                }
            }
        })
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use finpool_domain::Name;

    fn tenant(t: &str, iat: Option<u64>) -> Principal {
        Principal {
            subject: "desk-1".into(),
            role: Role::Tenant,
            tenant: Some(Name::parse("t", t).unwrap()),
            issued_at: iat,
            expires_at: None,
        }
    }

    #[test]
    fn suspension_refuses_the_tenant_only_until_resumed() {
        let r = Revocations::default();
        let alpha = Name::parse("t", "alpha").unwrap();
        r.set_suspended(&alpha, true);
        assert!(r.check(&tenant("alpha", Some(10))).is_err());
        assert!(r.check(&tenant("beta", Some(10))).is_ok());
        r.set_suspended(&alpha, false);
        assert!(r.check(&tenant("alpha", Some(10))).is_ok());
    }

    #[test]
    fn not_before_refuses_older_tokens_and_never_moves_back() {
        let r = Revocations::default();
        r.set_not_before("desk-1", 100);
        r.set_not_before("desk-1", 50);
        assert!(r.check(&tenant("alpha", Some(99))).is_err());
        assert!(r.check(&tenant("alpha", None)).is_err());
        assert!(r.check(&tenant("alpha", Some(100))).is_ok());
    }
}
