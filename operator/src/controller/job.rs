//! InferenceJob → a job in the store (the same submit path as the API,
//! keyed by the object's uid), its one Pod, and a status mirrored from the
//! store and the Pod.

use std::sync::Arc;
use std::time::Duration;

use finpool_domain::job::SubmitContext;
use finpool_domain::{Job, JobId, JobState, Name, Timestamp};
use finpool_store::{Change, StoreError};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, MANAGER, apply};
use crate::build::job::{PodInputs, pod, store_input};
use crate::build::{Invalid, JOB_ID_LABEL, PREEMPTED_ANNOTATION, TENANT_LABEL};
use crate::crd::inference_job::{InferenceJobStatus, PreemptionRecord};
use crate::crd::tenant::Isolation;
use crate::crd::{Condition, InferenceJob, Tenant};

pub const FINALIZER: &str = "finpool.io/inference-job";

pub async fn reconcile(job: Arc<InferenceJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let api = Api::<InferenceJob>::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(j) => apply_job(&j, &ctx).await,
            Finalizer::Cleanup(j) => cleanup(&j, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

/// The tenant owning a namespace, from the label the Tenant controller
/// puts on it.
async fn tenant_of(ns: &str, ctx: &Context) -> Result<Name, Error> {
    let namespace = Api::<Namespace>::all(ctx.client.clone())
        .get(ns)
        .await
        .map_err(|e| Error::Dereference(format!("namespace {ns}: {e}")))?;
    let label = namespace
        .labels()
        .get(TENANT_LABEL)
        .cloned()
        .ok_or_else(|| {
            Invalid::new(
                "metadata.namespace",
                format!("{ns} belongs to no tenant (no {TENANT_LABEL} label)"),
            )
        })?;
    Name::parse("metadata.namespace", &label).map_err(|e| Error::Invalid(e.into()))
}

/// Submits the object as a job through the store's submit path (or finds
/// it: the uid is the idempotency key, and a mirrored object names its
/// job).
async fn submit(job: &InferenceJob, tenant: &Name, ctx: &Context) -> Result<Job, Error> {
    if let Some(id) = job.annotations().get(JOB_ID_LABEL) {
        let id = JobId::parse("metadata.annotations", id).map_err(Invalid::from)?;
        return Ok(ctx.store.get_job(id).await?);
    }
    let input = store_input(job)?;
    let tenant_row = match ctx.store.get_tenant(tenant.as_str()).await {
        Ok(t) => t,
        Err(StoreError::NotFound(_)) => {
            return Err(Error::Dereference(format!(
                "tenant {tenant} is not in the store yet"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let models = ctx.store.list_models().await?;
    let inventory = ctx
        .inventory()
        .await
        .map_err(|e| Error::Dereference(format!("nodes: {e}")))?;
    let spec = input
        .validate(&SubmitContext {
            tenant: &tenant_row,
            classes: &inventory.classes,
            models: &models,
            max_gpus_per_node: &inventory.max_gpus_per_node(),
            max_runtime_cap_ms: ctx.max_runtime_cap.as_millis() as u64,
        })
        .map_err(|e| Invalid::new(format!("spec.{}", e.field), e.reason))?;
    let id = JobId::for_idempotency_key(tenant, &input.idempotency_key);
    let (stored, created) = ctx
        .store
        .submit_capped(
            Job::new(id, tenant.clone(), spec, Timestamp::now()),
            Some(ctx.pending_cap),
        )
        .await?;
    if created {
        ctx.event(
            job,
            EventType::Normal,
            "Submitted",
            format!("submitted as job {}", stored.id),
        )
        .await;
    }
    Ok(stored)
}

async fn apply_job(job: &InferenceJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let tenant = match tenant_of(&ns, ctx).await {
        Ok(t) => t,
        Err(e) => return refuse(job, ctx, e).await,
    };
    let mut stored = match submit(job, &tenant, ctx).await {
        Ok(j) => j,
        Err(e @ Error::Invalid(_)) => return refuse(job, ctx, e).await,
        Err(e) => return Err(e),
    };
    if !stored.state.is_terminal() {
        let mig = Api::<Tenant>::all(ctx.client.clone())
            .get_opt(tenant.as_str())
            .await
            .map_err(|e| Error::Dereference(format!("tenant {tenant}: {e}")))?
            .is_some_and(|t| t.spec.isolation == Isolation::Mig);
        let inputs = PodInputs {
            tenant: tenant.clone(),
            job_id: stored.id.to_string(),
            mig,
        };
        let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
        // A Pod's spec is immutable: create it once, never re-apply.
        match pods.get_opt(&job.name_any()).await.map_err(Error::Apply)? {
            None => {
                apply(&pods, &pod(job, &inputs)?).await?;
            }
            Some(live) => {
                // What the kubelet reports becomes the record's state.
                if let Some(change) = pod_change(stored.state, &live) {
                    let to = change.to;
                    stored = match ctx
                        .store
                        .transition(stored.id, Some(stored.state), change)
                        .await
                    {
                        Ok(j) => j,
                        // Moved on meanwhile (cancelled, say): next round.
                        Err(StoreError::Conflict(_)) => ctx.store.get_job(stored.id).await?,
                        Err(e) => return Err(e.into()),
                    };
                    tracing::info!(job = %stored.id, state = ?to, "job state from its pod");
                }
            }
        }
    }
    set_status(job, ctx, status_of(&stored, job)).await?;
    Ok(if stored.state.is_terminal() {
        Action::await_change()
    } else {
        // The store moves on without telling the cluster: look again soon.
        Action::requeue(Duration::from_secs(5))
    })
}

/// An object that cannot become a job says why in its status and an
/// event, and waits for a change.
async fn refuse(job: &InferenceJob, ctx: &Context, e: Error) -> Result<Action, Error> {
    let message = e.to_string();
    ctx.event(job, EventType::Warning, "Refused", message.clone())
        .await;
    let status = InferenceJobStatus {
        phase: Some("Refused".into()),
        reason_code: Some("Invalid".into()),
        message: Some(message.clone()),
        conditions: vec![condition("Submitted", "False", "Invalid", &message, job)],
        observed_generation: job.metadata.generation,
        ..InferenceJobStatus::default()
    };
    set_status(job, ctx, status).await?;
    match e {
        Error::Invalid(_) => Ok(Action::await_change()),
        e => Err(e),
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    job: &InferenceJob,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: super::now_rfc3339(),
        observed_generation: job.metadata.generation,
    }
}

fn phase(state: JobState) -> &'static str {
    match state {
        JobState::Pending => "Pending",
        JobState::Admitted => "Admitted",
        JobState::Running => "Running",
        JobState::Succeeded => "Succeeded",
        JobState::Failed => "Failed",
        JobState::Cancelled => "Cancelled",
        JobState::Preempted => "Preempted",
    }
}

/// The store transition a Pod's phase calls for, if any (pure): an
/// admitted job whose Pod runs is Running; a running job's Pod that ended
/// makes it Succeeded or Failed, with the container's exit code. Binding
/// (Pending → Admitted, with the cards) is the scheduler's to record.
pub fn pod_change(state: JobState, pod: &Pod) -> Option<Change> {
    // An evicted victim's end is a requeue the scheduler records.
    if pod.annotations().contains_key(PREEMPTED_ANNOTATION) {
        return None;
    }
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    let exit_code = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "job")
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    let now = Timestamp::now();
    let mut change = match (state, phase) {
        (JobState::Admitted, "Running") => Change::new(JobState::Running, "pod running", now),
        (JobState::Admitted | JobState::Running, "Succeeded") => {
            Change::new(JobState::Succeeded, "pod succeeded", now)
        }
        (JobState::Admitted | JobState::Running, "Failed") => {
            let why = status.reason.clone().unwrap_or_else(|| match exit_code {
                Some(code) => format!("exit code {code}"),
                None => "pod failed".into(),
            });
            Change::new(JobState::Failed, why, now)
        }
        _ => return None,
    };
    change.exit_code = exit_code;
    Some(change)
}

/// The status an object shows for its stored job (pure).
pub fn status_of(stored: &Job, job: &InferenceJob) -> InferenceJobStatus {
    let placement = stored.placement.as_ref();
    let gpus = placement.map(|p| {
        p.gpus
            .iter()
            .map(|g| {
                if g.milli >= finpool_domain::MILLI_PER_GPU {
                    g.index.to_string()
                } else {
                    format!("{}:{}", g.index, g.milli)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    let milli: u64 = placement.map_or(0, |p| p.gpus.iter().map(|g| g.milli as u64).sum());
    let ran_ms = match (stored.started_at, stored.finished_at) {
        (Some(s), Some(f)) => f.millis_since(s),
        (Some(s), None) if stored.state == JobState::Running => Timestamp::now().millis_since(s),
        _ => 0,
    };
    let admitted = !matches!(stored.state, JobState::Pending | JobState::Preempted);
    let mut conditions = vec![condition(
        "Admitted",
        if admitted { "True" } else { "False" },
        if admitted {
            "Admitted"
        } else if stored.reason_code.is_empty() {
            "Queued"
        } else {
            &stored.reason_code
        },
        &stored.reason,
        job,
    )];
    if stored.state.is_terminal() {
        conditions.push(condition(
            "Complete",
            "True",
            phase(stored.state),
            &stored.reason,
            job,
        ));
    }
    InferenceJobStatus {
        job_id: Some(stored.id.to_string()),
        phase: Some(phase(stored.state).into()),
        reason_code: (!stored.reason_code.is_empty()).then(|| stored.reason_code.clone()),
        message: Some(stored.reason.clone()),
        conditions,
        node: placement.map(|p| p.node.clone()),
        gpus,
        submitted_at: Some(stored.created_at.to_rfc3339()),
        started_at: stored.started_at.map(|t| t.to_rfc3339()),
        finished_at: stored.finished_at.map(|t| t.to_rfc3339()),
        gpu_seconds: (milli * ran_ms) as f64 / 1_000_000.0,
        preemptions: stored
            .history
            .iter()
            .filter(|t| t.to == JobState::Preempted)
            .map(|t| PreemptionRecord {
                at: t.at.to_rfc3339(),
                reason: t.reason.clone(),
            })
            .collect(),
        observed_generation: job.metadata.generation,
    }
}

async fn set_status(
    job: &InferenceJob,
    ctx: &Context,
    status: InferenceJobStatus,
) -> Result<(), Error> {
    let api =
        Api::<InferenceJob>::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": InferenceJob::api_version(&()),
        "kind": InferenceJob::kind(&()),
        "status": status,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(Error::Status)
}

/// Deleting the object cancels its job; the record stays in the store,
/// and the Pod goes with its owner.
async fn cleanup(job: &InferenceJob, ctx: &Context) -> Result<Action, Error> {
    let Some(id) = job
        .status
        .as_ref()
        .and_then(|s| s.job_id.as_deref())
        .and_then(|id| JobId::parse("status.jobId", id).ok())
    else {
        return Ok(Action::await_change());
    };
    match ctx
        .store
        .request_cancel(id, "its InferenceJob was deleted", Timestamp::now())
        .await
    {
        Ok(_) | Err(StoreError::NotFound(_)) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn pod(phase: &str, exit: Option<i32>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: exit.map(|code| {
                    vec![ContainerStatus {
                        name: "job".into(),
                        state: Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: code,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn the_pods_phase_moves_the_record_forward_only() {
        let run = pod_change(JobState::Admitted, &pod("Running", None)).unwrap();
        assert_eq!(run.to, JobState::Running);
        let done = pod_change(JobState::Running, &pod("Succeeded", Some(0))).unwrap();
        assert_eq!((done.to, done.exit_code), (JobState::Succeeded, Some(0)));
        let failed = pod_change(JobState::Running, &pod("Failed", Some(3))).unwrap();
        assert_eq!((failed.to, failed.exit_code), (JobState::Failed, Some(3)));
        assert_eq!(failed.reason, "exit code 3");
        // Binding is the scheduler's; an ended record stays ended.
        assert!(pod_change(JobState::Pending, &pod("Running", None)).is_none());
        assert!(pod_change(JobState::Cancelled, &pod("Failed", Some(137))).is_none());
        assert!(pod_change(JobState::Running, &pod("Running", None)).is_none());
        // A preempted pod's end is the scheduler's to record.
        let mut evicted = pod("Failed", Some(143));
        evicted.metadata.annotations =
            Some([(PREEMPTED_ANNOTATION.to_owned(), "reclaim".to_owned())].into());
        assert!(pod_change(JobState::Running, &evicted).is_none());
    }
}
