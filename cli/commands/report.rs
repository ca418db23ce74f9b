//! `finpool report usage`: the regulator's report, as the server renders
//! it (JSON, CSV or HTML).

use std::io::Write;

use anyhow::Context;
use finpool_proto::v1 as pb;

use crate::args::{Connect, ReportCommand};
use crate::client::Clients;

pub async fn run(connect: &Connect, command: ReportCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_connect(connect).await?;
    match command {
        ReportCommand::Usage(args) => {
            let document = c
                .reports
                .get_usage_report(pb::GetUsageReportRequest {
                    from: args.from,
                    to: args.to,
                    format: args.format,
                })
                .await?
                .into_inner();
            match &args.out {
                Some(path) => {
                    std::fs::write(path, &document.body)
                        .with_context(|| format!("--out {}", path.display()))?;
                    eprintln!(
                        "report written to {} ({} bytes, {})",
                        path.display(),
                        document.body.len(),
                        if document.closed {
                            "closed periods: final figures"
                        } else {
                            "open: figures so far"
                        }
                    );
                }
                None => std::io::stdout().write_all(&document.body)?,
            }
            Ok(())
        }
    }
}
