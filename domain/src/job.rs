//! Jobs: what a tenant asks to run, and the explicit state machine a job
//! walks through.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::tenant::check_class;
use crate::{
    BaseModel, FieldError, GpuClass, IsolationLevel, JobId, Name, Tenant, TenantId, Timestamp,
};

/// Where a job is in its life.
///
/// ```text
/// Pending ─▶ Admitted ─▶ Running ─▶ Succeeded | Failed | Cancelled
///    ▲                      │
///    └──── Preempted ◀──────┘
/// ```
/// Queued jobs (Pending, Admitted, Preempted) may also be Cancelled, and an
/// Admitted job that cannot start fails or goes back to Pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Admitted,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Preempted,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        Self::Pending,
        Self::Admitted,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Preempted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Admitted => "admitted",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Preempted => "preempted",
        }
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    format!(
                        "unknown job state {value:?} (one of {})",
                        Self::ALL.map(Self::as_str).join(", ")
                    ),
                )
            })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Holds GPUs: the scheduler counts it against quota and capacity.
    pub fn holds_resources(self) -> bool {
        matches!(self, Self::Admitted | Self::Running)
    }

    /// The state machine's edges.
    pub fn can_transition_to(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Pending, Admitted | Cancelled)
                | (Admitted, Running | Pending | Failed | Cancelled)
                | (Running, Succeeded | Failed | Cancelled | Preempted)
                | (Preempted, Pending | Cancelled)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step in a job's history. `from` is `None` for the submission itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Option<JobState>,
    pub to: JobState,
    pub at: Timestamp,
    pub reason: String,
}

/// What happens to a running job when the server restarts under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// The job is marked Failed with reason "server restarted".
    #[default]
    Fail,
    /// The job goes back to the queue and runs again.
    Requeue,
}

/// GPUs a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuRequest {
    /// A CPU-only job.
    None,
    /// N whole GPUs on one node.
    Whole { count: u32 },
    /// A share of one GPU: compute in milli-GPU and/or memory in MiB.
    Share { milli: u32, memory_mib: u64 },
}

impl GpuRequest {
    /// Milli-GPU asked for, summed over cards.
    pub fn total_milli(self) -> u64 {
        match self {
            Self::None => 0,
            Self::Whole { count } => count as u64 * crate::MILLI_PER_GPU as u64,
            Self::Share { milli, .. } => milli as u64,
        }
    }

    pub fn gpu_count(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Whole { count } => count,
            Self::Share { .. } => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub gpu: GpuRequest,
    /// Allowed GPU classes; empty means any class the tenant has quota on.
    pub gpu_classes: Vec<String>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

/// A validated job specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: Name,
    pub model: Option<Name>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub priority: i32,
    pub max_runtime_ms: Option<u64>,
    /// Once started, the job runs at least this long before it may be
    /// preempted.
    #[serde(default)]
    pub min_runtime_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub restart_policy: RestartPolicy,
}

/// The GPUs a job was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: String,
    pub gpus: Vec<GpuAssignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAssignment {
    pub index: u32,
    /// The card's UUID, or the MIG slice's when `mig_slice` is set.
    pub uuid: String,
    pub class: String,
    /// Milli-GPU of this card given to the job (1000 for a whole card).
    pub milli: u32,
    pub memory_mib: u64,
    /// The MIG slice of the card, by position, when the job runs on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_slice: Option<u32>,
}

impl Placement {
    /// What `CUDA_VISIBLE_DEVICES` names: device indices, or MIG device
    /// UUIDs for jobs on MIG slices.
    pub fn visible_devices(&self) -> String {
        self.gpus
            .iter()
            .map(|g| match g.mig_slice {
                Some(_) => g.uuid.clone(),
                None => g.index.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A job as stored: its spec, its current state and its whole history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub spec: JobSpec,
    pub state: JobState,
    pub reason: String,
    /// A stable code for the reason where the scheduler gave one
    /// (`QuotaLimit`, `WarmCard`, ...; see the scheduler's `WaitReason`).
    #[serde(default)]
    pub reason_code: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub placement: Option<Placement>,
    pub history: Vec<Transition>,
    /// How many times the job was started.
    pub attempts: u32,
    /// A cancel was asked while the job was running; the executor is stopping it.
    pub cancel_requested: bool,
}

impl Job {
    /// A freshly submitted job, Pending.
    pub fn new(id: JobId, tenant_id: TenantId, spec: JobSpec, now: Timestamp) -> Self {
        Self {
            id,
            tenant_id,
            spec,
            state: JobState::Pending,
            reason: "submitted".into(),
            reason_code: String::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            exit_code: None,
            placement: None,
            history: vec![Transition {
                from: None,
                to: JobState::Pending,
                at: now,
                reason: "submitted".into(),
            }],
            attempts: 0,
            cancel_requested: false,
        }
    }

    /// Time spent queued before the first start (or until now).
    pub fn wait_millis(&self, now: Timestamp) -> u64 {
        self.started_at.unwrap_or(now).millis_since(self.created_at)
    }
}

// ---------------------------------------------------------------------------
// Input and validation
// ---------------------------------------------------------------------------

/// The most bytes of command plus arguments a job may carry.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
const MAX_ENV_BYTES: usize = 64 * 1024;
const MAX_LABELS: usize = 64;
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Variables finpool sets itself, which a job may not override.
const RESERVED_ENV: [&str; 3] = [
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "LD_PRELOAD",
];
const RESERVED_ENV_PREFIX: &str = "FINPOOL_";

/// A job as a client writes it (gRPC, REST or YAML), before validation.
/// Numbers are signed so that a negative value is refused by name rather
/// than wrapped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpecInput {
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourcesInput,
    #[serde(default)]
    pub priority: i32,
    /// "90s", "10m", "2h" or a number of seconds.
    #[serde(default, rename = "max_runtime", deserialize_with = "duration_ms")]
    pub max_runtime_ms: Option<i64>,
    /// Protection from preemption once started, like `max_runtime`.
    #[serde(default, rename = "min_runtime", deserialize_with = "duration_ms")]
    pub min_runtime_ms: Option<i64>,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesInput {
    #[serde(default)]
    pub gpu: Option<GpuRequestInput>,
    #[serde(default)]
    pub gpu_classes: Vec<String>,
    #[serde(default)]
    pub cpu_milli: i64,
    #[serde(default)]
    pub memory_mib: i64,
}

/// Exactly one of `whole_gpus` or `share`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequestInput {
    #[serde(default)]
    pub whole_gpus: Option<i64>,
    #[serde(default)]
    pub share: Option<GpuShareInput>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuShareInput {
    #[serde(default)]
    pub milli: i64,
    #[serde(default)]
    pub memory_mib: i64,
}

fn duration_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(i64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Seconds(s)) => Ok(Some(s.saturating_mul(1000))),
        Some(Raw::Text(t)) => humantime::parse_duration(&t)
            .map(|d| Some(d.as_millis().min(i64::MAX as u128) as i64))
            .map_err(|e| serde::de::Error::custom(format!("max_runtime: {e}"))),
    }
}

/// What a submitted job is checked against: the pool and the tenant.
#[derive(Debug, Clone, Copy)]
pub struct SubmitContext<'a> {
    pub tenant: &'a Tenant,
    pub classes: &'a [GpuClass],
    pub models: &'a [BaseModel],
    /// Per GPU class, the most GPUs of that class on any one node.
    pub max_gpus_per_node: &'a BTreeMap<String, u32>,
    /// The longest max runtime a job may ask for.
    pub max_runtime_cap_ms: u64,
}

impl JobSpecInput {
    /// Validates syntax and checks that the job could ever run for this
    /// tenant on this pool, so that nothing waits forever by mistake.
    pub fn validate(&self, ctx: &SubmitContext<'_>) -> Result<JobSpec, FieldError> {
        let name = Name::parse("name", &self.name)?;
        let model = match self.model.as_str() {
            "" => None,
            m => {
                let name = Name::parse("model", m)?;
                if !ctx.models.iter().any(|bm| bm.name == name) {
                    return Err(FieldError::new(
                        "model",
                        format!("unknown base model {m:?}; ask an operator to register it"),
                    ));
                }
                Some(name)
            }
        };
        self.validate_command()?;
        self.validate_env()?;
        let resources = self.validate_resources(ctx, model.as_ref())?;
        let max_runtime_ms = match self.max_runtime_ms {
            None => None,
            Some(ms) if ms <= 0 => {
                return Err(FieldError::new(
                    "max_runtime",
                    format!("must be positive, got {ms} ms"),
                ));
            }
            Some(ms) if ms as u64 > ctx.max_runtime_cap_ms => {
                return Err(FieldError::new(
                    "max_runtime",
                    format!(
                        "must be at most {} on this pool",
                        humantime::format_duration(std::time::Duration::from_millis(
                            ctx.max_runtime_cap_ms
                        ))
                    ),
                ));
            }
            Some(ms) => Some(ms as u64),
        };
        let min_runtime_ms = match self.min_runtime_ms {
            None => None,
            Some(ms) if ms < 0 => {
                return Err(FieldError::new(
                    "min_runtime",
                    format!("must not be negative, got {ms} ms"),
                ));
            }
            Some(ms) if max_runtime_ms.is_some_and(|max| ms as u64 > max) => {
                return Err(FieldError::new(
                    "min_runtime",
                    "must not exceed max_runtime",
                ));
            }
            Some(ms) => Some(ms as u64),
        };
        let idempotency_key = match self.idempotency_key.as_str() {
            "" => None,
            k if k.len() > MAX_IDEMPOTENCY_KEY || k.chars().any(|c| c.is_control()) => {
                return Err(FieldError::new(
                    "idempotency_key",
                    format!("must be at most {MAX_IDEMPOTENCY_KEY} printable characters"),
                ));
            }
            k => Some(k.to_owned()),
        };
        self.validate_labels()?;
        Ok(JobSpec {
            name,
            model,
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            resources,
            priority: self.priority,
            max_runtime_ms,
            min_runtime_ms,
            idempotency_key,
            labels: self.labels.clone(),
            restart_policy: self.restart_policy.unwrap_or_default(),
        })
    }

    fn validate_command(&self) -> Result<(), FieldError> {
        match self.command.first() {
            None => return Err(FieldError::new("command", "must name a program to run")),
            Some(program) if program.is_empty() => {
                return Err(FieldError::new("command", "the program name is empty"));
            }
            Some(_) => {}
        }
        let bytes: usize = self.command.iter().chain(&self.args).map(String::len).sum();
        if bytes > MAX_COMMAND_BYTES {
            return Err(FieldError::new(
                "command",
                format!(
                    "command and args are {bytes} bytes; the limit is {MAX_COMMAND_BYTES} (64 KiB)"
                ),
            ));
        }
        if let Some(i) = self
            .command
            .iter()
            .chain(&self.args)
            .position(|a| a.contains('\0'))
        {
            return Err(FieldError::new(
                "command",
                format!("argument {i} contains a NUL byte"),
            ));
        }
        Ok(())
    }

    fn validate_env(&self) -> Result<(), FieldError> {
        let mut bytes = 0;
        for (key, value) in &self.env {
            let field = format!("env.{key}");
            let valid = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(FieldError::new(
                    field,
                    "is not a valid variable name (letters, digits, '_'; not starting with a digit)",
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) || key.starts_with(RESERVED_ENV_PREFIX) {
                return Err(FieldError::new(
                    field,
                    "is set by finpool and cannot be overridden",
                ));
            }
            if value.contains('\0') {
                return Err(FieldError::new(field, "contains a NUL byte"));
            }
            bytes += key.len() + value.len();
        }
        if bytes > MAX_ENV_BYTES {
            return Err(FieldError::new(
                "env",
                format!("is {bytes} bytes; the limit is {MAX_ENV_BYTES}"),
            ));
        }
        Ok(())
    }

    fn validate_labels(&self) -> Result<(), FieldError> {
        if self.labels.len() > MAX_LABELS {
            return Err(FieldError::new(
                "labels",
                format!("at most {MAX_LABELS} labels, got {}", self.labels.len()),
            ));
        }
        for (key, value) in &self.labels {
            let field = format!("labels.{key}");
            if key.is_empty()
                || key.len() > 63
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            {
                return Err(FieldError::new(
                    field,
                    "keys are 1-63 letters, digits, '-', '_', '.' or '/'",
                ));
            }
            if value.len() > 256 || value.chars().any(char::is_control) {
                return Err(FieldError::new(
                    field,
                    "values are at most 256 printable characters",
                ));
            }
        }
        Ok(())
    }

    fn validate_resources(
        &self,
        ctx: &SubmitContext<'_>,
        model: Option<&Name>,
    ) -> Result<Resources, FieldError> {
        let r = &self.resources;
        let known: Vec<String> = ctx.classes.iter().map(|c| c.name.clone()).collect();
        for (i, class) in r.gpu_classes.iter().enumerate() {
            check_class(&format!("resources.gpu_classes[{i}]"), class, &known)?;
        }
        if r.cpu_milli < 0 {
            return Err(FieldError::new(
                "resources.cpu_milli",
                format!("must not be negative, got {}", r.cpu_milli),
            ));
        }
        if r.memory_mib < 0 {
            return Err(FieldError::new(
                "resources.memory_mib",
                format!("must not be negative, got {}", r.memory_mib),
            ));
        }
        let gpu = match &r.gpu {
            None => GpuRequest::None,
            Some(GpuRequestInput {
                whole_gpus: Some(_),
                share: Some(_),
            }) => {
                return Err(FieldError::new(
                    "resources.gpu",
                    "set either whole_gpus or share, not both",
                ));
            }
            Some(GpuRequestInput {
                whole_gpus: Some(n),
                share: None,
            }) => {
                if *n < 1 {
                    return Err(FieldError::new(
                        "resources.gpu.whole_gpus",
                        format!("must be at least 1, got {n}"),
                    ));
                }
                let count = u32::try_from(*n).map_err(|_| {
                    FieldError::new("resources.gpu.whole_gpus", format!("{n} is far too many"))
                })?;
                GpuRequest::Whole { count }
            }
            Some(GpuRequestInput {
                whole_gpus: None,
                share: Some(share),
            }) => {
                if !(0..=1000).contains(&share.milli) {
                    return Err(FieldError::new(
                        "resources.gpu.share.milli",
                        format!("must be from 1 to 1000 milli-GPU, got {}", share.milli),
                    ));
                }
                if share.memory_mib < 0 {
                    return Err(FieldError::new(
                        "resources.gpu.share.memory_mib",
                        format!("must not be negative, got {}", share.memory_mib),
                    ));
                }
                if share.milli == 0 && share.memory_mib == 0 {
                    return Err(FieldError::new(
                        "resources.gpu.share",
                        "ask for milli, memory_mib or both",
                    ));
                }
                if ctx.tenant.isolation == IsolationLevel::Exclusive {
                    return Err(FieldError::new(
                        "resources.gpu.share",
                        format!(
                            "tenant {} uses exclusive isolation: whole GPUs only",
                            ctx.tenant.id
                        ),
                    ));
                }
                GpuRequest::Share {
                    milli: share.milli as u32,
                    memory_mib: share.memory_mib as u64,
                }
            }
            Some(GpuRequestInput {
                whole_gpus: None,
                share: None,
            }) => {
                return Err(FieldError::new(
                    "resources.gpu",
                    "set whole_gpus or share (leave gpu out for a CPU-only job)",
                ));
            }
        };
        let resources = Resources {
            gpu,
            gpu_classes: r.gpu_classes.clone(),
            cpu_milli: r.cpu_milli as u64,
            memory_mib: r.memory_mib as u64,
        };
        if gpu != GpuRequest::None {
            check_runnable(ctx, &resources, model)?;
        }
        Ok(resources)
    }
}

/// Refuses a GPU job that no class could ever run for this tenant: no
/// quota, more GPUs than any node or the limit, or too little memory.
fn check_runnable(
    ctx: &SubmitContext<'_>,
    resources: &Resources,
    model: Option<&Name>,
) -> Result<(), FieldError> {
    let allowed: Vec<&GpuClass> = ctx
        .classes
        .iter()
        .filter(|c| resources.gpu_classes.is_empty() || resources.gpu_classes.contains(&c.name))
        .collect();
    let with_quota: Vec<&GpuClass> = allowed
        .iter()
        .copied()
        .filter(|c| ctx.tenant.quota(&c.name).limit > 0)
        .collect();
    if with_quota.is_empty() {
        return Err(FieldError::new(
            "resources.gpu_classes",
            format!(
                "tenant {} has no GPU quota on {}",
                ctx.tenant.id,
                if resources.gpu_classes.is_empty() {
                    "any class".to_owned()
                } else {
                    resources.gpu_classes.join(", ")
                }
            ),
        ));
    }
    if let GpuRequest::Whole { count } = resources.gpu {
        let most = with_quota
            .iter()
            .map(|c| {
                let per_node = ctx.max_gpus_per_node.get(&c.name).copied().unwrap_or(0);
                per_node.min(ctx.tenant.quota(&c.name).limit)
            })
            .max()
            .unwrap_or(0);
        if count > most {
            return Err(FieldError::new(
                "resources.gpu.whole_gpus",
                format!(
                    "{count} GPUs can never run: at most {most} fit on one node within tenant {}'s limit",
                    ctx.tenant.id
                ),
            ));
        }
    }
    let need_memory = match resources.gpu {
        GpuRequest::Share { memory_mib, .. } => memory_mib,
        _ => 0,
    };
    let model_memory = model
        .and_then(|m| ctx.models.iter().find(|bm| &bm.name == m))
        .map_or(0, |bm| bm.min_gpu_memory_mib);
    if !with_quota
        .iter()
        .any(|c| c.memory_mib >= need_memory && c.memory_mib >= model_memory)
    {
        let field = if model_memory > need_memory {
            "model"
        } else {
            "resources.gpu.share.memory_mib"
        };
        return Err(FieldError::new(
            field,
            format!(
                "needs {} MiB of GPU memory; no usable GPU class has that much",
                need_memory.max(model_memory)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;

    struct Fixture {
        tenant: Tenant,
        classes: Vec<GpuClass>,
        models: Vec<BaseModel>,
        per_node: BTreeMap<String, u32>,
    }

    impl Fixture {
        fn new() -> Self {
            let mut tenant = Tenant {
                id: Name::parse("id", "alpha").unwrap(),
                display_name: "Alpha".into(),
                quotas: BTreeMap::new(),
                weight: 1,
                isolation: IsolationLevel::SharedWithinTenant,
                created_at: Timestamp(0),
                suspended: None,
            };
            tenant.quotas.insert(
                "A100".into(),
                Quota {
                    guaranteed: 2,
                    limit: 4,
                    lending_limit: None,
                },
            );
            Self {
                tenant,
                classes: vec![GpuClass {
                    name: "A100".into(),
                    memory_mib: 81920,
                }],
                models: vec![BaseModel {
                    name: Name::parse("name", "qwen2-7b").unwrap(),
                    size_mib: 15000,
                    min_gpu_memory_mib: 20000,
                    load_time_ms: None,
                    registered_at: Timestamp(0),
                }],
                per_node: [("A100".to_owned(), 8)].into(),
            }
        }

        fn ctx(&self) -> SubmitContext<'_> {
            SubmitContext {
                tenant: &self.tenant,
                classes: &self.classes,
                models: &self.models,
                max_gpus_per_node: &self.per_node,
                max_runtime_cap_ms: 86_400_000,
            }
        }
    }

    fn valid() -> JobSpecInput {
        JobSpecInput {
            name: "risk-run".into(),
            model: "qwen2-7b".into(),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            resources: ResourcesInput {
                gpu: Some(GpuRequestInput {
                    whole_gpus: Some(1),
                    share: None,
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn field_of(input: JobSpecInput) -> String {
        let f = Fixture::new();
        input.validate(&f.ctx()).unwrap_err().field
    }

    #[test]
    fn a_valid_spec_passes() {
        let f = Fixture::new();
        let spec = valid().validate(&f.ctx()).unwrap();
        assert_eq!(spec.resources.gpu, GpuRequest::Whole { count: 1 });
        assert_eq!(spec.restart_policy, RestartPolicy::Fail);
    }

    #[test]
    fn bad_inputs_name_their_field() {
        let mut i = valid();
        i.resources.gpu.as_mut().unwrap().whole_gpus = Some(0);
        assert_eq!(field_of(i), "resources.gpu.whole_gpus");

        let mut i = valid();
        i.resources.gpu.as_mut().unwrap().whole_gpus = Some(-3);
        assert_eq!(field_of(i), "resources.gpu.whole_gpus");

        let mut i = valid();
        i.resources.gpu = Some(GpuRequestInput {
            whole_gpus: None,
            share: Some(GpuShareInput {
                milli: 1500,
                memory_mib: 0,
            }),
        });
        assert_eq!(field_of(i), "resources.gpu.share.milli");

        let mut i = valid();
        i.resources.gpu_classes = vec!["V100".into()];
        assert_eq!(field_of(i), "resources.gpu_classes[0]");

        let mut i = valid();
        i.model = "llama-9000".into();
        assert_eq!(field_of(i), "model");

        let mut i = valid();
        i.command = vec!["x".repeat(MAX_COMMAND_BYTES + 1)];
        assert_eq!(field_of(i), "command");

        let mut i = valid();
        i.name = "Bad Name!".into();
        assert_eq!(field_of(i), "name");

        let mut i = valid();
        i.env.insert("CUDA_VISIBLE_DEVICES".into(), "0".into());
        assert_eq!(field_of(i), "env.CUDA_VISIBLE_DEVICES");

        let mut i = valid();
        i.resources.gpu.as_mut().unwrap().whole_gpus = Some(5);
        assert_eq!(
            field_of(i),
            "resources.gpu.whole_gpus",
            "over the tenant limit of 4"
        );
    }

    #[test]
    fn unknown_yaml_fields_are_refused() {
        let err = serde_json::from_str::<JobSpecInput>(r#"{"name":"a","command":["x"],"gpus":2}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `gpus`"), "{err}");
    }

    #[test]
    fn max_runtime_reads_text_or_seconds() {
        let a: JobSpecInput = serde_json::from_str(r#"{"name":"a","max_runtime":"2m"}"#).unwrap();
        assert_eq!(a.max_runtime_ms, Some(120_000));
        let b: JobSpecInput = serde_json::from_str(r#"{"name":"a","max_runtime":30}"#).unwrap();
        assert_eq!(b.max_runtime_ms, Some(30_000));
    }

    #[test]
    fn state_machine_edges() {
        use JobState::*;
        assert!(Pending.can_transition_to(Admitted));
        assert!(Running.can_transition_to(Preempted));
        assert!(Preempted.can_transition_to(Pending));
        assert!(!Succeeded.can_transition_to(Running));
        assert!(!Pending.can_transition_to(Running));
        for s in JobState::ALL {
            if s.is_terminal() {
                assert!(JobState::ALL.iter().all(|t| !s.can_transition_to(*t)));
            }
        }
    }
}
