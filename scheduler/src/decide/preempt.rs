//! Preemption: which running jobs may be stopped for a waiting one, and
//! the cheapest set of them on one node. Reclaim takes only other
//! tenants' work above their guarantees; priority preemption only the
//! same tenant's less important work.

use std::collections::{BTreeMap, HashMap};

use finpool_domain::{JobId, MILLI_PER_GPU};

use super::planner::Planner;
use super::{PreemptReason, Preemption};
use crate::cluster::{ClassIdx, NodeIdx};
use crate::plugins::{Policy, QuotaBound};
use crate::snapshot::{Held, QueuedJob};
use crate::task::Task;

impl<'a> Planner<'a> {
    /// May this held job be preempted now?
    pub(super) fn preemptible(&self, v: &Held) -> bool {
        let i = self.held.iter().position(|h| h.id == v.id).expect("held");
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

    /// Finds the node where preempting the fewest eligible victims (lowest
    /// priority first, then most recently started) lets the job fit, and
    /// does it. `None` when no preemption helps.
    pub(super) fn preempt_for(
        &mut self,
        job: &QueuedJob,
        task: &Task,
        bound: QuotaBound,
        caps: Option<&[u64]>,
        avoid: Option<NodeIdx>,
        eligible: &dyn Fn(&Self, &Held) -> bool,
    ) -> Option<bool> {
        let mut by_node: BTreeMap<NodeIdx, Vec<usize>> = BTreeMap::new();
        for (i, h) in self.held.iter().enumerate() {
            if Some(h.node) != avoid && eligible(self, h) {
                by_node.entry(h.node).or_default().push(i);
            }
        }
        if by_node.is_empty() {
            return None;
        }
        // (victims, summed priority, node) of the best plan.
        let mut best: Option<(usize, i64, NodeIdx, Vec<usize>)> = None;
        for (node, mut victims) in by_node {
            victims.sort_by(|&a, &b| {
                let (a, b) = (&self.held[a], &self.held[b]);
                a.priority
                    .cmp(&b.priority)
                    .then(b.started_at.cmp(&a.started_at))
                    .then(a.id.cmp(&b.id))
            });
            let mut taken = Vec::new();
            let mut fits = false;
            for v in victims {
                // Reclaim may not take another tenant below its guarantee.
                if self.held[v].tenant != task.tenant
                    && !self.keeps_guarantee(&self.held[v].clone())
                {
                    continue;
                }
                for a in self.held[v].pieces.clone() {
                    self.release(&a);
                }
                taken.push(v);
                if self.fits_on(node, task, bound, caps) {
                    fits = true;
                    break;
                }
            }
            for &v in taken.iter().rev() {
                for a in self.held[v].pieces.clone() {
                    self.apply(&a);
                }
            }
            if fits {
                let cost = (
                    taken.len(),
                    taken.iter().map(|&v| self.held[v].priority as i64).sum(),
                    node,
                );
                if best.as_ref().is_none_or(|b| cost < (b.0, b.1, b.2)) {
                    best = Some((cost.0, cost.1, cost.2, taken));
                }
            }
        }
        let (_, _, node, victims) = best?;
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
        self.engine_policy()
            .best_on_node(&ctx, task, node)
            .is_some()
    }
}
