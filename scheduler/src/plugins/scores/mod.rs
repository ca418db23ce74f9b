//! Scorers: each ranks the feasible choices for a task by one concern,
//! higher is better. A [`Policy`](super::Policy) weighs several.

mod best_fit;
mod cpu_stranding;
mod fgd;
mod least_loaded;
mod model_locality;
mod packing_waste;
mod random_fit;
mod scarce_capacity;
mod tenant_affinity;

pub use best_fit::{BestFit, KubeBestFit};
pub use cpu_stranding::CpuStranding;
pub use fgd::{Fgd, FgdScale};
pub use least_loaded::LeastLoaded;
pub use model_locality::ModelLocality;
pub use packing_waste::PackingWaste;
pub use random_fit::{RandomFit, splitmix64};
pub use scarce_capacity::ScarceCapacity;
pub use tenant_affinity::TenantAffinity;
