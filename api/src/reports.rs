//! The regulator's usage report for a time range, assembled from the
//! store (metered usage and capacity, invoices, the job history, the audit
//! log) and the pool's inventory (node locations). A range that closed
//! billing periods cover is frozen: its figures are kept the first time
//! they are made, and every later request renders those same figures.

use std::collections::{BTreeMap, HashMap};

use finpool_billing::Kind;
use finpool_domain::{Inventory, Timestamp};
use finpool_report::history::{self, EventRow};
use finpool_report::model::*;
use finpool_store::{Store, StoreError};

/// How long a job within its tenant's guarantee may wait for borrowed
/// cards to come back before the guarantee counts as breached: a few
/// scheduling cycles and a generous stop grace.
pub const DEFAULT_RECLAIM_BOUND_MS: u64 = 120_000;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the figures do not add up: {0}")]
    Inconsistent(#[from] Inconsistent),
    #[error("stored report figures are unreadable: {0}")]
    Corrupt(String),
}

/// The report for `[from, to)`.
pub async fn usage_report(
    store: &Store,
    inventory: &Inventory,
    from: Timestamp,
    to: Timestamp,
    now: Timestamp,
) -> Result<Report, ReportError> {
    if to.0 <= from.0 {
        return Err(ReportError::Invalid {
            field: "to",
            reason: "must be after from".into(),
        });
    }
    let closed = store.is_closed_range(from.0, to.0).await?;
    if closed && let Some(json) = store.period_report(from.0, to.0).await? {
        return serde_json::from_str(&json).map_err(|e| ReportError::Corrupt(e.to_string()));
    }
    let report = compute(store, inventory, from, to, closed).await?;
    report.check()?;
    if closed {
        let json = serde_json::to_string(&report).expect("a report serializes");
        let kept = store.save_period_report(from.0, to.0, &json, now.0).await?;
        return serde_json::from_str(&kept).map_err(|e| ReportError::Corrupt(e.to_string()));
    }
    Ok(report)
}

/// A GPU usage row's kind; anything else means the store is corrupt.
fn gpu_kind(kind: &str) -> Result<Kind, ReportError> {
    match Kind::parse("kind", kind) {
        Ok(k @ (Kind::GpuUsed | Kind::GpuHeldIdle)) => Ok(k),
        _ => Err(ReportError::Corrupt(format!(
            "a GPU usage row of kind {kind:?}"
        ))),
    }
}

async fn compute(
    store: &Store,
    inventory: &Inventory,
    from: Timestamp,
    to: Timestamp,
    closed: bool,
) -> Result<Report, ReportError> {
    let (f, t) = (from.0, to.0);
    let tenants = store.all_tenants().await?;
    // One scan of the period's GPU usage gives both the per-tenant totals
    // and the charts' series (a month of 1,000 tenants is millions of
    // events).
    let usage = store.gpu_usage_by_interval(f, t).await?;
    let capacity = store.capacity_between(f, t).await?;
    let jobs: BTreeMap<String, i64> = store.jobs_run_between(f, t).await?.into_iter().collect();
    let charges: BTreeMap<String, i64> = store.charges_between(f, t).await?.into_iter().collect();

    // Per tenant and class: (used, held idle).
    let mut by_tenant: BTreeMap<String, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for t in &tenants {
        by_tenant.entry(t.id.to_string()).or_default();
    }
    for row in &usage {
        let q = row.quantity.max(0) as u64;
        let cell = by_tenant
            .entry(row.tenant_id.clone())
            .or_default()
            .entry(row.gpu_class.clone())
            .or_default();
        match gpu_kind(&row.kind)? {
            Kind::GpuUsed => cell.0 += q,
            _ => cell.1 += q,
        }
    }
    let tenant_lines: Vec<TenantLine> = by_tenant
        .iter()
        .map(|(tenant, classes)| TenantLine {
            tenant: tenant.clone(),
            classes: classes
                .iter()
                .filter(|(class, _)| !class.is_empty())
                .map(|(class, (used, held))| ClassUsage {
                    class: class.clone(),
                    used: *used,
                    held_idle: *held,
                })
                .collect(),
            jobs: jobs.get(tenant).copied().unwrap_or(0).max(0) as u64,
            charges_fen: charges.get(tenant).copied().unwrap_or(0),
        })
        .collect();
    let pool: Vec<PoolLine> = capacity
        .iter()
        .map(|c| {
            let (used, held) = tenant_lines
                .iter()
                .flat_map(|t| t.classes.iter().filter(|u| u.class == c.class))
                .fold((0u64, 0u64), |(u, h), x| (u + x.used, h + x.held_idle));
            let cap = c.capacity.max(0) as u64;
            PoolLine {
                class: c.class.clone(),
                capacity: cap,
                used,
                held_idle: held,
                idle: cap.saturating_sub(used + held),
            }
        })
        .collect();

    // Per interval, for the charts.
    let mut intervals: BTreeMap<i64, IntervalLine> = store
        .capacity_by_interval(f, t)
        .await?
        .into_iter()
        .map(|(start, cap)| {
            (
                start,
                IntervalLine {
                    start: Timestamp(start).to_rfc3339(),
                    capacity: cap.max(0) as u64,
                    tenants: tenant_lines
                        .iter()
                        .map(|t| (t.tenant.clone(), 0, 0))
                        .collect(),
                },
            )
        })
        .collect();
    let column: HashMap<&str, usize> = tenant_lines
        .iter()
        .enumerate()
        .map(|(i, t)| (t.tenant.as_str(), i))
        .collect();
    for u in &usage {
        let (Some(line), Some(&i)) = (
            intervals.get_mut(&u.interval_start),
            column.get(u.tenant_id.as_str()),
        ) else {
            continue;
        };
        let cell = &mut line.tenants[i];
        match gpu_kind(&u.kind)? {
            Kind::GpuUsed => cell.1 += u.quantity.max(0) as u64,
            _ => cell.2 += u.quantity.max(0) as u64,
        }
    }

    // The history: preemptions, and waits for reclaimed cards.
    let preempted: Vec<EventRow> = store
        .preemptions_between(from, to)
        .await?
        .into_iter()
        .map(|(at, reason)| EventRow {
            job: String::new(),
            tenant: String::new(),
            class: None,
            to: finpool_domain::JobState::Preempted.as_str().into(),
            at_ms: at,
            reason,
        })
        .collect();
    let reclaims: Vec<EventRow> = store
        .reclaim_histories(from, to)
        .await?
        .into_iter()
        .map(|r| EventRow {
            class: r.class(),
            job: r.job_id,
            tenant: r.tenant_id,
            to: r.to_state,
            at_ms: r.at,
            reason: r.reason,
        })
        .collect();
    let guarantees: Vec<history::Guarantee> = tenants
        .iter()
        .flat_map(|t| {
            t.quotas
                .iter()
                .map(|(class, q)| (t.id.to_string(), class.clone(), q.guaranteed))
        })
        .collect();

    // Denied attempts, as the audit log recorded them: another tenant's
    // data answers NOT_FOUND, a role's limit PERMISSION_DENIED.
    let mut denied = DeniedAttempts::default();
    for (outcome, n) in store.audit_denied_between(f, t).await? {
        let n = n.max(0) as u64;
        match outcome.strip_prefix("denied:") {
            Some("NOT_FOUND") => denied.cross_tenant += n,
            Some("UNAUTHENTICATED") => denied.unauthenticated += n,
            Some(_) => denied.privilege += n,
            None => {}
        }
    }
    let audit = store.latest_checkpoint().await?.map(|c| AuditCheckpoint {
        tree_size: c.checkpoint.tree_size,
        root: c
            .checkpoint
            .root
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    });

    let mut locations: Vec<NodeLocation> = inventory
        .nodes
        .iter()
        .map(|n| NodeLocation {
            node: n.name.clone(),
            location: n.location().unwrap_or("unknown").to_owned(),
            gpus: n.gpus.len() as u32,
        })
        .collect();
    locations.sort_by(|a, b| a.node.cmp(&b.node));

    Ok(Report {
        from: from.to_rfc3339(),
        to: to.to_rfc3339(),
        closed,
        tenants: tenant_lines,
        pool,
        intervals: intervals.into_values().collect(),
        compliance: history::compliance(&reclaims, &guarantees, f, t, DEFAULT_RECLAIM_BOUND_MS),
        preemptions: history::preemptions(&preempted, f, t),
        denied,
        locations,
        audit,
    })
}
