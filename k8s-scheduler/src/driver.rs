//! The in-cluster driver: watchers keep the index warm on every replica;
//! the leader alone runs the shared cycle, one at a time, so no card is
//! ever given twice.
//!
//! - Nodes come through a watcher; a change that matters for placement
//!   re-queues every pending pod (the Controller's `reconcile_all_on`).
//! - Pending pods (`spec.schedulerName=finpool-scheduler,spec.nodeName=`)
//!   drive a kube-runtime Controller whose reconcile files the pod in the
//!   index and wakes the cycle.
//! - finpool's bound pods come through a watcher, so that a victim's end
//!   and a lost pod are seen.
//! - Cycles run on a wake-up (coalesced) and at least every idle tick.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use finpool_domain::Timestamp;
use finpool_operator::build::{JOB_ID_LABEL, SCHEDULER_NAME};
use finpool_ports::Shell;
use finpool_scheduler::{CycleConfig, Policy};
use finpool_store::Store;
use finpool_telemetry::{Metrics, Readiness};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{Notify, watch};

use crate::index::ClusterIndex;
use crate::ports::{IndexInventory, PodJobs, PodRuntime, SharedIndex};

/// The field manager and event reporter of the scheduler.
pub const MANAGER: &str = "finpool-scheduler";

/// Pods waiting for this scheduler.
pub fn pending_selector() -> String {
    format!("spec.schedulerName={SCHEDULER_NAME},spec.nodeName=")
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub cycle: CycleConfig,
    /// The placement policy (built afresh each time this replica leads).
    pub policy: fn() -> Policy,
    /// The longest the leader waits between cycles with nothing new.
    pub idle_tick: Duration,
    /// The event reporter's instance (the pod name).
    pub identity: String,
}

/// What reconciles share.
struct Ctx {
    index: SharedIndex,
    wake: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

/// Files a pending pod in the index and wakes the cycle. The decision is
/// the cycle's: one reconcile per pod would decide pods one by one.
async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, Never> {
    if ctx.index.lock().expect("index lock").apply_pod(&pod) {
        ctx.wake.notify_one();
    }
    Ok(Action::await_change())
}

fn error_policy(_pod: Arc<Pod>, _error: &Never, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_secs(5))
}

/// Runs the watchers and, while `leading` is true, the cycle; returns
/// when a watcher ends for good (never, in practice) or `shutdown` fires.
pub async fn run(
    client: kube::Client,
    store: Store,
    config: DriverConfig,
    metrics: Metrics,
    readiness: Readiness,
    leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let index: SharedIndex = Arc::new(Mutex::new(ClusterIndex::new()));
    let wake = Arc::new(Notify::new());
    let (synced_tx, synced_rx) = watch::channel(0u8);
    let synced_tx = Arc::new(synced_tx);
    // Node changes that matter re-queue every pending pod.
    let (requeue_tx, requeue_rx) = futures::channel::mpsc::channel::<()>(1);

    let nodes = {
        let index = index.clone();
        let wake = wake.clone();
        let synced = synced_tx.clone();
        let mut requeue = requeue_tx.clone();
        let mut relist: Vec<Node> = Vec::new();
        watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .for_each(move |event| {
                let changed = match event {
                    Ok(Event::Init) => {
                        relist.clear();
                        false
                    }
                    Ok(Event::InitApply(n)) => {
                        relist.push(n);
                        false
                    }
                    Ok(Event::InitDone) => {
                        index
                            .lock()
                            .expect("index lock")
                            .reset_nodes(&std::mem::take(&mut relist));
                        synced.send_modify(|s| *s |= 1);
                        true
                    }
                    Ok(Event::Apply(n)) => index.lock().expect("index lock").apply_node(&n),
                    Ok(Event::Delete(n)) => index
                        .lock()
                        .expect("index lock")
                        .delete_node(&kube::ResourceExt::name_any(&n)),
                    Err(e) => {
                        tracing::warn!(error = %e, "node watch failed; retrying");
                        false
                    }
                };
                if changed {
                    // Full means a re-queue is already on its way.
                    let _ = requeue.try_send(());
                    wake.notify_one();
                }
                futures::future::ready(())
            })
    };

    let bound = {
        let index = index.clone();
        let wake = wake.clone();
        let synced = synced_tx.clone();
        let mut seen: HashSet<String> = HashSet::new();
        let config = watcher::Config::default()
            .labels(JOB_ID_LABEL)
            .fields("spec.nodeName!=");
        watcher::watcher(Api::<Pod>::all(client.clone()), config)
            .default_backoff()
            .for_each(move |event| {
                let mut index = index.lock().expect("index lock");
                match event {
                    Ok(Event::Init) => seen.clear(),
                    Ok(Event::InitApply(p)) => {
                        if let Some(uid) = &p.metadata.uid {
                            seen.insert(uid.clone());
                        }
                        index.apply_pod(&p);
                    }
                    Ok(Event::InitDone) => {
                        index.retain_bound(&seen);
                        synced.send_modify(|s| *s |= 2);
                        wake.notify_one();
                    }
                    Ok(Event::Apply(p)) => {
                        index.apply_pod(&p);
                    }
                    Ok(Event::Delete(p)) => {
                        index.delete_pod(&p);
                        // A victim gone frees its cards.
                        wake.notify_one();
                    }
                    Err(e) => tracing::warn!(error = %e, "bound pod watch failed; retrying"),
                }
                futures::future::ready(())
            })
    };

    let pending = {
        let (reader, writer) = reflector::store::<Pod>();
        let index_for_deletes = index.clone();
        let synced = synced_tx.clone();
        let stream = watcher::watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&pending_selector()),
        )
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| match event {
            // Bound (it left the selector) or deleted: the bound watch or
            // nothing takes it from here.
            Event::Delete(p) => index_for_deletes
                .lock()
                .expect("index lock")
                .delete_pending(p),
            Event::InitDone => synced.send_modify(|s| *s |= 4),
            _ => {}
        })
        .touched_objects();
        let ctx = Arc::new(Ctx {
            index: index.clone(),
            wake: wake.clone(),
        });
        Controller::for_stream(stream, reader)
            .reconcile_all_on(requeue_rx)
            .run(reconcile, error_policy, ctx)
            .for_each(|r| {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "pending pod reconcile");
                }
                futures::future::ready(())
            })
    };

    let ready = {
        let readiness = readiness.clone();
        let mut synced_rx = synced_rx.clone();
        async move {
            while *synced_rx.borrow_and_update() != 7 {
                if synced_rx.changed().await.is_err() {
                    return;
                }
            }
            readiness.set(true);
            tracing::info!("caches synced: nodes, pending and bound pods");
            futures::future::pending::<()>().await
        }
    };

    let cycles = lead(
        client.clone(),
        store,
        config,
        metrics,
        index.clone(),
        wake.clone(),
        leading,
        synced_rx,
    );

    tokio::select! {
        _ = nodes => anyhow::bail!("the node watch ended"),
        _ = bound => anyhow::bail!("the bound pod watch ended"),
        _ = pending => anyhow::bail!("the pending pod controller ended"),
        _ = ready => anyhow::bail!("readiness ended"),
        r = cycles => r,
        _ = shutdown.changed() => Ok(()),
    }
}

/// While leading, and once the caches are synced, runs cycles. Each time
/// it starts leading, the cycle goes on from the memory the store holds:
/// the last leader's.
#[allow(clippy::too_many_arguments)]
async fn lead(
    client: kube::Client,
    store: Store,
    config: DriverConfig,
    metrics: Metrics,
    index: SharedIndex,
    wake: Arc<Notify>,
    mut leading: watch::Receiver<bool>,
    mut synced: watch::Receiver<u8>,
) -> anyhow::Result<()> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(config.identity.clone()),
        },
    );
    loop {
        while !*leading.borrow_and_update() {
            tracing::info!("standing by: another replica leads; caches stay warm");
            leading.changed().await?;
        }
        while *synced.borrow_and_update() != 7 {
            synced.changed().await?;
        }
        tracing::info!("leading: scheduling cycles start");
        let runtime = PodRuntime::new(
            client.clone(),
            store.clone(),
            index.clone(),
            recorder.clone(),
            metrics.clone(),
        );
        let mut shell = match Shell::new(
            config.cycle.clone(),
            (config.policy)(),
            PodJobs::new(store.clone(), client.clone(), index.clone()),
            runtime,
            IndexInventory(index.clone()),
        )
        .await
        {
            Ok(s) => s.with_metrics(metrics.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "could not load the cycle's memory; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        while *leading.borrow() {
            match shell.run_cycle(Timestamp::now()).await {
                Ok(report) if report.admitted + report.preempted > 0 => tracing::info!(
                    queued = report.queued,
                    admitted = report.admitted,
                    preempted = report.preempted,
                    started = report.started,
                    "scheduling cycle"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scheduling cycle failed; retrying"),
            }
            shell.runtime.follow_up().await;
            let strays: Vec<_> = index
                .lock()
                .expect("index lock")
                .strays()
                .map(|p| {
                    (
                        p.clone(),
                        "NotAFinpoolJob",
                        format!(
                            "the pod names {SCHEDULER_NAME} but carries no {JOB_ID_LABEL}; \
                             submit it as an InferenceJob"
                        ),
                    )
                })
                .collect();
            shell.source.tell(strays).await;
            tokio::select! {
                _ = wake.notified() => {
                    // Let a burst land (200 pods created at once), then
                    // take it in one cycle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep(config.idle_tick) => {}
                _ = leading.changed() => {}
            }
        }
        tracing::warn!("lost the lease: no more binding until leading again");
    }
}

/// Leadership from a Lease (kube-lease-manager); `true` while this
/// replica holds it.
pub async fn lease(
    client: kube::Client,
    namespace: &str,
    identity: &str,
) -> anyhow::Result<watch::Receiver<bool>> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, MANAGER)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_field_manager(MANAGER)
        .build()
        .await?;
    let (leading, task) = manager.watch().await;
    tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::error!(error = %e, "the lease manager stopped");
        }
    });
    Ok(leading)
}
