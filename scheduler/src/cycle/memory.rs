//! What the cycle remembers between decisions. The durable part is what a
//! restart or a leader change must not forget: drivers store it (as JSON)
//! and hand it back. The rest is rebuilt from what runs.

use std::collections::{BTreeMap, BTreeSet};

use finpool_domain::{JobId, Name, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::fair_share::FairShare;
use super::load_time::Measured;
use crate::JobSet;
use crate::decide::Reservation;
use crate::engine::EngineCache;
use crate::plugins::workload::OnlineWorkload;

/// Stored by the driver after every cycle that changed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DurableMemory {
    /// The reservation the last decision made for a waiting gang.
    pub reservation: Option<Reservation>,
    /// For jobs admitted by preemption, the jobs they displaced: those may
    /// not preempt them back (no preemption cycles), and the preemptor
    /// starts once they are gone.
    pub displaced: BTreeMap<JobId, Vec<JobId>>,
    /// Jobs told to stop for preemption, and when: their resources count
    /// as free while they wind down.
    pub preempting: BTreeMap<JobId, Timestamp>,
    /// Jobs held back for base-model locality while a usable card was
    /// free: the clock that bounds the wait.
    pub held_back: BTreeMap<JobId, HoldClock>,
    /// Base models each node fetched to its disk, beyond its inventory.
    pub cached: BTreeMap<String, BTreeSet<String>>,
    /// The base model the cycle believes is in each card's memory: node →
    /// GPU index → model. A view for people (the API's node listing): the
    /// cycle decides with [`VolatileMemory::resident`] and, as card memory
    /// does not outlive its processes, empties this one on a restart.
    pub resident: BTreeMap<String, BTreeMap<u32, String>>,
    /// Recent borrowing per tenant, for fair share.
    pub fair_share: FairShare,
    /// Model loads measured per model and node.
    pub load_times: Measured,
}

/// The memory saved at checkpoints (hold clocks, fair share, measured load
/// times), as JSON, kept between checkpoints: a store of the memory that
/// decisions act on writes it as last checkpointed rather than serializing
/// every tenant's fair share again (a trace names thousands of tenants,
/// and every model load is such a store).
#[derive(Debug, Clone)]
pub struct SoftJson {
    held_back: Box<RawValue>,
    fair_share: Box<RawValue>,
    load_times: Box<RawValue>,
}

/// [`DurableMemory`]'s stored form with the soft parts already serialized:
/// the same fields in the same order, so the same JSON.
#[derive(Serialize)]
struct Stored<'a> {
    reservation: &'a Option<Reservation>,
    displaced: &'a BTreeMap<JobId, Vec<JobId>>,
    preempting: &'a BTreeMap<JobId, Timestamp>,
    held_back: &'a RawValue,
    cached: &'a BTreeMap<String, BTreeSet<String>>,
    resident: &'a BTreeMap<String, BTreeMap<u32, String>>,
    fair_share: &'a RawValue,
    load_times: &'a RawValue,
}

impl DurableMemory {
    /// The soft parts as they are now.
    pub fn soft_json(&self) -> serde_json::Result<SoftJson> {
        Ok(SoftJson {
            held_back: serde_json::value::to_raw_value(&self.held_back)?,
            fair_share: serde_json::value::to_raw_value(&self.fair_share)?,
            load_times: serde_json::value::to_raw_value(&self.load_times)?,
        })
    }

    /// The stored form: this memory, with its soft parts as `soft` gives
    /// them.
    pub fn to_json_with(&self, soft: &SoftJson) -> serde_json::Result<String> {
        // Every field named: one added to the memory does not compile
        // until it is stored here too.
        let Self {
            reservation,
            displaced,
            preempting,
            held_back: _,
            cached,
            resident,
            fair_share: _,
            load_times: _,
        } = self;
        serde_json::to_string(&Stored {
            reservation,
            displaced,
            preempting,
            held_back: &soft.held_back,
            cached,
            resident,
            fair_share: &soft.fair_share,
            load_times: &soft.load_times,
        })
    }
}

/// How long a job has been held back with a usable card free: the time
/// from each cycle that held it back to the next cycle, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldClock {
    pub held_ms: u64,
    /// The last cycle held it back, and this is when.
    pub since: Option<Timestamp>,
}

impl HoldClock {
    /// Counts the time since the last hold, up to `now`; returns whether
    /// there was one.
    pub fn tick(&mut self, now: Timestamp) -> bool {
        match self.since.take() {
            Some(since) => {
                self.held_ms = self.held_ms.saturating_add(now.millis_since(since));
                true
            }
            None => false,
        }
    }
}

/// What is rebuilt after a restart: card memory does not survive the
/// processes that filled it, and the workload is learned again.
#[derive(Debug, Default)]
pub struct VolatileMemory {
    /// The base model in each card's memory: (node, GPU index) → model.
    pub resident: BTreeMap<(String, u32), Name>,
    /// The workload learned online from arrivals.
    pub workload: Option<OnlineWorkload>,
    /// Jobs the workload has seen.
    pub observed: JobSet,
    /// The placement indexes of the last decision, for the next one.
    pub engine: EngineCache,
}

impl DurableMemory {
    /// Forgets jobs that are gone: `queued` and `holding` are the active
    /// jobs' ids. Says what was forgotten.
    pub fn prune(&mut self, queued: &JobSet, holding: &JobSet) -> Pruned {
        let before = (self.preempting.len(), self.displaced.len());
        let clocks = self.held_back.len();
        self.preempting.retain(|id, _| holding.contains(id));
        self.displaced
            .retain(|id, _| queued.contains(id) || holding.contains(id));
        self.held_back.retain(|id, _| queued.contains(id));
        let mut decisions = before != (self.preempting.len(), self.displaced.len());
        if self
            .reservation
            .as_ref()
            .is_some_and(|r| !queued.contains(&r.job))
        {
            self.reservation = None;
            decisions = true;
        }
        Pruned {
            decisions,
            hold_clocks: clocks != self.held_back.len(),
        }
    }
}

/// What [`DurableMemory::prune`] forgot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Preemptions, displaced-by records or the reservation.
    pub decisions: bool,
    pub hold_clocks: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cycle::fair_share::Decayed;

    /// The stored form with cached soft parts is the derived serialization,
    /// byte for byte: stores written before and after read back alike.
    #[test]
    fn stored_form_is_the_derived_serialization() {
        let id = |n: u128| JobId(uuid::Uuid::from_u128(n));
        let mut memory = DurableMemory {
            reservation: Some(Reservation {
                job: id(1),
                node: "node-0".into(),
                at: Timestamp(5),
            }),
            displaced: [(id(2), vec![id(3), id(4)])].into(),
            preempting: [(id(3), Timestamp(7))].into(),
            held_back: [(
                id(5),
                HoldClock {
                    held_ms: 1500,
                    since: Some(Timestamp(9)),
                },
            )]
            .into(),
            cached: [("node-0".to_owned(), ["m-1".to_owned()].into())].into(),
            resident: [("node-0".to_owned(), [(0, "m-1".to_owned())].into())].into(),
            ..DurableMemory::default()
        };
        memory.fair_share.average.insert(
            "alpha".into(),
            [(
                "A100".to_owned(),
                Decayed {
                    milli: 1234.5,
                    at: Timestamp(11),
                },
            )]
            .into(),
        );
        memory
            .load_times
            .entry("m-1".into())
            .or_default()
            .entry("node-0".into())
            .or_default()
            .add(22_700);
        let derived = serde_json::to_string(&memory).unwrap();
        let soft = memory.soft_json().unwrap();
        assert_eq!(memory.to_json_with(&soft).unwrap(), derived);
        let back: DurableMemory = serde_json::from_str(&derived).unwrap();
        assert_eq!(back, memory);
    }
}
