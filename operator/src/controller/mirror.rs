//! Jobs submitted over gRPC or REST appear as InferenceJobs in their
//! tenant's first namespace, so kubectl shows the same jobs as the API.
//! The store is the system of record; this is a one-way copy of what it
//! holds, made idempotent by the job id in the object's name and
//! annotation.

use std::collections::BTreeMap;
use std::time::Duration;

use finpool_domain::Job;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use super::{Context, Error};
use crate::build::{JOB_ID_LABEL, MANAGED_BY, TENANT_LABEL};
use crate::crd::inference_job::{
    GpuRequest, GpuShare, InferenceJobSpec, JobResources, RestartPolicy,
};
use crate::crd::{InferenceJob, Tenant};

/// How often the store is compared with the cluster.
pub const INTERVAL: Duration = Duration::from_secs(3);

/// The object name for a job the API took (unique: the id's first part).
pub fn object_name(job: &Job) -> String {
    let id = job.id.to_string();
    let short = &id[..8];
    let mut name = job.spec.name.to_string();
    name.truncate(63 - 9);
    format!("{name}-{short}")
}

/// The InferenceJob mirroring a job submitted through the API (pure).
pub fn mirror_of(job: &Job, namespace: &str, image: &str) -> InferenceJob {
    let spec = &job.spec;
    let gpu = match spec.resources.gpu {
        finpool_domain::GpuRequest::Whole { count } => GpuRequest {
            whole_gpus: Some(count as i64),
            share: None,
        },
        finpool_domain::GpuRequest::Share { milli, memory_mib } => GpuRequest {
            whole_gpus: None,
            share: Some(GpuShare {
                milli: milli as i64,
                memory_mib: memory_mib as i64,
            }),
        },
        // A CPU-only job: a zero share would fail the schema, so none.
        finpool_domain::GpuRequest::None => GpuRequest {
            whole_gpus: None,
            share: None,
        },
    };
    let mut object = InferenceJob::new(
        &object_name(job),
        InferenceJobSpec {
            image: image.to_owned(),
            command: spec.command.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            model: spec.model.as_ref().map(|m| m.to_string()),
            resources: JobResources {
                gpu,
                gpu_classes: spec.resources.gpu_classes.clone(),
                cpu_milli: spec.resources.cpu_milli as i64,
                memory_mib: spec.resources.memory_mib as i64,
            },
            priority: spec.priority,
            max_runtime_seconds: spec.max_runtime_ms.map(|ms| (ms / 1000).max(1) as i64),
            min_runtime_seconds: spec.min_runtime_ms.map(|ms| (ms / 1000) as i64),
            restart_policy: match spec.restart_policy {
                finpool_domain::RestartPolicy::Fail => RestartPolicy::Fail,
                finpool_domain::RestartPolicy::Requeue => RestartPolicy::Requeue,
            },
        },
    );
    object.metadata.namespace = Some(namespace.to_owned());
    object.metadata.labels = Some(BTreeMap::from([
        (TENANT_LABEL.to_owned(), job.tenant_id.to_string()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ]));
    object.metadata.annotations = Some(BTreeMap::from([(
        JOB_ID_LABEL.to_owned(),
        job.id.to_string(),
    )]));
    object
}

/// One pass: every active job the API took that has no object yet gets
/// one. Jobs from InferenceJobs carry their object's uid in a label.
pub async fn sync_once(ctx: &Context) -> Result<usize, Error> {
    let mut created = 0;
    for job in ctx.store.active_jobs().await? {
        if job.spec.labels.contains_key("k8s-uid") {
            continue;
        }
        let Some(tenant) = Api::<Tenant>::all(ctx.client.clone())
            .get_opt(job.tenant_id.as_str())
            .await
            .map_err(|e| Error::Dereference(format!("tenant {}: {e}", job.tenant_id)))?
        else {
            continue;
        };
        let Some(namespace) = tenant.spec.namespaces.first() else {
            continue;
        };
        let api = Api::<InferenceJob>::namespaced(ctx.client.clone(), namespace);
        let object = mirror_of(&job, namespace, &ctx.install.default_job_image);
        if api
            .get_opt(&object.name_any())
            .await
            .map_err(Error::Apply)?
            .is_some()
        {
            continue;
        }
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => created += 1,
            // Another replica (or a previous pass) made it meanwhile.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::Apply(e)),
        }
    }
    Ok(created)
}

/// Mirrors until the task is dropped.
pub async fn run(ctx: std::sync::Arc<Context>) {
    loop {
        match sync_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(created = n, "jobs from the API mirrored as InferenceJobs"),
            Err(e) => tracing::warn!(error = %e, "mirroring API jobs failed; retrying"),
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
