//! `finpool token issue`: sign a token with the pool's key.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use finpool_api::{Role, SigningKey};
use finpool_domain::Name;

use crate::args::{TokenCommand, TokenIssueArgs};

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue(args) => {
            println!("{}", issue(&args)?);
            Ok(())
        }
    }
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
    let key = SigningKey::load(&args.data_dir)?;
    let subject = args.subject.clone().unwrap_or_else(|| match &tenant {
        Some(t) => format!("{role}:{t}"),
        None => role.to_string(),
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(key.issue(&subject, role, tenant.as_ref(), args.ttl, now)?)
}
