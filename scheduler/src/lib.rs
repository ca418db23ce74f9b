//! finpool's scheduling policy, as a pure library.
//!
//! No I/O, no clocks, no randomness that is not seeded: a driver (the
//! standalone executor, the Kubernetes scheduler, the simulator) builds a
//! [`Snapshot`] of the pool, calls [`decide`], and carries out the
//! decisions. The same inputs always give the same decisions.
//!
//! Placement is a pipeline of small plugins over an indexed [`Cluster`]:
//! filters ([`plugins::filters`]) rule choices out, scorers
//! ([`plugins::scores`]) rank the rest, and a [`Policy`] names a set of each.

pub mod cluster;
pub mod decide;
pub mod engine;
pub mod placer;
pub mod plugins;
pub mod snapshot;
pub mod task;
pub mod tenants;

pub use cluster::{Allocation, Choice, ClassSet, Cluster, GpuState, NodeState};
pub use decide::{Admission, Outcome, Preemption, Reservation, Waiting, decide};
pub use engine::{Engine, Request};
pub use plugins::{Ctx, Filter, Policy, QuotaBound, Scorer};
pub use snapshot::{Held, QueuedJob, RunningJob, Snapshot, SnapshotError};
pub use task::{ModelFit, Task};
pub use tenants::TenantBook;
