//! Quotas per tenant and GPU class, as the scheduler reads them.

use finpool_domain::Quota;

use crate::cluster::{ClassIdx, TenantIdx};

/// Tenants by index: names, quotas per class and weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantBook {
    pub names: Vec<String>,
    quotas: Vec<Vec<Quota>>,
    weights: Vec<u32>,
}

impl TenantBook {
    /// Adds a tenant with its quota per class index, and returns its index.
    pub fn push(&mut self, name: impl Into<String>, quotas: Vec<Quota>, weight: u32) -> TenantIdx {
        self.names.push(name.into());
        self.quotas.push(quotas);
        self.weights.push(weight.max(1));
        (self.names.len() - 1) as TenantIdx
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<TenantIdx> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| i as TenantIdx)
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
