//! A BaseModel's pre-cache Jobs: one per target node, in finpool's own
//! namespace (tenants never write the cache), copying the weights into
//! `<cache>/<model>` and marking it complete with a `.ready` file.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::{Install, MANAGED_BY, owner_ref};
use crate::crd::base_model::BaseModel;

/// The label naming the model a pre-cache Job fills.
pub const MODEL_LABEL: &str = "finpool.io/model";
/// The label naming the node a pre-cache Job fills.
pub const NODE_LABEL: &str = "finpool.io/node";

/// The pre-cache Job's name for a model and node (stable, so applying it
/// again changes nothing; long names are cut and hashed).
pub fn job_name(model: &str, node: &str) -> String {
    let full = format!("precache-{model}-{node}");
    if full.len() <= 63 {
        return full;
    }
    let digest = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{:012x}", &full[..46], digest & 0xffff_ffff_ffff)
}

/// One Job per node in `precacheNodes`; none for a hostPath source, which
/// is on the nodes already.
pub fn precache_jobs(model: &BaseModel, install: &Install) -> Vec<Job> {
    let name = model.name_any();
    let source = &model.spec.source;
    if source.host_path.is_some() {
        return Vec::new();
    }
    let target = format!("/cache/{name}");
    let (fetch, source_volume) = match (&source.pvc, &source.uri) {
        (Some(pvc), _) => (
            format!("cp -a /source/. {target}.partial/"),
            Some(Volume {
                name: "source".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc.claim_name.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            }),
        ),
        (None, Some(_)) => (
            format!(
                "wget -q -O {target}.partial/model.tar \"$MODEL_URI\" && tar -xf {target}.partial/model.tar -C {target}.partial && rm {target}.partial/model.tar"
            ),
            None,
        ),
        (None, None) => return Vec::new(),
    };
    // Copy aside, then rename: a reader never sees half a model.
    let script = format!(
        "set -eu; [ -f {target}/.ready ] && exit 0; rm -rf {target}.partial; mkdir -p {target}.partial; {fetch}; touch {target}.partial/.ready; rm -rf {target}; mv {target}.partial {target}"
    );
    let mut volumes = vec![Volume {
        name: "cache".into(),
        host_path: Some(HostPathVolumeSource {
            path: install.model_cache.clone(),
            type_: Some("DirectoryOrCreate".into()),
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "cache".into(),
        mount_path: "/cache".into(),
        ..VolumeMount::default()
    }];
    if let Some(v) = source_volume {
        volumes.push(v);
        mounts.push(VolumeMount {
            name: "source".into(),
            mount_path: "/source".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    model
        .spec
        .precache_nodes
        .iter()
        .map(|node| {
            let labels = BTreeMap::from([
                (MODEL_LABEL.to_owned(), name.clone()),
                (NODE_LABEL.to_owned(), node.clone()),
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            ]);
            Job {
                metadata: ObjectMeta {
                    name: Some(job_name(&name, node)),
                    namespace: Some(install.namespace.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner_ref(model, true)]),
                    ..ObjectMeta::default()
                },
                spec: Some(JobSpec {
                    backoff_limit: Some(3),
                    ttl_seconds_after_finished: None,
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(PodSpec {
                            node_name: Some(node.clone()),
                            restart_policy: Some("OnFailure".into()),
                            automount_service_account_token: Some(false),
                            containers: vec![Container {
                                name: "precache".into(),
                                image: Some(install.precache_image.clone()),
                                command: Some(vec!["sh".into(), "-c".into(), script.clone()]),
                                env: source.uri.as_ref().map(|uri| {
                                    vec![k8s_openapi::api::core::v1::EnvVar {
                                        name: "MODEL_URI".into(),
                                        value: Some(uri.clone()),
                                        ..Default::default()
                                    }]
                                }),
                                volume_mounts: Some(mounts.clone()),
                                ..Container::default()
                            }],
                            volumes: Some(volumes.clone()),
                            ..PodSpec::default()
                        }),
                    },
                    ..JobSpec::default()
                }),
                ..Job::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::base_model::{BaseModelSpec, HostPathSource, ModelSource, PvcSource};

    fn model(source: ModelSource) -> BaseModel {
        let mut m = BaseModel::new(
            "llama-3-8b",
            BaseModelSpec {
                source,
                size_mib: 16384,
                min_gpu_memory_mib: 20480,
                load_time_seconds: Some(40),
                precache_nodes: vec!["gpu-1".into(), "gpu-2".into()],
            },
        );
        m.metadata.uid = Some("uid-m".into());
        m
    }

    #[test]
    fn one_job_per_node_pinned_to_it_in_finpools_namespace() {
        let m = model(ModelSource {
            pvc: Some(PvcSource {
                claim_name: "weights".into(),
                namespace: None,
            }),
            host_path: None,
            uri: None,
        });
        let jobs = precache_jobs(&m, &Install::default());
        assert_eq!(jobs.len(), 2);
        for (job, node) in jobs.iter().zip(["gpu-1", "gpu-2"]) {
            assert_eq!(job.metadata.namespace.as_deref(), Some("finpool-system"));
            let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            assert_eq!(pod.node_name.as_deref(), Some(node));
            let script = &pod.containers[0].command.as_ref().unwrap()[2];
            assert!(
                script.contains("mv /cache/llama-3-8b.partial /cache/llama-3-8b"),
                "{script}"
            );
        }
    }

    #[test]
    fn a_host_path_model_needs_no_copy() {
        let m = model(ModelSource {
            pvc: None,
            host_path: Some(HostPathSource {
                path: "/var/lib/finpool/models/llama-3-8b".into(),
            }),
            uri: None,
        });
        assert!(precache_jobs(&m, &Install::default()).is_empty());
    }

    #[test]
    fn job_names_are_stable_dns_labels() {
        assert_eq!(job_name("m", "n"), "precache-m-n");
        let long = job_name(&"m".repeat(40), &"node".repeat(10));
        assert!(long.len() <= 63, "{long}");
        assert_eq!(long, job_name(&"m".repeat(40), &"node".repeat(10)));
    }
}
