//! Preemption: which running jobs may be stopped for a waiting one, and
//! the cheapest set of them on one node. Reclaim takes only other
//! tenants' work above their guarantees; priority preemption only the
//! same tenant's less important work.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use finpool_domain::{JobId, MILLI_PER_GPU, Timestamp};

use super::planner::Planner;
use super::{PreemptReason, Preemption};
use crate::cluster::{ClassIdx, NodeIdx, TenantIdx};
use crate::plugins::{Policy, QuotaBound};
use crate::snapshot::{Held, QueuedJob};
use crate::task::Task;

impl<'a> Planner<'a> {
    /// May this held job be preempted now?
    pub(super) fn preemptible(&self, v: &Held) -> bool {
        let i = self.held_at[&v.id];
        !self.released[i]
            && !self.fresh[i]
            && v.started_at
                .is_some_and(|s| self.now.0 >= s.0.saturating_add(v.min_runtime_ms as i64))
    }

    /// Whether the victim's tenant stays at or above its guarantee on every
    /// class the victim holds, once the victim is gone.
    fn keeps_guarantee(&self, v: &Held) -> bool {
        let Some(s) = v.tenant else { return true };
        let mut freed: HashMap<ClassIdx, u64> = HashMap::new();
        for a in &v.pieces {
            let node = &self.cluster().nodes[a.node as usize];
            for i in a.choice.positions() {
                let gpu = &node.gpus[i];
                let amount = match a.choice.slice {
                    Some(sl) => gpu.slices[sl as usize].milli as u64,
                    // A time-shared card frees only if this is its last job.
                    None if gpu.jobs == 1 => MILLI_PER_GPU as u64,
                    None => 0,
                };
                *freed.entry(gpu.class).or_default() += amount;
            }
        }
        freed.into_iter().all(|(c, amount)| {
            let g = self.tenants.quota(s, c).guaranteed as u64 * MILLI_PER_GPU as u64;
            self.cluster().held_milli(s, c).saturating_sub(amount) >= g
        })
    }

    /// How reclaim ranks each tenant whose work it may take: the one
    /// furthest above its guarantees on the classes `task` may use first,
    /// then the one whose work started most recently (it loses the least),
    /// then by index. Never by priority: a tenant's priorities order only
    /// its own jobs, so they cannot push reclaim onto another tenant.
    fn tenant_ranks(&self, task: &Task) -> HashMap<Option<TenantIdx>, TenantRank> {
        // Starts as of the decision's beginning (jobs admitted now have
        // none), so that preemptions within it do not reorder tenants.
        let mut latest: HashMap<Option<TenantIdx>, Option<Timestamp>> = HashMap::new();
        for h in &self.held {
            let at = latest.entry(h.tenant).or_default();
            *at = (*at).max(h.started_at);
        }
        latest
            .into_iter()
            .map(|(s, latest)| {
                let over = s.map_or(0, |s| {
                    (0..self.cluster().classes.len() as ClassIdx)
                        .filter(|&c| task.classes.contains(c))
                        .map(|c| {
                            let g =
                                self.tenants.quota(s, c).guaranteed as u64 * MILLI_PER_GPU as u64;
                            self.cluster().held_milli(s, c).saturating_sub(g)
                        })
                        .sum()
                });
                (s, TenantRank(Reverse(over), Reverse(latest), s))
            })
            .collect()
    }

    /// Finds the node where preempting the fewest eligible victims lets the
    /// job fit, and does it. On a node, victims go by [`TenantRank`] of
    /// their tenant, then within a tenant by its own priority (lowest
    /// first), then the most recently started. Among nodes: fewest victims,
    /// then the best-ranked tenants, then (same-tenant preemption only) the
    /// lowest summed priority, then the lowest node. `None` when no
    /// preemption helps.
    ///
    /// Each node's plan is tried on the cluster and undone: a trial leaves
    /// the placement indexes alone, and the node is re-indexed only if it
    /// does not come back to the state it had.
    pub(super) fn preempt_for(
        &mut self,
        job: &QueuedJob,
        task: &Task,
        bound: QuotaBound,
        caps: Option<&[u64]>,
        avoid: Option<NodeIdx>,
        victims: Victims<'_, 'a>,
    ) -> Option<bool> {
        let Victims { only, eligible } = victims;
        let mut by_node: BTreeMap<NodeIdx, Vec<usize>> = BTreeMap::new();
        let mut consider = |i: usize, h: &Held| {
            if Some(h.node) != avoid && eligible(self, h) {
                by_node.entry(h.node).or_default().push(i);
            }
        };
        match only {
            Some(t) => {
                for &i in self.held_of.get(t as usize).map_or(&[][..], |v| v) {
                    consider(i, &self.held[i]);
                }
            }
            None => {
                for (i, h) in self.held.iter().enumerate() {
                    consider(i, h);
                }
            }
        }
        if by_node.is_empty() {
            return None;
        }
        let ranks = self.tenant_ranks(task);
        let rank = |h: &Held| ranks.get(&h.tenant).copied().unwrap_or(TenantRank::LAST);
        let mut best: Option<(PlanCost, Vec<usize>)> = None;
        for (node, mut victims) in by_node {
            victims.sort_by(|&a, &b| {
                let (a, b) = (&self.held[a], &self.held[b]);
                rank(a)
                    .cmp(&rank(b))
                    .then(a.priority.cmp(&b.priority))
                    .then(b.started_at.cmp(&a.started_at))
                    .then(a.id.cmp(&b.id))
            });
            let mut taken = Vec::new();
            let mut fits = false;
            for v in victims {
                // Reclaim may not take another tenant below its guarantee.
                if self.held[v].tenant != task.tenant && !self.keeps_guarantee(&self.held[v]) {
                    continue;
                }
                for a in self.held[v].pieces.clone() {
                    self.release_trial(&a);
                }
                taken.push(v);
                if self.fits_on(node, task, bound, caps) {
                    fits = true;
                    break;
                }
            }
            for &v in taken.iter().rev() {
                for a in self.held[v].pieces.clone() {
                    self.apply_trial(&a);
                }
            }
            self.engine.settle(node);
            if fits {
                let mut tenants: Vec<TenantRank> =
                    taken.iter().map(|&v| rank(&self.held[v])).collect();
                tenants.sort_unstable();
                // Priorities compare plans only when every victim is the
                // preempting job's own tenant's.
                let own = taken.iter().all(|&v| self.held[v].tenant == task.tenant);
                let priority = if own {
                    taken.iter().map(|&v| self.held[v].priority as i64).sum()
                } else {
                    0
                };
                let cost = (taken.len(), tenants, priority, node);
                if best.as_ref().is_none_or(|(b, _)| cost < *b) {
                    best = Some((cost, taken));
                }
            }
        }
        let ((_, _, _, node), victims) = best?;
        for &v in &victims {
            for a in self.held[v].pieces.clone() {
                self.release(&a);
            }
            self.released[v] = true;
        }
        let placement = {
            let mut ctx =
                crate::plugins::Ctx::new(self.cluster(), &self.tenants, bound, self.workload);
            ctx.caps = caps;
            self.engine_policy().best_on_node(&ctx, task, node)
        }
        .expect("the plan was checked to fit");
        let reason = match bound {
            QuotaBound::Guaranteed
                if victims.iter().any(|&v| self.held[v].tenant != task.tenant) =>
            {
                PreemptReason::Reclaim {
                    tenant: job.tenant.to_string(),
                }
            }
            _ => PreemptReason::Priority,
        };
        let ids: Vec<JobId> = victims.iter().map(|&v| self.held[v].id).collect();
        for id in &ids {
            self.outcome.preempted.push(Preemption {
                job: *id,
                reason: reason.clone(),
                for_job: job.id,
            });
        }
        self.commit(job, task, &placement, bound == QuotaBound::Guaranteed, ids);
        Some(true)
    }

    pub(super) fn engine_policy(&self) -> &'a Policy {
        self.engine.policy()
    }

    fn fits_on(&self, node: NodeIdx, task: &Task, bound: QuotaBound, caps: Option<&[u64]>) -> bool {
        let mut ctx = crate::plugins::Ctx::new(self.cluster(), &self.tenants, bound, self.workload);
        ctx.caps = caps;
        self.engine_policy().fits_on_node(&ctx, task, node)
    }
}

/// Which held jobs a preemption may take.
pub(super) struct Victims<'f, 'a> {
    /// Every eligible victim is this tenant's (so only its jobs are
    /// looked at).
    pub(super) only: Option<TenantIdx>,
    pub(super) eligible: &'f dyn Fn(&Planner<'a>, &Held) -> bool,
}

/// A victim tenant's place in reclaim's order (lower goes first): most
/// milli-GPU above its guarantees, then latest start, then index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TenantRank(Reverse<u64>, Reverse<Option<Timestamp>>, Option<TenantIdx>);

impl TenantRank {
    /// After every ranked tenant (unused in practice: every held job's
    /// tenant is ranked).
    const LAST: Self = Self(Reverse(0), Reverse(None), None);
}

/// (victims, their tenants' ranks sorted, summed priority when all are the
/// preemptor's tenant's, node): the lowest plan wins.
type PlanCost = (usize, Vec<TenantRank>, i64, NodeIdx);
