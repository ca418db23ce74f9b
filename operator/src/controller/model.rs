//! BaseModel → the store's model row and a pre-cache Job per target node;
//! status lists the nodes where it is ready.

use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{BaseModelInput, Timestamp};
use finpool_store::StoreError;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, MANAGER, apply};
use crate::build::Invalid;
use crate::build::model::{MODEL_LABEL, NODE_LABEL, precache_jobs};
use crate::crd::BaseModel;

pub async fn reconcile(model: Arc<BaseModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = model.name_any();
    // The store's row: what the submit path checks jobs against.
    let row = BaseModelInput {
        name: name.clone(),
        size_mib: model.spec.size_mib,
        min_gpu_memory_mib: model.spec.min_gpu_memory_mib,
        load_time_ms: model
            .spec
            .load_time_seconds
            .map_or(0, |s| s.saturating_mul(1000)),
    }
    .validate(Timestamp::now())
    .map_err(|e| Invalid::new(format!("spec.{}", e.field), e.reason))?;
    match ctx.store.register_model(&row).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ctx.install.namespace);
    for job in precache_jobs(&model, &ctx.install) {
        if jobs
            .get_opt(&job.name_any())
            .await
            .map_err(Error::Apply)?
            .is_none()
        {
            apply(&jobs, &job).await?;
        }
    }
    let ready = if model.spec.source.host_path.is_some() {
        model.spec.precache_nodes.clone()
    } else {
        let done = jobs
            .list(&ListParams::default().labels(&format!("{MODEL_LABEL}={name}")))
            .await
            .map_err(Error::Apply)?;
        let mut nodes: Vec<String> = done
            .items
            .iter()
            .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
            .filter_map(|j| j.labels().get(NODE_LABEL).cloned())
            .collect();
        nodes.sort();
        nodes
    };
    let all_ready = ready.len() == model.spec.precache_nodes.len();
    let status = json!({
        "apiVersion": BaseModel::api_version(&()),
        "kind": BaseModel::kind(&()),
        "status": {
            "readyNodes": ready,
            "conditions": [{
                "type": "Ready",
                "status": if all_ready { "True" } else { "False" },
                "reason": if all_ready { "Cached" } else { "Caching" },
                "message": format!("ready on {} of {} nodes", ready.len(), model.spec.precache_nodes.len()),
                "lastTransitionTime": super::now_rfc3339(),
            }],
        }
    });
    Api::<BaseModel>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .map_err(Error::Status)?;
    Ok(Action::requeue(Duration::from_secs(if all_ready {
        600
    } else {
        10
    })))
}
