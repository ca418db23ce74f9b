//! `finpool agent`: the node agent (the finpool-agent crate), a DaemonSet
//! in Kubernetes mode. `--discover-once --print` is the check to run on a
//! GPU machine: it shows what NVML finds and what would be published.

use std::sync::Arc;

use anyhow::Context as _;
use finpool_agent::run::{self, Outcome, Settings};
use finpool_agent::{Devices, FakeDevices, NvmlDevices};

use crate::args::AgentArgs;

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.print {
        return print(&args).await;
    }
    let node_name = args
        .node_name
        .clone()
        .context("--node-name (or NODE_NAME) is required")?;
    let settings = Settings {
        node_name,
        model_cache: args.model_cache.clone(),
        sample_interval: args.sample_interval,
        rediscover_interval: args.rediscover,
        require_gpu: args.require_gpu,
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let open = run::nvml_opener();
    if args.discover_once {
        match run::once(open, client, settings).await? {
            Outcome::Published => eprintln!("published this node's GPUs"),
            Outcome::NoGpu => eprintln!("no GPU: nothing published"),
        }
        return Ok(());
    }
    run::run(
        open,
        client,
        settings,
        args.metrics_addr,
        super::up::wait_for_signal(),
    )
    .await?;
    Ok(())
}

/// `--discover-once --print`: NVML (or the fake) once, printed as JSON.
async fn print(args: &AgentArgs) -> anyhow::Result<()> {
    let fake = args.fake_gpus;
    let cache = args.model_cache.clone();
    let report = tokio::task::spawn_blocking(move || {
        let devices: Arc<dyn Devices> = match fake {
            Some(n) => Arc::new(FakeDevices::nvlink_node(n)),
            None => Arc::new(NvmlDevices::init()?),
        };
        anyhow::Ok(run::report(
            devices.as_ref(),
            &cache,
            time::OffsetDateTime::now_utc(),
        )?)
    })
    .await??;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
