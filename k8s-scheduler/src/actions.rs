//! What the scheduler asks of the API server, as pure builders and thin
//! calls: bind a pod (the `pods/binding` subresource, the pod's uid as a
//! precondition, the cards in an annotation set by the same write), mark
//! one unschedulable (`PodScheduled=False`, reason `Unschedulable`), and
//! evict one gracefully (the Eviction API, so disruption budgets hold).

use finpool_domain::{Placement, Timestamp};
use finpool_operator::build::{GPUS_ANNOTATION, PREEMPTED_ANNOTATION};
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, Preconditions as K8sPreconditions,
};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::index::PodRef;

/// The reason kube-scheduler gives too, so `kubectl describe` and
/// autoscalers read it the same way.
pub const UNSCHEDULABLE: &str = "Unschedulable";

/// How an API call ended.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The pod is gone (or was replaced: its uid differs).
    #[error("pod {0} is gone")]
    Gone(String),
    /// A disruption budget forbids the eviction now; try again later.
    #[error("pod {0}: a disruption budget forbids evicting it now")]
    Budget(String),
    #[error("pod {pod}: {source}")]
    Api {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// The binding of `pod` to the placement's node.
pub fn binding(pod: &PodRef, placement: &Placement) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            // The API server binds only the pod with this uid: a pod
            // deleted and created again under its name is not bound.
            uid: Some(pod.uid.clone()),
            annotations: Some([(GPUS_ANNOTATION.to_owned(), placement.visible_devices())].into()),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(placement.node.clone()),
            ..ObjectReference::default()
        },
    }
}

/// The eviction of `pod`, graceful and only of this pod (its uid).
///
/// Built here rather than by `Api::evict`: kube-core 5.0 sends its delete
/// options as `delete_options`, a field the API server does not know, so
/// the grace period and the uid precondition would be dropped silently.
pub fn eviction(pod: &PodRef, grace_seconds: u32) -> Eviction {
    Eviction {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        delete_options: Some(DeleteOptions {
            grace_period_seconds: Some(i64::from(grace_seconds)),
            preconditions: Some(K8sPreconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteOptions::default()
        }),
    }
}

/// The status patch saying why a pod waits: `code: text`, the typed wait
/// reason first so that tools can match it.
pub fn unschedulable_patch(code: &str, text: &str, now: Timestamp) -> Value {
    json!({
        "status": {
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": UNSCHEDULABLE,
                "message": condition_message(code, text),
                "lastTransitionTime": now.to_rfc3339(),
            }]
        }
    })
}

pub fn condition_message(code: &str, text: &str) -> String {
    format!("{code}: {text}")
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Binds `pod`. A 409 (already bound, by an earlier try whose answer was
/// lost) counts as done: the uid precondition makes it the same pod.
pub async fn bind(
    client: &kube::Client,
    pod: &PodRef,
    placement: &Placement,
) -> Result<(), ActionError> {
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
    match api
        .create_subresource::<_, Value>(
            "binding",
            &pod.name,
            &PostParams::default(),
            &binding(pod, placement),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(409) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Err(ActionError::Gone(pod.to_string())),
        Err(source) => Err(ActionError::Api {
            pod: pod.to_string(),
            source,
        }),
    }
}

pub async fn mark_unschedulable(
    client: &kube::Client,
    pod: &PodRef,
    code: &str,
    text: &str,
) -> Result<(), ActionError> {
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
    match api
        .patch_status(
            &pod.name,
            &PatchParams::default(),
            &Patch::Strategic(unschedulable_patch(code, text, Timestamp::now())),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Err(ActionError::Gone(pod.to_string())),
        Err(source) => Err(ActionError::Api {
            pod: pod.to_string(),
            source,
        }),
    }
}

/// Marks `pod` as preempted (its end is then a requeue, not a failure),
/// then evicts it with `grace_seconds` to stop.
pub async fn evict(
    client: &kube::Client,
    pod: &PodRef,
    reason: &str,
    grace_seconds: u32,
) -> Result<(), ActionError> {
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
    let api_error = |source| ActionError::Api {
        pod: pod.to_string(),
        source,
    };
    let mark = json!({"metadata": {"annotations": {PREEMPTED_ANNOTATION: reason}}});
    match api
        .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&mark))
        .await
    {
        Ok(_) => {}
        Err(e) if status_code(&e) == Some(404) => return Err(ActionError::Gone(pod.to_string())),
        Err(e) => return Err(api_error(e)),
    }
    match api
        .create_subresource::<_, Value>(
            "eviction",
            &pod.name,
            &PostParams::default(),
            &eviction(pod, grace_seconds),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Err(ActionError::Gone(pod.to_string())),
        Err(e) if status_code(&e) == Some(429) => Err(ActionError::Budget(pod.to_string())),
        Err(e) => Err(api_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finpool_domain::GpuAssignment;

    #[test]
    fn a_binding_names_the_node_the_pod_uid_and_the_cards() {
        let pod = PodRef {
            namespace: "alpha-jobs".into(),
            name: "var".into(),
            uid: "u-1".into(),
        };
        let placement = Placement {
            node: "gpu-7".into(),
            gpus: [3, 5]
                .into_iter()
                .map(|index| GpuAssignment {
                    index,
                    uuid: format!("GPU-{index}"),
                    class: "H100".into(),
                    milli: 1000,
                    memory_mib: 81920,
                    mig_slice: None,
                })
                .collect(),
        };
        let b = serde_json::to_value(binding(&pod, &placement)).unwrap();
        assert_eq!(b["target"]["kind"], "Node");
        assert_eq!(b["target"]["name"], "gpu-7");
        assert_eq!(b["metadata"]["uid"], "u-1");
        assert_eq!(b["metadata"]["annotations"][GPUS_ANNOTATION], "3,5");
    }

    #[test]
    fn the_unschedulable_condition_carries_the_typed_reason() {
        let p = unschedulable_patch("QuotaExceeded", "over its limit", Timestamp::from_millis(0));
        let c = &p["status"]["conditions"][0];
        assert_eq!(c["type"], "PodScheduled");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], UNSCHEDULABLE);
        assert_eq!(c["message"], "QuotaExceeded: over its limit");
    }
}
