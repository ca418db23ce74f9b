//! The FGD paper's workload protocol: inflate the trace to a target load
//! by resampling it, then shuffle.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::openb::OpenbPod;

/// The trace's pods plus copies drawn uniformly with replacement (seeded),
/// drawn while the next draw keeps the total requested milli-GPU within
/// `tune` × `capacity_milli`; then the whole list shuffled (same seed).
pub fn tuned(pods: &[OpenbPod], capacity_milli: u64, tune: f64, seed: u64) -> Vec<OpenbPod> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut list = pods.to_vec();
    let budget = (tune * capacity_milli as f64).floor() as u64;
    let mut total: u64 = pods.iter().map(OpenbPod::gpu_demand).sum();
    if !pods.is_empty() {
        let mut copies = 0u64;
        loop {
            let pick = &pods[rng.random_range(0..pods.len())];
            if total + pick.gpu_demand() > budget {
                break;
            }
            total += pick.gpu_demand();
            copies += 1;
            let mut copy = pick.clone();
            copy.name = format!("{}-copy{copies}", pick.name);
            list.push(copy);
            // A trace of CPU-only pods alone would never reach the budget.
            if copies > 100 * pods.len() as u64 {
                break;
            }
        }
    }
    list.shuffle(&mut rng);
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: usize, num_gpu: u32, milli: u32) -> OpenbPod {
        OpenbPod {
            name: format!("p{i}"),
            cpu_milli: 1000,
            memory_mib: 1024,
            num_gpu,
            gpu_milli: milli,
            gpu_spec: vec![],
        }
    }

    #[test]
    fn tuning_stays_within_the_budget_and_is_seeded() {
        let pods: Vec<_> = (0..50)
            .map(|i| pod(i, (i % 3) as u32, if i % 2 == 0 { 1000 } else { 300 }))
            .collect();
        let pods: Vec<_> = pods
            .into_iter()
            .map(|mut p| {
                if p.num_gpu > 1 {
                    p.gpu_milli = 1000
                }
                p
            })
            .collect();
        let capacity = 40_000;
        let a = tuned(&pods, capacity, 1.3, 42);
        let total: u64 = a.iter().map(OpenbPod::gpu_demand).sum();
        assert!(total <= 52_000, "{total}");
        assert!(a.len() > pods.len(), "copies were added");
        assert_eq!(a, tuned(&pods, capacity, 1.3, 42), "same seed, same list");
        assert_ne!(a, tuned(&pods, capacity, 1.3, 43));
    }
}
