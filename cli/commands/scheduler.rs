//! `finpool scheduler`: the in-cluster scheduler, against PostgreSQL.

use anyhow::Context as _;
use finpool_k8s_scheduler::driver::{self, DriverConfig};
use finpool_scheduler::{CycleConfig, Policy};
use finpool_telemetry::{Metrics, Readiness};

use crate::args::SchedulerArgs;

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    if args.stop_grace.as_secs() == 0 {
        anyhow::bail!("--stop-grace: must be at least 1s (the eviction's grace period)");
    }
    let (store, client) = super::cluster_mode(&args.database_url).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("finpool-scheduler-{}", std::process::id()));
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}", args.metrics_addr))?;
    tokio::spawn(finpool_telemetry::serve(
        listener,
        metrics.clone(),
        readiness.clone(),
        futures::future::pending(),
    ));
    let leading = driver::lease(client.clone(), &args.leader_election_namespace, &identity)
        .await
        .context("joining the scheduler's leader election")?;
    let config = DriverConfig {
        cycle: CycleConfig {
            default_max_runtime_ms: args.default_max_runtime.as_millis() as u64,
            stop_grace_ms: args.stop_grace.as_millis() as u64,
            ..CycleConfig::default()
        },
        policy: Policy::finpool,
        idle_tick: std::time::Duration::from_secs(2),
        identity,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::up::wait_for_signal().await;
        let _ = stop.send(true);
    });
    driver::run(client, store, config, metrics, readiness, leading, stopped).await
}
