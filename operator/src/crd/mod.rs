//! The custom resources, in `finpool.io/v1alpha1`, generated from these
//! Rust types: what `finpool crd` prints and `charts/finpool/crds/` holds.
//!
//! Simple rules are CEL (`x-kubernetes-validations`), so the API server
//! refuses a bad object with a message naming the field, and tests check
//! the same rules offline with kube's CEL evaluator.

// Several printer columns repeat `type_ = "…"`, which clippy mistakes for
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod base_model;
pub mod inference_job;
pub mod tenant;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use base_model::{BaseModel, BaseModelSpec, BaseModelStatus, ModelSource};
pub use inference_job::{InferenceJob, InferenceJobSpec, InferenceJobStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};

/// The API group.
pub const GROUP: &str = "finpool.io";

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![Tenant::crd(), BaseModel::crd(), InferenceJob::crd()]
}

/// Every CRD as one multi-document YAML stream.
pub fn yaml() -> String {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd).expect("CRDs serialize"));
    }
    out
}

/// A status condition, as Kubernetes conventions define it.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Admitted`, `PodScheduled`, …
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A machine-readable code: for a waiting job, the scheduler's typed
    /// wait reason (`QuotaLimit`, `NoCapacity`, `TenantSuspended`, …).
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
