//! finpool's tamper-evident audit log, as pure functions: no I/O, no
//! database, no clock.
//!
//! Every mutation and every denied attempt becomes one [`Entry`]: actor,
//! role, tenant, action, target, request id, outcome and time, with a
//! sequence number from 1 and no gap. An entry has one byte encoding
//! (canonical JSON, see [`entry`]); those bytes are
//!
//! - signed one by one with the log's Ed25519 key, so a verifier can name
//!   the first entry that was edited, deleted, moved or inserted;
//! - the leaves of an RFC 6962 Merkle tree ([`merkle`]), whose signed
//!   heads ([`SignedCheckpoint`]) leave the server for the regulator. A
//!   checkpoint pins the first `tree_size` entries, and a later
//!   checkpoint must extend an earlier one ([`verify_consistency`]), so
//!   not even the key's holder can rewrite history unseen.
//!
//! [`verify`] needs only the export, a checkpoint and the public key.

pub mod checkpoint;
pub mod entry;
pub mod hex;
pub mod key;
pub mod merkle;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
pub use entry::{Entry, EntryError, Outcome, SignedEntry};
pub use key::{KeyError, PublicKey, Signer};
pub use merkle::{Frontier, Hash};
pub use verify::{Verified, VerifyError, verify, verify_consistency};
