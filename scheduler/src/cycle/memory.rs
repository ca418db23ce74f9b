//! What the cycle remembers between decisions. The durable part is what a
//! restart or a leader change must not forget: drivers store it (as JSON)
//! and hand it back. The rest is rebuilt from what runs.

use std::collections::{BTreeMap, BTreeSet};

use finpool_domain::{JobId, Name, Timestamp};
use serde::{Deserialize, Serialize};

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
