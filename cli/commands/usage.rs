//! `finpool usage`

use finpool_proto::v1 as pb;

use crate::args::UsageArgs;
use crate::client::Clients;
use crate::output;

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let global = &args.global.clone();
    let mut c = Clients::from_global(global).await?;
    if args.from.is_some() || args.to.is_some() {
        return super::billing::period_usage(global, &mut c, args).await;
    }
    let usage = match c
        .usage
        .get_usage(pb::GetUsageRequest {
            tenant_id: args.tenant.clone().unwrap_or_default(),
        })
        .await
    {
        Ok(u) => u.into_inner(),
        // An operator or regulator who names no tenant: everyone's usage
        // this month so far.
        Err(s) if s.code() == tonic::Code::InvalidArgument && args.tenant.is_none() => {
            return super::billing::period_usage(global, &mut c, args).await;
        }
        Err(s) => return Err(s.into()),
    };
    if global.output.is_document() {
        output::message(global.output, &usage);
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
