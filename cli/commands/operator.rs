//! `finpool operator`: the Kubernetes controllers, against PostgreSQL.

use anyhow::Context as _;
use finpool_operator::build::Install;
use finpool_operator::controller::{self, Context};

use crate::args::OperatorArgs;

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let (store, client) = super::cluster_mode(&args.database_url).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("finpool-operator-{}", std::process::id()));
    let install = Install {
        namespace: args.leader_election_namespace.clone(),
        model_cache: args.model_cache.clone(),
        ..Install::default()
    };
    let ctx = Context::new(client, store, install);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}", args.metrics_addr))?;
    // Ready once connected: standing by for the Lease is ready too.
    let readiness = finpool_telemetry::Readiness::default();
    readiness.set(true);
    tokio::spawn(finpool_telemetry::serve(
        listener,
        finpool_telemetry::Metrics::new(),
        readiness,
        futures::future::pending(),
    ));
    controller::run(ctx, &args.leader_election_namespace, &identity).await
}
