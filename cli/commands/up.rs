//! `finpool up`: serve the pool until Ctrl-C or SIGTERM.

use anyhow::Context;
use finpool_standalone::StandaloneConfig;

use crate::args::UpArgs;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut config = StandaloneConfig::new(&args.data_dir, args.listen);
    config.pool_file = args.pool;
    config.database_url = args.database_url;
    config.stop_grace = args.stop_grace;
    config.default_max_runtime = args.default_max_runtime;
    config.api = limits(&args.api, config.api.max_runtime_cap)?;
    config.jwks = args.api.jwks.clone().zip(args.api.jwks_issuer.clone());
    if !(args.locality_wait_factor.is_finite()
        && (0.0..=100.0).contains(&args.locality_wait_factor))
    {
        anyhow::bail!(
            "--locality-wait-factor {}: must be between 0 and 100 (load times)",
            args.locality_wait_factor
        );
    }
    if args.node_bandwidth_mib_s == 0 {
        anyhow::bail!("--node-bandwidth-mib-s 0: must be positive");
    }
    config.locality = finpool_scheduler::LocalityConfig {
        enabled: args.locality == crate::args::Locality::On,
        wait_factor: args.locality_wait_factor,
        node_bandwidth_mib_s: args.node_bandwidth_mib_s,
    };
    config.sandbox = args.sandbox.config();
    if args.api.meter_every.is_zero() {
        anyhow::bail!("--meter-every 0s: must be positive");
    }
    config.meter_every = args.api.meter_every;
    config.metrics_addr = match args.metrics_addr.as_str() {
        "off" => None,
        addr => Some(addr.parse().map_err(|e| {
            anyhow::anyhow!("--metrics-addr {addr:?}: expected HOST:PORT or off ({e})")
        })?),
    };
    let pool = finpool_standalone::start(config)
        .await
        .context("starting the pool")?;
    eprintln!("job sandbox: {}", pool.sandbox);
    eprintln!(
        "finpool is serving on {} ({} nodes, {} GPUs from {}; {} store in {})",
        pool.addr,
        pool.inventory.nodes.len(),
        pool.inventory.gpu_count(),
        pool.origin,
        pool.store.backend_kind(),
        args.data_dir.display(),
    );
    if let Some(addr) = pool.metrics_addr {
        eprintln!("metrics: http://{addr}/metrics");
    }
    eprintln!(
        "operator token: finpool token issue --role operator --data-dir {}",
        args.data_dir.display()
    );
    wait_for_signal().await;
    eprintln!("shutting down: stopping running jobs");
    pool.shutdown().await;
    Ok(())
}

pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The API's limits from the flags `up` and `api` share.
pub fn limits(
    args: &crate::args::ApiArgs,
    max_runtime_cap: std::time::Duration,
) -> anyhow::Result<finpool_api::ApiConfig> {
    let mut config = finpool_api::ApiConfig {
        max_runtime_cap,
        ..finpool_api::ApiConfig::default()
    };
    config.pending_cap = args.pending_cap;
    config.rate_limit = match (args.rate_limit, args.rate_burst) {
        (0.0, _) => None,
        (r, b) if r.is_finite() && r > 0.0 && b.is_finite() && b >= 1.0 => {
            Some(finpool_api::RateLimit {
                per_second: r,
                burst: b,
            })
        }
        (r, b) => anyhow::bail!(
            "--rate-limit {r} / --rate-burst {b}: the rate must be positive (or 0 for none) and the burst at least 1"
        ),
    };
    config.anonymous_rate_limit = match args.anonymous_rate_limit {
        0.0 => None,
        r if r.is_finite() && r > 0.0 => Some(finpool_api::RateLimit {
            per_second: r,
            burst: (2.0 * r).max(1.0),
        }),
        r => anyhow::bail!("--anonymous-rate-limit {r}: must be positive, or 0 for none"),
    };
    if args.pending_cap == 0 {
        anyhow::bail!("--pending-cap 0: a tenant must be able to queue at least one job");
    }
    if args.streams_per_caller == 0 {
        anyhow::bail!("--streams-per-caller 0: a caller must be able to follow at least one job");
    }
    config.streams_per_caller = args.streams_per_caller;
    if args.streams_total < args.streams_per_caller {
        anyhow::bail!(
            "--streams-total {}: must be at least --streams-per-caller ({})",
            args.streams_total,
            args.streams_per_caller
        );
    }
    config.streams_total = args.streams_total;
    for (flag, ttl) in [
        ("--max-tenant-token-ttl", args.max_tenant_token_ttl),
        ("--max-staff-token-ttl", args.max_staff_token_ttl),
    ] {
        if ttl.as_secs() < 60 {
            anyhow::bail!(
                "{flag} {}: must be at least 1m",
                humantime::format_duration(ttl)
            );
        }
    }
    config.billing = billing(args)?;
    if args.audit_checkpoint_every < std::time::Duration::from_secs(1) {
        anyhow::bail!(
            "--audit-checkpoint-every {}: must be at least 1s",
            humantime::format_duration(args.audit_checkpoint_every)
        );
    }
    config.audit_checkpoint_every = args.audit_checkpoint_every;
    config.token_lifetimes = finpool_api::TokenLifetimes {
        tenant: args.max_tenant_token_ttl,
        operator: args.max_staff_token_ttl,
        regulator: args.max_staff_token_ttl,
    };
    Ok(config)
}

/// Metering and billing periods from `--meter-interval`, `--billing-period`
/// and `--meter-settle`.
pub fn billing(args: &crate::args::ApiArgs) -> anyhow::Result<finpool_billing::BillingConfig> {
    use finpool_billing::{BillingConfig, IntervalLength, PeriodLength};
    let interval = IntervalLength::from_millis(args.meter_interval.as_millis() as i64)
        .map_err(|e| anyhow::anyhow!("--meter-interval: {e}"))?;
    let period = match args.billing_period.as_str() {
        "month" | "monthly" => PeriodLength::Monthly,
        text => {
            let length = humantime::parse_duration(text).map_err(|e| {
                anyhow::anyhow!(
                    "--billing-period {text:?}: expected `month` or a length such as 7d ({e})"
                )
            })?;
            PeriodLength::fixed(length.as_millis() as i64, interval)
                .map_err(|e| anyhow::anyhow!("--billing-period: {e}"))?
        }
    };
    Ok(BillingConfig {
        interval,
        period,
        settle_ms: args.meter_settle.as_millis() as i64,
    })
}
