//! The order of admission: within a tenant by priority then age; across
//! tenants, guarantees first, then borrowing in weighted dominant-resource
//! fair order. Priority never compares jobs of different tenants.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use finpool_domain::{GpuRequest, JobId, Timestamp};

use super::planner::Planner;
use crate::cluster::{ClassIdx, TenantIdx};
use crate::plugins::QuotaBound;
use crate::snapshot::QueuedJob;
use crate::task::Task;
use crate::tenants::budget_part;

/// Within a tenant: priority, then age (then id, for a total order). The
/// sort spans tenants only to give each tenant's queue this order; across
/// tenants the turns of [`TenantQueue`] decide.
pub(super) fn within_tenant(jobs: &mut [(&QueuedJob, Task)]) {
    jobs.sort_by(|(a, _), (b, _)| {
        tenant_order(
            (a.priority, a.submitted_at, a.id),
            (b.priority, b.submitted_at, b.id),
        )
    });
}

/// The order within a tenant's queue, on (priority, submit time, id).
fn tenant_order(a: (i32, Timestamp, JobId), b: (i32, Timestamp, JobId)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

/// Which borrowing job goes first among tenants of equal fair share, and
/// among a tenant's jobs of equal priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BorrowOrder {
    /// The oldest work first (first come, first served).
    #[default]
    Age,
    /// Highest response ratio next: the job whose wait is largest against
    /// its declared run time ((wait + max runtime) ÷ max runtime) goes
    /// first. A short request does not queue behind a burst of long ones,
    /// and every job's ratio grows while it waits, so none starves. With
    /// equal run times this is [`BorrowOrder::Age`]. For pools of short
    /// requests with declared run times (inference): it evens out the
    /// slowdown tenants see.
    ResponseRatio,
}

/// Run times shorter than this count as this long in the response ratio
/// (the usual bounded-slowdown floor), so that a 0 ms declaration does not
/// jump every queue.
pub const RESPONSE_RATIO_FLOOR_MS: u64 = 1000;

impl BorrowOrder {
    /// How urgent `job` is at `now` (higher goes first).
    fn urgency(self, job: &QueuedJob, now: Timestamp, default_runtime_ms: u64) -> i64 {
        match self {
            Self::Age => job.submitted_at.0.saturating_neg(),
            Self::ResponseRatio => {
                let waited = now.millis_since(job.submitted_at) as i128;
                let run = job
                    .max_runtime_ms
                    .unwrap_or(default_runtime_ms)
                    .max(RESPONSE_RATIO_FLOOR_MS) as i128;
                // The ratio in millionths.
                i64::try_from((waited + run) * 1_000_000 / run).unwrap_or(i64::MAX)
            }
        }
    }
}

/// What the order of admission reads of a pending job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    pub id: JobId,
    pub tenant: String,
    pub priority: i32,
    pub submitted_at: Timestamp,
}

/// Where a pending job stands in the order the scheduler considers jobs,
/// as far as it is known without deciding. Its place in its tenant's
/// queue is exact. Across the pool, tenants take turns by the age of their
/// work (first pass, within guarantees): `ahead_in_pool` counts the
/// pending jobs, its tenant's and others', whose turns come before its
/// own. The borrowing pass reorders tenants by fair share, which moves
/// with every admission, so the pool count is that of the first pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePosition {
    /// 1 for the next of its tenant's jobs to be considered.
    pub in_tenant: u32,
    /// Its tenant's pending jobs, itself included.
    pub tenant_pending: u32,
    /// Pending jobs of the pool considered before it (turn order).
    pub ahead_in_pool: u32,
    /// The pool's pending jobs, itself included.
    pub pool_pending: u32,
}

/// `job`'s place among `pending` (which holds it), or `None` if it is not
/// pending.
pub fn queue_position(job: JobId, pending: &[PendingKey]) -> Option<QueuePosition> {
    let me = pending.iter().find(|p| p.id == job)?;
    let key = |p: &PendingKey| (p.priority, p.submitted_at, p.id);
    let own: Vec<&PendingKey> = pending.iter().filter(|p| p.tenant == me.tenant).collect();
    let before = own
        .iter()
        .filter(|p| tenant_order(key(p), key(me)).is_lt())
        .count();
    // It takes its tenant's turn number `before`: the age of the tenant's
    // `before`-th oldest job, whichever job that is.
    let mut turns: Vec<Turn> = own.iter().map(|p| (p.submitted_at, p.id)).collect();
    turns.sort_unstable();
    let turn = turns[before];
    let others = pending
        .iter()
        .filter(|p| p.tenant != me.tenant && (p.submitted_at, p.id) < turn)
        .count();
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    Some(QueuePosition {
        in_tenant: n(before + 1),
        tenant_pending: n(own.len()),
        ahead_in_pool: n(before + others),
        pool_pending: n(pending.len()),
    })
}

/// A tenant's waiting jobs in its own priority order, and its turns among
/// tenants. Its k-th turn comes at the age of its k-th oldest job,
/// whichever of its jobs takes the turn: so a tenant's priorities reorder
/// its own jobs but never move it ahead of, or behind, another tenant.
#[derive(Default)]
struct TenantQueue<'j> {
    jobs: VecDeque<(&'j QueuedJob, Task)>,
    /// Its jobs' turns, oldest first.
    turns: VecDeque<Turn>,
}

/// A turn among tenants: the (submit time, id) of the job it stands for.
type Turn = (Timestamp, JobId);

impl<'j> TenantQueue<'j> {
    fn next_turn(&self) -> Option<Turn> {
        self.turns.front().copied()
    }

    /// Takes the turn: the tenant's most important job.
    fn pop(&mut self) -> Option<(&'j QueuedJob, Task)> {
        self.turns.pop_front();
        self.jobs.pop_front()
    }
}

/// Splits jobs in priority order into per-tenant queues (indexed by
/// tenant, of `tenants` tenants), keeping the order.
fn by_tenant<'j>(jobs: Vec<(&'j QueuedJob, Task)>, tenants: usize) -> Vec<TenantQueue<'j>> {
    let mut split: Vec<TenantQueue<'j>> = Vec::new();
    split.resize_with(tenants, TenantQueue::default);
    for (job, task) in jobs {
        let t = task.tenant.expect("queued jobs have tenants") as usize;
        if split.len() <= t {
            split.resize_with(t + 1, TenantQueue::default);
        }
        split[t].jobs.push_back((job, task));
        split[t].turns.push_back((job.submitted_at, job.id));
    }
    for q in &mut split {
        q.turns.make_contiguous().sort_unstable();
    }
    split
}

/// The tenants' indices, as the queues hold them.
fn tenant_idx(i: usize) -> TenantIdx {
    i as TenantIdx
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
        // 1. Within guarantees (which may reclaim), tenants taking turns by
        //    the age of their work, each with its own most important job.
        let mut queues = by_tenant(jobs, self.tenants.len());
        // What is left to borrow with, each tenant's jobs in priority
        // order. Each admission uses up the tenant's oldest turn, whichever
        // job it was, so the turns left do not depend on its priorities.
        // A tenant with no guarantee and no CPU-only job can admit nothing
        // within guarantees: its whole queue is left as it is.
        let mut rest: Vec<TenantQueue> = Vec::with_capacity(queues.len());
        for (t, q) in queues.iter_mut().enumerate() {
            let left = if self.may_use_guarantee(tenant_idx(t), q) {
                TenantQueue {
                    jobs: VecDeque::new(),
                    turns: q.turns.clone(),
                }
            } else {
                std::mem::take(q)
            };
            rest.push(left);
        }
        let mut turns: BinaryHeap<Reverse<(Turn, TenantIdx)>> = queues
            .iter()
            .enumerate()
            .filter_map(|(t, q)| Some(Reverse((q.next_turn()?, tenant_idx(t)))))
            .collect();
        while let Some(Reverse((_, t))) = turns.pop() {
            let (Some(queue), Some(left)) = (queues.get_mut(t as usize), rest.get_mut(t as usize))
            else {
                continue;
            };
            let Some((job, task)) = queue.pop() else {
                continue;
            };
            if let Some(turn) = queue.next_turn() {
                turns.push(Reverse((turn, t)));
            }
            if self.fits_guarantee(&task) && self.admit(job, &task, QuotaBound::Guaranteed) {
                left.turns.pop_front();
            } else {
                left.jobs.push_back((job, task));
            }
        }
        // 2. Borrowing, in weighted fair order across tenants. Equal shares
        //    go by the age of the tenant's next turn (then tenant, for a
        //    total order), so that tenants borrowing nothing yet are served
        //    FIFO.
        //    (Or, by [`BorrowOrder::ResponseRatio`], by the response ratio
        //    of the tenant's next job.)
        let mut queues = rest;
        let order = self.snapshot.borrow_order;
        let (now, default_runtime) = (self.now, self.snapshot.default_max_runtime_ms);
        let urgency = |q: &TenantQueue| -> Option<i64> {
            match order {
                BorrowOrder::Age => Some(q.next_turn()?.0.0.saturating_neg()),
                BorrowOrder::ResponseRatio => {
                    Some(order.urgency(q.jobs.front()?.0, now, default_runtime))
                }
            }
        };
        if order == BorrowOrder::ResponseRatio {
            for q in &mut queues {
                q.jobs.make_contiguous().sort_by_cached_key(|(j, _)| {
                    (
                        Reverse(j.priority),
                        Reverse(order.urgency(j, now, default_runtime)),
                        j.submitted_at,
                        j.id,
                    )
                });
            }
        }
        let mut heap: BinaryHeap<(Reverse<Share>, i64, Reverse<TenantIdx>)> = queues
            .iter()
            .enumerate()
            .filter_map(|(t, q)| {
                let t = tenant_idx(t);
                Some((Reverse(self.share(t)), urgency(q)?, Reverse(t)))
            })
            .collect();
        let mut waiting = Vec::new();
        while let Some((_, _, Reverse(t))) = heap.pop() {
            let Some(queue) = queues.get_mut(t as usize) else {
                continue;
            };
            let Some((job, task)) = queue.pop() else {
                continue;
            };
            if !self.admit(job, &task, QuotaBound::Limit) {
                waiting.push((job, task));
            }
            if let Some(u) = urgency(&queues[t as usize]) {
                heap.push((Reverse(self.share(t)), u, Reverse(t)));
            }
        }
        self.explain_all(waiting);
    }

    /// Whether any of `q`'s jobs could be admitted within `t`'s
    /// guarantees: CPU-only work always is, GPU work only with some
    /// guarantee.
    fn may_use_guarantee(&self, t: TenantIdx, q: &TenantQueue) -> bool {
        if q.jobs.is_empty() {
            return false;
        }
        let classes = self.cluster().classes.len();
        (0..classes).any(|c| self.tenants.quota(t, c as ClassIdx).guaranteed > 0)
            || q.jobs.iter().any(|(_, task)| task.gpu == GpuRequest::None)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128, tenant: &str, priority: i32) -> PendingKey {
        PendingKey {
            id: JobId(uuid::Uuid::from_u128(n)),
            tenant: tenant.into(),
            priority,
            submitted_at: Timestamp(n as i64),
        }
    }

    #[test]
    fn positions_follow_priority_within_a_tenant_and_turns_across_tenants() {
        // alpha: 1, 3, 5 (5 urgent); beta: 2, 4.
        let pending = vec![
            key(1, "alpha", 0),
            key(2, "beta", 0),
            key(3, "alpha", 0),
            key(4, "beta", 0),
            key(5, "alpha", 9),
        ];
        let at = |n: u128| queue_position(JobId(uuid::Uuid::from_u128(n)), &pending).unwrap();
        // The urgent job leads its tenant and takes its first turn (the
        // age of job 1): nothing is ahead of it.
        assert_eq!(
            at(5),
            QueuePosition {
                in_tenant: 1,
                tenant_pending: 3,
                ahead_in_pool: 0,
                pool_pending: 5
            }
        );
        // Job 1 is alpha's second: its turn is at job 3's age, after
        // alpha's first turn and beta's job 2.
        assert_eq!((at(1).in_tenant, at(1).ahead_in_pool), (2, 2));
        assert_eq!((at(3).in_tenant, at(3).ahead_in_pool), (3, 4));
        assert_eq!((at(2).in_tenant, at(2).ahead_in_pool), (1, 1));
        assert_eq!((at(4).in_tenant, at(4).ahead_in_pool), (2, 3));
        assert!(queue_position(JobId(uuid::Uuid::from_u128(9)), &pending).is_none());
    }
}
