//! Rows as stored, and their conversion to domain values.

use std::collections::BTreeMap;

use finpool_domain::{
    BaseModel, IsolationLevel, Job, JobId, JobSpec, JobState, Name, Placement, Quota, Tenant,
    Timestamp, Transition,
};

use crate::StoreError;
use crate::error::corrupt;

/// The columns every job query selects, as a literal for `concat!`.
macro_rules! job_columns {
    () => {
        "id, tenant_id, spec, state, reason, reason_code, created_at, updated_at, started_at, finished_at, \
         exit_code, placement, attempts, cancel_requested"
    };
}
pub(crate) use job_columns;

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct JobRow {
    pub id: String,
    pub tenant_id: String,
    pub spec: String,
    pub state: String,
    pub reason: String,
    pub reason_code: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub placement: Option<String>,
    pub attempts: i64,
    pub cancel_requested: bool,
}

impl JobRow {
    pub fn into_job(self, history: Vec<Transition>) -> Result<Job, StoreError> {
        let spec: JobSpec = serde_json::from_str(&self.spec).map_err(|e| corrupt("job spec", e))?;
        let placement: Option<Placement> = self
            .placement
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("job placement", e))?;
        Ok(Job {
            id: JobId::parse("id", &self.id).map_err(|e| corrupt("job id", e))?,
            tenant_id: Name::parse("tenant_id", &self.tenant_id)
                .map_err(|e| corrupt("job tenant", e))?,
            spec,
            state: parse_state(&self.state)?,
            reason: self.reason,
            reason_code: self.reason_code,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
            started_at: self.started_at.map(Timestamp),
            finished_at: self.finished_at.map(Timestamp),
            exit_code: self.exit_code,
            placement,
            history,
            attempts: self.attempts as u32,
            cancel_requested: self.cancel_requested,
        })
    }
}

pub(crate) fn parse_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse("state", s).map_err(|e| corrupt("job state", e))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub from_state: Option<String>,
    pub to_state: String,
    pub at: i64,
    pub reason: String,
}

impl EventRow {
    pub fn into_transition(self) -> Result<Transition, StoreError> {
        Ok(Transition {
            from: self.from_state.as_deref().map(parse_state).transpose()?,
            to: parse_state(&self.to_state)?,
            at: Timestamp(self.at),
            reason: self.reason,
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TenantRow {
    pub id: String,
    pub display_name: String,
    pub weight: i64,
    pub isolation: String,
    pub quotas: String,
    pub created_at: i64,
    pub suspended_at: Option<i64>,
    pub suspended_reason: String,
}

impl TenantRow {
    pub fn into_tenant(self) -> Result<Tenant, StoreError> {
        let quotas: BTreeMap<String, Quota> =
            serde_json::from_str(&self.quotas).map_err(|e| corrupt("tenant quotas", e))?;
        Ok(Tenant {
            id: Name::parse("id", &self.id).map_err(|e| corrupt("tenant id", e))?,
            display_name: self.display_name,
            quotas,
            weight: self.weight as u32,
            isolation: IsolationLevel::parse("isolation", &self.isolation)
                .map_err(|e| corrupt("tenant isolation", e))?,
            created_at: Timestamp(self.created_at),
            suspended: self.suspended_at.map(|at| finpool_domain::Suspension {
                reason: self.suspended_reason,
                at: Timestamp(at),
            }),
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ModelRow {
    pub name: String,
    pub size_mib: i64,
    pub min_gpu_memory_mib: i64,
    pub load_time_ms: Option<i64>,
    pub registered_at: i64,
}

impl ModelRow {
    pub fn into_model(self) -> Result<BaseModel, StoreError> {
        Ok(BaseModel {
            name: Name::parse("name", &self.name).map_err(|e| corrupt("model name", e))?,
            size_mib: self.size_mib as u64,
            min_gpu_memory_mib: self.min_gpu_memory_mib as u64,
            load_time_ms: self.load_time_ms.map(|ms| ms as u64),
            registered_at: Timestamp(self.registered_at),
        })
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values always serialise")
}
