//! An InferenceJob's store spec (the same input the API validates) and its
//! one Pod: finpool's scheduler, GPUs by the NVIDIA device-plugin names,
//! the base model read-only from the nodes' cache, a restricted security
//! context, and the max runtime as `activeDeadlineSeconds`.

use std::collections::BTreeMap;

use finpool_domain::job::{GpuRequestInput, GpuShareInput, JobSpecInput, ResourcesInput};
use finpool_domain::{RestartPolicy as StoreRestart, TenantId};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::tenant::{MIG_PROFILES, MODEL_CACHE_CLAIM};
use super::{
    GPUS_ANNOTATION, Invalid, JOB_ID_LABEL, MANAGED_BY, SCHEDULER_NAME, TENANT_LABEL, owner_ref,
};
use crate::crd::inference_job::{InferenceJob, RestartPolicy};

/// Where a job finds its model.
pub const MODEL_MOUNT: &str = "/models";
/// Annotations the scheduler reads: the share a fractional job asked for.
pub const GPU_MILLI_ANNOTATION: &str = "finpool.io/gpu-milli";
pub const GPU_MEMORY_ANNOTATION: &str = "finpool.io/gpu-memory-mib";

/// The job as the store's submit path takes it. The object's uid is the
/// idempotency key, so applying the same object twice submits once.
pub fn store_input(job: &InferenceJob) -> Result<JobSpecInput, Invalid> {
    let spec = &job.spec;
    let uid =
        job.metadata.uid.clone().ok_or_else(|| {
            Invalid::new("metadata.uid", "not set (the object is not stored yet)")
        })?;
    Ok(JobSpecInput {
        name: job.name_any(),
        model: spec.model.clone().unwrap_or_default(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        resources: ResourcesInput {
            gpu: Some(GpuRequestInput {
                whole_gpus: spec.resources.gpu.whole_gpus,
                share: spec.resources.gpu.share.as_ref().map(|s| GpuShareInput {
                    milli: s.milli,
                    memory_mib: s.memory_mib,
                }),
            }),
            gpu_classes: spec.resources.gpu_classes.clone(),
            cpu_milli: spec.resources.cpu_milli,
            memory_mib: spec.resources.memory_mib,
        },
        priority: spec.priority,
        max_runtime_ms: spec.max_runtime_seconds.map(|s| s.saturating_mul(1000)),
        min_runtime_ms: spec.min_runtime_seconds.map(|s| s.saturating_mul(1000)),
        idempotency_key: format!("k8s:{uid}"),
        labels: BTreeMap::from([
            (
                "k8s-namespace".to_owned(),
                job.namespace().unwrap_or_default(),
            ),
            ("k8s-uid".to_owned(), uid),
        ]),
        restart_policy: Some(match spec.restart_policy {
            RestartPolicy::Fail => StoreRestart::Fail,
            RestartPolicy::Requeue => StoreRestart::Requeue,
        }),
    })
}

/// What the builder needs besides the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInputs {
    pub tenant: TenantId,
    /// The store's job id.
    pub job_id: String,
    /// Whether the tenant isolates shares in MIG slices.
    pub mig: bool,
}

/// The smallest MIG profile holding `memory_mib`, if any.
pub fn mig_profile(memory_mib: i64) -> Option<&'static str> {
    MIG_PROFILES
        .iter()
        .map(|(p, _)| *p)
        .find(|p| profile_memory_mib(p) >= memory_mib)
}

fn profile_memory_mib(profile: &str) -> i64 {
    // "nvidia.com/mig-3g.40gb" → 40 GiB.
    profile
        .rsplit('.')
        .next()
        .and_then(|gb| gb.strip_suffix("gb"))
        .and_then(|n| n.parse::<i64>().ok())
        .map_or(0, |gb| gb * 1024)
}

/// The job's Pod.
pub fn pod(job: &InferenceJob, inputs: &PodInputs) -> Result<Pod, Invalid> {
    let spec = &job.spec;
    let name = job.name_any();
    let mut requests = BTreeMap::new();
    let mut annotations = BTreeMap::from([(JOB_ID_LABEL.to_owned(), inputs.job_id.clone())]);
    if spec.resources.cpu_milli > 0 {
        requests.insert(
            "cpu".to_owned(),
            Quantity(format!("{}m", spec.resources.cpu_milli)),
        );
    }
    if spec.resources.memory_mib > 0 {
        requests.insert(
            "memory".to_owned(),
            Quantity(format!("{}Mi", spec.resources.memory_mib)),
        );
    }
    let mut limits = requests.clone();
    match (&spec.resources.gpu.whole_gpus, &spec.resources.gpu.share) {
        (Some(n), None) => {
            limits.insert("nvidia.com/gpu".into(), Quantity(n.to_string()));
        }
        (None, Some(share)) if inputs.mig => {
            let memory = if share.memory_mib > 0 {
                share.memory_mib
            } else {
                // Compute only: the slice with at least that share of an
                // 80 GiB card's memory.
                share.milli * 80 * 1024 / 1000
            };
            let profile = mig_profile(memory).ok_or_else(|| {
                Invalid::new(
                    "spec.resources.gpu.share.memoryMiB",
                    format!("{memory} MiB fits no MIG slice (the largest holds 80 GiB)"),
                )
            })?;
            limits.insert(profile.into(), Quantity("1".into()));
        }
        (None, Some(share)) => {
            limits.insert("nvidia.com/gpu.shared".into(), Quantity("1".into()));
            annotations.insert(GPU_MILLI_ANNOTATION.into(), share.milli.to_string());
            annotations.insert(GPU_MEMORY_ANNOTATION.into(), share.memory_mib.to_string());
        }
        _ => {
            return Err(Invalid::new(
                "spec.resources.gpu",
                "exactly one of wholeGpus and share",
            ));
        }
    }
    // Extended resources are requested as much as limited.
    for (k, v) in &limits {
        requests.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let mut env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..EnvVar::default()
        })
        .collect();
    env.push(EnvVar {
        name: "FINPOOL_JOB_ID".into(),
        value: Some(inputs.job_id.clone()),
        ..EnvVar::default()
    });
    // The cards the scheduler assigned, set by the binding before the
    // container starts.
    env.push(EnvVar {
        name: "FINPOOL_GPUS".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.annotations['{GPUS_ANNOTATION}']"),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(model) = &spec.model {
        let path = format!("{MODEL_MOUNT}/{model}");
        env.push(EnvVar {
            name: "FINPOOL_MODEL_PATH".into(),
            value: Some(path.clone()),
            ..EnvVar::default()
        });
        volumes.push(Volume {
            name: "model".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: MODEL_CACHE_CLAIM.into(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "model".into(),
            mount_path: path,
            sub_path: Some(model.clone()),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let labels = BTreeMap::from([
        (TENANT_LABEL.to_owned(), inputs.tenant.to_string()),
        (JOB_ID_LABEL.to_owned(), inputs.job_id.clone()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ]);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(job, true)]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            scheduler_name: Some(SCHEDULER_NAME.into()),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: spec.max_runtime_seconds,
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "job".into(),
                image: Some(spec.image.clone()),
                command: Some(spec.command.clone()),
                args: (!spec.args.is_empty()).then(|| spec.args.clone()),
                env: Some(env),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: Some(limits),
                    ..ResourceRequirements::default()
                }),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::inference_job::{GpuRequest, GpuShare, InferenceJobSpec, JobResources};

    pub(crate) fn var_job() -> InferenceJob {
        let mut j = InferenceJob::new(
            "var-2026-12-01",
            InferenceJobSpec {
                image: "registry.example/risk-batch:1.4".into(),
                command: vec!["python".into(), "-m".into(), "risk.var".into()],
                args: vec!["--date".into(), "2026-12-01".into()],
                env: BTreeMap::from([("DESK".to_owned(), "7".to_owned())]),
                model: Some("llama-3-8b".into()),
                resources: JobResources {
                    gpu: GpuRequest {
                        whole_gpus: Some(2),
                        share: None,
                    },
                    gpu_classes: vec!["A100".into()],
                    cpu_milli: 4000,
                    memory_mib: 16384,
                },
                priority: 5,
                max_runtime_seconds: Some(3600),
                min_runtime_seconds: Some(60),
                restart_policy: RestartPolicy::Requeue,
            },
        );
        j.metadata.namespace = Some("alpha-jobs".into());
        j.metadata.uid = Some("uid-1".into());
        j
    }

    fn inputs() -> PodInputs {
        PodInputs {
            tenant: TenantId::parse("t", "alpha").unwrap(),
            job_id: "0190-job".into(),
            mig: false,
        }
    }

    #[test]
    fn the_pod_goes_to_finpool_with_device_plugin_gpus_and_a_deadline() {
        let pod = pod(&var_job(), &inputs()).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("finpool-scheduler"));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        let r = c.resources.as_ref().unwrap();
        assert_eq!(
            r.limits.as_ref().unwrap()["nvidia.com/gpu"],
            Quantity("2".into())
        );
        assert_eq!(
            r.requests.as_ref().unwrap()["nvidia.com/gpu"],
            Quantity("2".into())
        );
        assert_eq!(
            r.requests.as_ref().unwrap()["cpu"],
            Quantity("4000m".into())
        );
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("InferenceJob", Some(true))
        );
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[TENANT_LABEL], "alpha");
    }

    #[test]
    fn the_pod_passes_pod_security_restricted() {
        let pod = pod(&var_job(), &inputs()).unwrap();
        let spec = pod.spec.unwrap();
        let psc = spec.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
        // No hostPath, host network or privileged anything.
        for v in spec.volumes.iter().flatten() {
            assert!(v.host_path.is_none(), "{v:?}");
        }
        assert!(spec.host_network.is_none() && spec.host_pid.is_none());
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn the_model_is_mounted_read_only_from_the_cache_claim() {
        let pod = pod(&var_job(), &inputs()).unwrap();
        let spec = pod.spec.unwrap();
        let volume = &spec.volumes.unwrap()[0];
        let claim = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            (MODEL_CACHE_CLAIM, Some(true))
        );
        let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mount.sub_path.as_deref(), Some("llama-3-8b"));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(
            env.iter().any(|e| e.name == "FINPOOL_MODEL_PATH"
                && e.value.as_deref() == Some("/models/llama-3-8b"))
        );
    }

    #[test]
    fn shares_use_the_shared_resource_or_a_mig_slice() {
        let mut job = var_job();
        job.spec.resources.gpu = GpuRequest {
            whole_gpus: None,
            share: Some(GpuShare {
                milli: 250,
                memory_mib: 20_000,
            }),
        };
        let shared = pod(&job, &inputs()).unwrap();
        let limits = shared.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap()
            .limits
            .unwrap();
        assert_eq!(limits["nvidia.com/gpu.shared"], Quantity("1".into()));
        assert_eq!(
            shared.metadata.annotations.unwrap()[GPU_MILLI_ANNOTATION],
            "250"
        );
        let mig = pod(
            &job,
            &PodInputs {
                mig: true,
                ..inputs()
            },
        )
        .unwrap();
        let limits = mig.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap()
            .limits
            .unwrap();
        assert_eq!(limits["nvidia.com/mig-2g.20gb"], Quantity("1".into()));
        assert!(!limits.contains_key("nvidia.com/gpu"));
    }

    #[test]
    fn the_store_spec_is_keyed_by_the_object_uid() {
        let input = store_input(&var_job()).unwrap();
        assert_eq!(input.idempotency_key, "k8s:uid-1");
        assert_eq!(input.max_runtime_ms, Some(3_600_000));
        assert_eq!(input.resources.gpu.unwrap().whole_gpus, Some(2));
        assert_eq!(input.restart_policy, Some(StoreRestart::Requeue));
        let mut unsaved = var_job();
        unsaved.metadata.uid = None;
        assert_eq!(store_input(&unsaved).unwrap_err().field, "metadata.uid");
    }
}
