//! `finpool agent`: the node agent, run on every GPU node (a DaemonSet in
//! Kubernetes mode). It discovers the node's cards through NVML (model,
//! memory, MIG instances, NVLink peers), samples their use, lists the
//! model cache, and publishes all of it on its Node as labels and
//! annotations (server-side apply, field manager `finpool-agent`) for the
//! operator and the scheduler to read.
//!
//! - [`devices`]: what discovery and sampling return; NVML and a fake.
//! - [`publish`]: the pure mapping to labels and annotations, every key.
//! - [`run`]: the loop, the apply, and the health/metrics endpoint.
//!
//! On a GPU machine, check what the agent sees and would publish (nothing
//! is written; exits non-zero when NVML is unavailable or finds no card):
//!
//! ```text
//! finpool agent --discover-once --print [--model-cache /var/lib/finpool/models]
//! ```
//!
//! It prints JSON: `cards` (index, uuid, product, memoryMib, mig,
//! nvlinkPeers), `usage`, and the `labels` and `annotations` of a publish.

pub mod devices;
pub mod publish;
pub mod run;

pub use devices::{Card, DeviceError, Devices, FakeDevices, Mig, MigInstance, NvmlDevices, Sample};
pub use publish::{Publication, inventory_from_annotation, publish, usage_from_annotation};
