//! Tenant → its fenced namespaces and the store's tenant row.

use std::sync::Arc;
use std::time::Duration;

use finpool_domain::{Name, Suspension, Timestamp};
use finpool_store::StoreError;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, ResourceQuota,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, MANAGER, apply, now_rfc3339};
use crate::build::tenant::{self as build, TenantObjects};
use crate::crd::{Condition, Tenant};

pub const FINALIZER: &str = "finpool.io/tenant";

pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = Api::<Tenant>::all(ctx.client.clone());
    finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(t) => apply_tenant(&t, &ctx).await,
            Finalizer::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

async fn apply_tenant(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    // Dereference: who holds the namespaces now.
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    let mut existing = Vec::new();
    for ns in &tenant.spec.namespaces {
        let live = namespaces
            .get_opt(ns)
            .await
            .map_err(|e| Error::Dereference(format!("namespace {ns}: {e}")))?;
        existing.push(live.map(|n| n.labels().get(crate::build::TENANT_LABEL).cloned()));
    }
    // Validate (pure).
    if let Err(e) = build::validate(tenant).and_then(|()| build::check_ownership(tenant, &existing))
    {
        ctx.event(tenant, EventType::Warning, "Invalid", e.to_string())
            .await;
        set_status(tenant, ctx, "False", "Invalid", &e.to_string()).await?;
        return Err(e.into());
    }
    // Build (pure), then apply.
    let objects = build::build(tenant, &ctx.install);
    apply_objects(&objects, ctx).await?;
    // The system of record.
    sync_store(tenant, ctx).await?;
    set_status(
        tenant,
        ctx,
        "True",
        "Fenced",
        &format!(
            "{} namespace(s) fenced: quota, limits, default-deny network, tenant role",
            objects.namespaces.len()
        ),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Applies every object, namespaces first (the rest live in them).
pub async fn apply_objects(objects: &TenantObjects, ctx: &Context) -> Result<(), Error> {
    let client = &ctx.client;
    for ns in &objects.namespaces {
        apply(&Api::<Namespace>::all(client.clone()), ns).await?;
    }
    for pv in &objects.volumes {
        apply(&Api::<PersistentVolume>::all(client.clone()), pv).await?;
    }
    macro_rules! namespaced {
        ($kind:ty, $items:expr) => {
            for obj in $items {
                let ns = obj.namespace().unwrap_or_default();
                apply(&Api::<$kind>::namespaced(client.clone(), &ns), obj).await?;
            }
        };
    }
    namespaced!(ResourceQuota, &objects.quotas);
    namespaced!(LimitRange, &objects.limit_ranges);
    namespaced!(NetworkPolicy, &objects.network_policies);
    namespaced!(RoleBinding, &objects.role_bindings);
    namespaced!(PersistentVolumeClaim, &objects.claims);
    Ok(())
}

/// Creates or updates the store's tenant: quotas per class, and the
/// suspension (which the API enforces on tokens, the scheduler on jobs).
async fn sync_store(tenant: &Tenant, ctx: &Context) -> Result<(), Error> {
    let input = build::store_input(tenant)?;
    let classes: Vec<String> = tenant
        .spec
        .quotas
        .iter()
        .map(|q| q.gpu_class.clone())
        .collect();
    let now = Timestamp::now();
    let wanted = input
        .validate(&classes, now)
        .map_err(crate::build::Invalid::from)?;
    match ctx.store.create_tenant(&wanted).await {
        Ok(_) => {}
        Err(StoreError::AlreadyExists(_)) => {
            for (class, quota) in &wanted.quotas {
                ctx.store.set_quota(&wanted.id, class, *quota, now).await?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    let suspension = tenant.spec.suspended.then(|| Suspension {
        reason: "suspended in its Tenant object".into(),
        at: now,
    });
    ctx.store
        .set_suspension(&wanted.id, suspension.as_ref(), now)
        .await?;
    Ok(())
}

/// On deletion the store keeps the tenant's records (jobs, usage, audit)
/// and suspends it, so nothing new runs; its namespaces go with the
/// object (owner references).
async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let id =
        Name::parse("metadata.name", &tenant.name_any()).map_err(crate::build::Invalid::from)?;
    let suspension = Suspension {
        reason: "its Tenant object was deleted".into(),
        at: Timestamp::now(),
    };
    match ctx
        .store
        .set_suspension(&id, Some(&suspension), Timestamp::now())
        .await
    {
        Ok(_) | Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    ctx.event(
        tenant,
        EventType::Normal,
        "Suspended",
        "tenant deleted: suspended in the store, records kept".into(),
    )
    .await;
    Ok(Action::await_change())
}

async fn set_status(
    tenant: &Tenant,
    ctx: &Context,
    ready: &str,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let api = Api::<Tenant>::all(ctx.client.clone());
    let status = json!({
        "apiVersion": Tenant::api_version(&()),
        "kind": Tenant::kind(&()),
        "status": {
            "conditions": [Condition {
                type_: "Ready".into(),
                status: ready.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: now_rfc3339(),
                observed_generation: tenant.metadata.generation,
            }],
            "namespaces": tenant.spec.namespaces,
            "observedGeneration": tenant.metadata.generation,
        }
    });
    api.patch_status(
        &tenant.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .map(drop)
    .map_err(Error::Status)
}
