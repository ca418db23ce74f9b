//! The controllers: each reconcile is dereference → validate (pure) →
//! build (pure, [`crate::build`]) → apply (server-side apply with one
//! field manager) → status, with its own error type. Events say what
//! happened on the object; finalizers clean up in the store.

pub mod job;
pub mod mirror;
pub mod model;
pub mod tenant;

use std::sync::Arc;
use std::time::Duration;

use finpool_store::{Store, StoreError};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::build::{Install, Invalid};

/// The one field manager of everything the operator applies.
pub const MANAGER: &str = "finpool-operator";

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub store: Store,
    pub install: Install,
    pub recorder: Recorder,
    /// The longest max runtime a job may ask for (as the API's).
    pub max_runtime_cap: Duration,
    /// The most jobs a tenant may have pending (as the API's).
    pub pending_cap: u32,
}

impl Context {
    pub fn new(client: Client, store: Store, install: Install) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Arc::new(Self {
            client,
            store,
            install,
            recorder,
            max_runtime_cap: Duration::from_secs(7 * 24 * 3600),
            pending_cap: 10_000,
        })
    }

    /// The pool as the cluster's nodes describe it.
    pub async fn inventory(&self) -> Result<finpool_domain::Inventory, kube::Error> {
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(crate::inventory::from_nodes(&nodes.items))
    }

    /// Publishes an event on `obj`; a failure to record one is logged, not
    /// fatal (the reconcile did its work).
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "could not record an event");
        }
    }
}

/// Why a reconcile failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Looking up what the object refers to.
    #[error("dereference: {0}")]
    Dereference(String),
    /// The object is invalid; retrying will not help until it changes.
    #[error("invalid: {0}")]
    Invalid(#[from] Invalid),
    /// Applying the built objects.
    #[error("apply: {0}")]
    Apply(#[source] kube::Error),
    /// The system of record.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Writing the status.
    #[error("status: {0}")]
    Status(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// Requeue soon after a failure; an invalid object waits for its change.
pub fn error_policy<K>(_obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        Error::Invalid(_) => Action::requeue(Duration::from_secs(300)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Server-side applies `obj` through `api`, forcing ownership of the
/// fields this manager sets.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(Error::Apply)
}

/// The time now, RFC 3339 (for status conditions).
pub fn now_rfc3339() -> String {
    finpool_domain::Timestamp::now().to_rfc3339()
}

/// Runs every controller and the API mirror until one stops, as the
/// leader of `lease` in `namespace`; loses leadership → returns, and the
/// process exits (as kube-scheduler does), so two leaders never overlap.
pub async fn run(ctx: Arc<Context>, namespace: &str, identity: &str) -> anyhow::Result<()> {
    use futures::StreamExt;
    use k8s_openapi::api::batch::v1::Job as BatchJob;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::runtime::{Controller, watcher};

    let lease =
        kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), "finpool-operator")
            .with_namespace(namespace)
            .with_identity(identity)
            .with_field_manager(MANAGER)
            .build()
            .await?;
    let (mut leading, lease_task) = lease.watch().await;
    while !*leading.borrow_and_update() {
        tracing::info!(identity, "waiting to lead");
        leading.changed().await?;
    }
    tracing::info!(identity, "leading: controllers start");
    let client = ctx.client.clone();
    let tenants = Controller::new(
        Api::<crate::crd::Tenant>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(tenant::reconcile, error_policy, ctx.clone())
    .for_each(|r| async move { log("Tenant", r) });
    let jobs = Controller::new(
        Api::<crate::crd::InferenceJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(crate::build::JOB_ID_LABEL),
    )
    .run(job::reconcile, error_policy, ctx.clone())
    .for_each(|r| async move { log("InferenceJob", r) });
    let models = Controller::new(
        Api::<crate::crd::BaseModel>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<BatchJob>::namespaced(client.clone(), &ctx.install.namespace),
        watcher::Config::default(),
    )
    .run(model::reconcile, error_policy, ctx.clone())
    .for_each(|r| async move { log("BaseModel", r) });
    let lost = async move {
        while leading.changed().await.is_ok() {
            if !*leading.borrow() {
                break;
            }
        }
    };
    tokio::select! {
        _ = tenants => anyhow::bail!("the Tenant controller stopped"),
        _ = jobs => anyhow::bail!("the InferenceJob controller stopped"),
        _ = models => anyhow::bail!("the BaseModel controller stopped"),
        _ = mirror::run(ctx.clone()) => anyhow::bail!("the API mirror stopped"),
        _ = lost => {
            lease_task.abort();
            anyhow::bail!("lost the finpool-operator lease; exiting so that one leader acts")
        }
    }
}

fn log<T: std::fmt::Debug, E: std::fmt::Display>(kind: &str, result: Result<T, E>) {
    match result {
        Ok(object) => tracing::debug!(kind, ?object, "reconciled"),
        Err(e) => tracing::warn!(kind, error = %e, "reconcile failed"),
    }
}
