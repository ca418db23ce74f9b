//! The shared cycle's ports over Kubernetes. Jobs, tenants and the cycle's
//! memory come from the store, exactly as in standalone mode ([`StoreJobs`]);
//! the cluster adds where they run ([`PodRuntime`]: bind, evict), the pool
//! ([`IndexInventory`]: nodes from the index), and the pods' own account of
//! why they wait ([`PodJobs`]: `PodScheduled=False`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use finpool_domain::{Inventory, Job, JobId, JobState, RestartPolicy, Timestamp};
use finpool_ports::{InventorySource, JobSource, JobView, PortError, Runtime};
use finpool_scheduler::{Admission, Stop, WaitReason};
use finpool_store::{Change, Store, StoreError, StoreJobs};
use finpool_telemetry::Metrics;
use futures::StreamExt;
use kube::runtime::events::{Event, EventType, Recorder};

use crate::actions::{self, ActionError};
use crate::index::{ClusterIndex, PodRef};

pub type SharedIndex = Arc<Mutex<ClusterIndex>>;

/// How many API writes run at once (status patches, say).
const CONCURRENT_WRITES: usize = 16;

/// The pool's nodes, as the index last assembled them.
#[derive(Clone)]
pub struct IndexInventory(pub SharedIndex);

impl InventorySource for IndexInventory {
    fn inventory(&self) -> Arc<Inventory> {
        self.0.lock().expect("index lock").inventory()
    }
}

/// The store's jobs; a waiting job's pod also says why it waits, once per
/// change of reason.
pub struct PodJobs {
    pub store: StoreJobs,
    client: kube::Client,
    index: SharedIndex,
    /// The message each waiting pod (by uid) last showed.
    told: HashMap<String, String>,
}

impl PodJobs {
    pub fn new(store: Store, client: kube::Client, index: SharedIndex) -> Self {
        Self {
            store: StoreJobs::new(store),
            client,
            index,
            told: HashMap::new(),
        }
    }

    /// Marks pods as unschedulable with `code: text`, skipping those that
    /// already say so.
    pub async fn tell(&mut self, pods: Vec<(PodRef, &'static str, String)>) {
        let fresh: Vec<_> = pods
            .into_iter()
            .filter(|(pod, code, text)| {
                self.told.get(&pod.uid) != Some(&actions::condition_message(code, text))
            })
            .collect();
        let mut writes = Vec::with_capacity(fresh.len());
        for (pod, code, text) in fresh {
            let client = self.client.clone();
            writes.push(async move {
                let r = actions::mark_unschedulable(&client, &pod, code, &text).await;
                (pod, actions::condition_message(code, &text), r)
            });
        }
        let results: Vec<_> = futures::stream::iter(writes)
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for (pod, message, result) in results {
            match result {
                Ok(()) => {
                    self.told.insert(pod.uid, message);
                }
                Err(ActionError::Gone(_)) => {
                    self.told.remove(&pod.uid);
                }
                Err(e) => tracing::warn!(error = %e, "could not mark the pod unschedulable"),
            }
        }
    }
}

#[async_trait::async_trait]
impl JobSource for PodJobs {
    type Job = Job;

    async fn load(&mut self) -> Result<JobView<Job>, PortError> {
        self.store.load().await
    }

    async fn admit(
        &mut self,
        admissions: &[Admission],
        now: Timestamp,
    ) -> Result<Vec<(JobId, Job)>, PortError> {
        self.store.admit(admissions, now).await
    }

    async fn set_waiting(&mut self, reasons: &[(JobId, WaitReason)]) -> Result<(), PortError> {
        self.store.set_waiting(reasons).await?;
        let pods: Vec<_> = {
            let index = self.index.lock().expect("index lock");
            reasons
                .iter()
                .filter_map(|(job, reason)| {
                    let pod = index.pending_pod(*job)?.clone();
                    Some((pod, reason.code(), reason.to_string()))
                })
                .collect()
        };
        self.tell(pods).await;
        Ok(())
    }

    async fn load_memory(&mut self) -> Result<Option<String>, PortError> {
        self.store.load_memory().await
    }

    async fn save_memory(&mut self, memory: &str) -> Result<(), PortError> {
        self.store.save_memory(memory).await
    }
}

/// An eviction under way: sent, or to send again (a disruption budget
/// said not yet).
#[derive(Debug, Clone)]
struct Eviction {
    pod: Option<PodRef>,
    reason: String,
    grace_seconds: u32,
    sent: bool,
}

/// Jobs run as pods: starting one binds its pod, stopping one evicts it.
pub struct PodRuntime {
    client: kube::Client,
    store: Store,
    index: SharedIndex,
    recorder: Recorder,
    metrics: Metrics,
    evictions: HashMap<JobId, Eviction>,
}

impl PodRuntime {
    pub fn new(
        client: kube::Client,
        store: Store,
        index: SharedIndex,
        recorder: Recorder,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            store,
            index,
            recorder,
            metrics,
            evictions: HashMap::new(),
        }
    }

    async fn event(&self, pod: &PodRef, type_: EventType, reason: &str, note: String) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Scheduling".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, reason, "could not record an event");
        }
    }

    async fn send_eviction(&mut self, job: JobId) {
        let Some(ev) = self.evictions.get(&job).cloned() else {
            return;
        };
        let Some(pod) = ev.pod.clone() else {
            return;
        };
        match actions::evict(&self.client, &pod, &ev.reason, ev.grace_seconds).await {
            Ok(()) => {
                self.event(&pod, EventType::Normal, "Preempted", ev.reason.clone())
                    .await;
                if let Some(e) = self.evictions.get_mut(&job) {
                    e.sent = true;
                }
            }
            // Gone already: settled when the index sees it go (or now, if
            // it never had it).
            Err(ActionError::Gone(_)) => {
                let placed = self
                    .index
                    .lock()
                    .expect("index lock")
                    .placed_pod(job)
                    .is_some();
                if !placed {
                    self.requeue(job).await;
                }
            }
            Err(e) => tracing::warn!(%job, error = %e, "eviction refused; retrying next cycle"),
        }
    }

    /// A victim is gone: its record goes back to the queue.
    async fn requeue(&mut self, job: JobId) {
        let Some(ev) = self.evictions.remove(&job) else {
            return;
        };
        let now = Timestamp::now();
        for (from, change) in [
            (
                None,
                Change::new(JobState::Preempted, ev.reason.clone(), now),
            ),
            (
                Some(JobState::Preempted),
                Change::new(JobState::Pending, format!("requeued: {}", ev.reason), now),
            ),
        ] {
            if let Err(e) = self.store.transition(job, from, change).await {
                tracing::warn!(%job, error = %e, "could not record the preemption");
                return;
            }
        }
    }

    /// After each cycle: evictions to retry, and jobs whose pods are gone
    /// to settle (a victim requeued; a pod lost otherwise per its job's
    /// restart policy).
    pub async fn follow_up(&mut self) {
        let gone = self.index.lock().expect("index lock").take_gone();
        for (job, pod) in gone {
            if self.evictions.contains_key(&job) {
                self.requeue(job).await;
            } else {
                self.lost(job, &pod).await;
            }
        }
        let unsent: Vec<JobId> = self
            .evictions
            .iter()
            .filter(|(_, e)| !e.sent)
            .map(|(j, _)| *j)
            .collect();
        for job in unsent {
            self.send_eviction(job).await;
        }
    }

    /// A job's pod vanished without an eviction (deleted by hand, its node
    /// lost). A job still holding cards in the record cannot run without
    /// it: it is requeued or failed by its restart policy.
    async fn lost(&mut self, job: JobId, pod: &PodRef) {
        let stored = match self.store.get_job(job).await {
            Ok(j) => j,
            Err(StoreError::NotFound(_)) => return,
            Err(e) => {
                tracing::warn!(%job, error = %e, "could not read a job whose pod is gone");
                return;
            }
        };
        if !matches!(stored.state, JobState::Admitted | JobState::Running) {
            return;
        }
        let now = Timestamp::now();
        let why = format!("its pod {pod} was deleted");
        let result = match stored.spec.restart_policy {
            RestartPolicy::Fail => {
                self.store
                    .transition(
                        job,
                        Some(stored.state),
                        Change::new(JobState::Failed, why, now),
                    )
                    .await
            }
            RestartPolicy::Requeue => {
                match self
                    .store
                    .transition(
                        job,
                        Some(stored.state),
                        Change::new(JobState::Preempted, why.clone(), now),
                    )
                    .await
                {
                    Ok(_) => {
                        self.store
                            .transition(
                                job,
                                Some(JobState::Preempted),
                                Change::new(JobState::Pending, format!("requeued: {why}"), now),
                            )
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(_) => tracing::info!(%job, %pod, "job's pod is gone; settled by its restart policy"),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => tracing::warn!(%job, error = %e, "could not settle a job whose pod is gone"),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for PodRuntime {
    type Job = Job;

    /// Binds the job's pod to its admitted placement; a no-op once bound,
    /// and until the operator has created the pod.
    async fn start(&mut self, job: &Job) {
        let Some(placement) = &job.placement else {
            return;
        };
        let pod = {
            let index = self.index.lock().expect("index lock");
            if index.placed_pod(job.id).is_some() {
                return;
            }
            index.pending_pod(job.id).cloned()
        };
        let Some(pod) = pod else {
            tracing::debug!(job = %job.id, "admitted; its pod does not exist yet");
            return;
        };
        match actions::bind(&self.client, &pod, placement).await {
            Ok(()) => {
                let now = Timestamp::now();
                self.index.lock().expect("index lock").assume(
                    job.id,
                    pod.clone(),
                    placement.node.clone(),
                    now,
                );
                // From the admission (the record's last change) to binding.
                self.metrics
                    .bind_duration
                    .observe(now.millis_since(job.updated_at) as f64 / 1000.0);
                tracing::info!(job = %job.id, %pod, node = %placement.node,
                    gpus = %placement.visible_devices(), "bound");
            }
            Err(ActionError::Gone(_)) => {
                let mut index = self.index.lock().expect("index lock");
                if index.pending_pod(job.id).is_some_and(|p| p.uid == pod.uid) {
                    index.forget_pending(job.id);
                }
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "binding failed; retrying next cycle")
            }
        }
    }

    async fn stop(&mut self, job: JobId, stop: &Stop) {
        let pod = self
            .index
            .lock()
            .expect("index lock")
            .placed_pod(job)
            .map(|(p, _)| p.clone());
        self.evictions.insert(
            job,
            Eviction {
                pod: pod.clone(),
                reason: stop.preemption.to_string(),
                grace_seconds: (stop.grace_ms / 1000).max(1) as u32,
                sent: false,
            },
        );
        match pod {
            Some(_) => self.send_eviction(job).await,
            // Admitted but never bound: nothing runs; back to the queue.
            None => self.requeue(job).await,
        }
    }
}
