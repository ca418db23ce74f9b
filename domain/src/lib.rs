//! finpool's shared domain model.
//!
//! These are the nouns every part of finpool speaks: GPU classes and nodes,
//! tenants (brokerages) and their quotas, base models, and jobs with their
//! explicit state machine. Input from outside (gRPC, REST, YAML) arrives as
//! the loose `*Input` types and becomes a domain value only through
//! validation, which names the offending field and the reason.

pub mod error;
pub mod ids;
pub mod inventory;
pub mod job;
pub mod model;
pub mod tenant;
pub mod text;
pub mod time;

pub use error::FieldError;
pub use ids::{JobId, Name, TenantId};
pub use inventory::{Gpu, GpuClass, Inventory, MigSlice, Node};
pub use job::{
    GpuAssignment, GpuRequest, Job, JobSpec, JobSpecInput, JobState, Placement, Resources,
    RestartPolicy, Transition,
};
pub use model::{BaseModel, BaseModelInput};
pub use tenant::{IsolationLevel, Quota, Suspension, Tenant, TenantInput};
pub use time::Timestamp;

/// One milli-GPU: a whole GPU is 1000.
pub const MILLI_PER_GPU: u32 = 1000;
