//! One module per command group.

pub mod agent;
pub mod api;
pub mod bench;
pub mod job;
pub mod model;
pub mod node;
pub mod operator;
pub mod scheduler;
pub mod simulate;
pub mod tenant;
pub mod token;
pub mod up;
pub mod usage;

/// Splits `KEY=VALUE`.
pub fn key_value(flag: &str, s: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| anyhow::anyhow!("--{flag} {s:?}: expected KEY=VALUE"))
}
