//! JobService: submit, read, cancel and follow jobs.

use std::pin::Pin;

use finpool_domain::job::SubmitContext;
use finpool_domain::{Job, JobId, JobSpecInput, Name, Timestamp};
use finpool_proto::v1 as pb;
use finpool_proto::v1::job_service_server::JobService;
use finpool_store::{JobFilter, StoreError};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{page_size, principal};
use crate::auth::{Principal, Role};
use crate::convert;
use crate::error;
use crate::state::ApiState;

pub struct Jobs {
    state: ApiState,
}

impl Jobs {
    pub fn new(state: ApiState) -> Self {
        Self { state }
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
        input.validate(&ctx).map_err(error::invalid)
    }

    /// The job, if it exists and the caller may see it. Another tenant's
    /// job is NOT_FOUND, exactly like a missing one.
    async fn visible_job(&self, who: &Principal, id: &str) -> Result<Job, Status> {
        let id = JobId::parse("id", id).map_err(error::invalid)?;
        let not_found = || Status::not_found(format!("job {id} not found"));
        match self.state.store.get_job(id).await {
            Ok(job) if who.can_see(&job.tenant_id) => Ok(job),
            Ok(_) | Err(StoreError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(error::store(e)),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let who = principal(&request)?;
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
        let job = self.visible_job(&who, &request.get_ref().id).await?;
        Ok(Response::new(convert::job_to_pb(&job)))
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
        let r = request.into_inner();
        let job = self.visible_job(&who, &r.id).await?;
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
        let only = match request.get_ref().job_id.as_str() {
            "" => None,
            id => Some(self.visible_job(&who, id).await?.id),
        };
        // Held by the forwarding task: freed, with the subscription and the
        // channel, when the client goes away or the stream ends.
        let slot = self.state.streams.acquire(&who)?;
        let mut events = self.state.store.subscribe();
        // A small buffer: a slow reader falls behind in the broadcast
        // (and is told to list again), not in server memory.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
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
        let r = request.into_inner();
        let job = self.visible_job(&who, &r.id).await?;
        let slot = self.state.streams.acquire(&who)?;
        let stream = self
            .state
            .logs
            .open(&job, r.follow)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        use futures::StreamExt;
        // The slot lives as long as the stream: dropped with it.
        Ok(Response::new(Box::pin(stream.map(move |chunk| {
            let _held = &slot;
            chunk
                .map(|data| pb::LogChunk { data })
                .map_err(|e| Status::internal(e.to_string()))
        }))))
    }
}
