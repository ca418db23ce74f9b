//! The report's figures as plain data. The store fills them; the
//! renderers only format them, so every format says the same thing.
//!
//! Quantities are integers: GPU time as milli-GPU-milliseconds (a share of
//! a card counts as its thousandths; the metering's own unit, so that the
//! pool's figures add up exactly), money in fen. Lists are kept sorted
//! (tenant, then class), so equal figures serialize to equal bytes.

use serde::{Deserialize, Serialize};

/// A thousandth of a GPU for one millisecond.
pub type MilliGpuMs = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The period, `[from, to)`, RFC 3339 UTC.
    pub from: String,
    pub to: String,
    /// A closed period's figures never change; an open one's are so far.
    pub closed: bool,
    pub tenants: Vec<TenantLine>,
    /// The pool per GPU class over the period.
    pub pool: Vec<PoolLine>,
    /// Usage per interval, for the charts.
    pub intervals: Vec<IntervalLine>,
    pub compliance: Vec<ComplianceLine>,
    pub preemptions: Vec<PreemptionLine>,
    pub denied: DeniedAttempts,
    pub locations: Vec<NodeLocation>,
    /// The audit log's signed checkpoint the report was made against.
    pub audit: Option<AuditCheckpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLine {
    pub tenant: String,
    pub classes: Vec<ClassUsage>,
    /// Jobs that ran in the period (at least one second of it).
    pub jobs: u64,
    /// What the period's invoice charges, in fen.
    pub charges_fen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassUsage {
    pub class: String,
    pub used: MilliGpuMs,
    /// The rest of cards the tenant held alone, unused.
    pub held_idle: MilliGpuMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolLine {
    pub class: String,
    pub capacity: MilliGpuMs,
    pub used: MilliGpuMs,
    pub held_idle: MilliGpuMs,
    /// capacity − used − held idle.
    pub idle: MilliGpuMs,
}

/// One metering interval: each tenant's used and held-idle GPU time, and
/// the pool's capacity in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalLine {
    pub start: String,
    pub capacity: MilliGpuMs,
    /// (tenant, used, held idle), sorted by tenant.
    pub tenants: Vec<(String, MilliGpuMs, MilliGpuMs)>,
}

/// Was a tenant's guarantee on a class honoured over the period?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceLine {
    pub tenant: String,
    pub class: String,
    pub guaranteed_gpus: u32,
    /// Jobs within the guarantee that had to wait for a reclaim.
    pub reclaims: u64,
    /// The longest such wait, from the job's submission to its start.
    pub worst_time_to_reclaim_ms: u64,
    /// Within the guarantee, waits longer than the allowed reclaim time.
    pub breaches: u64,
    pub honoured: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreemptionLine {
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedAttempts {
    /// A tenant asking for another tenant's data.
    pub cross_tenant: u64,
    /// A caller asking for what its role may not do.
    pub privilege: u64,
    /// No or a bad token.
    pub unauthenticated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLocation {
    pub node: String,
    pub location: String,
    pub gpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub tree_size: u64,
    pub root: String,
}

/// A report whose figures do not add up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistent {
    #[error(
        "class {class}: used {used} + held idle {held_idle} + idle {idle} ≠ capacity {capacity}"
    )]
    Conservation {
        class: String,
        used: MilliGpuMs,
        held_idle: MilliGpuMs,
        idle: MilliGpuMs,
        capacity: MilliGpuMs,
    },
    #[error("class {class}: the tenants' {field} ({tenants}) differs from the pool's ({pool})")]
    TenantsVsPool {
        class: String,
        field: &'static str,
        tenants: MilliGpuMs,
        pool: MilliGpuMs,
    },
}

impl Report {
    /// Σ tenants' used + held idle + idle = capacity, per class, and the
    /// tenants' sums are the pool's.
    pub fn check(&self) -> Result<(), Inconsistent> {
        for p in &self.pool {
            if p.used + p.held_idle + p.idle != p.capacity {
                return Err(Inconsistent::Conservation {
                    class: p.class.clone(),
                    used: p.used,
                    held_idle: p.held_idle,
                    idle: p.idle,
                    capacity: p.capacity,
                });
            }
            let (used, held): (u64, u64) = self
                .tenants
                .iter()
                .flat_map(|t| t.classes.iter().filter(|c| c.class == p.class))
                .fold((0, 0), |(u, h), c| (u + c.used, h + c.held_idle));
            for (field, tenants, pool) in [("used", used, p.used), ("held idle", held, p.held_idle)]
            {
                if tenants != pool {
                    return Err(Inconsistent::TenantsVsPool {
                        class: p.class.clone(),
                        field,
                        tenants,
                        pool,
                    });
                }
            }
        }
        Ok(())
    }

    /// Tenants in report order (the charts' colours follow it).
    pub fn tenant_ids(&self) -> Vec<&str> {
        self.tenants.iter().map(|t| t.tenant.as_str()).collect()
    }
}

/// Milli-GPU-ms in one GPU-hour.
pub const GPU_HOUR: MilliGpuMs = 1000 * 3_600_000;

/// GPU-hours, for display only.
pub fn gpu_hours(m: MilliGpuMs) -> f64 {
    m as f64 / GPU_HOUR as f64
}
