//! The order of admission: within a tenant by priority then age; across
//! tenants, guarantees first, then borrowing in weighted dominant-resource
//! fair order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use finpool_domain::Timestamp;

use super::planner::Planner;
use crate::cluster::{ClassIdx, TenantIdx};
use crate::plugins::QuotaBound;
use crate::snapshot::QueuedJob;
use crate::task::Task;
use crate::tenants::budget_part;

/// Within a tenant: priority, then age (then id, for a total order).
pub(super) fn within_tenant(jobs: &mut [(&QueuedJob, Task)]) {
    jobs.sort_by(|(a, _), (b, _)| {
        b.priority
            .cmp(&a.priority)
            .then(a.submitted_at.cmp(&b.submitted_at))
            .then(a.id.cmp(&b.id))
    });
}

impl Planner<'_> {
    pub(super) fn run(&mut self, jobs: Vec<(&QueuedJob, Task)>) {
        if self.snapshot.tenantless {
            let mut waiting = Vec::new();
            for (job, task) in jobs {
                if !self.place_only(job, &task) {
                    waiting.push((job, task));
                }
            }
            return self.explain_all(waiting);
        }
        // 1. Within guarantees, in priority order.
        let mut rest = Vec::with_capacity(jobs.len());
        for (job, task) in jobs {
            if self.fits_guarantee(&task) && self.admit(job, &task, QuotaBound::Guaranteed) {
                continue;
            }
            rest.push((job, task));
        }
        // 2. Borrowing, in weighted fair order across tenants.
        let mut queues: BTreeMap<TenantIdx, VecDeque<(&QueuedJob, Task)>> = BTreeMap::new();
        for (job, task) in rest {
            let t = task.tenant.expect("queued jobs have tenants");
            queues.entry(t).or_default().push_back((job, task));
        }
        // Equal shares go oldest head job first (then tenant, for a total
        // order), so that tenants borrowing nothing yet are served FIFO.
        let head_age = |q: &VecDeque<(&QueuedJob, Task)>| {
            q.front()
                .map_or(Timestamp(i64::MAX), |(j, _)| j.submitted_at)
        };
        let mut heap: BinaryHeap<(Reverse<Share>, Reverse<Timestamp>, Reverse<TenantIdx>)> = queues
            .iter()
            .map(|(&t, q)| (Reverse(self.share(t)), Reverse(head_age(q)), Reverse(t)))
            .collect();
        let mut waiting = Vec::new();
        while let Some((_, _, Reverse(t))) = heap.pop() {
            let Some(queue) = queues.get_mut(&t) else {
                continue;
            };
            let Some((job, task)) = queue.pop_front() else {
                continue;
            };
            if !self.admit(job, &task, QuotaBound::Limit) {
                waiting.push((job, task));
            }
            if !queues[&t].is_empty() {
                heap.push((
                    Reverse(self.share(t)),
                    Reverse(head_age(&queues[&t])),
                    Reverse(t),
                ));
            }
        }
        self.explain_all(waiting);
    }

    /// Weighted dominant share of borrowing: recent plus current, per
    /// class capacity, divided by weight (see [`Share`]).
    fn share(&self, t: TenantIdx) -> Share {
        let mut dominant: f64 = 0.0;
        for (c, capacity) in self.capacity.iter().enumerate() {
            if *capacity == 0 {
                continue;
            }
            let (borrowed, _) = budget_part(
                self.tenants.quota(t, c as ClassIdx),
                self.cluster().held_milli(t, c as ClassIdx),
            );
            let recent = self
                .recent
                .get(t as usize)
                .and_then(|r| r.get(c))
                .copied()
                .unwrap_or(0.0);
            dominant = dominant.max((recent + borrowed as f64) / *capacity as f64);
        }
        Share((dominant * 1000.0 / self.tenants.weight(t).max(1) as f64) as u64)
    }
}

/// A weighted dominant share, in whole thousandths of the pool per unit
/// of weight. Coarse on purpose (as Kueue's): tenants whose borrowing
/// differs by less than a thousandth of the pool are equals, served by the
/// age of their work, so a trace of past usage does not push a light
/// tenant behind every newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Share(u64);
