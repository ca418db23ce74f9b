//! Checkpoints: signed tree heads. A checkpoint says "the log's first
//! `tree_size` entries hash to `root`", at a time, under a key. Once a
//! regulator holds one, no row it covers can change unseen, and a later
//! checkpoint must extend it.
//!
//! # Text form
//!
//! ```text
//! finpool-audit-checkpoint v1
//! tree_size 42
//! root 5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328
//! timestamp 1712345678901
//! key_id 0123456789abcdef
//! signature <128 lowercase hex digits>
//! ```
//!
//! The signature is Ed25519 over the first five lines, each ending in
//! `\n`. `timestamp` is milliseconds since the Unix epoch (UTC); `root` is
//! the RFC 6962 tree hash in lowercase hex; `key_id` names the signing key
//! (see [`crate::PublicKey::key_id`]).

use crate::hex;
use crate::key::{PublicKey, Signer};
use crate::merkle::Hash;

const HEADER: &str = "finpool-audit-checkpoint v1";

/// A tree head, before or without its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub tree_size: u64,
    pub root: Hash,
    pub timestamp_ms: i64,
    pub key_id: String,
}

/// A tree head and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signature: [u8; 64],
}

/// Why a checkpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a checkpoint: {0}")]
    Syntax(String),
    #[error("signed by key {found}, not by the key given ({expected})")]
    WrongKey { expected: String, found: String },
    #[error("its signature does not verify")]
    BadSignature,
}

impl Checkpoint {
    /// The signed part: the first five lines.
    pub fn body(&self) -> String {
        format!(
            "{HEADER}\ntree_size {}\nroot {}\ntimestamp {}\nkey_id {}\n",
            self.tree_size,
            hex::encode(&self.root),
            self.timestamp_ms,
            self.key_id
        )
    }

    /// Signs the tree head with `signer` (whose key id it takes).
    pub fn sign(mut self, signer: &Signer) -> SignedCheckpoint {
        self.key_id = signer.key_id().to_owned();
        let signature = signer.sign(self.body().as_bytes());
        SignedCheckpoint {
            checkpoint: self,
            signature,
        }
    }

    pub fn root_hex(&self) -> String {
        hex::encode(&self.root)
    }
}

impl SignedCheckpoint {
    /// The text form, ending in a newline.
    pub fn to_text(&self) -> String {
        format!(
            "{}signature {}\n",
            self.checkpoint.body(),
            hex::encode(&self.signature)
        )
    }

    /// Reads the text form; exactly what [`Self::to_text`] writes.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let syntax = |what: &str| CheckpointError::Syntax(what.to_owned());
        let mut lines = text.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(syntax(&format!("the first line is not {HEADER:?}")));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or_else(|| syntax(&format!("expected a {name} line")))
        };
        let tree_size = field("tree_size")?;
        let root = field("root")?;
        let timestamp = field("timestamp")?;
        let key_id = field("key_id")?.to_owned();
        let signature = field("signature")?;
        let tree_size: u64 = tree_size
            .parse()
            .map_err(|_| syntax("tree_size: not a number"))?;
        let root: Hash = hex::decode(root)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| syntax("root: not 32 bytes of lowercase hex"))?;
        let timestamp_ms: i64 = timestamp
            .parse()
            .map_err(|_| syntax("timestamp: not a number"))?;
        let signature: [u8; 64] = hex::decode(signature)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| syntax("signature: not 64 bytes of lowercase hex"))?;
        let parsed = Self {
            checkpoint: Checkpoint {
                tree_size,
                root,
                timestamp_ms,
                key_id,
            },
            signature,
        };
        if parsed.to_text() != text {
            return Err(syntax(
                "not in the form finpool writes (one space, one trailing newline, plain numbers)",
            ));
        }
        Ok(parsed)
    }

    /// Checks the signature with the log's public key.
    pub fn verify(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        if self.checkpoint.key_id != key.key_id() {
            return Err(CheckpointError::WrongKey {
                expected: key.key_id().to_owned(),
                found: self.checkpoint.key_id.clone(),
            });
        }
        if !key.verify(self.checkpoint.body().as_bytes(), &self.signature) {
            return Err(CheckpointError::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_verify_only_unchanged() {
        let signer = Signer::from_seed([3; 32]);
        let signed = Checkpoint {
            tree_size: 8,
            root: [0x5d; 32],
            timestamp_ms: 1_700_000_000_000,
            key_id: String::new(),
        }
        .sign(&signer);
        let text = signed.to_text();
        assert!(
            text.starts_with("finpool-audit-checkpoint v1\ntree_size 8\nroot 5d5d"),
            "{text}"
        );
        let back = SignedCheckpoint::parse(&text).unwrap();
        assert_eq!(back, signed);
        back.verify(&signer.public_key()).unwrap();
        let other = Signer::from_seed([4; 32]).public_key();
        assert!(matches!(
            back.verify(&other),
            Err(CheckpointError::WrongKey { .. })
        ));
        let forged = text.replace("tree_size 8", "tree_size 9");
        let forged = SignedCheckpoint::parse(&forged).unwrap();
        assert_eq!(
            forged.verify(&signer.public_key()),
            Err(CheckpointError::BadSignature)
        );
        for bad in [
            text.replace("tree_size 8", "tree_size  8"),
            text.replace("tree_size 8", "tree_size 08"),
            text.trim_end().to_owned(),
            format!("{text}\n"),
            text.replace("root 5d", "root 5D"),
        ] {
            assert!(SignedCheckpoint::parse(&bad).is_err(), "{bad}");
        }
    }
}
