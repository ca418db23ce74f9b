//! `finpool api`: the API alone, as it runs in a cluster: PostgreSQL for
//! the records, the cluster's Nodes for the inventory, and pod logs for
//! job output. Nothing is written to the data dir (the key is a mounted
//! Secret).

use std::sync::Arc;

use anyhow::Context as _;
use finpool_api::{ApiState, SigningKey};
use finpool_operator::cluster::{NodeInventory, PodLogs};
use finpool_store::{Store, StoreConfig};

use crate::args::ApiServeArgs;

pub async fn run(args: ApiServeArgs) -> anyhow::Result<()> {
    if !args.database_url.starts_with("postgres") {
        anyhow::bail!("--database-url: in a cluster the records live in PostgreSQL (postgres://…)");
    }
    let config = super::up::limits(&args.api, args.max_runtime_cap)?;
    let key = SigningKey::load(&args.data_dir).context("the signing key")?;
    let audit_key_path = args
        .audit_key
        .clone()
        .unwrap_or_else(|| args.data_dir.join(finpool_api::audit::KEY_FILE));
    let audit_key = finpool_api::audit::load_key(&audit_key_path).context("--audit-key")?;
    let mut verifier = key.verifier();
    if let (Some(path), Some(issuer)) = (&args.api.jwks, &args.api.jwks_issuer) {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--jwks {}", path.display()))?;
        verifier.add_jwks(&text, issuer)?;
    }
    let store = Store::open(&StoreConfig::Postgres(args.database_url.clone()))
        .await
        .context("opening the store")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let inventory = NodeInventory::watch(client.clone())
        .await
        .context("listing the cluster's nodes")?;
    let state = ApiState::new(
        store,
        Arc::new(inventory),
        Arc::new(PodLogs { client }),
        config,
    )
    .with_audit_key(audit_key);
    let metrics = state.metrics.clone();
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}", args.metrics_addr))?;
    let readiness = finpool_telemetry::Readiness::default();
    readiness.set(true);
    tokio::spawn(finpool_telemetry::serve(
        metrics_listener,
        metrics,
        readiness,
        futures::future::pending(),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    eprintln!("finpool api is serving on {}", listener.local_addr()?);
    finpool_api::server::serve(listener, state, verifier, super::up::wait_for_signal()).await?;
    Ok(())
}
