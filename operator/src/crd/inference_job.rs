//! `InferenceJob`: a tenant's job as a namespaced Kubernetes object. Its
//! spec is the API's job spec; its status mirrors the store's job (the
//! system of record) and its Pod.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::Condition;

/// A tenant's inference job.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "finpool.io",
    version = "v1alpha1",
    kind = "InferenceJob",
    namespaced,
    shortname = "ij",
    category = "finpool",
    status = "InferenceJobStatus",
    cel,
    doc = "A tenant's inference job, scheduled by finpool onto the pool's GPUs.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reasonCode"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "GPUs", type_ = "string", json_path = ".status.gpus", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: at most 63 characters (it names the Pod)")
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceJobSpec {
    /// The container image to run.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.size() >= 1").message("image: required"))]
    pub image: String,
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self.size() >= 1").message("command: must name a program"))]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A registered BaseModel, mounted read-only at FINPOOL_MODEL_PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub resources: JobResources,
    /// Orders this tenant's own jobs only.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= -1000 && self <= 1000").message("priority: from -1000 to 1000"))]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxRuntimeSeconds: must be positive"))]
    pub max_runtime_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("minRuntimeSeconds: must not be negative"))]
    pub min_runtime_seconds: Option<i64>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobResources {
    pub gpu: GpuRequest,
    /// GPU classes it may run on; empty: any.
    #[serde(default)]
    pub gpu_classes: Vec<String>,
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("cpuMilli: must not be negative"))]
    pub cpu_milli: i64,
    #[serde(rename = "memoryMiB", default)]
    #[x_kube(validation = Rule::new("self >= 0").message("memoryMiB: must not be negative"))]
    pub memory_mib: i64,
}

/// Whole cards, or a share of one: exactly one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.wholeGpus) != has(self.share)").message("gpu: exactly one of wholeGpus and share"))]
#[x_kube(validation = Rule::new("!has(self.wholeGpus) || (self.wholeGpus >= 1 && self.wholeGpus <= 64)").message("gpu.wholeGpus: from 1 to 64"))]
pub struct GpuRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole_gpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<GpuShare>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.milli > 0 || self.memoryMiB > 0").message("gpu.share: ask for milli, memoryMiB or both"))]
#[x_kube(validation = Rule::new("self.milli >= 0 && self.milli <= 1000").message("gpu.share.milli: from 0 to 1000"))]
pub struct GpuShare {
    #[serde(default)]
    pub milli: i64,
    #[serde(rename = "memoryMiB", default)]
    pub memory_mib: i64,
}

/// What happens to a job its runtime loses.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum RestartPolicy {
    #[default]
    Fail,
    Requeue,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceJobStatus {
    /// The store's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Pending, Admitted, Running, Succeeded, Failed, Cancelled, Preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The scheduler's typed reason while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The cards, as `index` or `index:milli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Metered GPU time so far (milli-GPU seconds / 1000).
    #[serde(default)]
    pub gpu_seconds: f64,
    #[serde(default)]
    pub preemptions: Vec<PreemptionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreemptionRecord {
    pub at: String,
    pub reason: String,
}
