//! finpool's standalone driver: the embedded default. One process holds
//! the API, the scheduling loop, the executor and the store, over a GPU
//! inventory from NVML or a pool file.
//!
//! - [`inventory`]: where the GPUs come from.
//! - [`driver`]: the scheduling loop around the pure scheduler library.
//! - [`executor`]: runs jobs as local processes, each in its [`sandbox`].
//! - [`datadir`]: the data dir's permissions and lock.
//! - [`reconcile`]: settles jobs a previous server left running.
//! - [`logs`]: job output for the API's log stream.
//! - [`pool`]: wires it all together.

pub mod datadir;
pub mod driver;
pub mod executor;
pub mod inventory;
pub mod logs;
pub mod pool;
pub mod reconcile;
pub mod sandbox;

pub use pool::{RunningPool, StandaloneConfig, StartError, start};
pub use sandbox::{SandboxConfig, SandboxMode, UidRange};
