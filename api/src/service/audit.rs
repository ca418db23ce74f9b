//! AuditService: the audit log and its latest checkpoint, for regulators
//! and operators (the policy table refuses tenants).

use finpool_audit::hex;
use finpool_proto::v1 as pb;
use finpool_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use crate::error;
use crate::state::ApiState;

pub struct Audit {
    state: ApiState,
}

impl Audit {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }
}

/// Entries per page: 0 means this many.
const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: i32 = 5000;

#[tonic::async_trait]
impl AuditService for Audit {
    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let r = request.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n @ 1..=MAX_PAGE => n as u32,
            n => {
                return Err(Status::invalid_argument(format!(
                    "page_size: must be from 1 to {MAX_PAGE} (or 0 for {DEFAULT_PAGE}), got {n}"
                )));
            }
        };
        let rows = self
            .state
            .store
            .audit_since(r.after_seq, size)
            .await
            .map_err(error::store)?;
        let next_after_seq = match rows.last() {
            Some(last) if rows.len() == size as usize => last.seq,
            _ => 0,
        };
        let entries = rows
            .into_iter()
            .map(|row| {
                // The fields come from the canonical bytes; bytes that do
                // not decode are passed on as they are, for a verifier to
                // refuse.
                let mut e = pb::AuditEntry {
                    seq: row.seq,
                    ..Default::default()
                };
                if let Ok(entry) = row.entry() {
                    e.at_ms = entry.at_ms;
                    e.actor = entry.actor;
                    e.role = entry.role;
                    e.tenant = entry.tenant;
                    e.action = entry.action;
                    e.target = entry.target;
                    e.request_id = entry.request_id;
                    e.outcome = entry.outcome.to_string();
                }
                e.canonical = row.canonical;
                e.signature = row.signature;
                e
            })
            .collect();
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries,
            next_after_seq,
        }))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        let checkpoint = self
            .state
            .store
            .latest_checkpoint()
            .await
            .map_err(error::store)?
            .ok_or_else(|| Status::not_found("no audit checkpoint has been signed yet"))?;
        let head = &checkpoint.checkpoint;
        Ok(Response::new(pb::AuditCheckpoint {
            tree_size: head.tree_size,
            root: head.root_hex(),
            timestamp_ms: head.timestamp_ms,
            key_id: head.key_id.clone(),
            signature: hex::encode(&checkpoint.signature),
            text: checkpoint.to_text(),
            public_key: self
                .state
                .audit
                .public_key()
                .map(|k| k.to_pem())
                .unwrap_or_default(),
        }))
    }
}
