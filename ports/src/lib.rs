//! Ports: what the scheduling cycle and the API need from a runtime, as
//! traits, and the shell that runs the cycle over them.
//!
//! This crate sits below both the API and the runtimes (standalone, the
//! simulators, Kubernetes), so each can depend on it without depending on
//! the other:
//!
//! - [`JobSource`]: where jobs come from, and where admissions, waiting
//!   reasons and the cycle's durable memory are recorded (the store; a
//!   simulator's queue);
//! - [`Runtime`]: where jobs run (local sandboxed processes; pods; a
//!   simulated clock);
//! - [`InventorySource`]: the pool's nodes and cards;
//! - [`LogSource`]: a job's output.

mod inventory;
mod jobs;
mod logs;
mod runtime;
pub mod shell;

pub use inventory::InventorySource;
pub use jobs::{JobSource, JobView, PortError};
pub use logs::{LogError, LogSource, LogStream};
pub use runtime::{LoadSample, Runtime};
pub use shell::{CycleReport, Shell};
