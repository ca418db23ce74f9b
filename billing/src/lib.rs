//! finpool's billing, as a pure library: no I/O, no clock.
//!
//! - [`period`]: metering intervals (fixed, aligned to UTC) and billing
//!   periods (calendar months by default, or a fixed length).
//! - [`meter`]: job runs → usage events, with deterministic ids, so that
//!   metering the same runs again (after a crash, in any order, in any
//!   split of passes) yields the very same events.
//! - [`price`]: the versioned, effective-dated price book and the one
//!   rounding rule ([`price::amount_fen`]).
//! - [`invoice`]: a period's usage × the price book → one invoice per
//!   tenant, a line per class, kind and rate.
//! - [`ledger`]: double-entry journal entries in fen that sum to zero.
//!
//! Money is integer fen (`i64`, 1 yuan = 100 fen); times are UTC
//! milliseconds since the Unix epoch.

pub mod invoice;
pub mod ledger;
pub mod meter;
pub mod period;
pub mod price;

pub use invoice::{Aggregate, Invoice, InvoiceLine, invoices};
pub use ledger::{EntryKind, JournalEntry, Posting, receivable_account, revenue_account};
pub use meter::{CardShare, Kind, Run, UsageEvent, meter_interval, meter_range};
pub use period::{BillingConfig, IntervalLength, Period, PeriodLength};
pub use price::{Price, PriceBook, amount_fen};

use sha2::{Digest, Sha256};

/// What billing refuses, naming the field or the missing fact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no price for {class}/{kind} in effect at {at}: set one with `finpool price set`")]
    MissingPrice {
        class: String,
        kind: String,
        at: String,
    },
    #[error("card memory of GPU class {class} unknown for the interval starting {at}")]
    UnknownClass { class: String, at: String },
    #[error("{0}: does not fit in 64 bits")]
    Overflow(String),
    #[error("journal entry {key}: postings sum to {sum} fen, not 0")]
    Unbalanced { key: String, sum: i128 },
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> BillingError {
    BillingError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A deterministic id: the first 128 bits of SHA-256 over the parts, each
/// followed by a NUL (no part holds one), in hex.
pub fn deterministic_id(parts: &[&str]) -> String {
    hash_hex(parts, 16)
}

/// A usage event's id: its interval start in 12 hex digits (so that ids
/// grow with time and inserts land together in an index), then 80 bits of
/// SHA-256 over the parts.
pub fn event_id(interval_start: i64, parts: &[&str]) -> String {
    format!("{:012x}{}", interval_start, hash_hex(parts, 10))
}

fn hash_hex(parts: &[&str], bytes: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..bytes] {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// RFC 3339 (UTC) for a time in milliseconds, for messages and labels.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms}ms"))
}
