//! One scheduling decision: admit, place, reclaim and reserve, on a
//! snapshot. (The [`crate::cycle`] around it carries memory between
//! decisions; drivers call the cycle, not this.)
//!
//! The order of admission:
//!
//! 1. **Guarantees first.** Jobs that keep their tenant within its
//!    guarantee go first. Tenants take turns by the age of their work (a
//!    tenant's k-th turn comes at its k-th oldest job's submit time), each
//!    turn going to the tenant's most important job: priority orders a
//!    tenant's own jobs, never one tenant's before another's. If no room is
//!    left for one, the scheduler reclaims: it preempts work other tenants
//!    hold *above* their guarantees, from the tenant furthest above its
//!    guarantees first (then the one whose work started most recently),
//!    and within that tenant its lowest-priority, then most recently
//!    started job, once each has run its minimum runtime. The victims'
//!    priorities never choose between tenants.
//! 2. **Then fair share of what is idle** ([`order`]). Tenants borrow idle
//!    capacity up to their limit, in weighted dominant-resource-fair order
//!    over GPU classes: the tenant borrowing least (lately and now, per
//!    unit of weight) goes next. Borrowing comes from unguaranteed capacity
//!    and from idle guarantees, each lender giving at most its lending
//!    limit ([`quota`]).
//! 3. **Within a tenant**, by priority then age; a higher-priority job may
//!    preempt the same tenant's lower-priority work ([`preempt`]).
//! 4. **Gangs.** Multi-GPU jobs are placed all or nothing. When one cannot
//!    start, it gets a reservation: the node and time at which it surely
//!    can (as running jobs reach their max runtime). Later jobs may use that
//!    node only if they end before then, so a stream of small jobs cannot
//!    starve a large one ([`backfill`]).
//! 5. **Base models** ([`locality`]): a job may hold out for a card that
//!    holds its model, for at most the model's load time.
//!
//! Preemption never cycles: a victim's tenant stays at or above its
//! guarantee, so its requeued job borrows and can never reclaim; a victim of
//! a higher-priority job of its own tenant cannot preempt that job back.

mod backfill;
mod explain;
mod locality;
mod order;
mod planner;
mod preempt;
mod quota;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

use finpool_domain::{JobId, Placement, Timestamp};

pub use self::explain::infeasible;
pub use self::order::{BorrowOrder, PendingKey, QueuePosition, queue_position};
use self::planner::Planner;
use crate::engine::EngineCache;
use crate::plugins::Policy;
use crate::plugins::workload::{Weighting, WorkloadModel};
use crate::snapshot::{Built, QueuedJob, Snapshot, SnapshotError};
use crate::wait::WaitReason;

/// A job the cycle admitted, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub job: JobId,
    pub placement: Placement,
    /// Admitted within the tenant's guarantee (rather than borrowing).
    pub within_guarantee: bool,
    /// Jobs preempted to make room: start once they are gone.
    pub waits_for: Vec<JobId>,
}

impl Admission {
    /// Why it was admitted, for the job's history.
    pub fn describe(&self) -> String {
        let how = match (self.within_guarantee, self.waits_for.len()) {
            (true, 0) => " (within guarantee)".to_owned(),
            (true, n) => format!(" (within guarantee, {RECLAIMED_MARKER} {n} job(s))"),
            (false, 0) => " (borrowing idle capacity)".to_owned(),
            (false, n) => format!(" (preempting {n} lower-priority job(s))"),
        };
        format!("admitted to {}{how}", self.placement.node)
    }
}

/// What marks, in a job's history, an admission that reclaimed cards (a
/// store may search for it).
pub const RECLAIMED_MARKER: &str = "reclaimed from";

/// How an admission recorded by [`Admission::describe`] came about, read
/// back from its text (reports read the job history, which keeps text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionKind {
    WithinGuarantee,
    /// Within the guarantee, by reclaiming cards others borrowed.
    Reclaimed,
    Borrowing,
    /// By preempting lower-priority jobs of the same tenant.
    Preempting,
}

impl AdmissionKind {
    pub fn of(text: &str) -> Option<Self> {
        if !text.starts_with("admitted to ") {
            return None;
        }
        Some(
            if text.contains(&format!("(within guarantee, {RECLAIMED_MARKER} ")) {
                Self::Reclaimed
            } else if text.ends_with("(within guarantee)") {
                Self::WithinGuarantee
            } else if text.ends_with("(borrowing idle capacity)") {
                Self::Borrowing
            } else if text.contains("lower-priority job(s))") {
                Self::Preempting
            } else {
                return None;
            },
        )
    }
}

/// Why a running job is preempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreemptReason {
    /// Its tenant is above its guarantee, and `tenant` reclaims its own.
    Reclaim { tenant: String },
    /// A higher-priority job of the same tenant needs the room.
    Priority,
}

impl PreemptReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Reclaim { .. } => "Reclaim",
            Self::Priority => "Priority",
        }
    }

    /// The code of a preemption recorded by [`Preemption`]'s text, read
    /// back from the job history.
    pub fn code_of(text: &str) -> Option<&'static str> {
        if text.starts_with("preempted: tenant ") && text.contains(" reclaims ") {
            Some("Reclaim")
        } else if text.starts_with("preempted by higher-priority job ") {
            Some("Priority")
        } else {
            None
        }
    }
}

/// A running job to stop and requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub job: JobId,
    pub reason: PreemptReason,
    /// The job it makes room for.
    pub for_job: JobId,
}

impl fmt::Display for Preemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            PreemptReason::Reclaim { tenant } => write!(
                f,
                "preempted: tenant {tenant} reclaims its guaranteed GPUs for job {}",
                self.for_job
            ),
            PreemptReason::Priority => write!(
                f,
                "preempted by higher-priority job {} of the same tenant",
                self.for_job
            ),
        }
    }
}

/// Where and when a blocked multi-GPU job will surely start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub job: JobId,
    pub node: String,
    pub at: Timestamp,
}

/// A job left in the queue, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub job: JobId,
    pub reason: WaitReason,
}

/// What one decision concluded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub admitted: Vec<Admission>,
    pub preempted: Vec<Preemption>,
    pub reservation: Option<Reservation>,
    pub waiting: Vec<Waiting>,
    /// Jobs held back for base-model locality while a card they could use
    /// now was free (the cycle bounds how long: [`crate::cycle`]).
    pub held_back: Vec<JobId>,
    /// Inconsistencies between the snapshot's jobs and its inventory.
    pub warnings: Vec<String>,
}

/// Admits, places, preempts and reserves. Pure and deterministic: the same
/// snapshot, queue and policy give the same outcome.
pub fn decide(
    snapshot: &Snapshot,
    queue: &[QueuedJob],
    policy: &Policy,
) -> Result<Outcome, SnapshotError> {
    let mut built = snapshot.build()?;
    Ok(decide_built(
        snapshot,
        &mut built,
        queue,
        policy,
        &mut EngineCache::default(),
    ))
}

/// [`decide`] on a snapshot already built (the cycle builds it once to
/// learn the workload too), going on from the placement indexes an earlier
/// decision with the same policy left in `cache` (the outcome is the same
/// with an empty one).
pub fn decide_built(
    snapshot: &Snapshot,
    built: &mut Built,
    queue: &[QueuedJob],
    policy: &Policy,
    cache: &mut EngineCache,
) -> Outcome {
    let mut outcome = Outcome {
        warnings: std::mem::take(&mut built.warnings),
        ..Outcome::default()
    };
    let mut jobs = Vec::with_capacity(queue.len());
    for job in queue {
        match built.task_for(job, &snapshot.models, snapshot.tenantless) {
            Ok(task) => jobs.push((job, task)),
            Err(reason) => outcome.waiting.push(Waiting {
                job: job.id,
                reason,
            }),
        }
    }
    let hints = locality::mark_model_waits(snapshot, built, &mut jobs);
    order::within_tenant(&mut jobs);
    // Without a workload from the driver, learn it from what is queued.
    let workload = snapshot
        .workload
        .clone()
        .unwrap_or_else(|| {
            WorkloadModel::from_tasks(jobs.iter().map(|(_, t)| t), 0.95, Weighting::Demand)
        })
        .with_pressure(&built.cluster);
    let mut planner = Planner::new(snapshot, built, policy, &workload, outcome, hints, cache);
    // A reservation stands while its job still waits, so that later
    // arrivals (even within their guarantees) cannot take its node.
    if let Some(r) = &snapshot.reservation
        && jobs.iter().any(|(j, _)| j.id == r.job)
        && let Some(node) = planner.built.node_index(&r.node)
    {
        planner.reservation = Some((r.job, node, r.at));
    }
    planner.run(jobs);
    planner.finish(cache)
}
