//! JobService: submit, read, cancel and follow jobs.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use finpool_domain::job::SubmitContext;
use finpool_domain::{
    BaseModel, FieldError, GpuRequest, Inventory, Job, JobId, JobSpec, JobSpecInput, Name,
    Timestamp,
};
use finpool_proto::v1 as pb;
use finpool_proto::v1::job_service_server::JobService;
use finpool_scheduler::{Infeasible, PoolFit};
use finpool_store::{JobFilter, StoreError};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{page_size, principal};
use crate::audit::{self, AuditNote};
use crate::auth::{Principal, Role};
use crate::convert;
use crate::error;
use crate::state::ApiState;

pub struct Jobs {
    state: ApiState,
    /// The last inventory seen and the pool indexed from it.
    fit: Mutex<Option<(Arc<Inventory>, Arc<PoolFit>)>>,
}

impl Jobs {
    pub fn new(state: ApiState) -> Self {
        Self {
            state,
            fit: Mutex::new(None),
        }
    }

    /// Validates a spec for `tenant` against the pool, as a submit would.
    pub async fn validate(
        &self,
        tenant: &Name,
        input: &JobSpecInput,
    ) -> Result<finpool_domain::JobSpec, Status> {
        let tenant = match self.state.store.get_tenant_cached(tenant.as_str()).await {
            Ok(t) => t,
            Err(StoreError::NotFound(_)) => {
                return Err(Status::failed_precondition(format!(
                    "tenant {tenant} is not registered on this pool"
                )));
            }
            Err(e) => return Err(error::store(e)),
        };
        let models = self
            .state
            .store
            .list_models_cached()
            .await
            .map_err(error::store)?;
        let inventory = self.state.inventory.inventory();
        let ctx = SubmitContext {
            tenant: &tenant,
            classes: &inventory.classes,
            models: &models,
            max_gpus_per_node: &inventory.max_gpus_per_node(),
            max_runtime_cap_ms: self.state.config.max_runtime_cap.as_millis() as u64,
        };
        let spec = input.validate(&ctx).map_err(error::invalid)?;
        // A job no node could ever hold would wait forever (and count
        // against the pending cap): refuse it, with the scheduler's check.
        if let Some(fit) = self.pool_fit(&inventory) {
            fit.check(&tenant, &spec.resources, spec.model.as_ref(), &models)
                .map_err(|resource| error::invalid(unrunnable(&spec, &models, &resource)))?;
        }
        Ok(spec)
    }

    /// The pool indexed for feasibility checks, rebuilt when the inventory
    /// changes; `None` if the scheduler could not index it either.
    fn pool_fit(&self, inventory: &Arc<Inventory>) -> Option<Arc<PoolFit>> {
        let mut cached = self.fit.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((of, fit)) = cached.as_ref()
            && Arc::ptr_eq(of, inventory)
        {
            return Some(fit.clone());
        }
        match PoolFit::new(&inventory.classes, &inventory.nodes) {
            Ok(fit) => {
                let fit = Arc::new(fit);
                *cached = Some((inventory.clone(), fit.clone()));
                Some(fit)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check jobs against the inventory");
                None
            }
        }
    }

    /// The job, if it exists and the caller may see it. Another tenant's
    /// job is NOT_FOUND, exactly like a missing one (and noted for the
    /// audit log as a denied attempt).
    async fn visible_job(
        &self,
        who: &Principal,
        id: &str,
        note: &AuditNote,
    ) -> Result<Job, Status> {
        let id = JobId::parse("id", id).map_err(error::invalid)?;
        note.target(format!("job/{id}"));
        let not_found = || Status::not_found(format!("job {id} not found"));
        match self.state.store.get_job(id).await {
            Ok(job) if who.can_see(&job.tenant_id) => Ok(job),
            Ok(_) => {
                note.cross_tenant();
                Err(not_found())
            }
            Err(StoreError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(error::store(e)),
        }
    }
}

/// A job that fits no node, as a refusal naming the field that asks for
/// too much.
fn unrunnable(spec: &JobSpec, models: &[BaseModel], resource: &Infeasible) -> FieldError {
    let never = "the job could never run";
    match resource {
        Infeasible::CpuMilli { asked, largest } => FieldError::new(
            "resources.cpu_milli",
            format!("asks for {asked}; the largest node of this pool has {largest}: {never}"),
        ),
        Infeasible::MemoryMib { asked, largest } => FieldError::new(
            "resources.memory_mib",
            format!("asks for {asked}; the largest node of this pool has {largest}: {never}"),
        ),
        Infeasible::Gpus { asked, largest } => FieldError::new(
            "resources.gpu.whole_gpus",
            format!(
                "asks for {asked} on one node; the largest node of its classes (with the CPU \
                 and memory asked for) has {largest}: {never}"
            ),
        ),
        Infeasible::GpuMemoryMib { asked, largest } => {
            // The card memory asked for is the share's or the model's.
            let model_needs = spec
                .model
                .as_ref()
                .and_then(|m| models.iter().find(|bm| &bm.name == m))
                .map_or(0, |bm| bm.min_gpu_memory_mib);
            let field = match spec.resources.gpu {
                GpuRequest::Share { memory_mib, .. } if memory_mib >= model_needs => {
                    "resources.gpu.share.memory_mib"
                }
                _ => "model",
            };
            FieldError::new(
                field,
                format!(
                    "needs {asked} MiB of memory on one card; the largest card of its classes \
                     has {largest}: {never}"
                ),
            )
        }
        Infeasible::GpuClasses { asked } => {
            let asked = match asked.as_slice() {
                [] => "any class".to_owned(),
                names => names.join(", "),
            };
            FieldError::new(
                "resources.gpu_classes",
                format!("no node of this pool has a card of {asked}: {never}"),
            )
        }
        Infeasible::MigSlice { milli, memory_mib } => FieldError::new(
            "resources.gpu.share",
            format!(
                "the tenant isolates shares in hardware (MIG) and no card offers a slice of \
                 {milli} milli-GPU and {memory_mib} MiB: {never}"
            ),
        ),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let began = std::time::Instant::now();
        let who = principal(&request)?;
        let note = audit::note(&request);
        let tenant = who
            .tenant
            .clone()
            .ok_or_else(|| Status::permission_denied("only a tenant submits jobs"))?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: required"))?;
        let input = convert::spec_input(spec).map_err(error::invalid)?;
        let spec = self.validate(&tenant, &input).await?;
        let id = match &spec.idempotency_key {
            Some(key) => JobId::for_idempotency_key(&tenant, key),
            None => JobId::new_random(),
        };
        note.target(format!("job/{id}"));
        let job = Job::new(id, tenant, spec, Timestamp::now());
        let cap = Some(self.state.config.pending_cap);
        let (job, created) =
            self.state
                .store
                .submit_capped(job, cap)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(m) => Status::already_exists(m),
                    e => error::store(e),
                })?;
        tracing::info!(job = %job.id, tenant = %job.tenant_id, created, "job submitted");
        self.state
            .metrics
            .submit_duration
            .observe(began.elapsed().as_secs_f64());
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(convert::job_to_pb(&job)),
            created,
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = principal(&request)?;
        let note = audit::note(&request);
        let job = self.visible_job(&who, &request.get_ref().id, &note).await?;
        let mut reply = convert::job_to_pb(&job);
        if job.state == finpool_domain::JobState::Pending {
            let pending = self
                .state
                .store
                .pending_keys()
                .await
                .map_err(error::store)?;
            // None if it left the queue between the two reads.
            reply.queue_position =
                finpool_scheduler::queue_position(job.id, &pending).map(|p| pb::QueuePosition {
                    in_tenant: p.in_tenant,
                    tenant_pending: p.tenant_pending,
                    ahead_in_pool: p.ahead_in_pool,
                    pool_pending: p.pool_pending,
                });
        }
        Ok(Response::new(reply))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let tenant = match (who.role, r.tenant_id.as_str()) {
            (Role::Tenant, _) => who.tenant.clone(),
            (_, "") => None,
            (_, t) => Some(Name::parse("tenant_id", t).map_err(error::invalid)?),
        };
        let states = r
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| convert::state_from_pb(&format!("states[{i}]"), *s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(error::invalid)?;
        let page = self
            .state
            .store
            .list_jobs(&JobFilter {
                tenant,
                states,
                page_size: page_size(r.page_size, 50)?,
                page_token: (!r.page_token.is_empty()).then_some(r.page_token),
            })
            .await
            .map_err(error::store)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.jobs.iter().map(convert::job_to_pb).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = principal(&request)?;
        let note = audit::note(&request);
        let r = request.into_inner();
        let job = self.visible_job(&who, &r.id, &note).await?;
        finpool_domain::text::check(
            "reason",
            r.reason.trim(),
            finpool_domain::text::MAX_REASON_CHARS,
        )
        .map_err(error::invalid)?;
        let reason = match r.reason.trim() {
            "" => format!("cancelled by {} {}", who.role, who.subject),
            why => format!("cancelled by {} {}: {why}", who.role, who.subject),
        };
        let job = self
            .state
            .store
            .request_cancel(job.id, &reason, Timestamp::now())
            .await
            .map_err(error::store)?;
        tracing::info!(job = %job.id, by = %who.subject, "cancel requested");
        Ok(Response::new(convert::job_to_pb(&job)))
    }

    type WatchJobsStream = BoxStream<pb::JobEvent>;

    async fn watch_jobs(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let who = principal(&request)?;
        let note = audit::note(&request);
        let only = match request.get_ref().job_id.as_str() {
            "" => None,
            id => Some(self.visible_job(&who, id, &note).await?.id),
        };
        // Held by the forwarding task: freed, with the subscription and the
        // channel, when the client goes away or the stream ends.
        let slot = self.state.streams.acquire(&who)?;
        let mut events = self.state.store.subscribe();
        let lapse = crate::streams::lapse(self.state.clone(), who.clone());
        // A small buffer: a slow reader falls behind in the broadcast
        // (and is told to list again), not in server memory.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(lapse);
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
                    status = &mut lapse => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    event = events.recv() => event,
                };
                let item = match event {
                    Ok(e) if who.can_see(&e.tenant_id) && only.is_none_or(|id| id == e.job_id) => {
                        Ok(pb::JobEvent {
                            job_id: e.job_id.to_string(),
                            tenant_id: e.tenant_id.to_string(),
                            transition: Some(convert::transition_to_pb(&e.transition)),
                        })
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => Err(Status::aborted(format!(
                        "the watch fell {n} events behind; list again, then watch"
                    ))),
                    Err(RecvError::Closed) => {
                        Err(Status::unavailable("the server is shutting down"))
                    }
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type StreamLogsStream = BoxStream<pb::LogChunk>;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let who = principal(&request)?;
        let note = audit::note(&request);
        let r = request.into_inner();
        let job = self.visible_job(&who, &r.id, &note).await?;
        let slot = self.state.streams.acquire(&who)?;
        let stream = self
            .state
            .logs
            .open(&job, r.follow)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        use futures::StreamExt;
        // Forwarded by a task that holds the slot and ends the stream when
        // the caller's access lapses or the server closes.
        let lapse = crate::streams::lapse(self.state.clone(), who);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(lapse);
            let mut stream = stream;
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => return,
                    status = &mut lapse => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    chunk = stream.next() => match chunk {
                        None => return,
                        Some(chunk) => chunk
                            .map(|data| pb::LogChunk { data })
                            .map_err(|e| Status::internal(e.to_string())),
                    },
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use finpool_domain::{Resources, RestartPolicy};

    use super::*;

    fn spec(gpu: GpuRequest, model: Option<&str>) -> JobSpec {
        JobSpec {
            name: Name::parse("name", "job").unwrap(),
            model: model.map(|m| Name::parse("model", m).unwrap()),
            command: vec!["true".into()],
            args: vec![],
            env: BTreeMap::new(),
            resources: Resources {
                gpu,
                gpu_classes: vec![],
                cpu_milli: 0,
                memory_mib: 0,
            },
            priority: 0,
            max_runtime_ms: None,
            min_runtime_ms: None,
            idempotency_key: None,
            labels: BTreeMap::new(),
            restart_policy: RestartPolicy::default(),
        }
    }

    #[test]
    fn card_memory_is_blamed_on_whichever_asks_for_it() {
        let model = BaseModel {
            name: Name::parse("name", "big").unwrap(),
            size_mib: 1,
            min_gpu_memory_mib: 100_000,
            load_time_ms: None,
            registered_at: Timestamp(0),
        };
        let models = [model];
        let too_big = Infeasible::GpuMemoryMib {
            asked: 100_000,
            largest: 81_920,
        };
        let share = |memory_mib| GpuRequest::Share {
            milli: 500,
            memory_mib,
        };
        let field = |spec: &JobSpec| unrunnable(spec, &models, &too_big).field;
        assert_eq!(
            field(&spec(share(100_000), None)),
            "resources.gpu.share.memory_mib"
        );
        assert_eq!(field(&spec(share(1_000), Some("big"))), "model");
        assert_eq!(
            field(&spec(GpuRequest::Whole { count: 1 }, Some("big"))),
            "model"
        );
        let e = unrunnable(
            &spec(GpuRequest::None, None),
            &models,
            &Infeasible::CpuMilli {
                asked: u64::MAX,
                largest: 32_000,
            },
        );
        assert_eq!(e.field, "resources.cpu_milli");
        assert!(
            e.reason.contains("32000") && e.reason.contains("never run"),
            "{}",
            e.reason
        );
    }
}
