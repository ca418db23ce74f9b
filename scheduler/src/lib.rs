//! finpool's scheduling policy, as a pure library.
//!
//! No I/O, no clocks, no randomness that is not seeded. Every driver (the
//! standalone pool, the simulators, the benches, the Kubernetes scheduler)
//! runs the same [`Cycle`]: plain inputs and a clock value in, a [`Plan`]
//! out, with the memory between cycles kept here. The same inputs always
//! give the same plan.
//!
//! Placement is a pipeline of small plugins over an indexed [`Cluster`]:
//! filters ([`plugins::filters`]) rule choices out, scorers
//! ([`plugins::scores`]) rank the rest, and a [`Policy`] names a set of each.

pub mod cluster;
pub mod cycle;
pub mod decide;
pub mod engine;
pub mod feasibility;
pub mod placer;
pub mod plugins;
pub mod snapshot;
pub mod task;
pub mod tenants;
pub mod wait;

pub use cluster::{Allocation, Choice, ClassSet, Cluster, GpuState, NodeState};
pub use cycle::{Cycle, CycleConfig, CycleInputs, DurableMemory, LocalityConfig, Plan, Stop};
pub use decide::{
    Admission, AdmissionKind, BorrowOrder, Outcome, PendingKey, PreemptReason, Preemption,
    QueuePosition, RECLAIMED_MARKER, Reservation, Waiting, decide, queue_position,
};
pub use engine::{Engine, EngineCache, Request, ScoreInputs};
pub use feasibility::PoolFit;
pub use plugins::{Ctx, Filter, Policy, QuotaBound, Scorer};
pub use snapshot::{Held, LocalityInputs, QueuedJob, RunningJob, Snapshot, SnapshotError};
pub use task::{ModelFit, Task};
pub use tenants::TenantBook;
pub use wait::{Infeasible, QuotaBoundKind, QuotaHit, Refusal, WaitReason};

/// A map keyed by job id, hashed with FxHash: a decision looks jobs up
/// many times per queued job, and SipHash cost more than the lookups' use.
/// (Job ids are the pool's own UUIDs; nothing here is keyed by free text.)
pub type JobMap<V> = std::collections::HashMap<finpool_domain::JobId, V, rustc_hash::FxBuildHasher>;

/// A set of job ids, hashed as [`JobMap`] is.
pub type JobSet = std::collections::HashSet<finpool_domain::JobId, rustc_hash::FxBuildHasher>;
