//! `Tenant`: a brokerage, cluster-scoped. It owns namespaces, quotas and
//! the fences around them (see [`crate::build::tenant`]).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// A brokerage on the pool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "finpool.io",
    version = "v1alpha1",
    kind = "Tenant",
    shortname = "fpt",
    category = "finpool",
    status = "TenantStatus",
    cel,
    doc = "A brokerage sharing the pool: its namespaces, GPU quotas and isolation.",
    printcolumn(name = "Display", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Isolation", type_ = "string", json_path = ".spec.isolation"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspended"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: a tenant id is at most 63 characters")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// A human name; defaults to the object's name.
    #[serde(default)]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.size() <= 128").message("displayName: at most 128 characters"))]
    pub display_name: String,
    /// The namespaces whose InferenceJobs belong to this tenant; the
    /// operator creates and fences them.
    // Bounds keep the CEL rules within the API server's cost budget.
    #[schemars(length(max = 32), inner(length(max = 63)))]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 32").message("namespaces: between 1 and 32"))]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'))").message("namespaces: each must be a DNS label"))]
    pub namespaces: Vec<String>,
    /// GPU quotas, one per class (a list keyed by class: the API server
    /// refuses two entries for one class).
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["gpuClass"]))]
    pub quotas: Vec<ClassQuota>,
    /// Share of idle capacity relative to other tenants.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("weight: must be from 1 to 1000"))]
    pub weight: i64,
    /// How the tenant's fractional jobs share a card.
    #[serde(default)]
    pub isolation: Isolation,
    /// Base models its jobs may use; empty: any.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(max = 63)))]
    pub allowed_models: Vec<String>,
    /// Node locations (the `topology.kubernetes.io/zone` or
    /// `finpool.io/location` label) its jobs may run in; empty: any.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub allowed_locations: Vec<String>,
    /// A suspended tenant's tokens are refused and its jobs wait.
    #[serde(default)]
    pub suspended: bool,
    /// The group (from the cluster's authentication) whose members act for
    /// the tenant; defaults to `finpool:tenant:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

fn one() -> i64 {
    1
}

/// The tenant's quota on one GPU class, in GPUs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.guaranteed >= 0").message("guaranteed: must not be negative"))]
#[x_kube(validation = Rule::new("!has(self.borrowingLimit) || self.borrowingLimit >= 0").message("borrowingLimit: must not be negative"))]
#[x_kube(validation = Rule::new("!has(self.lendingLimit) || (self.lendingLimit >= 0 && self.lendingLimit <= self.guaranteed)").message("lendingLimit: must be from 0 to guaranteed"))]
pub struct ClassQuota {
    #[schemars(length(max = 63))]
    pub gpu_class: String,
    /// Always available to the tenant (reclaimed from borrowers).
    pub guaranteed: i64,
    /// How far above its guarantee it may borrow idle cards; unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrowing_limit: Option<i64>,
    /// The most of its idle guarantee others may borrow; unset: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lending_limit: Option<i64>,
}

/// As the store's isolation levels.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum Isolation {
    /// Whole cards only.
    Exclusive,
    /// Shares of a card only beside the same tenant's jobs.
    #[default]
    SharedWithinTenant,
    /// Hardware partitions (MIG), which may sit beside other tenants.
    Mig,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The namespaces fenced for it.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
