//! Why a job waits: each job left in the queue gets a typed
//! [`WaitReason`]. Infeasibility is checked against the empty pool; "no
//! room" names the filters that refused the nodes, as kube-scheduler's
//! filter statuses do.

use std::collections::{BTreeMap, HashMap};

use finpool_domain::GpuRequest;

use super::Waiting;
use super::planner::Planner;
use crate::cluster::{Cluster, GpuState};
use crate::engine::Request;
use crate::plugins::{Ctx, Policy, QuotaBound};
use crate::snapshot::QueuedJob;
use crate::task::{ModelFit, Task};
use crate::wait::{Infeasible, Refusal, WaitReason};

/// How many waiting jobs get filter statuses per decision: each costs a
/// pass over every node.
const DIAGNOSED_PER_CYCLE: usize = 32;

impl Planner<'_> {
    /// Which jobs that held out for their model did so while a card they
    /// could use stays idle after the decision: those are the ones whose
    /// hold clock runs (a card some later job took does not count). A job
    /// whose model is on no card at all is the exception: its clock runs
    /// whenever it is passed over, or in a busy pool, where later jobs take
    /// every card that frees, it would wait for as long as the pool stays
    /// busy rather than pay one load (no card would ever turn warm for it).
    fn settle_held_back(&mut self) {
        let holding_out = std::mem::take(&mut self.holding_out);
        let mut held = Vec::new();
        for (job, task, bound, avoid) in holding_out {
            let caps = match (bound, task.tenant) {
                (QuotaBound::Limit, Some(t)) => Some(self.caps(t)),
                _ => None,
            };
            let request = Request {
                tenants: &self.tenants,
                bound,
                caps: caps.as_deref(),
                avoid_node: avoid,
                workload: self.workload,
                workload_epoch: 0,
            };
            let model_on_no_card = task
                .model
                .and_then(|m| self.cluster().model_demand.get(m as usize))
                .is_some_and(|d| d.resident == 0);
            if model_on_no_card || self.engine.place(&request, &task).is_some() {
                held.push(job);
            }
        }
        held.sort_unstable();
        held.dedup();
        self.outcome.held_back = held;
    }

    pub(super) fn explain_all(&mut self, waiting: Vec<(&QueuedJob, Task)>) {
        self.settle_held_back();
        let mut cache: HashMap<Task, WaitReason> = HashMap::new();
        let mut infeasible: HashMap<Task, Option<Infeasible>> = HashMap::new();
        let mut diagnosed = 0;
        for (i, (job, task)) in waiting.into_iter().enumerate() {
            let reason = self.explain(job, &task, i, &mut cache, &mut infeasible, &mut diagnosed);
            self.outcome.waiting.push(Waiting {
                job: job.id,
                reason,
            });
        }
    }

    fn explain(
        &mut self,
        job: &QueuedJob,
        task: &Task,
        i: usize,
        cache: &mut HashMap<Task, WaitReason>,
        infeasible_by_task: &mut HashMap<Task, Option<Infeasible>>,
        diagnosed: &mut usize,
    ) -> WaitReason {
        if let Some((reserved, node, at)) = self.reservation
            && reserved == job.id
        {
            return WaitReason::Reserved {
                node: self.cluster().nodes[node as usize].name.clone(),
                at,
            };
        }
        if self.outcome.held_back.binary_search(&job.id).is_ok()
            && let Some(hint) = self.locality_hints.get(&job.id)
        {
            return hint.reason(self.snapshot, self.cluster());
        }
        let any_card = Task {
            model_fit: ModelFit::Any,
            ..*task
        };
        // Every waiting job learns it fits no node, not only the first
        // `explain_limit`: it is one pass over the nodes per task shape,
        // and it lasts until the pool changes (0 explains nothing).
        if self.snapshot.explain_limit > 0
            && let Some(resource) = infeasible_by_task
                .entry(any_card)
                .or_insert_with(|| infeasible(self.cluster(), &any_card).err())
        {
            return WaitReason::Infeasible {
                resource: resource.clone(),
            };
        }
        if i >= self.snapshot.explain_limit {
            return WaitReason::Queued;
        }
        if let Some(reason) = cache.get(&any_card) {
            return reason.clone();
        }
        let reason = {
            let request = Request::new(&self.tenants, QuotaBound::Unbounded, self.workload, 0);
            if self.engine.place(&request, &any_card).is_some() {
                WaitReason::QuotaLimit {
                    hits: self.quota_hits(&any_card),
                }
            } else if *diagnosed < DIAGNOSED_PER_CYCLE {
                *diagnosed += 1;
                let ctx = Ctx::new(
                    self.cluster(),
                    &self.tenants,
                    QuotaBound::Unbounded,
                    self.workload,
                );
                WaitReason::NoCapacity {
                    refused: refusals(self.engine_policy(), &ctx, &any_card),
                }
            } else {
                WaitReason::NoCapacity { refused: vec![] }
            }
        };
        cache.insert(any_card, reason.clone());
        reason
    }
}

/// Whether the task could run on the pool were it empty; if not, the
/// resource that no node has enough of.
pub fn infeasible(empty: &Cluster, task: &Task) -> Result<(), Infeasible> {
    let classes_ok = |g: &GpuState| task.classes.contains(g.class);
    let nodes = &empty.nodes;
    let largest_cpu = nodes.iter().map(|n| n.cpu_milli).max().unwrap_or(0);
    if task.cpu_milli > largest_cpu {
        return Err(Infeasible::CpuMilli {
            asked: task.cpu_milli,
            largest: largest_cpu,
        });
    }
    let largest_memory = nodes.iter().map(|n| n.memory_mib).max().unwrap_or(0);
    if task.memory_mib > largest_memory {
        return Err(Infeasible::MemoryMib {
            asked: task.memory_mib,
            largest: largest_memory,
        });
    }
    if task.gpu == GpuRequest::None {
        return if nodes
            .iter()
            .any(|n| n.cpu_milli >= task.cpu_milli && n.memory_mib >= task.memory_mib)
        {
            Ok(())
        } else {
            Err(Infeasible::CpuMilli {
                asked: task.cpu_milli,
                largest: largest_cpu,
            })
        };
    }
    if !nodes.iter().flat_map(|n| &n.gpus).any(classes_ok) {
        let asked = empty
            .classes
            .iter()
            .enumerate()
            .filter(|(c, _)| task.classes.contains(*c as u8))
            .map(|(_, c)| c.name.clone())
            .collect::<Vec<_>>();
        return Err(Infeasible::GpuClasses { asked });
    }
    let card_memory = match task.gpu {
        GpuRequest::Share { memory_mib, .. } => memory_mib.max(task.min_gpu_memory_mib),
        _ => task.min_gpu_memory_mib,
    };
    let largest_card = nodes
        .iter()
        .flat_map(|n| &n.gpus)
        .filter(|g| classes_ok(g))
        .map(|g| g.memory_mib)
        .max()
        .unwrap_or(0);
    if card_memory > largest_card {
        return Err(Infeasible::GpuMemoryMib {
            asked: card_memory,
            largest: largest_card,
        });
    }
    let usable = |g: &GpuState| classes_ok(g) && g.memory_mib >= task.min_gpu_memory_mib;
    match task.gpu {
        GpuRequest::Whole { count } => {
            let fits = |n: &&crate::cluster::NodeState| {
                n.cpu_milli >= task.cpu_milli && n.memory_mib >= task.memory_mib
            };
            let largest = nodes
                .iter()
                .filter(fits)
                .map(|n| n.gpus.iter().filter(|g| usable(g) && !g.is_mig()).count() as u32)
                .max()
                .unwrap_or(0);
            if largest < count {
                return Err(Infeasible::Gpus {
                    asked: count,
                    largest,
                });
            }
        }
        GpuRequest::Share { milli, memory_mib } if task.mig => {
            let any = nodes.iter().flat_map(|n| &n.gpus).any(|g| {
                usable(g)
                    && g.slices
                        .iter()
                        .any(|s| s.milli >= milli && s.memory_mib >= memory_mib)
            });
            if !any {
                return Err(Infeasible::MigSlice { milli, memory_mib });
            }
        }
        _ => {}
    }
    Ok(())
}

/// Per filter and reason, on how many nodes the task was refused; nodes
/// whose cards pass every filter but offer no choice count as
/// `Placement/NoFittingChoice`.
fn refusals(policy: &Policy, ctx: &Ctx<'_>, task: &Task) -> Vec<Refusal> {
    let mut counts: BTreeMap<(&'static str, &'static str), u32> = BTreeMap::new();
    for node in &ctx.cluster.nodes {
        if let Some(f) = policy.filters.iter().find(|f| !f.node(ctx, task, node)) {
            *counts.entry((f.name(), f.code())).or_default() += 1;
            continue;
        }
        let mut by_card: BTreeMap<(&'static str, &'static str), u32> = BTreeMap::new();
        let mut passing = 0;
        for gpu in &node.gpus {
            match policy.filters.iter().find(|f| !f.gpu(ctx, task, node, gpu)) {
                Some(f) => *by_card.entry((f.name(), f.code())).or_default() += 1,
                None => passing += 1,
            }
        }
        let key = if passing > 0 || task.gpu == GpuRequest::None {
            ("Placement", "NoFittingChoice")
        } else {
            by_card
                .into_iter()
                .max_by_key(|(k, n)| (*n, std::cmp::Reverse(*k)))
                .map_or(("Placement", "NoFittingChoice"), |(k, _)| k)
        };
        *counts.entry(key).or_default() += 1;
    }
    let mut out: Vec<Refusal> = counts
        .into_iter()
        .map(|((plugin, code), nodes)| Refusal {
            plugin,
            code,
            nodes,
        })
        .collect();
    out.sort_by(|a, b| b.nodes.cmp(&a.nodes).then(a.plugin.cmp(b.plugin)));
    out
}
