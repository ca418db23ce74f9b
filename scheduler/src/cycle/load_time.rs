//! How long loading a base model onto a card takes: what base-model
//! locality weighs a wait against. Never a constant: the operator's
//! registered figure, else what past loads measured, else the model's size
//! over the node's bandwidth.

use std::collections::BTreeMap;

use finpool_domain::BaseModel;

/// Loads measured per model and node, in milliseconds (a running mean).
pub type Measured = BTreeMap<String, BTreeMap<String, MeanMs>>;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanMs {
    pub mean_ms: f64,
    pub samples: u32,
}

impl MeanMs {
    /// Adds a sample; the mean weighs at most the last 16 loads, so it
    /// follows a node whose disk or link changes.
    pub fn add(&mut self, ms: u64) {
        self.samples = self.samples.saturating_add(1);
        let weight = 1.0 / f64::from(self.samples.min(16));
        self.mean_ms += (ms as f64 - self.mean_ms) * weight;
    }
}

/// The model's load time: registered, else the mean of its measured loads
/// over the nodes that loaded it, else its size over `bandwidth_mib_s`.
pub fn load_time_ms(model: &BaseModel, measured: &Measured, bandwidth_mib_s: u64) -> u64 {
    if let Some(ms) = model.load_time_ms {
        return ms;
    }
    if let Some(per_node) = measured.get(model.name.as_str())
        && !per_node.is_empty()
    {
        let sum: f64 = per_node.values().map(|m| m.mean_ms).sum();
        return (sum / per_node.len() as f64).round() as u64;
    }
    (model.size_mib.saturating_mul(1000)).div_ceil(bandwidth_mib_s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use finpool_domain::{Name, Timestamp};

    fn model(size_mib: u64, registered: Option<u64>) -> BaseModel {
        BaseModel {
            name: Name::parse("name", "m").unwrap(),
            size_mib,
            min_gpu_memory_mib: 0,
            load_time_ms: registered,
            registered_at: Timestamp(0),
        }
    }

    #[test]
    fn registered_then_measured_then_size_over_bandwidth() {
        let mut measured = Measured::new();
        assert_eq!(load_time_ms(&model(15_360, None), &measured, 1024), 15_000);
        measured
            .entry("m".into())
            .or_default()
            .entry("n1".into())
            .or_default()
            .add(4_000);
        measured
            .entry("m".into())
            .or_default()
            .entry("n2".into())
            .or_default()
            .add(6_000);
        assert_eq!(load_time_ms(&model(15_360, None), &measured, 1024), 5_000);
        assert_eq!(
            load_time_ms(&model(15_360, Some(9_000)), &measured, 1024),
            9_000
        );
    }
}
