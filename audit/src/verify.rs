//! Verifying an export against checkpoints, with nothing but the export,
//! the checkpoints and the public key.
//!
//! Each entry is checked on its own (its line is canonical, its `seq` is
//! the next one, its signature is the log key's), so an entry edited,
//! deleted, moved or slipped in is named by the first sequence number
//! where the export goes wrong. Then the whole is checked: the first
//! `tree_size` entries must hash to the checkpoint's root, so nothing
//! covered by the checkpoint can be dropped or rewritten even by someone
//! holding the key. Against an older checkpoint, the newer tree must
//! extend it: both roots are recomputed from the export's prefixes, and
//! an RFC 6962 consistency proof between them, built from the export,
//! must verify.

use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::entry::{EntryError, SignedEntry};
use crate::hex;
use crate::key::PublicKey;
use crate::merkle::{self, Hash, ProofError};

/// Why an export does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("older checkpoint: {0}")]
    OlderCheckpoint(CheckpointError),
    #[error("entry seq {seq}: {reason}")]
    BadEntry { seq: u64, reason: EntryError },
    #[error("entry seq {seq}: found seq {found} in its place (a row deleted, moved or inserted)")]
    OutOfSequence { seq: u64, found: u64 },
    #[error("entry seq {seq}: its signature is not the log key's (the row was edited or forged)")]
    BadSignature { seq: u64 },
    #[error(
        "entry seq {seq}: missing; the checkpoint covers {tree_size} entries and the export stops before"
    )]
    Truncated { seq: u64, tree_size: u64 },
    #[error(
        "the first {tree_size} entries hash to {found}, not to the checkpoint's root {expected}"
    )]
    RootMismatch {
        tree_size: u64,
        expected: String,
        found: String,
    },
    #[error("the older checkpoint ({older}) is larger than the newer ({newer})")]
    OlderIsLarger { older: u64, newer: u64 },
    #[error(
        "history rewritten: the export's first {tree_size} entries no longer hash to the older checkpoint's root {expected} (they give {found})"
    )]
    Rewritten {
        tree_size: u64,
        expected: String,
        found: String,
    },
    #[error("the newer checkpoint does not extend the older one: {0}")]
    Inconsistent(ProofError),
}

impl VerifyError {
    /// The first sequence number found wrong, where one entry is to blame.
    pub fn first_bad_seq(&self) -> Option<u64> {
        match self {
            Self::BadEntry { seq, .. }
            | Self::OutOfSequence { seq, .. }
            | Self::BadSignature { seq }
            | Self::Truncated { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// What a verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries covered by the checkpoint.
    pub tree_size: u64,
    /// Their root, as the checkpoint signs it.
    pub root: Hash,
    /// Entries in the export: the covered ones, then any appended since
    /// (each signed and in sequence, awaiting a later checkpoint).
    pub entries: u64,
}

impl Verified {
    pub fn root_hex(&self) -> String {
        hex::encode(&self.root)
    }
}

/// The export's lines: one entry each, every line ending in `\n`.
fn lines(export: &str) -> impl Iterator<Item = &str> {
    let body = export.strip_suffix('\n').unwrap_or(export);
    body.split('\n').filter(move |_| !export.is_empty())
}

/// Checks every line on its own and returns the leaf hashes, in order.
fn leaves(export: &str, key: &PublicKey) -> Result<Vec<Hash>, VerifyError> {
    let mut out = Vec::new();
    for (i, line) in lines(export).enumerate() {
        let seq = i as u64 + 1;
        let signed =
            SignedEntry::from_line(line).map_err(|reason| VerifyError::BadEntry { seq, reason })?;
        if signed.entry.seq != seq {
            return Err(VerifyError::OutOfSequence {
                seq,
                found: signed.entry.seq,
            });
        }
        if !signed.verify(key) {
            return Err(VerifyError::BadSignature { seq });
        }
        out.push(signed.entry.leaf_hash());
    }
    Ok(out)
}

/// The root of the first `size` leaves, or why the export is too short.
fn prefix_root(leaves: &[Hash], size: u64) -> Result<Hash, VerifyError> {
    if (leaves.len() as u64) < size {
        return Err(VerifyError::Truncated {
            seq: leaves.len() as u64 + 1,
            tree_size: size,
        });
    }
    Ok(merkle::root(&leaves[..size as usize]))
}

/// Verifies `export` (JSON lines, as `finpool audit export` writes them)
/// against `checkpoint`, signed by `key`.
pub fn verify(
    export: &str,
    checkpoint: &SignedCheckpoint,
    key: &PublicKey,
) -> Result<Verified, VerifyError> {
    checkpoint.verify(key)?;
    let leaves = leaves(export, key)?;
    let head = &checkpoint.checkpoint;
    let root = prefix_root(&leaves, head.tree_size)?;
    if root != head.root {
        return Err(VerifyError::RootMismatch {
            tree_size: head.tree_size,
            expected: hex::encode(&head.root),
            found: hex::encode(&root),
        });
    }
    Ok(Verified {
        tree_size: head.tree_size,
        root,
        entries: leaves.len() as u64,
    })
}

/// Verifies `export` against `newer` (as [`verify`] does) and checks that
/// `newer`'s tree extends `older`'s: a history rewritten after `older`
/// was taken fails here even when the rewritten log is signed anew.
pub fn verify_consistency(
    older: &SignedCheckpoint,
    newer: &SignedCheckpoint,
    export: &str,
    key: &PublicKey,
) -> Result<Verified, VerifyError> {
    older.verify(key).map_err(VerifyError::OlderCheckpoint)?;
    newer.verify(key)?;
    let (old, new) = (&older.checkpoint, &newer.checkpoint);
    if old.tree_size > new.tree_size {
        return Err(VerifyError::OlderIsLarger {
            older: old.tree_size,
            newer: new.tree_size,
        });
    }
    let leaves = leaves(export, key)?;
    let new_root = prefix_root(&leaves, new.tree_size)?;
    if new_root != new.root {
        return Err(VerifyError::RootMismatch {
            tree_size: new.tree_size,
            expected: hex::encode(&new.root),
            found: hex::encode(&new_root),
        });
    }
    let old_root = prefix_root(&leaves, old.tree_size)?;
    if old_root != old.root {
        return Err(VerifyError::Rewritten {
            tree_size: old.tree_size,
            expected: hex::encode(&old.root),
            found: hex::encode(&old_root),
        });
    }
    let tree = &leaves[..new.tree_size as usize];
    let proof = merkle::consistency_proof(old.tree_size as usize, tree)
        .expect("the older size is within the newer tree");
    merkle::verify_consistency(old.tree_size, new.tree_size, &old.root, &new.root, &proof)
        .map_err(VerifyError::Inconsistent)?;
    Ok(Verified {
        tree_size: new.tree_size,
        root: new_root,
        entries: leaves.len() as u64,
    })
}
