//! `finpool scheduler`: the in-cluster scheduler. It is the shared
//! scheduling cycle ([`finpool_scheduler::Cycle`], run by
//! [`finpool_ports::Shell`]) over Kubernetes ports, the fourth driver of
//! that cycle beside standalone, the simulators and the benches.
//!
//! - [`index`]: the cluster in memory (nodes, pending and bound pods, the
//!   assume cache), pure, `apply`/`delete` per kind;
//! - [`actions`]: binding, the Unschedulable condition, eviction;
//! - [`ports`]: the cycle's ports over the store and the index;
//! - [`driver`]: watchers, the pending-pod Controller, the Lease and the
//!   one loop that runs cycles.

pub mod actions;
pub mod bench;
pub mod driver;
pub mod index;
pub mod ports;
