//! `finpool token issue`: sign a token with the pool's key.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use finpool_api::{Role, SigningKey, TokenLifetimes};
use finpool_domain::Name;

use crate::args::{TokenCommand, TokenIssueArgs};
use crate::client::Clients;
use finpool_proto::v1 as pb;

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue(args) => {
            println!("{}", issue(&args)?);
            Ok(())
        }
        TokenCommand::Revoke {
            subject,
            before,
            global,
        } => {
            let not_before = before
                .map(|t| {
                    finpool_domain::Timestamp::parse_rfc3339(&t)
                        .map(|ts| prost_types::Timestamp {
                            seconds: ts.0.div_euclid(1000),
                            nanos: 0,
                        })
                        .ok_or_else(|| anyhow::anyhow!("--before {t:?}: not an RFC 3339 time"))
                })
                .transpose()?;
            let mut c = Clients::from_global(&global).await?;
            let r = c
                .tokens
                .revoke_tokens(pb::RevokeTokensRequest {
                    subject,
                    not_before,
                })
                .await?
                .into_inner();
            if global.output.is_document() {
                crate::output::message(global.output, &r);
            } else {
                println!(
                    "tokens of {} issued before {} are refused",
                    crate::output::clean(&r.subject),
                    crate::output::timestamp(&r.not_before)
                );
            }
            Ok(())
        }
    }
}

/// How long `token issue` waits for a server that is starting
/// (`finpool up & finpool token issue …`) to write its key.
const KEY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long it waits for a server to take the data dir at all (it may not
/// have created it yet).
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The data dir's signing key, waiting briefly for a server starting on
/// it; a plain error if none comes.
fn wait_for_key(data_dir: &std::path::Path) -> anyhow::Result<SigningKey> {
    let path = data_dir.join(finpool_api::auth::KEY_FILE);
    let began = std::time::Instant::now();
    // A moment for a server to take the data dir; then, while one holds
    // it (it is starting), a while for its key.
    while !path.exists() {
        let served = finpool_standalone::datadir::is_served(data_dir);
        let waited = began.elapsed();
        if waited >= KEY_WAIT || (!served && waited >= START_WAIT) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if !path.exists() {
        anyhow::bail!(
            "--data-dir {}: no signing key there: the server has not started on this data dir \
             (start it with `finpool up --data-dir {}`)",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(SigningKey::load(data_dir)?)
}

pub fn issue(args: &TokenIssueArgs) -> anyhow::Result<String> {
    let role = Role::parse(&args.role).context("unknown role")?;
    let tenant = args
        .tenant
        .as_deref()
        .map(|t| Name::parse("--tenant", t))
        .transpose()?;
    match (role, &tenant) {
        (Role::Tenant, None) => anyhow::bail!("--tenant: a tenant token names its tenant"),
        (Role::Operator | Role::Regulator, Some(_)) => {
            anyhow::bail!("--tenant: only tenant tokens name a tenant")
        }
        _ => {}
    }
    let key = wait_for_key(&args.data_dir)?;
    // Bounded by what the server on this data dir accepts.
    TokenLifetimes::load(&args.data_dir)?
        .check_ttl(role, args.ttl)
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    let subject = args.subject.clone().unwrap_or_else(|| match &tenant {
        Some(t) => format!("{role}:{t}"),
        None => role.to_string(),
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(key.issue(&subject, role, tenant.as_ref(), args.ttl, now)?)
}
