//! NodeService: the GPU inventory and who holds what.

use finpool_domain::JobState;
use finpool_proto::v1 as pb;
use finpool_proto::v1::node_service_server::NodeService;
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
        let mut nodes: Vec<pb::Node> = inventory
            .nodes
            .iter()
            .map(|n| pb::Node {
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
