//! Figures read from the job history: preemptions by reason, and whether
//! each tenant's guarantee was honoured (how long a job within it waited
//! for cards others had borrowed). Pure: the store hands over the rows.

use std::collections::BTreeMap;

use finpool_domain::JobState;
use finpool_scheduler::{AdmissionKind, PreemptReason};

use crate::model::{ComplianceLine, PreemptionLine};

/// One state change of one job, as the store's history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub job: String,
    pub tenant: String,
    /// The GPU class the job runs on (its placement's), if placed.
    pub class: Option<String>,
    /// The state entered, as [`JobState::as_str`] writes it.
    pub to: String,
    pub at_ms: i64,
    pub reason: String,
}

/// Preemptions in `[from, to)`, by reason code; a preemption the
/// scheduler did not decide (a restart, a lost pod) counts as `Other`.
pub fn preemptions(events: &[EventRow], from_ms: i64, to_ms: i64) -> Vec<PreemptionLine> {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        if e.to == JobState::Preempted.as_str() && (from_ms..to_ms).contains(&e.at_ms) {
            *by.entry(PreemptReason::code_of(&e.reason).unwrap_or("Other"))
                .or_default() += 1;
        }
    }
    by.into_iter()
        .map(|(reason, count)| PreemptionLine {
            reason: reason.to_owned(),
            count,
        })
        .collect()
}

/// A guarantee: (tenant, class, GPUs).
pub type Guarantee = (String, String, u32);

/// For every guarantee, the jobs within it that had to reclaim cards in
/// `[from, to)`, the longest wait from the job's request (its last entry
/// into the queue) to its start, and the waits over `bound_ms` (breaches;
/// a job still waiting at the period's end past the bound is one too).
/// `events` must be ordered by job, then time.
pub fn compliance(
    events: &[EventRow],
    guarantees: &[Guarantee],
    from_ms: i64,
    to_ms: i64,
    bound_ms: u64,
) -> Vec<ComplianceLine> {
    // (tenant, class) → (reclaims, worst, breaches)
    let mut seen: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    let mut record = |tenant: &str, class: &Option<String>, wait: u64| {
        let Some(class) = class else { return };
        let entry = seen.entry((tenant.to_owned(), class.clone())).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(wait);
        if wait > bound_ms {
            entry.2 += 1;
        }
    };
    let mut i = 0;
    while i < events.len() {
        let job = &events[i].job;
        let mut pending_since: Option<i64> = None;
        let mut reclaiming_since: Option<i64> = None;
        while i < events.len() && &events[i].job == job {
            let e = &events[i];
            match JobState::parse("to", &e.to) {
                Ok(JobState::Pending) => {
                    pending_since = Some(e.at_ms);
                    reclaiming_since = None;
                }
                Ok(JobState::Admitted)
                    if AdmissionKind::of(&e.reason) == Some(AdmissionKind::Reclaimed) =>
                {
                    reclaiming_since = pending_since.or(Some(e.at_ms));
                }
                Ok(JobState::Running) => {
                    if let Some(since) = reclaiming_since.take()
                        && (from_ms..to_ms).contains(&e.at_ms)
                    {
                        record(&e.tenant, &e.class, (e.at_ms - since).max(0) as u64);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        // Still waiting for its victims when the period ends.
        if let Some(since) = reclaiming_since {
            let last = &events[i - 1];
            let wait = (to_ms - since).max(0) as u64;
            if since < to_ms && wait > bound_ms {
                record(&last.tenant, &last.class, wait);
            }
        }
    }
    let mut lines: Vec<ComplianceLine> = guarantees
        .iter()
        .filter(|(_, _, g)| *g > 0)
        .map(|(tenant, class, guaranteed)| {
            let (reclaims, worst, breaches) = seen
                .get(&(tenant.clone(), class.clone()))
                .copied()
                .unwrap_or_default();
            ComplianceLine {
                tenant: tenant.clone(),
                class: class.clone(),
                guaranteed_gpus: *guaranteed,
                reclaims,
                worst_time_to_reclaim_ms: worst,
                breaches,
                honoured: breaches == 0,
            }
        })
        .collect();
    lines.sort_by(|a, b| (&a.tenant, &a.class).cmp(&(&b.tenant, &b.class)));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(job: &str, to: &str, at_ms: i64, reason: &str) -> EventRow {
        EventRow {
            job: job.into(),
            tenant: "alpha".into(),
            class: Some("H100".into()),
            to: to.to_lowercase(),
            at_ms,
            reason: reason.into(),
        }
    }

    const RECLAIMED: &str = "admitted to gpu-1 (within guarantee, reclaimed from 1 job(s))";

    #[test]
    fn a_reclaim_wait_runs_from_the_request_to_the_start() {
        let events = vec![
            e("j1", "Pending", 1_000, "submitted"),
            e("j1", "Admitted", 2_000, RECLAIMED),
            e("j1", "Running", 31_000, "started"),
            // Within its guarantee without a reclaim: not counted.
            e("j2", "Pending", 1_000, "submitted"),
            e(
                "j2",
                "Admitted",
                1_500,
                "admitted to gpu-1 (within guarantee)",
            ),
            e("j2", "Running", 90_000, "started"),
            // Still waiting at the period's end, past the bound.
            e("j3", "Pending", 10_000, "submitted"),
            e("j3", "Admitted", 11_000, RECLAIMED),
        ];
        let g = vec![
            ("alpha".to_owned(), "H100".to_owned(), 2),
            ("beta".to_owned(), "H100".to_owned(), 1),
            ("gamma".to_owned(), "H100".to_owned(), 0),
        ];
        let lines = compliance(&events, &g, 0, 100_000, 60_000);
        assert_eq!(lines.len(), 2, "no line for a tenant without a guarantee");
        let alpha = &lines[0];
        assert_eq!(
            (
                alpha.reclaims,
                alpha.worst_time_to_reclaim_ms,
                alpha.breaches,
                alpha.honoured
            ),
            (2, 90_000, 1, false)
        );
        let beta = &lines[1];
        assert_eq!((beta.reclaims, beta.honoured), (0, true));
    }

    #[test]
    fn preemptions_count_by_reason_within_the_period() {
        let events = vec![
            e(
                "j1",
                "Preempted",
                5,
                "preempted: tenant beta reclaims its guaranteed GPUs for job x",
            ),
            e(
                "j2",
                "Preempted",
                6,
                "preempted by higher-priority job y of the same tenant",
            ),
            e("j3", "Preempted", 7, "server restarted"),
            e(
                "j4",
                "Preempted",
                500,
                "preempted: tenant beta reclaims its guaranteed GPUs for job z",
            ),
        ];
        let lines = preemptions(&events, 0, 100);
        let got: Vec<(&str, u64)> = lines.iter().map(|l| (l.reason.as_str(), l.count)).collect();
        assert_eq!(got, [("Other", 1), ("Priority", 1), ("Reclaim", 1)]);
    }
}
