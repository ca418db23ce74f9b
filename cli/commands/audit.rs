//! `finpool audit`: export the audit log, fetch its latest checkpoint and
//! its public key, and verify an export offline.
//!
//! `verify` needs no server and no database: the export, the checkpoints
//! and a public key obtained out of band are enough.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use finpool_audit::{PublicKey, SignedCheckpoint, SignedEntry};
use finpool_proto::v1 as pb;
use finpool_store::{Store, StoreConfig};

use crate::args::{AuditCommand, AuditKeyArgs, AuditOutArgs, AuditSource, AuditVerifyArgs};
use crate::client::Clients;

/// Entries per API page.
const PAGE: i32 = 5000;

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Export(args) => export(args).await,
        AuditCommand::Checkpoint(args) => checkpoint(args).await,
        AuditCommand::PublicKey(args) => public_key(args).await,
        AuditCommand::Verify(args) => verify(&args),
    }
}

/// The store to read directly, if the command names one.
async fn direct(source: &AuditSource) -> anyhow::Result<Option<Store>> {
    let config = match (&source.data_dir, &source.database_url) {
        (Some(dir), _) => {
            let path = dir.join("finpool.db");
            if !path.is_file() {
                bail!(
                    "--data-dir {}: no finpool.db there (a PostgreSQL pool: use --database-url)",
                    dir.display()
                );
            }
            StoreConfig::Sqlite(path)
        }
        (None, Some(url)) => StoreConfig::from_url(url),
        (None, None) => return Ok(None),
    };
    Ok(Some(
        Store::open(&config).await.context("opening the database")?,
    ))
}

/// Writes `text` to `path`, replacing it.
fn write(path: &Path, text: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("--out {}", path.display()))
}

async fn export(args: AuditOutArgs) -> anyhow::Result<()> {
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("--out {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut count = 0u64;
    if let Some(store) = direct(&args.source).await? {
        let mut after = 0;
        loop {
            let rows = store.audit_since(after, PAGE as u32).await?;
            for row in &rows {
                writeln!(out, "{}", row.export_line())?;
                count += 1;
            }
            match rows.last() {
                Some(last) if rows.len() == PAGE as usize => after = last.seq,
                _ => break,
            }
        }
    } else {
        let mut c = Clients::from_connect(&args.connect).await?;
        let mut after = 0;
        loop {
            let page = c
                .audit
                .list_audit_entries(pb::ListAuditEntriesRequest {
                    after_seq: after,
                    page_size: PAGE,
                })
                .await?
                .into_inner();
            for e in &page.entries {
                writeln!(
                    out,
                    "{}",
                    SignedEntry::line_from_stored(e.seq, &e.canonical, &e.signature)
                )?;
                count += 1;
            }
            if page.next_after_seq == 0 {
                break;
            }
            after = page.next_after_seq;
        }
    }
    out.flush()
        .with_context(|| format!("--out {}", args.out.display()))?;
    eprintln!("{count} audit entries written to {}", args.out.display());
    Ok(())
}

async fn checkpoint(args: AuditOutArgs) -> anyhow::Result<()> {
    let checkpoint = if let Some(store) = direct(&args.source).await? {
        store
            .latest_checkpoint()
            .await?
            .context("no audit checkpoint has been signed yet")?
    } else {
        let mut c = Clients::from_connect(&args.connect).await?;
        let reply = c
            .audit
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await?
            .into_inner();
        SignedCheckpoint::parse(&reply.text).context("the server's checkpoint")?
    };
    write(&args.out, checkpoint.to_text().as_bytes())?;
    let head = &checkpoint.checkpoint;
    eprintln!(
        "checkpoint: tree size {}, root {}, key {} written to {}",
        head.tree_size,
        head.root_hex(),
        head.key_id,
        args.out.display()
    );
    Ok(())
}

async fn public_key(args: AuditKeyArgs) -> anyhow::Result<()> {
    let key_file = match (&args.key, &args.data_dir) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(dir)) => Some(dir.join(finpool_api::audit::KEY_FILE)),
        (None, None) => None,
    };
    let key = match key_file {
        Some(path) => finpool_api::audit::load_key(&path)?.public_key(),
        None => {
            let mut c = Clients::from_connect(&args.connect).await?;
            let reply = c
                .audit
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await?
                .into_inner();
            PublicKey::from_pem(&reply.public_key).context("the server's public key")?
        }
    };
    write(&args.out, key.to_pem().as_bytes())?;
    eprintln!(
        "public key {} written to {}",
        key.key_id(),
        args.out.display()
    );
    Ok(())
}

fn read(flag: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("--{flag} {}", path.display()))
}

fn verify(args: &AuditVerifyArgs) -> anyhow::Result<()> {
    let export = read("export", &args.export)?;
    let key = PublicKey::from_pem(&read("public-key", &args.public_key)?)
        .with_context(|| format!("--public-key {}", args.public_key.display()))?;
    let checkpoint = SignedCheckpoint::parse(&read("checkpoint", &args.checkpoint)?)
        .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?;
    let result = match &args.older_checkpoint {
        None => finpool_audit::verify(&export, &checkpoint, &key),
        Some(path) => {
            let older = SignedCheckpoint::parse(&read("older-checkpoint", path)?)
                .with_context(|| format!("--older-checkpoint {}", path.display()))?;
            finpool_audit::verify_consistency(&older, &checkpoint, &export, &key)
        }
    };
    match result {
        Ok(v) => {
            println!(
                "OK: tree size {}, root {} ({} entries in the export, {} after the checkpoint{})",
                v.tree_size,
                v.root_hex(),
                v.entries,
                v.entries - v.tree_size,
                if args.older_checkpoint.is_some() {
                    "; it extends the older checkpoint"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Err(e) => match e.first_bad_seq() {
            Some(seq) => bail!("audit log verification FAILED at seq {seq}: {e}"),
            None => bail!("audit log verification FAILED: {e}"),
        },
    }
}
