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
}

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
        Ok(BaseModel {
            name,
            size_mib: self.size_mib as u64,
            min_gpu_memory_mib: self.min_gpu_memory_mib as u64,
            registered_at: now,
        })
    }
}

/// Model names are labels too (`qwen2-7b`), so they are safe as cache dirs.
pub fn model_name(field: &str, value: &str) -> Result<Name, FieldError> {
    Name::parse(field, value)
}
