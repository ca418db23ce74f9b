//! `BaseModel`: an LLM cached once per node and mounted read-only into
//! jobs, cluster-scoped.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// A base model the pool caches on its nodes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "finpool.io",
    version = "v1alpha1",
    kind = "BaseModel",
    shortname = "fpbm",
    category = "finpool",
    status = "BaseModelStatus",
    cel,
    doc = "A base model cached on the pool's nodes and mounted read-only into jobs.",
    printcolumn(name = "Size MiB", type_ = "integer", json_path = ".spec.sizeMiB"),
    printcolumn(
        name = "Min GPU MiB",
        type_ = "integer",
        json_path = ".spec.minGpuMemoryMiB"
    ),
    printcolumn(
        name = "Ready nodes",
        type_ = "string",
        json_path = ".status.readyNodes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BaseModelSpec {
    /// Where the weights come from.
    pub source: ModelSource,
    #[serde(rename = "sizeMiB")]
    #[x_kube(validation = Rule::new("self >= 1").message("sizeMiB: must be positive"))]
    pub size_mib: i64,
    /// The least GPU memory a card needs to hold it.
    #[serde(rename = "minGpuMemoryMiB", default)]
    #[x_kube(validation = Rule::new("self >= 0").message("minGpuMemoryMiB: must not be negative"))]
    pub min_gpu_memory_mib: i64,
    /// Measured or expected load time; unset: size over node bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 86400").message("loadTimeSeconds: from 0 to 86400"))]
    pub load_time_seconds: Option<i64>,
    /// Nodes to cache it on ahead of demand.
    #[serde(default)]
    pub precache_nodes: Vec<String>,
}

/// Exactly one source.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.pvc), has(self.hostPath), has(self.uri)].filter(x, x).size() == 1").message("source: exactly one of pvc, hostPath, uri"))]
pub struct ModelSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathSource>,
    /// An object-store or HTTP URI the pre-cache job downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    pub claim_name: String,
    /// The claim's namespace; defaults to the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
pub struct HostPathSource {
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("hostPath.path: must be absolute"))]
    pub path: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseModelStatus {
    /// Nodes where the model is cached and ready.
    #[serde(default)]
    pub ready_nodes: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
