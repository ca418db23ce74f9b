//! `finpool model …`

use finpool_proto::v1 as pb;

use crate::args::{Global, ModelCommand};
use crate::client::Clients;
use crate::output;

pub async fn run(global: &Global, command: ModelCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    let models = match command {
        ModelCommand::Register(args) => vec![
            c.models
                .register_model(pb::RegisterModelRequest {
                    name: args.name,
                    size_mib: args.size_mib,
                    min_gpu_memory_mib: args.min_gpu_memory_mib,
                    load_time_ms: args
                        .load_time
                        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64),
                })
                .await?
                .into_inner(),
        ],
        ModelCommand::List => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = c
                    .models
                    .list_models(pb::ListModelsRequest {
                        page_size: 500,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                all.extend(page.models);
                if page.next_page_token.is_empty() {
                    break all;
                }
                token = page.next_page_token;
            }
        }
    };
    if global.output.is_document() {
        output::list(global.output, &models);
        return Ok(());
    }
    let rows = models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.size_mib.to_string(),
                m.min_gpu_memory_mib.to_string(),
                if m.load_time_ms > 0 {
                    format!("{:.1}s", m.load_time_ms as f64 / 1000.0)
                } else {
                    "-".to_owned()
                },
                output::timestamp(&m.registered_at),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &[
                "MODEL",
                "SIZE MiB",
                "MIN GPU MiB",
                "LOAD TIME",
                "REGISTERED"
            ],
            rows
        )
    );
    Ok(())
}
