//! One audit entry and its canonical bytes.
//!
//! # Canonical encoding (version 1)
//!
//! An entry's canonical bytes are one JSON object, written by
//! [`Entry::canonical`] and nothing else:
//!
//! - exactly the keys `action`, `actor`, `at`, `outcome`, `request_id`,
//!   `role`, `seq`, `target`, `tenant`, `v`, in that (byte-wise sorted)
//!   order, with no whitespace anywhere;
//! - `seq` and `at` (milliseconds since the Unix epoch, UTC) and `v` (1)
//!   are integers in plain decimal; `tenant` is a string or `null`; the
//!   rest are strings;
//! - strings are UTF-8. `"` and `\` are escaped as `\"` and `\\`; the
//!   control characters U+0000 to U+001F as `\b`, `\t`, `\n`, `\f`, `\r`
//!   or else `\u00xx` (lowercase hex); every other character is written
//!   as itself.
//!
//! For these values that is the JSON Canonicalization Scheme (RFC 8785).
//! A decoder accepts only bytes that re-encode to themselves, so there is
//! exactly one encoding per entry: the one that is hashed into the Merkle
//! tree (`leaf = SHA-256(0x00 ‖ canonical)`) and signed.
//!
//! An export line ([`SignedEntry`]) is the same object with one more key,
//! `sig`, between `seq` and `target`: the entry's Ed25519 signature in
//! lowercase hex.

use std::fmt;

use serde::Deserialize;

use crate::hex;
use crate::key::{PublicKey, Signer};
use crate::merkle::{Hash, leaf_hash};

/// The encoding version written in every entry.
pub const VERSION: u32 = 1;

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused by authentication, authorization, a limit or tenant
    /// scoping, with its gRPC code name (`PERMISSION_DENIED`).
    Denied(String),
    /// Tried and failed, with its gRPC code name (`INVALID_ARGUMENT`).
    Failed(String),
}

impl Outcome {
    /// `ok`, `denied:<CODE>` or `failed:<CODE>`, where a code is 1 to 64
    /// of `A`–`Z`, `0`–`9` and `_`.
    pub fn parse(text: &str) -> Result<Self, EntryError> {
        let code_ok = |c: &str| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        };
        let bad = || EntryError::Field {
            field: "outcome",
            reason: format!("{text:?} is not ok, denied:<CODE> or failed:<CODE>"),
        };
        if text == "ok" {
            return Ok(Self::Ok);
        }
        if let Some(code) = text.strip_prefix("denied:") {
            return code_ok(code)
                .then(|| Self::Denied(code.to_owned()))
                .ok_or_else(bad);
        }
        if let Some(code) = text.strip_prefix("failed:") {
            return code_ok(code)
                .then(|| Self::Failed(code.to_owned()))
                .ok_or_else(bad);
        }
        Err(bad())
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }

    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Denied(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Denied(code) => write!(f, "denied:{code}"),
            Self::Failed(code) => write!(f, "failed:{code}"),
        }
    }
}

/// One audit entry: who tried what, on what, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's place in the log, from 1 with no gap; 0 until the store
    /// appends it.
    pub seq: u64,
    /// When it happened, in milliseconds since the Unix epoch (UTC).
    pub at_ms: i64,
    /// The token's subject, or `address/<ip>` for a caller without a
    /// valid token.
    pub actor: String,
    /// `tenant`, `operator`, `regulator`, `anonymous` or `system`.
    pub role: String,
    /// The caller's tenant, for the tenant role.
    pub tenant: Option<String>,
    /// The gRPC method (`/finpool.v1.JobService/SubmitJob`) or a named
    /// event (`audit.overflow`).
    pub action: String,
    /// What it was done to (`job/<id>`, `tenant/<id>`), or `""`.
    pub target: String,
    /// The request's `x-request-id`, or one the server made (UUIDv7).
    pub request_id: String,
    pub outcome: Outcome,
}

/// Why bytes or a line are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("not an audit entry: {0}")]
    Syntax(String),
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("not in canonical form (the bytes do not re-encode to themselves)")]
    NotCanonical,
}

/// The message an entry's signature covers.
const ENTRY_CONTEXT: &[u8] = b"finpool-audit-entry v1\n";

impl Entry {
    /// The canonical bytes (see the module documentation).
    pub fn canonical(&self) -> Vec<u8> {
        self.encode(None).into_bytes()
    }

    /// `SHA-256(0x00 ‖ canonical)`: the entry's leaf in the Merkle tree.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.canonical())
    }

    fn encode(&self, sig: Option<&[u8; 64]>) -> String {
        let mut out = String::with_capacity(256);
        out.push('{');
        key(&mut out, "action");
        write_string(&mut out, &self.action);
        key(&mut out, "actor");
        write_string(&mut out, &self.actor);
        key(&mut out, "at");
        out.push_str(&self.at_ms.to_string());
        key(&mut out, "outcome");
        write_string(&mut out, &self.outcome.to_string());
        key(&mut out, "request_id");
        write_string(&mut out, &self.request_id);
        key(&mut out, "role");
        write_string(&mut out, &self.role);
        key(&mut out, "seq");
        out.push_str(&self.seq.to_string());
        if let Some(sig) = sig {
            key(&mut out, "sig");
            write_string(&mut out, &hex::encode(sig));
        }
        key(&mut out, "target");
        write_string(&mut out, &self.target);
        key(&mut out, "tenant");
        match &self.tenant {
            Some(t) => write_string(&mut out, t),
            None => out.push_str("null"),
        }
        key(&mut out, "v");
        out.push_str(&VERSION.to_string());
        out.push('}');
        out
    }

    /// The entry these canonical bytes encode; bytes in any other form
    /// (other keys, whitespace, escapes, order) are refused.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self, EntryError> {
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| EntryError::Syntax(e.to_string()))?;
        if raw.sig.is_some() {
            return Err(EntryError::Field {
                field: "sig",
                reason: "canonical bytes carry no signature".into(),
            });
        }
        let entry = raw.into_entry()?;
        if entry.canonical() != bytes {
            return Err(EntryError::NotCanonical);
        }
        Ok(entry)
    }

    /// The bytes an entry's signature covers: a fixed context, then the
    /// canonical bytes.
    pub fn signed_message(canonical: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(ENTRY_CONTEXT.len() + canonical.len());
        m.extend_from_slice(ENTRY_CONTEXT);
        m.extend_from_slice(canonical);
        m
    }

    /// Signs the entry (its seq set) with the log's key.
    pub fn sign(self, signer: &Signer) -> SignedEntry {
        let signature = signer.sign(&Self::signed_message(&self.canonical()));
        SignedEntry {
            entry: self,
            signature,
        }
    }
}

/// An entry with its signature: one line of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    pub entry: Entry,
    pub signature: [u8; 64],
}

impl SignedEntry {
    /// The export line (no newline): the canonical object with `sig`.
    pub fn to_line(&self) -> String {
        self.entry.encode(Some(&self.signature))
    }

    /// Reads an export line; it must be exactly what [`Self::to_line`]
    /// writes.
    pub fn from_line(line: &str) -> Result<Self, EntryError> {
        let raw: Raw = serde_json::from_str(line).map_err(|e| EntryError::Syntax(e.to_string()))?;
        let sig = raw.sig.clone().ok_or(EntryError::Field {
            field: "sig",
            reason: "missing".into(),
        })?;
        let signature: [u8; 64] =
            hex::decode(&sig)
                .and_then(|b| b.try_into().ok())
                .ok_or(EntryError::Field {
                    field: "sig",
                    reason: "not 64 bytes of lowercase hex".into(),
                })?;
        let signed = Self {
            entry: raw.into_entry()?,
            signature,
        };
        if signed.to_line() != line {
            return Err(EntryError::NotCanonical);
        }
        Ok(signed)
    }

    /// A line from stored canonical bytes and signature. Bytes that are
    /// not an entry still make a line (naming the row's seq), which any
    /// verification refuses.
    pub fn line_from_stored(seq: u64, canonical: &[u8], signature: &[u8]) -> String {
        match (
            Entry::from_canonical(canonical),
            <[u8; 64]>::try_from(signature),
        ) {
            (Ok(entry), Ok(signature)) => Self { entry, signature }.to_line(),
            _ => {
                let mut out = format!("{{\"unreadable_row\":{seq},\"bytes\":");
                write_string(&mut out, &String::from_utf8_lossy(canonical));
                out.push('}');
                out
            }
        }
    }

    /// Whether the signature is the log key's, over this entry.
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify(
            &Entry::signed_message(&self.entry.canonical()),
            &self.signature,
        )
    }
}

/// The JSON as parsed, before its values are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    v: u32,
    seq: u64,
    at: i64,
    actor: String,
    role: String,
    tenant: Option<String>,
    action: String,
    target: String,
    request_id: String,
    outcome: String,
    #[serde(default)]
    sig: Option<String>,
}

impl Raw {
    fn into_entry(self) -> Result<Entry, EntryError> {
        if self.v != VERSION {
            return Err(EntryError::Field {
                field: "v",
                reason: format!("version {} is not {VERSION}", self.v),
            });
        }
        if self.seq == 0 {
            return Err(EntryError::Field {
                field: "seq",
                reason: "starts at 1".into(),
            });
        }
        Ok(Entry {
            seq: self.seq,
            at_ms: self.at,
            actor: self.actor,
            role: self.role,
            tenant: self.tenant,
            action: self.action,
            target: self.target,
            request_id: self.request_id,
            outcome: Outcome::parse(&self.outcome)?,
        })
    }
}

/// Writes `"k":`, after a comma unless it is the object's first key.
fn key(out: &mut String, k: &str) {
    if out.len() > 1 {
        out.push(',');
    }
    write_string(out, k);
    out.push(':');
}

/// Writes `s` as a JSON string, escaped as the module documentation says.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            seq: 7,
            at_ms: 1_700_000_000_123,
            actor: "alice".into(),
            role: "tenant".into(),
            tenant: Some("alpha".into()),
            action: "/finpool.v1.JobService/SubmitJob".into(),
            target: "job/0192".into(),
            request_id: "req-1".into(),
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn the_canonical_form_is_fixed() {
        assert_eq!(
            String::from_utf8(entry().canonical()).unwrap(),
            r#"{"action":"/finpool.v1.JobService/SubmitJob","actor":"alice","at":1700000000123,"outcome":"ok","request_id":"req-1","role":"tenant","seq":7,"target":"job/0192","tenant":"alpha","v":1}"#
        );
        let mut e = entry();
        e.tenant = None;
        e.actor = "q\"\\\n\u{1}\u{7f}é".into();
        e.outcome = Outcome::Denied("PERMISSION_DENIED".into());
        let text = String::from_utf8(e.canonical()).unwrap();
        assert!(text.contains(r#""actor":"q\"\\\n\u0001"#), "{text}");
        assert!(text.contains(r#""outcome":"denied:PERMISSION_DENIED""#));
        assert!(text.contains(r#""tenant":null"#));
        // The canonical form agrees with a general JSON parser.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["actor"], e.actor.as_str());
        assert_eq!(Entry::from_canonical(text.as_bytes()).unwrap(), e);
    }

    #[test]
    fn only_the_canonical_bytes_decode() {
        let good = String::from_utf8(entry().canonical()).unwrap();
        assert_eq!(Entry::from_canonical(good.as_bytes()).unwrap(), entry());
        for bad in [
            good.replace(",\"at\"", ", \"at\""),
            good.replace("\"alice\"", "\"\\u0061lice\""),
            good.replace("\"v\":1", "\"v\":1,\"x\":1"),
            good.replace("\"v\":1", "\"v\":2"),
            good.replace("\"seq\":7", "\"seq\":0"),
            good.replace("\"outcome\":\"ok\"", "\"outcome\":\"fine\""),
            good.replace("\"outcome\":\"ok\"", "\"outcome\":\"denied:nope\""),
            good.replace(
                "{\"action\":\"/finpool.v1.JobService/SubmitJob\",\"actor\":\"alice\"",
                "{\"actor\":\"alice\",\"action\":\"/finpool.v1.JobService/SubmitJob\"",
            ),
            good.replace(",\"actor\":\"alice\"", ""),
            format!("{good}\n"),
        ] {
            assert!(Entry::from_canonical(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_round_trip_and_carry_a_checked_signature() {
        let signer = Signer::from_seed([7; 32]);
        let signed = entry().sign(&signer);
        let line = signed.to_line();
        assert!(line.contains(",\"sig\":\""), "{line}");
        let back = SignedEntry::from_line(&line).unwrap();
        assert_eq!(back, signed);
        assert!(back.verify(&signer.public_key()));
        assert!(!back.verify(&Signer::from_seed([8; 32]).public_key()));
        let mut edited = back.clone();
        edited.entry.actor = "mallory".into();
        assert!(!edited.verify(&signer.public_key()));
        assert_eq!(
            SignedEntry::line_from_stored(7, &entry().canonical(), &signed.signature),
            line
        );
        let junk = SignedEntry::line_from_stored(7, b"{\"x\n", &signed.signature);
        assert!(SignedEntry::from_line(&junk).is_err());
        assert!(!junk.contains('\n'));
    }

    #[test]
    fn outcomes_parse_strictly() {
        assert_eq!(Outcome::parse("ok").unwrap(), Outcome::Ok);
        assert_eq!(
            Outcome::parse("failed:NOT_FOUND").unwrap(),
            Outcome::Failed("NOT_FOUND".into())
        );
        for bad in ["", "OK", "denied:", "denied:x", "failed:A B", "denied:ÄÖ"] {
            assert!(Outcome::parse(bad).is_err(), "{bad}");
        }
    }
}
