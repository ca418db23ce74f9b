//! `finpool node list`

use finpool_proto::v1 as pb;

use crate::args::{Global, NodeCommand, Output};
use crate::client::Clients;
use crate::output;

pub async fn run(global: &Global, command: NodeCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    let NodeCommand::List = command;
    // Every page, as one response.
    let mut nodes = pb::ListNodesResponse::default();
    loop {
        let page = c
            .nodes
            .list_nodes(pb::ListNodesRequest {
                page_size: 500,
                page_token: nodes.next_page_token.clone(),
            })
            .await?
            .into_inner();
        nodes.nodes.extend(page.nodes);
        nodes.gpu_classes = page.gpu_classes;
        nodes.next_page_token = page.next_page_token;
        if nodes.next_page_token.is_empty() {
            break;
        }
    }
    if global.output == Output::Json {
        output::json(&nodes);
        return Ok(());
    }
    let mut rows = Vec::new();
    for n in &nodes.nodes {
        for g in &n.gpus {
            let holders: Vec<String> = g
                .allocations
                .iter()
                .map(|a| format!("{} {}m", a.tenant_id, a.milli))
                .collect();
            rows.push(vec![
                n.name.clone(),
                n.labels.get("location").cloned().unwrap_or_default(),
                g.index.to_string(),
                g.gpu_class.clone(),
                format!("{}m", g.used_milli),
                format!("{}/{}", g.used_memory_mib, g.memory_mib),
                holders.join(", "),
            ]);
        }
    }
    println!(
        "{}",
        output::table(
            &[
                "NODE",
                "LOCATION",
                "GPU",
                "CLASS",
                "USED",
                "MEMORY MiB",
                "HELD BY (visible to you)"
            ],
            rows
        )
    );
    Ok(())
}
