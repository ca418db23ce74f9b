//! Quota accounting: guarantees, the pool's borrowing budget per class,
//! and keeping it in step as allocations come and go.

use finpool_domain::{GpuRequest, MILLI_PER_GPU};

use super::planner::Planner;
use crate::cluster::{Allocation, ClassIdx, TenantIdx};
use crate::engine::Engine;
use crate::task::Task;
use crate::tenants::budget_part;
use crate::wait::{QuotaBoundKind, QuotaHit};

impl<'a> Planner<'a> {
    /// Whether the task could run within its tenant's guarantee on some
    /// class it may use.
    pub(super) fn fits_guarantee(&self, task: &Task) -> bool {
        let Some(t) = task.tenant else { return false };
        let need = match task.gpu {
            GpuRequest::None => return true,
            GpuRequest::Whole { count } => count as u64 * MILLI_PER_GPU as u64,
            GpuRequest::Share { milli, .. } => milli as u64,
        };
        (0..self.cluster().classes.len()).any(|c| {
            let c = c as ClassIdx;
            task.classes.contains(c)
                && self.cluster().held_milli(t, c) + need
                    <= self.tenants.quota(t, c).guaranteed as u64 * MILLI_PER_GPU as u64
        })
    }

    /// Per class, the most the tenant may hold under the borrowing budget.
    pub(super) fn caps(&self, t: TenantIdx) -> Vec<u64> {
        self.budgets
            .iter()
            .enumerate()
            .map(|(c, b)| {
                let quota = self.tenants.quota(t, c as ClassIdx);
                let g = quota.guaranteed as u64 * MILLI_PER_GPU as u64;
                let held = self.cluster().held_milli(t, c as ClassIdx);
                let lend = quota
                    .lending_limit
                    .map_or(g, |l| l as u64 * MILLI_PER_GPU as u64);
                // g(h) = max(-lend, h - g) is the tenant's net draw on the
                // budget; it may grow by the budget's slack, and always up
                // to its own guarantee.
                let draw = (held as i64 - g as i64).max(-(lend as i64));
                let slack = b.lendable.saturating_sub(b.borrowed) as i64;
                (g as i64 + draw + slack).max(g as i64) as u64
            })
            .collect()
    }

    /// Per class the task may use, the quota bound its tenant is at: its
    /// limit, else the borrowing budget. For a job that could run on an
    /// empty enough pool but was not admitted under its quota.
    pub(super) fn quota_hits(&self, task: &Task) -> Vec<QuotaHit> {
        let Some(t) = task.tenant else {
            return Vec::new();
        };
        let asked = match task.gpu {
            GpuRequest::None => return Vec::new(),
            GpuRequest::Whole { count } => count as u64 * MILLI_PER_GPU as u64,
            GpuRequest::Share { milli, .. } => milli as u64,
        };
        let caps = self.caps(t);
        let mut hits = Vec::new();
        for (c, class) in self.cluster().classes.iter().enumerate() {
            if !task.classes.contains(c as ClassIdx)
                || self.capacity.get(c).is_none_or(|cap| *cap == 0)
            {
                continue;
            }
            let quota = self.tenants.quota(t, c as ClassIdx);
            let held = self.cluster().held_milli(t, c as ClassIdx);
            let limit = quota.limit as u64 * MILLI_PER_GPU as u64;
            let cap = caps.get(c).copied().unwrap_or(u64::MAX);
            let (bound, bound_milli) = if held + asked > limit {
                (QuotaBoundKind::Limit, limit)
            } else if held + asked > cap {
                (QuotaBoundKind::BorrowingBudget, cap)
            } else {
                continue;
            };
            hits.push(QuotaHit {
                class: class.name.clone(),
                bound,
                bound_milli,
                held_milli: held,
                asked_milli: asked,
                guaranteed_milli: quota.guaranteed as u64 * MILLI_PER_GPU as u64,
                limit_milli: limit,
            });
        }
        // A class the tenant has no quota on is not one it could use: name
        // it only if no class it could use is left.
        if hits.iter().any(|h| h.limit_milli > 0) {
            hits.retain(|h| h.limit_milli > 0);
        }
        hits
    }

    /// Applies an allocation, keeping budgets in step.
    pub(super) fn apply(&mut self, a: &Allocation) {
        self.recharge(a.tenant, |engine| engine.apply(a));
    }

    pub(super) fn release(&mut self, a: &Allocation) {
        self.recharge(a.tenant, |engine| engine.release(a));
    }

    /// [`Planner::apply`] in a trial that will be undone (see
    /// [`Engine::apply_trial`]).
    pub(super) fn apply_trial(&mut self, a: &Allocation) {
        self.recharge(a.tenant, |engine| engine.apply_trial(a));
    }

    /// [`Planner::release`] in a trial that will be undone.
    pub(super) fn release_trial(&mut self, a: &Allocation) {
        self.recharge(a.tenant, |engine| engine.release_trial(a));
    }

    fn recharge(&mut self, tenant: Option<TenantIdx>, change: impl FnOnce(&mut Engine<'a>)) {
        let Some(t) = tenant else {
            change(&mut self.engine);
            return;
        };
        let classes = self.budgets.len();
        let before: Vec<(u64, u64)> = (0..classes)
            .map(|c| {
                budget_part(
                    self.tenants.quota(t, c as ClassIdx),
                    self.cluster().held_milli(t, c as ClassIdx),
                )
            })
            .collect();
        change(&mut self.engine);
        for (c, (b0, l0)) in before.into_iter().enumerate() {
            let (b1, l1) = budget_part(
                self.tenants.quota(t, c as ClassIdx),
                self.cluster().held_milli(t, c as ClassIdx),
            );
            let budget = &mut self.budgets[c];
            budget.borrowed = budget.borrowed + b1 - b0;
            budget.lendable = budget.lendable + l1 - l0;
        }
    }
}
