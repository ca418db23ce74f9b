//! The ports the API needs, served by the cluster: the inventory from a
//! reflector over Nodes (GFD labels), and a job's output from its Pod's
//! log.

use std::sync::{Arc, RwLock};

use finpool_domain::{Inventory, Job};
use finpool_ports::{InventorySource, LogError, LogSource, LogStream};
use futures::{AsyncReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::build::JOB_ID_LABEL;

/// The inventory, kept current by a watch on Nodes.
#[derive(Clone, Default)]
pub struct NodeInventory {
    current: Arc<RwLock<Arc<Inventory>>>,
}

impl NodeInventory {
    /// Starts watching Nodes; the returned inventory follows them. The
    /// first list completes before this returns, so the API never serves
    /// an empty pool by mistake.
    pub async fn watch(client: Client) -> Result<Self, kube::Error> {
        let api = Api::<Node>::all(client);
        let first = api.list(&ListParams::default()).await?;
        let me = Self::default();
        me.replace(&first.items);
        let shared = me.clone();
        tokio::spawn(async move {
            let (reader, writer) = kube::runtime::reflector::store();
            let stream = kube::runtime::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .touched_objects();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "node watch interrupted; retrying");
                    continue;
                }
                let nodes: Vec<Node> = reader.state().iter().map(|n| (**n).clone()).collect();
                shared.replace(&nodes);
            }
        });
        Ok(me)
    }

    fn replace(&self, nodes: &[Node]) {
        let inventory = Arc::new(crate::inventory::from_nodes(nodes));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = inventory;
    }
}

impl InventorySource for NodeInventory {
    fn inventory(&self) -> Arc<Inventory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A job's output: its Pod's container log.
pub struct PodLogs {
    pub client: Client,
}

#[async_trait::async_trait]
impl LogSource for PodLogs {
    async fn open(&self, job: &Job, follow: bool) -> Result<LogStream, LogError> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("{JOB_ID_LABEL}={}", job.id)))
            .await
            .map_err(|e| LogError::Io(e.to_string()))?;
        let Some(pod) = pods.items.into_iter().next() else {
            // Not started in the cluster yet: no output so far.
            return Ok(futures::stream::empty().boxed());
        };
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = LogParams {
            follow,
            container: Some("job".into()),
            ..LogParams::default()
        };
        let reader = api
            .log_stream(&pod.name_any(), &params)
            .await
            .map_err(|e| LogError::Io(e.to_string()))?;
        // Chunks until the log ends; an error is the last item.
        let stream = futures::stream::unfold(Some(Box::pin(reader)), |reader| async move {
            let mut reader = reader?;
            let mut buf = vec![0u8; 16 * 1024];
            match reader.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), Some(reader)))
                }
                Err(e) => Some((Err(LogError::Io(e.to_string())), None)),
            }
        });
        Ok(stream.boxed())
    }
}
