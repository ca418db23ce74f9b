//! Base models: LLM weights cached once on the pool's nodes and shared by
//! every tenant's jobs.

use serde::{Deserialize, Serialize};

use crate::{FieldError, Name, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModel {
    pub name: Name,
    pub size_mib: u64,
    /// The least GPU memory a card needs to hold this model.
    pub min_gpu_memory_mib: u64,
    /// How long loading it onto a card takes, as the operator measured it.
    /// Unset: measured from past loads, or its size over the node's
    /// bandwidth (see the scheduler's cycle).
    #[serde(default)]
    pub load_time_ms: Option<u64>,
    pub registered_at: Timestamp,
}

/// An operator's request to register a base model, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModelInput {
    pub name: String,
    #[serde(default)]
    pub size_mib: i64,
    #[serde(default)]
    pub min_gpu_memory_mib: i64,
    /// Zero or absent: not registered.
    #[serde(default)]
    pub load_time_ms: i64,
}

/// The longest load time a model may declare: a day.
pub const MAX_LOAD_TIME_MS: i64 = 24 * 3600 * 1000;

impl BaseModelInput {
    pub fn validate(&self, now: Timestamp) -> Result<BaseModel, FieldError> {
        let name = model_name("name", &self.name)?;
        if self.size_mib <= 0 {
            return Err(FieldError::new(
                "size_mib",
                format!("must be positive, got {}", self.size_mib),
            ));
        }
        if self.min_gpu_memory_mib < 0 {
            return Err(FieldError::new(
                "min_gpu_memory_mib",
                format!("must not be negative, got {}", self.min_gpu_memory_mib),
            ));
        }
        if !(0..=MAX_LOAD_TIME_MS).contains(&self.load_time_ms) {
            return Err(FieldError::new(
                "load_time_ms",
                format!(
                    "must be between 0 (unset) and {MAX_LOAD_TIME_MS}, got {}",
                    self.load_time_ms
                ),
            ));
        }
        Ok(BaseModel {
            name,
            size_mib: self.size_mib as u64,
            min_gpu_memory_mib: self.min_gpu_memory_mib as u64,
            load_time_ms: (self.load_time_ms > 0).then_some(self.load_time_ms as u64),
            registered_at: now,
        })
    }
}

/// Model names are labels too (`qwen2-7b`), so they are safe as cache dirs.
pub fn model_name(field: &str, value: &str) -> Result<Name, FieldError> {
    Name::parse(field, value)
}
