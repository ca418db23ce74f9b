use finpool_domain::{JobId, TenantId, Transition};

/// A committed job state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub job_id: JobId,
    pub tenant_id: TenantId,
    pub transition: Transition,
}
