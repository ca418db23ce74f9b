//! A period's usage × the price book → one invoice per tenant.

use std::collections::BTreeMap;

use crate::meter::Kind;
use crate::period::Period;
use crate::price::{PriceBook, amount_fen};
use crate::{BillingError, deterministic_id};

/// A tenant's summed usage of one class and kind over a part of the
/// period in which no rate changes (`segment_start` is where that part
/// begins; see [`PriceBook::changes_within`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub tenant: String,
    pub class: String,
    pub kind: Kind,
    pub segment_start: i64,
    pub quantity: i64,
}

/// One line: a class and kind at one rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub class: String,
    pub kind: Kind,
    /// In [`Kind::unit`]s.
    pub quantity: i64,
    /// Fen per [`Kind::rate_unit`].
    pub rate_fen: i64,
    /// The price version used.
    pub rate_effective_from: i64,
    pub amount_fen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// Deterministic: the tenant and the period.
    pub id: String,
    pub tenant: String,
    pub period: Period,
    /// By class, kind and rate.
    pub lines: Vec<InvoiceLine>,
    /// Σ lines' amounts.
    pub total_fen: i64,
}

/// The invoice id of a tenant for a period.
pub fn invoice_id(tenant: &str, period: Period) -> String {
    format!(
        "inv-{}",
        &deterministic_id(&["invoice-v1", tenant, &period.start.to_string()])[..24]
    )
}

/// One invoice per tenant with usage in the aggregates, in tenant order.
/// Usage with no price in effect is refused, naming the class and kind.
pub fn invoices(
    period: Period,
    aggregates: impl IntoIterator<Item = Aggregate>,
    book: &PriceBook,
) -> Result<Vec<Invoice>, BillingError> {
    // tenant → (class, kind, rate from) → (quantity, rate)
    type Lines = BTreeMap<(String, Kind, i64), (i128, i64)>;
    let mut by_tenant: BTreeMap<String, Lines> = BTreeMap::new();
    for a in aggregates {
        if a.quantity == 0 {
            continue;
        }
        let price = book
            .rate_at(&a.class, a.kind, a.segment_start)
            .ok_or_else(|| BillingError::MissingPrice {
                class: if a.class.is_empty() {
                    "-".into()
                } else {
                    a.class.clone()
                },
                kind: a.kind.to_string(),
                at: crate::rfc3339(a.segment_start),
            })?;
        let line = by_tenant
            .entry(a.tenant)
            .or_default()
            .entry((a.class, a.kind, price.effective_from))
            .or_insert((0, price.rate_fen));
        line.0 += a.quantity as i128;
    }
    let mut out = Vec::with_capacity(by_tenant.len());
    for (tenant, lines) in by_tenant {
        let mut invoice_lines = Vec::with_capacity(lines.len());
        let mut total: i128 = 0;
        for ((class, kind, from), (quantity, rate)) in lines {
            let quantity = i64::try_from(quantity)
                .map_err(|_| BillingError::Overflow(format!("{tenant} {class} {kind} quantity")))?;
            let amount = amount_fen(quantity, rate, kind)?;
            total += amount as i128;
            invoice_lines.push(InvoiceLine {
                class,
                kind,
                quantity,
                rate_fen: rate,
                rate_effective_from: from,
                amount_fen: amount,
            });
        }
        out.push(Invoice {
            id: invoice_id(&tenant, period),
            total_fen: i64::try_from(total)
                .map_err(|_| BillingError::Overflow(format!("{tenant} invoice total")))?,
            tenant,
            period,
            lines: invoice_lines,
        });
    }
    Ok(out)
}
