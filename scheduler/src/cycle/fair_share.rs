//! Fair share's memory: each tenant's recent borrowing (what it held above
//! its guarantee), per GPU class, as an exponentially decayed average in
//! milli-GPU. This is the one place it decays; every driver gets it
//! through the cycle.

use std::collections::BTreeMap;

use finpool_domain::{MILLI_PER_GPU, Tenant, Timestamp};
use serde::{Deserialize, Serialize};

use crate::snapshot::RunningJob;

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
    /// Brings the average to `now`, counting what was borrowed since the
    /// last cycle as constant over the gap, then records what is borrowed
    /// now. Returns the average to schedule by.
    pub fn advance(
        &mut self,
        now: Timestamp,
        now_borrowing: Borrowing,
        half_life_ms: u64,
    ) -> &Borrowing {
        let dt = self.at.map_or(0, |at| now.millis_since(at)) as f64;
        let lambda = std::f64::consts::LN_2 / (half_life_ms.max(1) as f64);
        let keep = (-lambda * dt).exp();
        let mut tenants: Vec<String> = self.average.keys().cloned().collect();
        tenants.extend(self.current.keys().cloned());
        tenants.sort();
        tenants.dedup();
        for t in tenants {
            let current = self.current.get(&t).cloned().unwrap_or_default();
            let average = self.average.entry(t).or_default();
            let mut classes: Vec<String> = average.keys().cloned().collect();
            classes.extend(current.keys().cloned());
            classes.sort();
            classes.dedup();
            for c in classes {
                let held = current.get(&c).copied().unwrap_or(0.0);
                let avg = average.entry(c).or_insert(0.0);
                *avg = held + (*avg - held) * keep;
            }
            // Forget what has decayed to nothing.
            average.retain(|_, v| *v >= 0.5);
        }
        self.average.retain(|_, v| !v.is_empty());
        self.current = now_borrowing;
        self.at = Some(now);
        &self.average
    }
}

/// Per tenant and class: milli-GPU held above the guarantee, from the
/// jobs holding cards (a card counts once per tenant, as quotas count it).
pub fn borrowing(tenants: &[Tenant], holding: &[RunningJob]) -> Borrowing {
    // (tenant, class) → each card or MIG slice held → its milli-GPU.
    type Card<'a> = (&'a str, u32, Option<u32>);
    let mut cards: BTreeMap<(&str, &str), BTreeMap<Card<'_>, u32>> = BTreeMap::new();
    for job in holding {
        for g in &job.placement.gpus {
            let milli = match g.mig_slice {
                Some(_) => g.milli,
                None => MILLI_PER_GPU,
            };
            cards
                .entry((job.tenant.as_str(), g.class.as_str()))
                .or_default()
                .insert((job.placement.node.as_str(), g.index, g.mig_slice), milli);
        }
    }
    let mut out = Borrowing::new();
    for ((tenant, class), held) in cards {
        let guaranteed = tenants
            .iter()
            .find(|t| t.id.as_str() == tenant)
            .map_or(0, |t| t.quota(class).guaranteed) as f64
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
        let mut fs = FairShare::default();
        fs.advance(Timestamp(0), one("a", "A", 2000.0), hour as u64);
        // Held 2000 for 100 half-lives: the average is 2000.
        let avg = fs.advance(Timestamp(100 * hour), Borrowing::new(), hour as u64);
        assert!((avg["a"]["A"] - 2000.0).abs() < 1.0, "{avg:?}");
        // Nothing held for one half-life: half remains.
        let avg = fs.advance(Timestamp(101 * hour), Borrowing::new(), hour as u64);
        assert!((avg["a"]["A"] - 1000.0).abs() < 1.0, "{avg:?}");
        // Many half-lives later it is forgotten.
        let avg = fs.advance(Timestamp(200 * hour), Borrowing::new(), hour as u64);
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
            often.advance(Timestamp(t), one("a", "A", 1000.0), hl);
        }
        assert!((once.average["a"]["A"] - often.average["a"]["A"]).abs() < 1e-6);
    }
}
