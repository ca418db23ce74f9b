//! NodeService: the GPU inventory and who holds what.

use std::collections::BTreeSet;

use finpool_domain::JobState;
use finpool_proto::v1 as pb;
use finpool_proto::v1::node_service_server::NodeService;
use finpool_scheduler::DurableMemory;
use tonic::{Request, Response, Status};

use super::principal;
use crate::error;
use crate::state::ApiState;

pub struct Nodes {
    state: ApiState,
}

impl Nodes {
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl NodeService for Nodes {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let who = principal(&request)?;
        let r = request.get_ref();
        let size = super::page_size(r.page_size, 100)?;
        let token = r.page_token.clone();
        let inventory = self.state.inventory.inventory();
        let jobs = self.state.store.active_jobs().await.map_err(error::store)?;
        // The scheduler's memory: models it had nodes fetch, and what it
        // loaded on each card. Unreadable memory shows no models, rather
        // than failing the listing.
        let memory = match self.state.store.load_scheduler_memory().await {
            Ok(Some(json)) => serde_json::from_str::<DurableMemory>(&json).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "scheduler memory unreadable; nodes show no models");
                DurableMemory::default()
            }),
            Ok(None) => DurableMemory::default(),
            Err(e) => return Err(error::store(e)),
        };
        let mut nodes: Vec<pb::Node> = inventory
            .nodes
            .iter()
            .map(|n| pb::Node {
                models: {
                    let mut models: BTreeSet<String> = n.models.iter().cloned().collect();
                    models.extend(memory.cached.get(&n.name).into_iter().flatten().cloned());
                    models.into_iter().collect()
                },
                name: n.name.clone(),
                labels: n.labels.clone().into_iter().collect(),
                cpu_milli: n.cpu_milli,
                memory_mib: n.memory_mib,
                gpus: n
                    .gpus
                    .iter()
                    .map(|g| pb::Gpu {
                        index: g.index,
                        uuid: g.uuid.clone(),
                        gpu_class: g.class.clone(),
                        memory_mib: g.memory_mib,
                        resident_model: memory
                            .resident
                            .get(&n.name)
                            .and_then(|cards| cards.get(&g.index))
                            .cloned()
                            .unwrap_or_default(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        for job in jobs
            .iter()
            .filter(|j| matches!(j.state, JobState::Admitted | JobState::Running))
        {
            let Some(placement) = &job.placement else {
                continue;
            };
            let Some(node) = nodes.iter_mut().find(|n| n.name == placement.node) else {
                continue;
            };
            node.used_cpu_milli += job.spec.resources.cpu_milli;
            node.used_memory_mib += job.spec.resources.memory_mib;
            for a in &placement.gpus {
                let Some(gpu) = node.gpus.iter_mut().find(|g| g.index == a.index) else {
                    continue;
                };
                gpu.used_milli += a.milli;
                gpu.used_memory_mib += a.memory_mib;
                // Who holds a card is the holder's business: tenants see
                // their own allocations only.
                if who.can_see(&job.tenant_id) {
                    gpu.allocations.push(pb::GpuAllocation {
                        job_id: job.id.to_string(),
                        tenant_id: job.tenant_id.to_string(),
                        milli: a.milli,
                        memory_mib: a.memory_mib,
                    });
                }
            }
        }
        let (nodes, next_page_token) = super::page_of(nodes, |n| n.name.as_str(), size, &token);
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            next_page_token,
            gpu_classes: inventory
                .classes
                .iter()
                .map(|c| pb::GpuClass {
                    name: c.name.clone(),
                    memory_mib: c.memory_mib,
                })
                .collect(),
        }))
    }
}
