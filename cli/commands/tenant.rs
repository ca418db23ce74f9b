//! `finpool tenant …`

use std::collections::HashMap;

use anyhow::Context;
use finpool_proto::v1 as pb;

use crate::args::{Global, Output, TenantCommand};
use crate::client::Clients;
use crate::{output, watch};

pub async fn run(global: &Global, command: TenantCommand) -> anyhow::Result<()> {
    let mut c = Clients::from_global(global).await?;
    let tenants = match command {
        TenantCommand::Create(args) => {
            let mut quotas = HashMap::new();
            for q in &args.quotas {
                let (class, gl) = super::key_value("quota", q)?;
                let parts: Vec<&str> = gl.split(':').collect();
                let number = |s: &str, what: &str| -> anyhow::Result<i64> {
                    s.parse().with_context(|| format!("--quota {q:?}: {what}"))
                };
                let (guaranteed, limit, lending_limit) = match parts.as_slice() {
                    [g, l] => (number(g, "guaranteed")?, number(l, "limit")?, None),
                    [g, l, lend] => (
                        number(g, "guaranteed")?,
                        number(l, "limit")?,
                        Some(number(lend, "lending limit")?),
                    ),
                    _ => anyhow::bail!(
                        "--quota {q:?}: expected CLASS=GUARANTEED:LIMIT[:LENDING_LIMIT]"
                    ),
                };
                quotas.insert(
                    class,
                    pb::Quota {
                        guaranteed,
                        limit,
                        borrowing_limit: None,
                        lending_limit,
                    },
                );
            }
            let isolation = match args.isolation.as_str() {
                "exclusive" => pb::IsolationLevel::Exclusive,
                "mig" => pb::IsolationLevel::Mig,
                _ => pb::IsolationLevel::SharedWithinTenant,
            };
            vec![
                c.tenants
                    .create_tenant(pb::CreateTenantRequest {
                        id: args.id,
                        display_name: args.display_name.unwrap_or_default(),
                        quotas,
                        weight: args.weight,
                        isolation: isolation as i32,
                    })
                    .await?
                    .into_inner(),
            ]
        }
        TenantCommand::Suspend { id, reason } => vec![
            c.tenants
                .suspend_tenant(pb::SuspendTenantRequest { id, reason })
                .await?
                .into_inner(),
        ],
        TenantCommand::Resume { id } => vec![
            c.tenants
                .resume_tenant(pb::ResumeTenantRequest { id })
                .await?
                .into_inner(),
        ],
        TenantCommand::Get { id } => vec![
            c.tenants
                .get_tenant(pb::GetTenantRequest { id })
                .await?
                .into_inner(),
        ],
        TenantCommand::Quota(args) => vec![
            c.tenants
                .set_quota(pb::SetQuotaRequest {
                    tenant_id: args.id,
                    gpu_class: args.class,
                    quota: Some(pb::Quota {
                        guaranteed: args.guaranteed,
                        limit: args.limit.unwrap_or(0),
                        borrowing_limit: args.borrowing_limit,
                        lending_limit: args.lending_limit,
                    }),
                })
                .await?
                .into_inner(),
        ],
        TenantCommand::List { watch: false } => list(&mut c).await?,
        TenantCommand::List { watch: true } => {
            let output = global.output;
            let fetch = || {
                let mut c = c.clone();
                async move {
                    let tenants = list(&mut c).await?;
                    let values = tenants.iter().map(finpool_proto::to_json).collect();
                    Ok(watch::View {
                        document: serde_json::Value::Array(values),
                        text: table(output, &tenants),
                    })
                }
            };
            return watch::run(global.output, fetch, watch::poll()).await;
        }
    };
    if global.output.is_document() {
        output::list(global.output, &tenants);
    } else {
        println!("{}", table(global.output, &tenants));
    }
    Ok(())
}

/// Every tenant, all pages.
async fn list(c: &mut Clients) -> anyhow::Result<Vec<pb::Tenant>> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .tenants
            .list_tenants(pb::ListTenantsRequest {
                page_size: 500,
                page_token: token,
            })
            .await?
            .into_inner();
        all.extend(page.tenants);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
}

/// Tenants as a table; `-o wide` adds when each was created and suspended.
fn table(output: Output, tenants: &[pb::Tenant]) -> String {
    let wide = output == Output::Wide;
    let rows = tenants
        .iter()
        .map(|t| {
            let mut quotas: Vec<String> = t
                .quotas
                .iter()
                .map(|(c, q)| match q.lending_limit {
                    Some(lend) => format!("{c} {}/{} (lends {lend})", q.guaranteed, q.limit),
                    None => format!("{c} {}/{}", q.guaranteed, q.limit),
                })
                .collect();
            quotas.sort();
            let mut row = vec![
                t.id.clone(),
                t.display_name.clone(),
                quotas.join(", "),
                t.weight.to_string(),
                if t.suspended {
                    format!("suspended ({})", t.suspended_reason)
                } else {
                    "active".into()
                },
                pb::IsolationLevel::try_from(t.isolation)
                    .map(|i| {
                        i.as_str_name()
                            .trim_start_matches("ISOLATION_LEVEL_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default(),
            ];
            if wide {
                row.extend([
                    output::timestamp(&t.created_at),
                    output::timestamp(&t.suspended_at),
                ]);
            }
            row
        })
        .collect();
    let mut headers = vec![
        "TENANT",
        "NAME",
        "QUOTA (guaranteed/limit GPUs)",
        "WEIGHT",
        "STATUS",
        "ISOLATION",
    ];
    if wide {
        headers.extend(["CREATED", "SUSPENDED AT"]);
    }
    output::table(&headers, rows).to_string()
}
