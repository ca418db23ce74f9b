//! Pure builders: from a custom resource (and what was looked up for it)
//! to the Kubernetes objects it owns. No I/O and no clock, so every rule
//! here is tested without a server (Stackable's dereference → validate →
//! build → apply; this module is "build").

pub mod job;
pub mod model;
pub mod tenant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

/// Where nodes keep base models, by default.
pub const DEFAULT_MODEL_CACHE: &str = "/var/lib/finpool/models";

/// The label naming the tenant an object belongs to.
pub const TENANT_LABEL: &str = "finpool.io/tenant";
/// The label and annotation naming the store's job id.
pub const JOB_ID_LABEL: &str = "finpool.io/job-id";
/// Who manages what the operator applies.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "finpool-operator");
/// On a bound pod: the cards the scheduler gave it (what
/// `CUDA_VISIBLE_DEVICES` names), set atomically by the binding.
pub const GPUS_ANNOTATION: &str = "finpool.io/gpus";
/// On a pod being evicted for preemption: why. Its end is then the
/// scheduler's to record (requeue), not a failure of the job.
pub const PREEMPTED_ANNOTATION: &str = "finpool.io/preempted";
/// The scheduler that places finpool pods.
pub const SCHEDULER_NAME: &str = "finpool-scheduler";
/// The ClusterRole a tenant's group is bound to in its namespaces.
pub const TENANT_CLUSTER_ROLE: &str = "finpool-tenant";

/// What the builders need to know about the installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// The namespace finpool runs in (model-cache service, pre-cache jobs).
    pub namespace: String,
    /// The nodes' model cache directory.
    pub model_cache: String,
    /// The image that copies models into the cache.
    pub precache_image: String,
    /// The image jobs submitted over the API run in (they name none).
    pub default_job_image: String,
}

impl Default for Install {
    fn default() -> Self {
        Self {
            namespace: "finpool-system".into(),
            model_cache: DEFAULT_MODEL_CACHE.into(),
            precache_image: "busybox:1.36".into(),
            default_job_image: "python:3.12-slim".into(),
        }
    }
}

/// An owner reference to `owner`, marked as the controller when asked.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K, controller: bool) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(controller),
        block_owner_deletion: Some(true),
    }
}

/// Invalid input found while validating a resource: the field and why,
/// as the API says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<finpool_domain::FieldError> for Invalid {
    fn from(e: finpool_domain::FieldError) -> Self {
        Self::new(e.field, e.reason)
    }
}
