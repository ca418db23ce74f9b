//! finpool's standalone driver: the embedded default. One process holds
//! the API, the scheduling loop, the executor and the store, over a GPU
//! inventory from NVML or a pool file.
//!
//! - [`inventory`]: where the GPUs come from.
//! - [`driver`]: the scheduling loop around the pure scheduler library.
//! - [`executor`]: runs jobs as local processes.
//! - [`reconcile`]: settles jobs a previous server left running.
//! - [`logs`]: job output for the API's log stream.
//! - [`pool`]: wires it all together.

pub mod driver;
pub mod executor;
pub mod inventory;
pub mod logs;
pub mod pool;
pub mod reconcile;

pub use pool::{RunningPool, StandaloneConfig, StartError, start};
