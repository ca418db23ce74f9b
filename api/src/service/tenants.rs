//! TenantService, ModelService and UsageService: the pool's tenants, base
//! models and metered usage.

use finpool_domain::tenant::check_class;
use finpool_domain::{BaseModelInput, Name, Suspension, Timestamp};
use finpool_proto::v1 as pb;
use finpool_proto::v1::model_service_server::ModelService;
use finpool_proto::v1::tenant_service_server::TenantService;
use finpool_proto::v1::token_service_server::TokenService;
use finpool_proto::v1::usage_service_server::UsageService;
use finpool_store::StoreError;
use tonic::{Request, Response, Status};

use super::{page_size, principal};
use crate::audit::{self, AuditNote};
use crate::auth::{Principal, Role};
use crate::convert;
use crate::error;
use crate::state::ApiState;

pub struct Tenants {
    state: ApiState,
}

impl Tenants {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }
}

/// The tenant, if the caller may see it; NOT_FOUND otherwise (noted for
/// the audit log as a denied attempt when it is another tenant).
async fn visible_tenant(
    state: &ApiState,
    who: &Principal,
    id: &str,
    note: &AuditNote,
) -> Result<finpool_domain::Tenant, Status> {
    let name = Name::parse("id", id).map_err(error::invalid)?;
    note.target(format!("tenant/{name}"));
    let not_found = || Status::not_found(format!("tenant {name} not found"));
    if !who.can_see(&name) {
        note.cross_tenant();
        return Err(not_found());
    }
    match state.store.get_tenant(id).await {
        Ok(t) => Ok(t),
        Err(StoreError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(error::store(e)),
    }
}

#[tonic::async_trait]
impl TenantService for Tenants {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = principal(&request)?;
        audit::note(&request).target(format!("tenant/{}", request.get_ref().id));
        let input = convert::tenant_input(request.into_inner()).map_err(error::invalid)?;
        let classes = self.state.inventory.inventory().class_names();
        let tenant = input
            .validate(&classes, Timestamp::now())
            .map_err(error::invalid)?;
        let tenant = self
            .state
            .store
            .create_tenant(&tenant)
            .await
            .map_err(error::store)?;
        tracing::info!(tenant = %tenant.id, by = %who.subject, "tenant created");
        Ok(Response::new(convert::tenant_to_pb(&tenant)))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = principal(&request)?;
        let note = audit::note(&request);
        let tenant = visible_tenant(&self.state, &who, &request.get_ref().id, &note).await?;
        Ok(Response::new(convert::tenant_to_pb(&tenant)))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size, 100)?;
        if let (Role::Tenant, Some(own)) = (who.role, &who.tenant) {
            // A tenant lists only itself.
            let tenants = match self.state.store.get_tenant(own.as_str()).await {
                Ok(t) if r.page_token.is_empty() => vec![convert::tenant_to_pb(&t)],
                Ok(_) | Err(StoreError::NotFound(_)) => vec![],
                Err(e) => return Err(error::store(e)),
            };
            return Ok(Response::new(pb::ListTenantsResponse {
                tenants,
                next_page_token: String::new(),
            }));
        }
        let mut tenants = self
            .state
            .store
            .list_tenants(&r.page_token, size + 1)
            .await
            .map_err(error::store)?;
        let next_page_token = if tenants.len() > size as usize {
            tenants.truncate(size as usize);
            tenants.last().map(|t| t.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.iter().map(convert::tenant_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = principal(&request)?;
        let note = audit::note(&request);
        let r = request.into_inner();
        note.target(format!("tenant/{}/quotas/{}", r.tenant_id, r.gpu_class));
        let id = Name::parse("tenant_id", &r.tenant_id).map_err(error::invalid)?;
        let classes = self.state.inventory.inventory().class_names();
        check_class("gpu_class", &r.gpu_class, &classes).map_err(error::invalid)?;
        let q = r
            .quota
            .ok_or_else(|| Status::invalid_argument("quota: required"))?;
        let quota = convert::quota_input(&q)
            .validate("quota")
            .map_err(error::invalid)?;
        let tenant = self
            .state
            .store
            .set_quota(&id, &r.gpu_class, quota, Timestamp::now())
            .await
            .map_err(error::store)?;
        tracing::info!(tenant = %id, class = %r.gpu_class, ?quota, by = %who.subject, "quota set");
        Ok(Response::new(convert::tenant_to_pb(&tenant)))
    }

    async fn suspend_tenant(
        &self,
        request: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = principal(&request)?;
        audit::note(&request).target(format!("tenant/{}", request.get_ref().id));
        let r = request.into_inner();
        let id = Name::parse("id", &r.id).map_err(error::invalid)?;
        let reason = r.reason.trim();
        finpool_domain::text::check("reason", reason, finpool_domain::text::MAX_REASON_CHARS)
            .map_err(error::invalid)?;
        let now = Timestamp::now();
        let suspension = Suspension {
            reason: match reason {
                "" => format!("suspended by {} {}", who.role, who.subject),
                why => format!("suspended by {} {}: {why}", who.role, who.subject),
            },
            at: now,
        };
        let tenant = self
            .state
            .store
            .set_suspension(&id, Some(&suspension), now)
            .await
            .map_err(error::store)?;
        // In force on this server at once; other replicas at their next refresh.
        self.state.revocations.set_suspended(&id, true);
        tracing::warn!(tenant = %id, by = %who.subject, reason, "tenant suspended");
        Ok(Response::new(convert::tenant_to_pb(&tenant)))
    }

    async fn resume_tenant(
        &self,
        request: Request<pb::ResumeTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = principal(&request)?;
        audit::note(&request).target(format!("tenant/{}", request.get_ref().id));
        let id = Name::parse("id", &request.get_ref().id).map_err(error::invalid)?;
        let tenant = self
            .state
            .store
            .set_suspension(&id, None, Timestamp::now())
            .await
            .map_err(error::store)?;
        self.state.revocations.set_suspended(&id, false);
        tracing::warn!(tenant = %id, by = %who.subject, "tenant resumed");
        Ok(Response::new(convert::tenant_to_pb(&tenant)))
    }
}

pub struct Tokens {
    state: ApiState,
}

impl Tokens {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }
}

/// The longest token subject accepted.
const MAX_SUBJECT_CHARS: usize = 256;

#[tonic::async_trait]
impl TokenService for Tokens {
    async fn revoke_tokens(
        &self,
        request: Request<pb::RevokeTokensRequest>,
    ) -> Result<Response<pb::RevokeTokensResponse>, Status> {
        let who = principal(&request)?;
        audit::note(&request).target(format!("subject/{}", request.get_ref().subject));
        let r = request.into_inner();
        if r.subject.is_empty() {
            return Err(Status::invalid_argument("subject: required"));
        }
        finpool_domain::text::check("subject", &r.subject, MAX_SUBJECT_CHARS)
            .map_err(error::invalid)?;
        let now = Timestamp::now();
        let not_before = match r.not_before {
            // `iat` has whole seconds: the next second, so that a token
            // issued earlier in this second is refused too.
            None => now.0.div_euclid(1000) + 1,
            Some(t) if t.seconds < 0 => {
                return Err(Status::invalid_argument(
                    "not_before: must not be before 1970",
                ));
            }
            Some(t) if t.seconds > now.0.div_euclid(1000) + 366 * 24 * 3600 => {
                return Err(Status::invalid_argument(
                    "not_before: must be within a year from now",
                ));
            }
            Some(t) => t.seconds,
        } as u64;
        let bar = self
            .state
            .store
            .revoke_tokens(&r.subject, not_before, now)
            .await
            .map_err(error::store)?;
        self.state.revocations.set_not_before(&r.subject, bar);
        tracing::warn!(subject = %r.subject, not_before = bar, by = %who.subject, "tokens revoked");
        Ok(Response::new(pb::RevokeTokensResponse {
            subject: r.subject,
            not_before: Some(prost_types::Timestamp {
                seconds: bar as i64,
                nanos: 0,
            }),
        }))
    }
}

pub struct Models {
    state: ApiState,
}

impl Models {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ModelService for Models {
    async fn register_model(
        &self,
        request: Request<pb::RegisterModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let who = principal(&request)?;
        audit::note(&request).target(format!("model/{}", request.get_ref().name));
        let r = request.into_inner();
        let model = BaseModelInput {
            name: r.name,
            size_mib: r.size_mib,
            min_gpu_memory_mib: r.min_gpu_memory_mib,
            load_time_ms: r.load_time_ms,
        }
        .validate(Timestamp::now())
        .map_err(error::invalid)?;
        let model = self
            .state
            .store
            .register_model(&model)
            .await
            .map_err(error::store)?;
        tracing::info!(model = %model.name, by = %who.subject, "model registered");
        Ok(Response::new(convert::model_to_pb(&model)))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let r = request.into_inner();
        let size = page_size(r.page_size, 100)?;
        let models = self.state.store.list_models().await.map_err(error::store)?;
        let models: Vec<pb::Model> = models.iter().map(convert::model_to_pb).collect();
        let (models, next_page_token) =
            super::page_of(models, |m| m.name.as_str(), size, &r.page_token);
        Ok(Response::new(pb::ListModelsResponse {
            models,
            next_page_token,
        }))
    }
}

pub struct Usage {
    state: ApiState,
}

impl Usage {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl UsageService for Usage {
    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::Usage>, Status> {
        let who = principal(&request)?;
        let note = audit::note(&request);
        let asked = request.into_inner().tenant_id;
        let id = match (&who.tenant, asked.as_str()) {
            (Some(own), "") => own.to_string(),
            (None, "") => {
                return Err(Status::invalid_argument(
                    "tenant_id: required for operators and regulators",
                ));
            }
            (_, t) => t.to_owned(),
        };
        let tenant = visible_tenant(&self.state, &who, &id, &note).await?;
        let now = Timestamp::now();
        let usage = self
            .state
            .store
            .tenant_usage(&tenant.id, now)
            .await
            .map_err(error::store)?;
        Ok(Response::new(pb::Usage {
            tenant_id: tenant.id.to_string(),
            classes: usage
                .classes
                .into_iter()
                .map(|(class, u)| pb::ClassUsage {
                    gpu_class: class,
                    gpu_milli_seconds: u.gpu_milli_seconds,
                    gpus_in_use: u.gpus_in_use,
                })
                .collect(),
            jobs_total: usage.jobs_total,
            jobs_running: usage.jobs_running,
            jobs_pending: usage.jobs_pending,
            as_of: Some(convert::timestamp(now)),
        }))
    }
}
