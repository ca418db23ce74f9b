//! What the agent writes on its Node, as a pure function of what it found:
//! the labels and annotations below, every key in one place. The readers
//! (the operator's and the scheduler's inventory) parse the annotations
//! back with [`inventory_from_annotation`] and [`usage_from_annotation`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::devices::{Card, Sample};

/// The server-side apply field manager: the agent owns exactly the keys
/// below, so a key it stops publishing is removed by the next apply.
pub const FIELD_MANAGER: &str = "finpool-agent";

/// Label: the product of the node's first card, as GPU Feature Discovery
/// writes `nvidia.com/gpu.product` (spaces become `-`):
/// `NVIDIA-H100-80GB-HBM3`. Absent when the node has no card.
pub const PRODUCT_LABEL: &str = "finpool.io/gpu.product";
/// Label: how many cards the node has (`8`).
pub const COUNT_LABEL: &str = "finpool.io/gpu.count";
/// Label: the first card's memory in MiB (`81559`), as GFD's
/// `nvidia.com/gpu.memory`. Absent when the node has no card.
pub const MEMORY_LABEL: &str = "finpool.io/gpu.memory";
/// Label: `true` when any card supports MIG (enabled or not), else `false`.
pub const MIG_CAPABLE_LABEL: &str = "finpool.io/mig.capable";

/// Annotation: every card as a JSON array of [`Card`] (camelCase): index,
/// uuid, product, memoryMib, mig {capable, enabled, instances [{profile,
/// uuid, memoryMib}]}, nvlinkPeers [indices]. Read it with
/// [`inventory_from_annotation`].
pub const INVENTORY_ANNOTATION: &str = "finpool.io/gpu-inventory";
/// Annotation: the cards' last sample as a JSON array of [`CardUsage`]:
/// index, utilizationPercent (null in MIG mode), memoryUsedMib, sampledAt
/// (RFC 3339, UTC). Absent when sampling failed, rather than stale.
pub const USAGE_ANNOTATION: &str = "finpool.io/gpu-usage";
/// Annotation: the base models in the node's model cache, comma-separated
/// and sorted (`llama-3-8b,mistral-7b`); empty when there are none. The
/// operator's inventory reads the same key.
pub const MODELS_ANNOTATION: &str = "finpool.io/models";

/// Kubernetes' limit on a label value's length.
const LABEL_VALUE_MAX: usize = 63;

/// The labels and annotations the agent applies to its Node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Publication {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Publication {
    /// The server-side apply body: the Node with only the agent's fields.
    pub fn apply_patch(&self, node_name: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name,
                "labels": self.labels,
                "annotations": self.annotations,
            },
        })
    }
}

/// One sampling of the node's cards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub sampled_at: OffsetDateTime,
    pub samples: Vec<Sample>,
}

/// One card's use, as the `finpool.io/gpu-usage` annotation holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardUsage {
    pub index: u32,
    pub utilization_percent: Option<u32>,
    pub memory_used_mib: u64,
    /// RFC 3339, UTC, whole seconds.
    pub sampled_at: String,
}

/// Why an annotation could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation {annotation}: not the expected JSON: {source}")]
    Json {
        annotation: &'static str,
        source: serde_json::Error,
    },
    #[error("annotation {annotation}: card {index}: {reason}")]
    Card {
        annotation: &'static str,
        index: u32,
        reason: String,
    },
}

/// The labels and annotations for `cards`, their last `usage` (if sampling
/// worked) and the names found in the model cache (`cache_entries`: the
/// cache directory's subdirectories; names that are not valid model names,
/// such as a download's `llama-3-8b.partial`, are left out).
pub fn publish(cards: &[Card], usage: Option<&Usage>, cache_entries: &[String]) -> Publication {
    let mut cards = cards.to_vec();
    cards.sort_by_key(|c| c.index);
    let mut labels = BTreeMap::new();
    labels.insert(COUNT_LABEL.to_owned(), cards.len().to_string());
    // As GFD: one product and memory per node, the first card's; a node
    // of mixed cards is described in full by the inventory annotation.
    if let Some(first) = cards.first() {
        if let Some(product) = label_value(&first.product) {
            labels.insert(PRODUCT_LABEL.to_owned(), product);
        }
        labels.insert(MEMORY_LABEL.to_owned(), first.memory_mib.to_string());
    }
    let mig_capable = cards.iter().any(|c| c.mig.capable);
    labels.insert(MIG_CAPABLE_LABEL.to_owned(), mig_capable.to_string());

    let mut annotations = BTreeMap::new();
    // Serializing these plain structs cannot fail.
    annotations.insert(
        INVENTORY_ANNOTATION.to_owned(),
        serde_json::to_string(&cards).unwrap_or_default(),
    );
    if let Some(usage) = usage.and_then(|u| usage_entries(&cards, u)) {
        annotations.insert(
            USAGE_ANNOTATION.to_owned(),
            serde_json::to_string(&usage).unwrap_or_default(),
        );
    }
    annotations.insert(MODELS_ANNOTATION.to_owned(), models(cache_entries));
    Publication {
        labels,
        annotations,
    }
}

/// The usage of the inventory's cards (a sample of a card left out of
/// discovery is left out too); `None` when the time cannot be written.
fn usage_entries(cards: &[Card], usage: &Usage) -> Option<Vec<CardUsage>> {
    let at = usage
        .sampled_at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()?
        .format(&Rfc3339)
        .ok()?;
    let known: BTreeSet<u32> = cards.iter().map(|c| c.index).collect();
    let mut samples: Vec<&Sample> = usage
        .samples
        .iter()
        .filter(|s| known.contains(&s.index))
        .collect();
    samples.sort_by_key(|s| s.index);
    samples.dedup_by_key(|s| s.index);
    Some(
        samples
            .into_iter()
            .map(|s| CardUsage {
                index: s.index,
                utilization_percent: s.utilization_percent,
                memory_used_mib: s.memory_used_mib,
                sampled_at: at.clone(),
            })
            .collect(),
    )
}

/// The valid model names among `entries`, sorted, comma-separated.
fn models(entries: &[String]) -> String {
    let names: BTreeSet<&str> = entries
        .iter()
        .map(String::as_str)
        .filter(|name| finpool_domain::model::model_name("model", name).is_ok())
        .collect();
    names.into_iter().collect::<Vec<_>>().join(",")
}

/// `raw` as a Kubernetes label value: characters other than letters,
/// digits, `-`, `_` and `.` become `-`, at most 63 of them, starting and
/// ending with a letter or digit. `None` when nothing is left.
pub fn label_value(raw: &str) -> Option<String> {
    let mapped: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(LABEL_VALUE_MAX)
        .collect();
    let value = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!value.is_empty()).then(|| value.to_owned())
}

/// The cards in a `finpool.io/gpu-inventory` annotation, checked: indices
/// unique, UUIDs present, NVLink peers naming other cards of the node.
pub fn inventory_from_annotation(value: &str) -> Result<Vec<Card>, AnnotationError> {
    let annotation = INVENTORY_ANNOTATION;
    let cards: Vec<Card> = serde_json::from_str(value)
        .map_err(|source| AnnotationError::Json { annotation, source })?;
    let card_error = |index: u32, reason: String| AnnotationError::Card {
        annotation,
        index,
        reason,
    };
    let mut indices = BTreeSet::new();
    for card in &cards {
        if !indices.insert(card.index) {
            return Err(card_error(card.index, "appears twice".into()));
        }
        if card.uuid.trim().is_empty() {
            return Err(card_error(card.index, "uuid must not be empty".into()));
        }
    }
    for card in &cards {
        if let Some(peer) = card
            .nvlink_peers
            .iter()
            .find(|p| **p == card.index || !indices.contains(p))
        {
            return Err(card_error(
                card.index,
                format!("nvlinkPeers names {peer}, which is not another card of the node"),
            ));
        }
    }
    Ok(cards)
}

/// The samples in a `finpool.io/gpu-usage` annotation, checked: indices
/// unique, sampledAt RFC 3339.
pub fn usage_from_annotation(value: &str) -> Result<Vec<CardUsage>, AnnotationError> {
    let annotation = USAGE_ANNOTATION;
    let usage: Vec<CardUsage> = serde_json::from_str(value)
        .map_err(|source| AnnotationError::Json { annotation, source })?;
    let mut indices = BTreeSet::new();
    for entry in &usage {
        let card_error = |reason: String| AnnotationError::Card {
            annotation,
            index: entry.index,
            reason,
        };
        if !indices.insert(entry.index) {
            return Err(card_error("appears twice".into()));
        }
        if OffsetDateTime::parse(&entry.sampled_at, &Rfc3339).is_err() {
            return Err(card_error(format!(
                "sampledAt {:?} is not an RFC 3339 time",
                entry.sampled_at
            )));
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Mig;

    fn card(index: u32, product: &str, memory_mib: u64) -> Card {
        Card {
            index,
            uuid: format!("GPU-{index}"),
            product: product.into(),
            memory_mib,
            mig: Mig::default(),
            nvlink_peers: Vec::new(),
        }
    }

    #[test]
    fn label_values_are_valid_kubernetes_label_values() {
        assert_eq!(
            label_value("NVIDIA H100 80GB HBM3").as_deref(),
            Some("NVIDIA-H100-80GB-HBM3")
        );
        assert_eq!(
            label_value("NVIDIA A100-SXM4-80GB").as_deref(),
            Some("NVIDIA-A100-SXM4-80GB")
        );
        assert_eq!(label_value(" (GPU) ").as_deref(), Some("GPU"));
        assert_eq!(label_value("Grafikkarte ü").as_deref(), Some("Grafikkarte"));
        assert_eq!(label_value("  "), None);
        assert_eq!(label_value("()"), None);
        let long = label_value(&"x".repeat(100)).unwrap();
        assert_eq!(long.len(), 63);
    }

    #[test]
    fn a_node_without_cards_says_so_and_names_no_product() {
        let p = publish(&[], None, &[]);
        assert_eq!(p.labels[COUNT_LABEL], "0");
        assert_eq!(p.labels[MIG_CAPABLE_LABEL], "false");
        assert!(!p.labels.contains_key(PRODUCT_LABEL));
        assert!(!p.labels.contains_key(MEMORY_LABEL));
        assert_eq!(p.annotations[INVENTORY_ANNOTATION], "[]");
        assert_eq!(p.annotations[MODELS_ANNOTATION], "");
        assert!(!p.annotations.contains_key(USAGE_ANNOTATION));
    }

    #[test]
    fn mixed_cards_take_the_first_cards_product_and_every_card_is_listed() {
        let p = publish(
            &[
                card(1, "NVIDIA L4", 22_491),
                card(0, "NVIDIA A100-SXM4-80GB", 81_920),
            ],
            None,
            &[],
        );
        assert_eq!(p.labels[PRODUCT_LABEL], "NVIDIA-A100-SXM4-80GB");
        assert_eq!(p.labels[MEMORY_LABEL], "81920");
        let cards = inventory_from_annotation(&p.annotations[INVENTORY_ANNOTATION]).unwrap();
        assert_eq!(cards.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn samples_of_unknown_cards_are_dropped_and_time_is_whole_utc_seconds() {
        let at = time::macros::datetime!(2026-03-04 05:06:07.890 +02:00);
        let usage = Usage {
            sampled_at: at,
            samples: vec![
                Sample {
                    index: 0,
                    utilization_percent: Some(40),
                    memory_used_mib: 1000,
                },
                Sample {
                    index: 7,
                    utilization_percent: Some(1),
                    memory_used_mib: 1,
                },
            ],
        };
        let p = publish(&[card(0, "NVIDIA L4", 22_491)], Some(&usage), &[]);
        let back = usage_from_annotation(&p.annotations[USAGE_ANNOTATION]).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].sampled_at, "2026-03-04T03:06:07Z");
        assert_eq!(back[0].utilization_percent, Some(40));
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_problem() {
        let err = inventory_from_annotation("{").unwrap_err().to_string();
        assert!(err.contains(INVENTORY_ANNOTATION), "{err}");
        let err = inventory_from_annotation(
            r#"[{"index":0,"product":"x","memoryMib":1,"mig":{"enabled":false}}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("uuid"), "{err}");
        let twice = r#"[{"index":0,"uuid":"a","product":"x","memoryMib":1},
                        {"index":0,"uuid":"b","product":"x","memoryMib":1}]"#;
        let err = inventory_from_annotation(twice).unwrap_err().to_string();
        assert!(err.contains("card 0: appears twice"), "{err}");
        let stray = r#"[{"index":0,"uuid":"a","product":"x","memoryMib":1,"nvlinkPeers":[3]}]"#;
        let err = inventory_from_annotation(stray).unwrap_err().to_string();
        assert!(err.contains("nvlinkPeers names 3"), "{err}");
        let when =
            r#"[{"index":0,"utilizationPercent":null,"memoryUsedMib":0,"sampledAt":"soon"}]"#;
        let err = usage_from_annotation(when).unwrap_err().to_string();
        assert!(err.contains("sampledAt"), "{err}");
    }
}
