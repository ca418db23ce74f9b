//! One module per command group.

pub mod agent;
pub mod api;
pub mod audit;
pub mod bench;
pub mod billing;
pub mod job;
pub mod model;
pub mod node;
pub mod operator;
pub mod report;
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

/// What every Kubernetes-mode component opens first: the store
/// (PostgreSQL, the system of record) and the cluster's API.
pub async fn cluster_mode(
    database_url: &str,
) -> anyhow::Result<(finpool_store::Store, kube::Client)> {
    use anyhow::Context as _;
    if !database_url.starts_with("postgres") {
        anyhow::bail!(
            "--database-url: Kubernetes mode keeps its records in PostgreSQL (postgres://…)"
        );
    }
    let store = finpool_store::Store::open(&finpool_store::StoreConfig::Postgres(
        database_url.to_owned(),
    ))
    .await
    .context("opening the store")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    Ok((store, client))
}
