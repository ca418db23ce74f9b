//! ReportService: the regulator's usage report, rendered as JSON, CSV or
//! HTML. Staff only (the policy table): it spans every tenant.

use finpool_domain::Timestamp;
use finpool_proto::v1 as pb;
use finpool_proto::v1::report_service_server::ReportService;
use finpool_report::render;
use tonic::{Request, Response, Status};

use super::billing::parse_time;
use crate::error;
use crate::reports::{ReportError, usage_report};
use crate::state::ApiState;

pub struct Reports {
    state: ApiState,
}

impl Reports {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ReportService for Reports {
    async fn get_usage_report(
        &self,
        request: Request<pb::GetUsageReportRequest>,
    ) -> Result<Response<pb::ReportDocument>, Status> {
        let r = request.into_inner();
        let format = match r.format.as_str() {
            "" | "json" => "json",
            "csv" => "csv",
            "html" => "html",
            other => {
                return Err(Status::invalid_argument(format!(
                    "format: json, csv or html, not {other:?}"
                )));
            }
        };
        if r.from.is_empty() || r.to.is_empty() {
            return Err(Status::invalid_argument(if r.from.is_empty() {
                "from: required (RFC 3339)"
            } else {
                "to: required (RFC 3339)"
            }));
        }
        let from = Timestamp(parse_time("from", &r.from)?);
        let to = Timestamp(parse_time("to", &r.to)?);
        let inventory = self.state.inventory.inventory();
        let report = usage_report(&self.state.store, &inventory, from, to, Timestamp::now())
            .await
            .map_err(|e| match e {
                ReportError::Invalid { field, reason } => {
                    Status::invalid_argument(format!("{field}: {reason}"))
                }
                ReportError::Store(e) => error::store(e),
                other => Status::internal(other.to_string()),
            })?;
        let (content_type, body) = match format {
            "csv" => ("text/csv; charset=utf-8", render::csv(&report)),
            "html" => (
                "text/html; charset=utf-8",
                render::html(&report).map_err(|e| Status::internal(e.to_string()))?,
            ),
            _ => ("application/json", render::json(&report)),
        };
        Ok(Response::new(pb::ReportDocument {
            content_type: content_type.into(),
            body: body.into_bytes(),
            format: format.into(),
            closed: report.closed,
        }))
    }
}
