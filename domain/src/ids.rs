//! Identifiers. Names follow DNS label rules so they are safe in paths,
//! Kubernetes objects and URLs alike.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::FieldError;

/// A DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and
/// ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        validate_label(value).map_err(|reason| FieldError::new(field, reason))?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!(
            "must be at most 63 characters, got {}",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{value:?} has {bad:?}; use lowercase letters, digits and '-'"
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(format!(
            "{value:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

impl TryFrom<String> for Name {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, FieldError> {
        Name::parse("name", &value)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant (brokerage) id: a [`Name`].
pub type TenantId = Name;

/// A job id. Jobs submitted with an idempotency key get an id derived from
/// (tenant, key), so a retried submit names the same job; others get a
/// time-ordered UUIDv7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new_random() -> Self {
        Self(Uuid::now_v7())
    }

    /// The stable id for `(tenant, idempotency key)`.
    pub fn for_idempotency_key(tenant: &TenantId, key: &str) -> Self {
        // A fixed namespace for finpool job ids (UUIDv5 of "finpool.job").
        const NAMESPACE: Uuid = Uuid::from_u128(0x5a1c_0b2e_4f5e_5d7a_9c1e_2b3f_4a5b_6c7d);
        let mut material = Vec::with_capacity(tenant.as_str().len() + key.len() + 1);
        material.extend_from_slice(tenant.as_str().as_bytes());
        material.push(0);
        material.extend_from_slice(key.as_bytes());
        Self(Uuid::new_v5(&NAMESPACE, &material))
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        Uuid::parse_str(value)
            .map(Self)
            .map_err(|_| FieldError::new(field, format!("{value:?} is not a job id (a UUID)")))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules() {
        assert!(Name::parse("name", "broker-a1").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "Upper",
            "has space",
            "dot.ted",
            &"x".repeat(64),
        ] {
            let err = Name::parse("name", bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad:?}");
        }
    }

    #[test]
    fn idempotent_ids_are_stable_and_tenant_scoped() {
        let a = Name::parse("t", "alpha").unwrap();
        let b = Name::parse("t", "beta").unwrap();
        assert_eq!(
            JobId::for_idempotency_key(&a, "k1"),
            JobId::for_idempotency_key(&a, "k1")
        );
        assert_ne!(
            JobId::for_idempotency_key(&a, "k1"),
            JobId::for_idempotency_key(&b, "k1")
        );
        assert_ne!(
            JobId::for_idempotency_key(&a, "k1"),
            JobId::for_idempotency_key(&a, "k2")
        );
    }
}
