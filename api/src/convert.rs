//! Conversions between finpool.v1 messages and domain values. Incoming
//! messages become the domain's `*Input` types, so that validation (and its
//! error messages) is the same for every front door.

use finpool_domain as d;
use finpool_domain::FieldError;
use finpool_proto::v1 as pb;

pub fn timestamp(t: d::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1000),
        nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn state_to_pb(s: d::JobState) -> pb::JobState {
    match s {
        d::JobState::Pending => pb::JobState::Pending,
        d::JobState::Admitted => pb::JobState::Admitted,
        d::JobState::Running => pb::JobState::Running,
        d::JobState::Succeeded => pb::JobState::Succeeded,
        d::JobState::Failed => pb::JobState::Failed,
        d::JobState::Cancelled => pb::JobState::Cancelled,
        d::JobState::Preempted => pb::JobState::Preempted,
    }
}

pub fn state_from_pb(field: &str, value: i32) -> Result<d::JobState, FieldError> {
    match pb::JobState::try_from(value) {
        Ok(pb::JobState::Pending) => Ok(d::JobState::Pending),
        Ok(pb::JobState::Admitted) => Ok(d::JobState::Admitted),
        Ok(pb::JobState::Running) => Ok(d::JobState::Running),
        Ok(pb::JobState::Succeeded) => Ok(d::JobState::Succeeded),
        Ok(pb::JobState::Failed) => Ok(d::JobState::Failed),
        Ok(pb::JobState::Cancelled) => Ok(d::JobState::Cancelled),
        Ok(pb::JobState::Preempted) => Ok(d::JobState::Preempted),
        _ => Err(FieldError::new(
            field,
            format!("{value} is not a job state"),
        )),
    }
}

pub fn spec_input(spec: pb::JobSpec) -> Result<d::JobSpecInput, FieldError> {
    let resources = spec.resources.unwrap_or_default();
    let gpu = resources.gpu.map(|g| match g.kind {
        Some(pb::gpu_request::Kind::WholeGpus(n)) => d::job::GpuRequestInput {
            whole_gpus: Some(n),
            share: None,
        },
        Some(pb::gpu_request::Kind::Share(s)) => d::job::GpuRequestInput {
            whole_gpus: None,
            share: Some(d::job::GpuShareInput {
                milli: s.milli,
                memory_mib: s.memory_mib,
            }),
        },
        None => d::job::GpuRequestInput::default(),
    });
    let restart_policy = match pb::RestartPolicy::try_from(spec.restart_policy) {
        Ok(pb::RestartPolicy::Unspecified) => None,
        Ok(pb::RestartPolicy::Fail) => Some(d::RestartPolicy::Fail),
        Ok(pb::RestartPolicy::Requeue) => Some(d::RestartPolicy::Requeue),
        Err(_) => {
            return Err(FieldError::new(
                "restart_policy",
                format!("{} is not a restart policy", spec.restart_policy),
            ));
        }
    };
    Ok(d::JobSpecInput {
        name: spec.name,
        model: spec.model,
        command: spec.command,
        args: spec.args,
        env: spec.env.into_iter().collect(),
        resources: d::job::ResourcesInput {
            gpu,
            gpu_classes: resources.gpu_classes,
            cpu_milli: resources.cpu_milli,
            memory_mib: resources.memory_mib,
        },
        priority: spec.priority,
        max_runtime_ms: spec.max_runtime.map(duration_ms),
        min_runtime_ms: spec.min_runtime.map(duration_ms),
        idempotency_key: spec.idempotency_key,
        labels: spec.labels.into_iter().collect(),
        restart_policy,
    })
}

/// A client-side spec (from YAML or flags) as the message to send. Values
/// pass through unvalidated: the server validates.
pub fn input_to_pb(input: &d::JobSpecInput) -> pb::JobSpec {
    let gpu = input.resources.gpu.as_ref().map(|g| pb::GpuRequest {
        kind: match (g.whole_gpus, &g.share) {
            (Some(n), _) => Some(pb::gpu_request::Kind::WholeGpus(n)),
            (None, Some(s)) => Some(pb::gpu_request::Kind::Share(pb::GpuShare {
                milli: s.milli,
                memory_mib: s.memory_mib,
            })),
            (None, None) => None,
        },
    });
    pb::JobSpec {
        name: input.name.clone(),
        model: input.model.clone(),
        command: input.command.clone(),
        args: input.args.clone(),
        env: input.env.clone().into_iter().collect(),
        resources: Some(pb::Resources {
            gpu,
            gpu_classes: input.resources.gpu_classes.clone(),
            cpu_milli: input.resources.cpu_milli,
            memory_mib: input.resources.memory_mib,
        }),
        priority: input.priority,
        max_runtime: input.max_runtime_ms.map(pb_duration),
        min_runtime: input.min_runtime_ms.map(pb_duration),
        idempotency_key: input.idempotency_key.clone(),
        labels: input.labels.clone().into_iter().collect(),
        restart_policy: match input.restart_policy {
            None => pb::RestartPolicy::Unspecified,
            Some(d::RestartPolicy::Fail) => pb::RestartPolicy::Fail,
            Some(d::RestartPolicy::Requeue) => pb::RestartPolicy::Requeue,
        } as i32,
    }
}

fn duration_ms(d: prost_types::Duration) -> i64 {
    d.seconds
        .saturating_mul(1000)
        .saturating_add(d.nanos as i64 / 1_000_000)
}

fn pb_duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn spec_to_pb(spec: &d::JobSpec) -> pb::JobSpec {
    let kind = match spec.resources.gpu {
        d::GpuRequest::None => None,
        d::GpuRequest::Whole { count } => Some(pb::gpu_request::Kind::WholeGpus(count as i64)),
        d::GpuRequest::Share { milli, memory_mib } => {
            Some(pb::gpu_request::Kind::Share(pb::GpuShare {
                milli: milli as i64,
                memory_mib: memory_mib as i64,
            }))
        }
    };
    pb::JobSpec {
        name: spec.name.to_string(),
        model: spec
            .model
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone().into_iter().collect(),
        resources: Some(pb::Resources {
            gpu: kind.map(|k| pb::GpuRequest { kind: Some(k) }),
            gpu_classes: spec.resources.gpu_classes.clone(),
            cpu_milli: spec.resources.cpu_milli as i64,
            memory_mib: spec.resources.memory_mib as i64,
        }),
        priority: spec.priority,
        max_runtime: spec.max_runtime_ms.map(|ms| pb_duration(ms as i64)),
        min_runtime: spec.min_runtime_ms.map(|ms| pb_duration(ms as i64)),
        idempotency_key: spec.idempotency_key.clone().unwrap_or_default(),
        labels: spec.labels.clone().into_iter().collect(),
        restart_policy: match spec.restart_policy {
            d::RestartPolicy::Fail => pb::RestartPolicy::Fail,
            d::RestartPolicy::Requeue => pb::RestartPolicy::Requeue,
        } as i32,
    }
}

pub fn transition_to_pb(t: &d::Transition) -> pb::StateTransition {
    pb::StateTransition {
        from: t.from.map(|s| state_to_pb(s) as i32),
        to: state_to_pb(t.to) as i32,
        at: Some(timestamp(t.at)),
        reason: t.reason.clone(),
    }
}

pub fn placement_to_pb(p: &d::Placement) -> pb::Placement {
    pb::Placement {
        node: p.node.clone(),
        gpus: p
            .gpus
            .iter()
            .map(|g| pb::GpuAssignment {
                index: g.index,
                uuid: g.uuid.clone(),
                gpu_class: g.class.clone(),
                milli: g.milli,
                memory_mib: g.memory_mib,
                mig_slice: g.mig_slice,
            })
            .collect(),
    }
}

pub fn job_to_pb(job: &d::Job) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        tenant_id: job.tenant_id.to_string(),
        spec: Some(spec_to_pb(&job.spec)),
        state: state_to_pb(job.state) as i32,
        reason: job.reason.clone(),
        reason_code: job.reason_code.clone(),
        created_at: Some(timestamp(job.created_at)),
        updated_at: Some(timestamp(job.updated_at)),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        exit_code: job.exit_code,
        placement: job.placement.as_ref().map(placement_to_pb),
        history: job.history.iter().map(transition_to_pb).collect(),
        attempts: job.attempts,
        queue_position: None,
    }
}

pub fn isolation_from_pb(value: i32) -> Result<String, FieldError> {
    match pb::IsolationLevel::try_from(value) {
        Ok(pb::IsolationLevel::Unspecified) => Ok(String::new()),
        Ok(pb::IsolationLevel::Exclusive) => Ok("exclusive".into()),
        Ok(pb::IsolationLevel::SharedWithinTenant) => Ok("shared-within-tenant".into()),
        Ok(pb::IsolationLevel::Mig) => Ok("mig".into()),
        Err(_) => Err(FieldError::new(
            "isolation",
            format!("{value} is not an isolation level"),
        )),
    }
}

pub fn isolation_to_pb(i: d::IsolationLevel) -> pb::IsolationLevel {
    match i {
        d::IsolationLevel::Exclusive => pb::IsolationLevel::Exclusive,
        d::IsolationLevel::SharedWithinTenant => pb::IsolationLevel::SharedWithinTenant,
        d::IsolationLevel::Mig => pb::IsolationLevel::Mig,
    }
}

pub fn tenant_to_pb(t: &d::Tenant) -> pb::Tenant {
    pb::Tenant {
        id: t.id.to_string(),
        display_name: t.display_name.clone(),
        quotas: t
            .quotas
            .iter()
            .map(|(c, q)| {
                (
                    c.clone(),
                    pb::Quota {
                        guaranteed: q.guaranteed as i64,
                        limit: q.limit as i64,
                        borrowing_limit: Some(q.borrowing_limit() as i64),
                        lending_limit: q.lending_limit.map(i64::from),
                    },
                )
            })
            .collect(),
        weight: t.weight as i64,
        isolation: isolation_to_pb(t.isolation) as i32,
        created_at: Some(timestamp(t.created_at)),
        suspended: t.suspended.is_some(),
        suspended_reason: t
            .suspended
            .as_ref()
            .map(|s| s.reason.clone())
            .unwrap_or_default(),
        suspended_at: t.suspended.as_ref().map(|s| timestamp(s.at)),
    }
}

pub fn tenant_input(r: pb::CreateTenantRequest) -> Result<d::TenantInput, FieldError> {
    Ok(d::TenantInput {
        id: r.id,
        display_name: r.display_name,
        quotas: r
            .quotas
            .into_iter()
            .map(|(c, q)| (c, quota_input(&q)))
            .collect(),
        weight: r.weight,
        isolation: isolation_from_pb(r.isolation)?,
    })
}

/// A quota as sent: `limit` 0 with a borrowing limit means "not given".
pub fn quota_input(q: &pb::Quota) -> d::tenant::QuotaInput {
    d::tenant::QuotaInput {
        guaranteed: q.guaranteed,
        limit: (q.limit != 0 || q.borrowing_limit.is_none()).then_some(q.limit),
        borrowing_limit: q.borrowing_limit,
        lending_limit: q.lending_limit,
    }
}

pub fn model_to_pb(m: &d::BaseModel) -> pb::Model {
    pb::Model {
        name: m.name.to_string(),
        size_mib: m.size_mib as i64,
        min_gpu_memory_mib: m.min_gpu_memory_mib as i64,
        load_time_ms: m.load_time_ms.map_or(0, |ms| ms as i64),
        registered_at: Some(timestamp(m.registered_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_before_the_epoch_stay_correct() {
        let t = timestamp(d::Timestamp(-1));
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }

    #[test]
    fn proto_specs_become_inputs_with_the_same_field_names() {
        let spec = pb::JobSpec {
            name: "x".into(),
            resources: Some(pb::Resources {
                gpu: Some(pb::GpuRequest {
                    kind: Some(pb::gpu_request::Kind::WholeGpus(-2)),
                }),
                ..Default::default()
            }),
            restart_policy: 9,
            ..Default::default()
        };
        assert_eq!(
            spec_input(spec.clone()).unwrap_err().field,
            "restart_policy"
        );
        let mut ok = spec;
        ok.restart_policy = 2;
        let input = spec_input(ok).unwrap();
        assert_eq!(input.resources.gpu.unwrap().whole_gpus, Some(-2));
        assert_eq!(input.restart_policy, Some(d::RestartPolicy::Requeue));
    }
}
