//! Fair share's memory: each tenant's recent borrowing (what it held above
//! its guarantee), per GPU class, as an exponentially decayed average in
//! milli-GPU. This is the one place it decays; every driver gets it
//! through the cycle.
//!
//! Each (tenant, class) keeps its own clock: an entry folds its average
//! forward only when what it borrows changes, and is read at any time in
//! closed form. A cycle therefore costs what changed, not every tenant the
//! pool has ever seen (a trace can name thousands).

use std::collections::BTreeMap;

use finpool_domain::{MILLI_PER_GPU, Placement, Tenant, Timestamp};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Tenant → class → milli-GPU.
pub type Borrowing = BTreeMap<String, BTreeMap<String, f64>>;

/// Below this (milli-GPU), a decayed average is forgotten.
const FORGOTTEN_MILLI: f64 = 0.5;

/// One tenant's average for one class, as of `at`; from `at` on it
/// borrows what [`FairShare::current`] says (nothing if absent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decayed {
    pub milli: f64,
    pub at: Timestamp,
}

impl Decayed {
    /// The average at `now`, having borrowed `held` since `at` (held
    /// constant over the gap).
    fn at(self, now: Timestamp, held: f64, half_life_ms: u64) -> f64 {
        let dt = now.millis_since(self.at) as f64;
        let lambda = std::f64::consts::LN_2 / (half_life_ms.max(1) as f64);
        held + (self.milli - held) * (-lambda * dt).exp()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct FairShare {
    /// Each entry's decayed average, as of its own time.
    pub average: BTreeMap<String, BTreeMap<String, Decayed>>,
    /// What each tenant borrows now (held until the next change).
    pub current: Borrowing,
    /// The last change.
    pub at: Option<Timestamp>,
    /// When entries that decayed to nothing were last forgotten.
    pub swept: Option<Timestamp>,
}

impl FairShare {
    /// `tenant`'s decayed average per class at `now`; `None` when it has
    /// none worth remembering.
    pub fn view_of(
        &self,
        tenant: &str,
        now: Timestamp,
        half_life_ms: u64,
    ) -> Option<BTreeMap<String, f64>> {
        let classes = self.average.get(tenant)?;
        let current = self.current.get(tenant);
        let per_class: BTreeMap<String, f64> = classes
            .iter()
            .filter_map(|(c, d)| {
                let held = current.and_then(|h| h.get(c)).copied().unwrap_or(0.0);
                let milli = d.at(now, held, half_life_ms);
                (milli >= FORGOTTEN_MILLI).then(|| (c.clone(), milli))
            })
            .collect();
        (!per_class.is_empty()).then_some(per_class)
    }

    /// Every tenant's decayed average at `now` (for people and tests: a
    /// cycle asks only for its tenants, with [`Self::view_of`]).
    pub fn view(&self, now: Timestamp, half_life_ms: u64) -> Borrowing {
        self.average
            .keys()
            .filter_map(|t| Some((t.clone(), self.view_of(t, now, half_life_ms)?)))
            .collect()
    }

    /// Records what is borrowed from `now` on. The state changes only when
    /// that differs from what was borrowed before (the entries that
    /// changed are then folded to `now`); returns whether it did.
    pub fn advance(&mut self, now: Timestamp, borrowing: Borrowing, half_life_ms: u64) -> bool {
        if self.at.is_some() && borrowing == self.current {
            return false;
        }
        let mut changed: Vec<(&str, &str, f64)> = Vec::new();
        for (t, classes) in &self.current {
            for (c, &held) in classes {
                if borrowing.get(t).and_then(|b| b.get(c)) != Some(&held) {
                    changed.push((t, c, held));
                }
            }
        }
        for (t, classes) in &borrowing {
            for c in classes.keys() {
                if !self.current.get(t).is_some_and(|h| h.contains_key(c)) {
                    changed.push((t, c, 0.0));
                }
            }
        }
        // Each changed entry folds what it held up to now.
        for (t, c, held) in changed {
            let entry = entry(&mut self.average, t, c, now);
            *entry = Decayed {
                milli: entry.at(now, held, half_life_ms),
                at: now,
            };
        }
        self.current = borrowing;
        self.at = Some(now);
        self.forget_decayed(now, half_life_ms);
        true
    }

    /// Once a half-life, forgets the entries that borrow nothing and have
    /// decayed to nothing (so that a sweep costs little over time).
    fn forget_decayed(&mut self, now: Timestamp, half_life_ms: u64) {
        let swept = *self.swept.get_or_insert(now);
        if now.millis_since(swept) < half_life_ms {
            return;
        }
        self.swept = Some(now);
        let current = &self.current;
        self.average.retain(|t, classes| {
            let held = current.get(t);
            classes.retain(|c, d| {
                let held = held.and_then(|h| h.get(c)).copied().unwrap_or(0.0);
                held > 0.0 || d.at(now, 0.0, half_life_ms) >= FORGOTTEN_MILLI
            });
            !classes.is_empty()
        });
    }
}

/// `tenant`'s average for `class`, nothing as of `at` if it had none.
fn entry<'a>(
    average: &'a mut BTreeMap<String, BTreeMap<String, Decayed>>,
    tenant: &str,
    class: &str,
    at: Timestamp,
) -> &'a mut Decayed {
    average
        .entry(tenant.to_owned())
        .or_default()
        .entry(class.to_owned())
        .or_insert(Decayed { milli: 0.0, at })
}

/// The stored form, older versions' included: a bare number is an average
/// as of the memory's `at` (all entries once shared one clock).
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    average: BTreeMap<String, BTreeMap<String, StoredAverage>>,
    #[serde(default)]
    current: Borrowing,
    #[serde(default)]
    at: Option<Timestamp>,
    #[serde(default)]
    swept: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoredAverage {
    Dated(Decayed),
    Bare(f64),
}

impl From<Stored> for FairShare {
    fn from(s: Stored) -> Self {
        let shared = s.at.unwrap_or(Timestamp(0));
        let mut average: BTreeMap<String, BTreeMap<String, Decayed>> = s
            .average
            .into_iter()
            .map(|(t, classes)| {
                let classes = classes
                    .into_iter()
                    .map(|(c, a)| {
                        let d = match a {
                            StoredAverage::Dated(d) => d,
                            StoredAverage::Bare(milli) => Decayed { milli, at: shared },
                        };
                        (c, d)
                    })
                    .collect();
                (t, classes)
            })
            .collect();
        // Every borrowing entry has an average to fold.
        for (t, classes) in &s.current {
            for c in classes.keys() {
                entry(&mut average, t, c, shared);
            }
        }
        Self {
            average,
            current: s.current,
            at: s.at,
            swept: s.swept,
        }
    }
}

/// Per tenant and class: milli-GPU held above the guarantee, from the
/// jobs holding cards (a card counts once per tenant, as quotas count it).
pub fn borrowing<'a>(
    tenants: &[Tenant],
    holding: impl IntoIterator<Item = (&'a str, &'a Placement)>,
) -> Borrowing {
    // (tenant, class) → each card or MIG slice held → its milli-GPU.
    // (Hashed: a full pool holds tens of thousands of jobs, and the sums
    // are of whole numbers, the same in any order.)
    type Card<'a> = (&'a str, u32, Option<u32>);
    let mut cards: FxHashMap<(&str, &str), FxHashMap<Card<'_>, u32>> = FxHashMap::default();
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
    #[test]
    fn an_entry_that_does_not_change_is_not_folded_and_reads_the_same() {
        let hl = 60_000;
        let mut fs = FairShare::default();
        let both: Borrowing = [
            ("a".to_owned(), [("A".to_owned(), 1000.0)].into()),
            ("b".to_owned(), [("A".to_owned(), 500.0)].into()),
        ]
        .into();
        fs.advance(Timestamp(0), both.clone(), hl);
        // Only b changes at 30 s: a keeps its clock.
        let mut next = both;
        next.get_mut("b").unwrap().insert("A".to_owned(), 2000.0);
        fs.advance(Timestamp(30_000), next, hl);
        assert_eq!(fs.average["a"]["A"].at, Timestamp(0));
        assert_eq!(fs.average["b"]["A"].at, Timestamp(30_000));
        // a borrowed 1000 from 0 on (average 0 then): 1000·(1 − 2^(−t/hl)).
        let a = fs.view_of("a", Timestamp(60_000), hl).unwrap()["A"];
        assert!((a - 500.0).abs() < 1e-6, "{a}");
        // b: 500·(1 − 2^−½) at 30 s, then towards 2000 for half a life.
        let at_30 = 500.0 * (1.0 - 0.5f64.sqrt());
        let b = fs.view_of("b", Timestamp(60_000), hl).unwrap()["A"];
        let expected = 2000.0 + (at_30 - 2000.0) * 0.5f64.sqrt();
        assert!((b - expected).abs() < 1e-6, "{b} {expected}");
        assert_eq!(fs.view_of("nobody", Timestamp(60_000), hl), None);
    }

    #[test]
    fn tenants_that_decayed_to_nothing_are_forgotten_within_a_half_life() {
        let hl = 1_000;
        let mut fs = FairShare::default();
        fs.advance(Timestamp(0), one("a", "A", 1000.0), hl);
        fs.advance(Timestamp(1), Borrowing::new(), hl);
        // 40 half-lives later a's average is far below half a milli-GPU.
        fs.advance(Timestamp(40_000), one("b", "A", 1000.0), hl);
        assert!(!fs.average.contains_key("a"), "{:?}", fs.average);
        assert!(fs.average.contains_key("b"));
    }

    #[test]
    fn memory_stored_by_older_versions_reads_with_its_shared_clock() {
        let hl = 60_000;
        let old = r#"{"average":{"a":{"A":1000.0}},"current":{"b":{"A":2000.0}},"at":60000}"#;
        let fs: FairShare = serde_json::from_str(old).unwrap();
        let view = fs.view(Timestamp(120_000), hl);
        assert!((view["a"]["A"] - 500.0).abs() < 1e-6, "{view:?}");
        assert!((view["b"]["A"] - 1000.0).abs() < 1e-6, "{view:?}");
        // What it stores now reads back the same.
        let again: FairShare = serde_json::from_str(&serde_json::to_string(&fs).unwrap()).unwrap();
        assert_eq!(again, fs);
    }
}
