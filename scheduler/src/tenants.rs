//! Quotas per tenant and GPU class, as the scheduler reads them.

use rustc_hash::FxHashMap;

use finpool_domain::{MILLI_PER_GPU, Quota};

use crate::cluster::{ClassIdx, Cluster, TenantIdx};

/// How fast fair share forgets a tenant's past borrowing, by default.
/// Hours rather than minutes: a tenant whose bursts are spaced wider than
/// the half-life would otherwise look new at every burst and crowd out
/// steadier tenants (measured on the GenAI trace; see the README).
pub const DEFAULT_FAIR_SHARE_HALF_LIFE_S: u64 = 3 * 3600;

/// Tenants by index: names, quotas per class, weights, and whether their
/// shares go on MIG slices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantBook {
    pub names: Vec<String>,
    /// Name → index: looked up for every queued and running job each
    /// cycle, so with a fast hash (names are the operators' own).
    index: FxHashMap<String, TenantIdx>,
    quotas: Vec<Vec<Quota>>,
    weights: Vec<u32>,
    mig: Vec<bool>,
    suspended: Vec<bool>,
}

impl TenantBook {
    /// Adds a tenant with its quota per class index, and returns its index.
    pub fn push(&mut self, name: impl Into<String>, quotas: Vec<Quota>, weight: u32) -> TenantIdx {
        let name = name.into();
        let idx = self.names.len() as TenantIdx;
        self.index.insert(name.clone(), idx);
        self.names.push(name);
        self.quotas.push(quotas);
        self.weights.push(weight.max(1));
        self.mig.push(false);
        self.suspended.push(false);
        idx
    }

    /// Marks a tenant as suspended by an operator: its jobs wait.
    pub fn set_suspended(&mut self, tenant: TenantIdx, suspended: bool) {
        if let Some(s) = self.suspended.get_mut(tenant as usize) {
            *s = suspended;
        }
    }

    pub fn is_suspended(&self, tenant: TenantIdx) -> bool {
        self.suspended
            .get(tenant as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Marks a tenant as isolating its shares in hardware (MIG).
    pub fn set_mig(&mut self, tenant: TenantIdx, mig: bool) {
        if let Some(m) = self.mig.get_mut(tenant as usize) {
            *m = mig;
        }
    }

    pub fn is_mig(&self, tenant: TenantIdx) -> bool {
        self.mig.get(tenant as usize).copied().unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<TenantIdx> {
        self.index.get(name).copied()
    }

    pub fn quota(&self, tenant: TenantIdx, class: ClassIdx) -> Quota {
        self.quotas
            .get(tenant as usize)
            .and_then(|q| q.get(class as usize))
            .copied()
            .unwrap_or_default()
    }

    pub fn weight(&self, tenant: TenantIdx) -> u32 {
        self.weights.get(tenant as usize).copied().unwrap_or(1)
    }
}

/// The pool-wide borrowing budget of one class, in milli-GPU.
///
/// Tenants borrow (hold more than their guarantee) from capacity nobody is
/// guaranteed, then from other tenants' idle guarantees, each lender giving
/// at most its lending limit. A borrowing admission must keep
/// `borrowed <= lendable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Sum over tenants of what they hold above their guarantee.
    pub borrowed: u64,
    /// Unguaranteed capacity plus each tenant's lendable idle guarantee.
    pub lendable: u64,
}

/// One tenant's part in a class's budget when it holds `held`: (borrowed, lent out at most).
pub fn budget_part(quota: Quota, held: u64) -> (u64, u64) {
    let guaranteed = quota.guaranteed as u64 * MILLI_PER_GPU as u64;
    let borrowed = held.saturating_sub(guaranteed);
    let idle = guaranteed.saturating_sub(held);
    let lendable = match quota.lending_limit {
        Some(l) => idle.min(l as u64 * MILLI_PER_GPU as u64),
        None => idle,
    };
    (borrowed, lendable)
}

/// Every class's budget on `cluster`.
pub fn budgets(cluster: &Cluster, tenants: &TenantBook) -> Vec<Budget> {
    (0..cluster.classes.len())
        .map(|c| {
            let c = c as ClassIdx;
            let capacity: u64 = cluster
                .nodes
                .iter()
                .flat_map(|n| &n.gpus)
                .filter(|g| g.class == c)
                .count() as u64
                * MILLI_PER_GPU as u64;
            let guaranteed: u64 = (0..tenants.len())
                .map(|t| tenants.quota(t as TenantIdx, c).guaranteed as u64 * MILLI_PER_GPU as u64)
                .sum();
            let mut budget = Budget {
                borrowed: 0,
                lendable: capacity.saturating_sub(guaranteed),
            };
            for t in 0..tenants.len() {
                let (b, l) = budget_part(
                    tenants.quota(t as TenantIdx, c),
                    cluster.held_milli(t as TenantIdx, c),
                );
                budget.borrowed += b;
                budget.lendable += l;
            }
            budget
        })
        .collect()
}
