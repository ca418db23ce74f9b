//! Tenants (brokerages), their GPU quotas and isolation level.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{FieldError, Name, TenantId, Timestamp};

/// How a tenant's fractional jobs may share a GPU. Two tenants never
/// time-slice one card: only MIG, which isolates in hardware, lets another
/// tenant sit on the same physical GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationLevel {
    /// Whole GPUs only.
    Exclusive,
    /// Fractional shares may share a card with the same tenant's jobs only.
    #[default]
    SharedWithinTenant,
    /// Hardware partitions (MIG).
    Mig,
}

impl IsolationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exclusive => "exclusive",
            Self::SharedWithinTenant => "shared-within-tenant",
            Self::Mig => "mig",
        }
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        match value {
            "exclusive" => Ok(Self::Exclusive),
            "shared-within-tenant" | "" => Ok(Self::SharedWithinTenant),
            "mig" => Ok(Self::Mig),
            other => Err(FieldError::new(
                field,
                format!("unknown isolation level {other:?} (exclusive, shared-within-tenant, mig)"),
            )),
        }
    }
}

/// A tenant's quota on one GPU class, in GPUs.
///
/// The tenant may always have its `guaranteed` GPUs (taking them back from
/// borrowers if need be), may borrow idle capacity up to `limit` in all
/// (its borrowing limit is `limit - guaranteed`), and lets others borrow at
/// most `lending_limit` of its own idle guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// GPUs always available to the tenant.
    pub guaranteed: u32,
    /// The most GPUs the tenant may hold at once, borrowing included.
    pub limit: u32,
    /// The most of its idle guarantee others may borrow; `None`: all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lending_limit: Option<u32>,
}

impl Quota {
    /// A quota with no lending limit.
    pub fn new(field: &str, guaranteed: i64, limit: i64) -> Result<Self, FieldError> {
        Self::with_limits(field, guaranteed, Some(limit), None, None)
    }

    /// A quota from its parts: the total `limit`, or the `borrowing` limit
    /// on top of the guarantee (one of the two), and the `lending` limit.
    pub fn with_limits(
        field: &str,
        guaranteed: i64,
        limit: Option<i64>,
        borrowing: Option<i64>,
        lending: Option<i64>,
    ) -> Result<Self, FieldError> {
        let count = |name: &str, v: i64| {
            u32::try_from(v).map_err(|_| {
                FieldError::new(
                    format!("{field}.{name}"),
                    format!("must be a GPU count from 0 to {}, got {v}", u32::MAX),
                )
            })
        };
        let guaranteed = count("guaranteed", guaranteed)?;
        let limit = match (limit, borrowing) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    format!("{field}.borrowing_limit"),
                    "give either limit or borrowing_limit, not both",
                ));
            }
            (Some(l), None) => {
                let l = count("limit", l)?;
                if l < guaranteed {
                    return Err(FieldError::new(
                        format!("{field}.limit"),
                        format!("must be at least guaranteed ({guaranteed}), got {l}"),
                    ));
                }
                l
            }
            (None, Some(b)) => guaranteed
                .checked_add(count("borrowing_limit", b)?)
                .ok_or_else(|| {
                    FieldError::new(format!("{field}.borrowing_limit"), "is too large")
                })?,
            (None, None) => guaranteed,
        };
        let lending_limit = match lending {
            None => None,
            Some(l) => {
                let l = count("lending_limit", l)?;
                if l > guaranteed {
                    return Err(FieldError::new(
                        format!("{field}.lending_limit"),
                        format!("can lend at most the guarantee ({guaranteed}), got {l}"),
                    ));
                }
                Some(l)
            }
        };
        Ok(Self {
            guaranteed,
            limit,
            lending_limit,
        })
    }

    /// How far above its guarantee the tenant may go.
    pub fn borrowing_limit(self) -> u32 {
        self.limit - self.guaranteed
    }

    pub fn guaranteed_milli(self) -> u64 {
        self.guaranteed as u64 * crate::MILLI_PER_GPU as u64
    }

    pub fn limit_milli(self) -> u64 {
        self.limit as u64 * crate::MILLI_PER_GPU as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: String,
    /// GPU class name to quota; a class without an entry cannot be used.
    pub quotas: BTreeMap<String, Quota>,
    /// Share of idle capacity relative to other tenants.
    pub weight: u32,
    pub isolation: IsolationLevel,
    pub created_at: Timestamp,
    /// Set while an operator has suspended the tenant: its tokens are
    /// refused and its jobs wait.
    #[serde(default)]
    pub suspended: Option<Suspension>,
}

/// Why and since when a tenant is suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    pub at: Timestamp,
}

impl Tenant {
    pub fn quota(&self, class: &str) -> Quota {
        self.quotas.get(class).copied().unwrap_or_default()
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.is_some()
    }
}

/// An operator's request to create a tenant, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantInput {
    pub id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub quotas: BTreeMap<String, QuotaInput>,
    #[serde(default)]
    pub weight: i64,
    #[serde(default)]
    pub isolation: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaInput {
    #[serde(default)]
    pub guaranteed: i64,
    /// The total cap; or give `borrowing_limit` instead.
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub borrowing_limit: Option<i64>,
    #[serde(default)]
    pub lending_limit: Option<i64>,
}

impl QuotaInput {
    pub fn validate(&self, field: &str) -> Result<Quota, FieldError> {
        Quota::with_limits(
            field,
            self.guaranteed,
            self.limit,
            self.borrowing_limit,
            self.lending_limit,
        )
    }
}

impl TenantInput {
    /// Validates against the pool's GPU classes.
    pub fn validate(&self, known_classes: &[String], now: Timestamp) -> Result<Tenant, FieldError> {
        let id = Name::parse("id", &self.id)?;
        let display_name = if self.display_name.is_empty() {
            self.id.clone()
        } else {
            self.display_name.clone()
        };
        crate::text::check("display_name", &display_name, 128)?;
        let mut quotas = BTreeMap::new();
        for (class, q) in &self.quotas {
            let field = format!("quotas.{class}");
            check_class(&field, class, known_classes)?;
            quotas.insert(class.clone(), q.validate(&field)?);
        }
        // An unset weight means 1: every tenant gets some share of idle capacity.
        let weight = match self.weight {
            0 => 1,
            w @ 1..=1000 => w as u32,
            w => {
                return Err(FieldError::new(
                    "weight",
                    format!("must be from 1 to 1000, got {w}"),
                ));
            }
        };
        Ok(Tenant {
            id,
            display_name,
            quotas,
            weight,
            isolation: IsolationLevel::parse("isolation", &self.isolation)?,
            created_at: now,
            suspended: None,
        })
    }
}

/// Fails unless `class` is one of the pool's GPU classes.
pub fn check_class(field: &str, class: &str, known_classes: &[String]) -> Result<(), FieldError> {
    if known_classes.iter().any(|k| k == class) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "unknown GPU class {class:?} (the pool has: {})",
                known_classes.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        vec!["A100".into(), "H100".into()]
    }

    #[test]
    fn tenant_input_validates_quotas_by_field() {
        let mut input = TenantInput {
            id: "broker-a".into(),
            ..Default::default()
        };
        input.quotas.insert(
            "A100".into(),
            QuotaInput {
                guaranteed: 4,
                limit: Some(2),
                ..Default::default()
            },
        );
        let err = input.validate(&classes(), Timestamp(0)).unwrap_err();
        assert_eq!(err.field, "quotas.A100.limit");

        input.quotas.clear();
        input.quotas.insert("V100".into(), QuotaInput::default());
        assert_eq!(
            input.validate(&classes(), Timestamp(0)).unwrap_err().field,
            "quotas.V100"
        );

        input.quotas.clear();
        input.weight = -1;
        assert_eq!(
            input.validate(&classes(), Timestamp(0)).unwrap_err().field,
            "weight"
        );
    }

    #[test]
    fn borrowing_and_lending_limits() {
        let q = Quota::with_limits("q", 2, None, Some(3), Some(1)).unwrap();
        assert_eq!(
            (q.limit, q.borrowing_limit(), q.lending_limit),
            (5, 3, Some(1))
        );
        assert_eq!(
            Quota::with_limits("q", 2, None, None, None).unwrap().limit,
            2
        );
        assert_eq!(
            Quota::with_limits("q", 2, Some(4), Some(1), None)
                .unwrap_err()
                .field,
            "q.borrowing_limit"
        );
        assert_eq!(
            Quota::with_limits("q", 2, None, None, Some(3))
                .unwrap_err()
                .field,
            "q.lending_limit"
        );
    }

    #[test]
    fn negative_quota_is_refused() {
        assert_eq!(
            Quota::new("quota", -1, 2).unwrap_err().field,
            "quota.guaranteed"
        );
    }
}
