//! A connected, authenticated API client.

use anyhow::Context;
use finpool_proto::v1::audit_service_client::AuditServiceClient;
use finpool_proto::v1::billing_service_client::BillingServiceClient;
use finpool_proto::v1::job_service_client::JobServiceClient;
use finpool_proto::v1::model_service_client::ModelServiceClient;
use finpool_proto::v1::node_service_client::NodeServiceClient;
use finpool_proto::v1::report_service_client::ReportServiceClient;
use finpool_proto::v1::tenant_service_client::TenantServiceClient;
use finpool_proto::v1::token_service_client::TokenServiceClient;
use finpool_proto::v1::usage_service_client::UsageServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::args::{Connect, Global};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

/// One client per service, sharing a connection.
#[derive(Clone)]
pub struct Clients {
    pub jobs: JobServiceClient<Svc>,
    pub tenants: TenantServiceClient<Svc>,
    pub models: ModelServiceClient<Svc>,
    pub nodes: NodeServiceClient<Svc>,
    pub usage: UsageServiceClient<Svc>,
    pub tokens: TokenServiceClient<Svc>,
    pub billing: BillingServiceClient<Svc>,
    pub reports: ReportServiceClient<Svc>,
    pub audit: AuditServiceClient<Svc>,
}

impl Clients {
    pub async fn connect(addr: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let addr = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let channel = Channel::from_shared(addr.clone())
            .with_context(|| format!("--addr {addr:?} is not a URL"))?
            .connect()
            .await
            .with_context(|| {
                format!("cannot reach the finpool server at {addr} (is `finpool up` running?)")
            })?;
        let bearer = Bearer(
            token
                .map(|t| format!("Bearer {}", t.trim()).parse())
                .transpose()
                .context("the token has characters a header cannot carry")?,
        );
        Ok(Self {
            jobs: JobServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            tenants: TenantServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            models: ModelServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            nodes: NodeServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            usage: UsageServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            tokens: TokenServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            billing: BillingServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            reports: ReportServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            audit: AuditServiceClient::with_interceptor(channel, bearer),
        })
    }

    pub async fn from_global(global: &Global) -> anyhow::Result<Self> {
        Self::from_connect(&global.connect).await
    }

    /// Connects with --addr and --token (or their environment variables).
    pub async fn from_connect(connect: &Connect) -> anyhow::Result<Self> {
        if connect.token.is_none() {
            anyhow::bail!(
                "no token: pass --token or set FINPOOL_TOKEN (see `finpool token issue`)"
            );
        }
        Self::connect(&connect.addr, connect.token.as_deref()).await
    }
}
