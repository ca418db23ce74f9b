//! `finpool node list`

use finpool_proto::v1 as pb;

use crate::args::{Global, NodeCommand, Output};
use crate::client::Clients;
use crate::{output, watch};

pub async fn run(global: &Global, command: NodeCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    let NodeCommand::List { watch } = command;
    if watch {
        let output = global.output;
        let fetch = || {
            let mut c = c.clone();
            async move {
                let nodes = fetch(&mut c).await?;
                Ok(watch::View {
                    document: finpool_proto::to_json(&nodes),
                    text: table(output, &nodes),
                })
            }
        };
        return watch::run(global.output, fetch, watch::poll()).await;
    }
    let nodes = fetch(&mut c).await?;
    if global.output.is_document() {
        output::message(global.output, &nodes);
        return Ok(());
    }
    println!("{}", table(global.output, &nodes));
    Ok(())
}

/// Every page, as one response.
async fn fetch(c: &mut Clients) -> anyhow::Result<pb::ListNodesResponse> {
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
            return Ok(nodes);
        }
    }
}

/// One row per GPU; `-o wide` adds the card's UUID, the jobs on it and
/// the node's cached models.
fn table(output: Output, nodes: &pb::ListNodesResponse) -> String {
    let wide = output == Output::Wide;
    let mut rows = Vec::new();
    for n in &nodes.nodes {
        for (i, g) in n.gpus.iter().enumerate() {
            let holders: Vec<String> = g
                .allocations
                .iter()
                .map(|a| format!("{} {}m", a.tenant_id, a.milli))
                .collect();
            let mut row = vec![
                n.name.clone(),
                n.labels.get("location").cloned().unwrap_or_default(),
                g.index.to_string(),
                g.gpu_class.clone(),
                format!("{}m", g.used_milli),
                format!("{}/{}", g.used_memory_mib, g.memory_mib),
                if g.resident_model.is_empty() {
                    "-".into()
                } else {
                    truncate(&g.resident_model, MODEL_WIDTH)
                },
                // The node's cached models, once per node.
                if i > 0 {
                    String::new()
                } else if n.models.is_empty() {
                    "-".into()
                } else {
                    truncate(&n.models.join(", "), CACHED_WIDTH)
                },
                holders.join(", "),
            ];
            if wide {
                let jobs: Vec<&str> = g.allocations.iter().map(|a| a.job_id.as_str()).collect();
                row.extend([g.uuid.clone(), jobs.join(", "), n.models.join(", ")]);
            }
            rows.push(row);
        }
    }
    let mut headers = vec![
        "NODE",
        "LOCATION",
        "GPU",
        "CLASS",
        "USED",
        "MEMORY MiB",
        "MODEL",
        "CACHED ON NODE",
        "HELD BY (visible to you)",
    ];
    if wide {
        headers.extend(["UUID", "JOBS", "CACHED MODELS"]);
    }
    output::table(&headers, rows).to_string()
}

/// The table shows this much of a card's model and a node's cached models;
/// `-o json` shows them whole.
const MODEL_WIDTH: usize = 24;
const CACHED_WIDTH: usize = 40;

/// `text`, cut to `max` characters with "…" when longer.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_model_lists_are_cut_to_fit() {
        assert_eq!(truncate("qwen2-7b", 24), "qwen2-7b");
        let cut = truncate(&"m".repeat(50), CACHED_WIDTH);
        assert_eq!(cut.chars().count(), CACHED_WIDTH);
        assert!(cut.ends_with('…'));
    }
}
