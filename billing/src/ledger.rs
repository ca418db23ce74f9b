//! Double-entry journal entries in fen.
//!
//! Each entry's postings sum to zero: debits are positive, credits
//! negative. A period's charge to a tenant debits `tenant:<id>:receivable`
//! with the invoice total and credits `revenue:<class>:<kind>` (GPU kinds)
//! or `revenue:<kind>` (CPU, memory) with each line. A correction is a new
//! `adjustment` entry in an open period that names the entry it corrects.

use crate::invoice::Invoice;
use crate::{BillingError, deterministic_id, invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A period's charges to one tenant, posted by its close.
    Charge,
    /// A correction of an earlier entry.
    Adjustment,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Adjustment => "adjustment",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, BillingError> {
        match s {
            "charge" => Ok(Self::Charge),
            "adjustment" => Ok(Self::Adjustment),
            other => Err(invalid(
                field,
                format!("must be charge or adjustment, got {other:?}"),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Posting {
    pub account: String,
    /// Positive: debit; negative: credit.
    pub amount_fen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Deterministic from the idempotency key.
    pub id: String,
    /// Unique: posting the same key twice posts once.
    pub idempotency_key: String,
    /// The period the entry is posted in.
    pub period_start: i64,
    pub tenant: Option<String>,
    pub kind: EntryKind,
    /// The entry an adjustment corrects.
    pub reference: Option<String>,
    pub memo: String,
    pub postings: Vec<Posting>,
}

pub fn receivable_account(tenant: &str) -> String {
    format!("tenant:{tenant}:receivable")
}

pub fn revenue_account(class: &str, kind: crate::Kind) -> String {
    if class.is_empty() {
        format!("revenue:{kind}")
    } else {
        format!("revenue:{class}:{kind}")
    }
}

/// The id of the entry with this idempotency key.
pub fn entry_id(idempotency_key: &str) -> String {
    format!(
        "je-{}",
        &deterministic_id(&["journal-v1", idempotency_key])[..24]
    )
}

impl JournalEntry {
    /// Refuses an entry whose postings do not sum to zero, or that has
    /// none, an empty account or key, or an adjustment with no reference.
    pub fn validate(&self) -> Result<(), BillingError> {
        if self.idempotency_key.is_empty() {
            return Err(invalid("idempotency_key", "required"));
        }
        if self.postings.is_empty() {
            return Err(invalid("postings", "an entry needs at least one posting"));
        }
        if let Some(p) = self.postings.iter().find(|p| p.account.is_empty()) {
            return Err(invalid(
                "postings.account",
                format!("empty account for {} fen", p.amount_fen),
            ));
        }
        if self.kind == EntryKind::Adjustment && self.reference.is_none() {
            return Err(invalid(
                "reference",
                "an adjustment names the entry it corrects",
            ));
        }
        let sum: i128 = self.postings.iter().map(|p| p.amount_fen as i128).sum();
        if sum != 0 {
            return Err(BillingError::Unbalanced {
                key: self.idempotency_key.clone(),
                sum,
            });
        }
        Ok(())
    }

    /// The charge entry of an invoice: the receivable debited with the
    /// total, revenue credited line by line (lines of zero fen post
    /// nothing). `None` when the invoice comes to 0 fen.
    pub fn charge(invoice: &Invoice) -> Option<Self> {
        let mut postings: Vec<Posting> = Vec::new();
        for line in invoice.lines.iter().filter(|l| l.amount_fen != 0) {
            let account = revenue_account(&line.class, line.kind);
            match postings.iter_mut().find(|p| p.account == account) {
                Some(p) => p.amount_fen -= line.amount_fen,
                None => postings.push(Posting {
                    account,
                    amount_fen: -line.amount_fen,
                }),
            }
        }
        if postings.is_empty() {
            return None;
        }
        postings.insert(
            0,
            Posting {
                account: receivable_account(&invoice.tenant),
                amount_fen: invoice.total_fen,
            },
        );
        let key = format!("charge:{}:{}", invoice.period.start, invoice.tenant);
        Some(Self {
            id: entry_id(&key),
            idempotency_key: key,
            period_start: invoice.period.start,
            tenant: Some(invoice.tenant.clone()),
            kind: EntryKind::Charge,
            reference: None,
            memo: format!("usage {} ({})", invoice.period.label(), invoice.id),
            postings,
        })
    }
}
