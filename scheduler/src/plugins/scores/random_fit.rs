//! Random-fit, seeded: the floor any policy must beat.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cluster::{Choice, NodeIdx};
use crate::plugins::{Ctx, Scorer};
use crate::task::Task;

/// Random-fit: every feasible choice gets a pseudo-random score from a
/// seeded generator, so a run is repeatable.
pub struct RandomFit {
    seed: u64,
    draws: AtomicU64,
}

impl RandomFit {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            draws: AtomicU64::new(0),
        }
    }
}

impl Scorer for RandomFit {
    fn cacheable(&self) -> bool {
        false
    }

    fn score(&self, _ctx: &Ctx<'_>, _task: &Task, node: NodeIdx, choice: Choice) -> f64 {
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        let x = splitmix64(self.seed ^ splitmix64(draw) ^ ((node as u64) << 32) ^ choice.gpus);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A small, fast, well-mixed hash (SplitMix64's finaliser).
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
