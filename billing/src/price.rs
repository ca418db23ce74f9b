//! The price book and the one rounding rule.
//!
//! A price is a rate in fen per rate unit (GPU-hour for the two GPU kinds,
//! per GPU class; core-hour for CPU; GiB-hour for memory), in effect from
//! its `effective_from` until the next price of the same class and kind.
//! Prices are never edited: a new price is a new version. Usage is priced
//! by the rate in effect at the start of its metering interval, so
//! `effective_from` must be an interval boundary.
//!
//! **Rounding**, once, at the invoice line: a line's amount is
//! `round_half_even(Σ quantity × rate ÷ units per rate unit)`, computed in
//! `i128`, where the sum runs over all of the period's usage of that
//! tenant, class and kind priced at that rate. Events are never rounded
//! one by one.

use std::collections::BTreeMap;

use crate::meter::Kind;
use crate::period::IntervalLength;
use crate::{BillingError, invalid};

/// One version of one rate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Price {
    /// The GPU class; empty for CPU and memory.
    pub class: String,
    pub kind: Kind,
    /// UTC milliseconds; an interval boundary.
    pub effective_from: i64,
    /// Fen per [`Kind::rate_unit`].
    pub rate_fen: i64,
}

impl Price {
    /// Checks a price on its own: the class fits the kind, the rate is not
    /// negative and the start is an interval boundary.
    pub fn validate(&self, interval: IntervalLength) -> Result<(), BillingError> {
        if self.kind.is_gpu() && self.class.is_empty() {
            return Err(invalid("gpu_class", format!("required for {}", self.kind)));
        }
        if !self.kind.is_gpu() && !self.class.is_empty() {
            return Err(invalid(
                "gpu_class",
                format!(
                    "{} is priced for the whole pool: leave the class empty, got {:?}",
                    self.kind, self.class
                ),
            ));
        }
        if self.rate_fen < 0 {
            return Err(invalid(
                "rate_fen",
                format!("must not be negative, got {}", self.rate_fen),
            ));
        }
        if !interval.is_aligned(self.effective_from) {
            return Err(invalid(
                "effective_from",
                format!(
                    "must start a metering interval ({} s), got {}",
                    interval.millis() / 1000,
                    crate::rfc3339(self.effective_from)
                ),
            ));
        }
        Ok(())
    }
}

/// Every price version, looked up by class, kind and time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceBook {
    /// (class, kind) → versions by effective_from.
    rates: BTreeMap<(String, Kind), BTreeMap<i64, i64>>,
}

impl PriceBook {
    pub fn new(prices: impl IntoIterator<Item = Price>) -> Result<Self, BillingError> {
        let mut book = Self::default();
        for p in prices {
            let versions = book.rates.entry((p.class.clone(), p.kind)).or_default();
            if versions.insert(p.effective_from, p.rate_fen).is_some() {
                return Err(invalid(
                    "effective_from",
                    format!(
                        "two prices for {}/{} from {}",
                        p.class,
                        p.kind,
                        crate::rfc3339(p.effective_from)
                    ),
                ));
            }
        }
        Ok(book)
    }

    /// The price in effect at `t`.
    pub fn rate_at(&self, class: &str, kind: Kind, t: i64) -> Option<Price> {
        let versions = self.rates.get(&(class.to_owned(), kind))?;
        let (&from, &rate) = versions.range(..=t).next_back()?;
        Some(Price {
            class: class.to_owned(),
            kind,
            effective_from: from,
            rate_fen: rate,
        })
    }

    /// Where any rate changes inside `(start, end)`: usage is summed
    /// between these so that each sum has one rate per class and kind.
    pub fn changes_within(&self, start: i64, end: i64) -> Vec<i64> {
        let mut at: Vec<i64> = self
            .rates
            .values()
            .flat_map(|v| v.range(start + 1..end).map(|(t, _)| *t))
            .collect();
        at.sort_unstable();
        at.dedup();
        at
    }
}

/// `round_half_even(quantity × rate_fen ÷ units per rate unit)`, in `i128`:
/// the one rounding rule (see the module's doc).
pub fn amount_fen(quantity: i64, rate_fen: i64, kind: Kind) -> Result<i64, BillingError> {
    let d = kind.units_per_rate_unit();
    let num = quantity as i128 * rate_fen as i128;
    let q = num.div_euclid(d);
    let r = num.rem_euclid(d);
    let rounded = match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    };
    i64::try_from(rounded).map_err(|_| BillingError::Overflow("amount_fen".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU_HOUR: i64 = 1000 * 3_600_000;

    #[test]
    fn rounding_is_half_even_at_the_fen() {
        // 1 GPU-hour at 1234 fen.
        assert_eq!(amount_fen(GPU_HOUR, 1234, Kind::GpuUsed).unwrap(), 1234);
        // Half a fen rounds to even: 0.5 → 0, 1.5 → 2, 2.5 → 2.
        assert_eq!(amount_fen(GPU_HOUR / 2, 1, Kind::GpuUsed).unwrap(), 0);
        assert_eq!(amount_fen(GPU_HOUR / 2, 3, Kind::GpuUsed).unwrap(), 2);
        assert_eq!(amount_fen(GPU_HOUR / 2, 5, Kind::GpuUsed).unwrap(), 2);
        // Just past a half rounds up.
        assert_eq!(amount_fen(GPU_HOUR / 2 + 1, 1, Kind::GpuUsed).unwrap(), 1);
        // Memory: per GiB-hour.
        assert_eq!(
            amount_fen(1024 * 3_600_000, 100, Kind::Memory).unwrap(),
            100
        );
        // Negative quantities (corrections) round symmetrically to even.
        assert_eq!(amount_fen(-GPU_HOUR / 2, 3, Kind::GpuUsed).unwrap(), -2);
        // No overflow in between: i64::MAX × a large rate.
        assert!(amount_fen(i64::MAX, i64::MAX, Kind::Cpu).is_err());
        assert_eq!(
            amount_fen(i64::MAX, 1, Kind::Cpu).unwrap(),
            (i64::MAX as i128 / GPU_HOUR as i128) as i64
        );
    }

    #[test]
    fn the_rate_in_effect_is_the_latest_started() {
        let book = PriceBook::new([
            Price {
                class: "A100".into(),
                kind: Kind::GpuUsed,
                effective_from: 0,
                rate_fen: 100,
            },
            Price {
                class: "A100".into(),
                kind: Kind::GpuUsed,
                effective_from: 3_600_000,
                rate_fen: 120,
            },
        ])
        .unwrap();
        assert_eq!(book.rate_at("A100", Kind::GpuUsed, -1), None);
        assert_eq!(
            book.rate_at("A100", Kind::GpuUsed, 0).unwrap().rate_fen,
            100
        );
        assert_eq!(
            book.rate_at("A100", Kind::GpuUsed, 3_599_999)
                .unwrap()
                .rate_fen,
            100
        );
        assert_eq!(
            book.rate_at("A100", Kind::GpuUsed, 3_600_000)
                .unwrap()
                .rate_fen,
            120
        );
        assert_eq!(book.rate_at("A100", Kind::Cpu, 0), None);
        assert_eq!(book.changes_within(0, 7_200_000), vec![3_600_000]);
        assert!(book.changes_within(3_600_000, 7_200_000).is_empty());
    }

    #[test]
    fn bad_prices_name_the_field() {
        let i = IntervalLength::HOUR;
        let p = |class: &str, kind, from, rate| Price {
            class: class.into(),
            kind,
            effective_from: from,
            rate_fen: rate,
        };
        let field = |e: BillingError| match e {
            BillingError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(
            field(p("", Kind::GpuUsed, 0, 1).validate(i).unwrap_err()),
            "gpu_class"
        );
        assert_eq!(
            field(p("A100", Kind::Cpu, 0, 1).validate(i).unwrap_err()),
            "gpu_class"
        );
        assert_eq!(
            field(p("A100", Kind::GpuUsed, 0, -1).validate(i).unwrap_err()),
            "rate_fen"
        );
        assert_eq!(
            field(p("A100", Kind::GpuUsed, 1, 1).validate(i).unwrap_err()),
            "effective_from"
        );
        assert!(p("", Kind::Memory, 0, 0).validate(i).is_ok());
    }
}
