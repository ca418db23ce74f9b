//! Fair share's memory: each tenant's recent borrowing (what it held above
//! its guarantee), per GPU class, as an exponentially decayed average in
//! milli-GPU. This is the one place it decays; every driver gets it
//! through the cycle.

use std::collections::BTreeMap;

use finpool_domain::{MILLI_PER_GPU, Placement, Tenant, Timestamp};
use serde::{Deserialize, Serialize};

/// Tenant → class → milli-GPU.
pub type Borrowing = BTreeMap<String, BTreeMap<String, f64>>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FairShare {
    /// The decayed average as of `at`.
    pub average: Borrowing,
    /// What each tenant borrowed from `at` on (held until the next cycle).
    pub current: Borrowing,
    pub at: Option<Timestamp>,
}

impl FairShare {
    /// The decayed average at `now`: what was borrowed since the last
    /// change counts as constant over the gap.
    pub fn view(&self, now: Timestamp, half_life_ms: u64) -> Borrowing {
        let dt = self.at.map_or(0, |at| now.millis_since(at)) as f64;
        let lambda = std::f64::consts::LN_2 / (half_life_ms.max(1) as f64);
        let keep = (-lambda * dt).exp();
        let mut tenants: Vec<&String> = self.average.keys().collect();
        tenants.extend(self.current.keys());
        tenants.sort();
        tenants.dedup();
        let mut out = Borrowing::new();
        for t in tenants {
            let empty = BTreeMap::new();
            let current = self.current.get(t).unwrap_or(&empty);
            let average = self.average.get(t).unwrap_or(&empty);
            let mut classes: Vec<&String> = average.keys().collect();
            classes.extend(current.keys());
            classes.sort();
            classes.dedup();
            let mut per_class = BTreeMap::new();
            for c in classes {
                let held = current.get(c).copied().unwrap_or(0.0);
                let avg = average.get(c).copied().unwrap_or(0.0);
                let now_avg = held + (avg - held) * keep;
                // Forget what has decayed to nothing.
                if now_avg >= 0.5 {
                    per_class.insert(c.clone(), now_avg);
                }
            }
            if !per_class.is_empty() {
                out.insert(t.clone(), per_class);
            }
        }
        out
    }

    /// Records what is borrowed from `now` on. The state changes only when
    /// that differs from what was borrowed before (the average is then
    /// folded to `now`); returns whether it did.
    pub fn advance(&mut self, now: Timestamp, borrowing: Borrowing, half_life_ms: u64) -> bool {
        if self.at.is_some() && borrowing == self.current {
            return false;
        }
        self.average = self.view(now, half_life_ms);
        self.current = borrowing;
        self.at = Some(now);
        true
    }
}

/// Per tenant and class: milli-GPU held above the guarantee, from the
/// jobs holding cards (a card counts once per tenant, as quotas count it).
pub fn borrowing<'a>(
    tenants: &[Tenant],
    holding: impl IntoIterator<Item = (&'a str, &'a Placement)>,
) -> Borrowing {
    // (tenant, class) → each card or MIG slice held → its milli-GPU.
    type Card<'a> = (&'a str, u32, Option<u32>);
    let mut cards: BTreeMap<(&str, &str), BTreeMap<Card<'_>, u32>> = BTreeMap::new();
    for (tenant, placement) in holding {
        for g in &placement.gpus {
            let milli = match g.mig_slice {
                Some(_) => g.milli,
                None => MILLI_PER_GPU,
            };
            cards
                .entry((tenant, g.class.as_str()))
                .or_default()
                .insert((placement.node.as_str(), g.index, g.mig_slice), milli);
        }
    }
    let by_id: std::collections::HashMap<&str, &Tenant> =
        tenants.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut out = Borrowing::new();
    for ((tenant, class), held) in cards {
        let guaranteed = by_id.get(tenant).map_or(0, |t| t.quota(class).guaranteed) as f64
            * MILLI_PER_GPU as f64;
        let held: f64 = held.values().map(|m| *m as f64).sum();
        let above = held - guaranteed;
        if above > 0.0 {
            out.entry(tenant.to_owned())
                .or_default()
                .insert(class.to_owned(), above);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(t: &str, c: &str, v: f64) -> Borrowing {
        [(t.to_owned(), [(c.to_owned(), v)].into())].into()
    }

    #[test]
    fn the_average_decays_with_the_half_life() {
        let hour: i64 = 3_600_000;
        let hl = hour as u64;
        let mut fs = FairShare::default();
        assert!(fs.advance(Timestamp(0), one("a", "A", 2000.0), hl));
        // Held 2000 for 100 half-lives: the average is 2000.
        let avg = fs.view(Timestamp(100 * hour), hl);
        assert!((avg["a"]["A"] - 2000.0).abs() < 1.0, "{avg:?}");
        // The same borrowing again changes nothing stored.
        assert!(!fs.advance(Timestamp(100 * hour), one("a", "A", 2000.0), hl));
        assert!(fs.advance(Timestamp(100 * hour), Borrowing::new(), hl));
        // Nothing held for one half-life: half remains.
        let avg = fs.view(Timestamp(101 * hour), hl);
        assert!((avg["a"]["A"] - 1000.0).abs() < 1.0, "{avg:?}");
        // Many half-lives later it is forgotten.
        let avg = fs.view(Timestamp(200 * hour), hl);
        assert!(avg.is_empty(), "{avg:?}");
    }

    #[test]
    fn splitting_a_gap_into_cycles_changes_nothing() {
        let hl = 60_000;
        let mut once = FairShare::default();
        once.advance(Timestamp(0), one("a", "A", 1000.0), hl);
        once.advance(Timestamp(90_000), one("a", "A", 1000.0), hl);
        let mut often = FairShare::default();
        often.advance(Timestamp(0), one("a", "A", 1000.0), hl);
        for t in (10_000..=90_000).step_by(10_000) {
            // Each cycle borrows a little less, so each folds.
            often.advance(Timestamp(t), one("a", "A", 1000.0 - t as f64 / 1e9), hl);
        }
        let (a, b) = (
            once.view(Timestamp(90_000), hl),
            often.view(Timestamp(90_000), hl),
        );
        assert!((a["a"]["A"] - b["a"]["A"]).abs() < 1e-3, "{a:?} {b:?}");
    }
}
