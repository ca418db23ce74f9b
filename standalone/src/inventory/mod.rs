//! Where the standalone pool's GPUs come from: NVML when an NVIDIA driver is
//! present, otherwise a pool file (or the built-in example pool), which may
//! declare several simulated nodes.

mod nvml;
mod pool_file;

use std::path::Path;

use finpool_domain::Inventory;

pub use pool_file::{EXAMPLE_POOL, PoolFileError, parse_pool_file};

/// Where an inventory came from, for the logs and `finpool node list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    PoolFile(String),
    Nvml,
    BuiltInExample,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PoolFile(p) => write!(f, "pool file {p}"),
            Self::Nvml => f.write_str("NVML"),
            Self::BuiltInExample => f.write_str("the built-in example pool"),
        }
    }
}

/// A pool file if given; else the GPUs NVML finds on this machine; else
/// the built-in example pool.
pub fn discover(pool_file: Option<&Path>) -> Result<(Inventory, Origin), PoolFileError> {
    if let Some(path) = pool_file {
        let text = std::fs::read_to_string(path).map_err(|e| PoolFileError {
            field: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let inventory = parse_pool_file(&text)?;
        return Ok((inventory, Origin::PoolFile(path.display().to_string())));
    }
    match nvml::detect() {
        Ok(inventory) if inventory.gpu_count() > 0 => return Ok((inventory, Origin::Nvml)),
        Ok(_) => tracing::info!("NVML found no GPUs; using the built-in example pool"),
        Err(reason) => {
            tracing::info!(%reason, "no NVIDIA driver (NVML); using the built-in example pool")
        }
    }
    Ok((parse_pool_file(EXAMPLE_POOL)?, Origin::BuiltInExample))
}

pub use nvml::detect as detect_nvml;
