//! `finpool usage`

use finpool_proto::v1 as pb;

use crate::args::{Global, Output, UsageArgs};
use crate::client::Clients;
use crate::output;

pub async fn run(global: &Global, args: UsageArgs) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    let usage = c
        .usage
        .get_usage(pb::GetUsageRequest {
            tenant_id: args.tenant.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if global.output == Output::Json {
        output::json(&usage);
        return Ok(());
    }
    println!(
        "tenant {}: {} jobs ({} running, {} queued), as of {}",
        usage.tenant_id,
        usage.jobs_total,
        usage.jobs_running,
        usage.jobs_pending,
        output::timestamp(&usage.as_of)
    );
    let rows = usage
        .classes
        .iter()
        .map(|c| {
            vec![
                c.gpu_class.clone(),
                format!("{:.3}", c.gpu_milli_seconds as f64 / 3_600_000.0),
                c.gpu_milli_seconds.to_string(),
                c.gpus_in_use.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["CLASS", "GPU-HOURS", "MILLI-GPU-SECONDS", "GPUS IN USE"],
            rows
        )
    );
    Ok(())
}
