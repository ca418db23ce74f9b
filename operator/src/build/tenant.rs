//! A Tenant's fences: its namespaces (labelled, Pod Security
//! `restricted`), a GPU ResourceQuota at its limit, a LimitRange, a
//! default-deny NetworkPolicy that lets out only DNS and the model cache,
//! a RoleBinding that lets its group manage InferenceJobs there and nothing
//! else, and a read-only claim on the nodes' model cache. Also the store's
//! tenant row.

use std::collections::BTreeMap;

use finpool_domain::tenant::{QuotaInput, TenantInput};
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, ResourceQuota, ResourceQuotaSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Install, Invalid, MANAGED_BY, TENANT_CLUSTER_ROLE, TENANT_LABEL, owner_ref};
use crate::crd::tenant::{Isolation, Tenant};

/// The claim on the model cache each tenant namespace gets.
pub const MODEL_CACHE_CLAIM: &str = "finpool-model-cache";
/// The label the model-cache service's pods carry.
pub const MODEL_CACHE_COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "model-cache");
/// Time-slicing replicas the device plugin advertises per card, for
/// fractional jobs (`nvidia.com/gpu.shared`).
pub const SHARED_REPLICAS_PER_GPU: i64 = 10;
/// MIG profiles of an 80 GB card and how many fit on one card.
pub const MIG_PROFILES: &[(&str, i64)] = &[
    ("nvidia.com/mig-1g.10gb", 7),
    ("nvidia.com/mig-2g.20gb", 3),
    ("nvidia.com/mig-3g.40gb", 2),
    ("nvidia.com/mig-4g.40gb", 1),
    ("nvidia.com/mig-7g.80gb", 1),
];

/// Everything a Tenant owns in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantObjects {
    pub namespaces: Vec<Namespace>,
    pub quotas: Vec<ResourceQuota>,
    pub limit_ranges: Vec<LimitRange>,
    pub network_policies: Vec<NetworkPolicy>,
    pub role_bindings: Vec<RoleBinding>,
    pub volumes: Vec<PersistentVolume>,
    pub claims: Vec<PersistentVolumeClaim>,
}

/// The group acting for the tenant.
pub fn group(tenant: &Tenant) -> String {
    tenant
        .spec
        .group
        .clone()
        .unwrap_or_else(|| format!("finpool:tenant:{}", tenant.name_any()))
}

/// The store's view of the tenant, validated as the API validates it.
pub fn store_input(tenant: &Tenant) -> Result<TenantInput, Invalid> {
    let spec = &tenant.spec;
    let quotas = spec
        .quotas
        .iter()
        .map(|q| {
            (
                q.gpu_class.clone(),
                QuotaInput {
                    guaranteed: q.guaranteed,
                    limit: None,
                    borrowing_limit: Some(q.borrowing_limit.unwrap_or(0)),
                    lending_limit: q.lending_limit,
                },
            )
        })
        .collect();
    Ok(TenantInput {
        id: tenant.name_any(),
        display_name: spec.display_name.clone(),
        quotas,
        weight: spec.weight,
        isolation: match spec.isolation {
            Isolation::Exclusive => "exclusive",
            Isolation::SharedWithinTenant => "shared-within-tenant",
            Isolation::Mig => "mig",
        }
        .into(),
    })
}

/// The most GPUs the tenant may hold across classes (its guarantees plus
/// what it may borrow): the namespace quota's cap.
pub fn gpu_limit(tenant: &Tenant) -> i64 {
    tenant
        .spec
        .quotas
        .iter()
        .map(|q| q.guaranteed + q.borrowing_limit.unwrap_or(0))
        .sum()
}

/// Checks what the schema cannot: that no namespace is a system one.
pub fn validate(tenant: &Tenant) -> Result<(), Invalid> {
    for (i, ns) in tenant.spec.namespaces.iter().enumerate() {
        if ns.starts_with("kube-") || ns == "default" {
            return Err(Invalid::new(
                format!("spec.namespaces[{i}]"),
                format!("{ns:?} is a system namespace; a tenant gets its own"),
            ));
        }
    }
    store_input(tenant)?;
    Ok(())
}

/// Refuses a namespace that already exists for another tenant, or that
/// exists without being finpool's (taking over someone's namespace would
/// hand its contents to the tenant). `existing` gives, per namespace of the
/// spec, the tenant label of the live namespace (`Some(None)`: it exists
/// without one; `None`: it does not exist).
pub fn check_ownership(
    tenant: &Tenant,
    existing: &[Option<Option<String>>],
) -> Result<(), Invalid> {
    let me = tenant.name_any();
    for (i, (ns, live)) in tenant.spec.namespaces.iter().zip(existing).enumerate() {
        match live {
            None => {}
            Some(Some(owner)) if *owner == me => {}
            Some(Some(owner)) => {
                return Err(Invalid::new(
                    format!("spec.namespaces[{i}]"),
                    format!("{ns} belongs to tenant {owner}"),
                ));
            }
            Some(None) => {
                return Err(Invalid::new(
                    format!("spec.namespaces[{i}]"),
                    format!("{ns} exists and is not a finpool tenant namespace"),
                ));
            }
        }
    }
    Ok(())
}

fn meta(tenant: &Tenant, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(tenant)),
        owner_references: Some(vec![owner_ref(tenant, true)]),
        ..ObjectMeta::default()
    }
}

fn labels(tenant: &Tenant) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TENANT_LABEL.to_owned(), tenant.name_any()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ])
}

fn quantity(n: i64) -> Quantity {
    Quantity(n.to_string())
}

/// Builds every object the tenant owns.
pub fn build(tenant: &Tenant, install: &Install) -> TenantObjects {
    let mut out = TenantObjects {
        namespaces: Vec::new(),
        quotas: Vec::new(),
        limit_ranges: Vec::new(),
        network_policies: Vec::new(),
        role_bindings: Vec::new(),
        volumes: Vec::new(),
        claims: Vec::new(),
    };
    let limit = gpu_limit(tenant);
    for ns in &tenant.spec.namespaces {
        out.namespaces.push(namespace(tenant, ns));
        out.quotas.push(quota(tenant, ns, limit));
        out.limit_ranges.push(limit_range(tenant, ns));
        out.network_policies
            .push(network_policy(tenant, ns, install));
        out.role_bindings.push(role_binding(tenant, ns));
        out.volumes.push(cache_volume(tenant, ns, install));
        out.claims.push(cache_claim(tenant, ns));
    }
    out
}

fn namespace(tenant: &Tenant, ns: &str) -> Namespace {
    let mut m = meta(tenant, ns, None);
    let labels = m.labels.get_or_insert_with(BTreeMap::new);
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".into(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    Namespace {
        metadata: m,
        ..Namespace::default()
    }
}

fn quota(tenant: &Tenant, ns: &str, limit: i64) -> ResourceQuota {
    let mut hard = BTreeMap::from([
        ("requests.nvidia.com/gpu".to_owned(), quantity(limit)),
        (
            "requests.nvidia.com/gpu.shared".to_owned(),
            quantity(limit * SHARED_REPLICAS_PER_GPU),
        ),
    ]);
    for (profile, per_card) in MIG_PROFILES {
        let allowed = if tenant.spec.isolation == Isolation::Mig {
            limit * per_card
        } else {
            0
        };
        hard.insert(format!("requests.{profile}"), quantity(allowed));
    }
    if tenant.spec.suspended {
        // A suspended tenant starts nothing new, even around finpool.
        hard.insert("pods".into(), quantity(0));
    }
    ResourceQuota {
        metadata: meta(tenant, "finpool-gpu", Some(ns)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

fn limit_range(tenant: &Tenant, ns: &str) -> LimitRange {
    let q = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(mem.into())),
        ])
    };
    LimitRange {
        metadata: meta(tenant, "finpool-defaults", Some(ns)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default_request: Some(q("500m", "512Mi")),
                default: Some(q("2", "4Gi")),
                max: Some(q("64", "512Gi")),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

fn network_policy(tenant: &Tenant, ns: &str, install: &Install) -> NetworkPolicy {
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    };
    let in_namespace = |namespace: &str, pod: (&str, &str)| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(pod.0.to_owned(), pod.1.to_owned())])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: meta(tenant, "finpool-default-deny", Some(ns)),
        spec: Some(NetworkPolicySpec {
            // Every pod of the namespace: nothing in, and out only to DNS
            // and the model cache.
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: Some(vec![in_namespace("kube-system", ("k8s-app", "kube-dns"))]),
                    ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![in_namespace(
                        &install.namespace,
                        MODEL_CACHE_COMPONENT,
                    )]),
                    ports: None,
                },
            ]),
        }),
    }
}

fn role_binding(tenant: &Tenant, ns: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(tenant, "finpool-tenant", Some(ns)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: TENANT_CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: group(tenant),
            namespace: None,
        }]),
    }
}

/// The volume name for a namespace's claim on the cache.
pub fn cache_volume_name(ns: &str) -> String {
    format!("finpool-model-cache-{ns}")
}

/// The nodes' model cache as a read-only volume bound to one namespace's
/// claim: Pod Security `restricted` forbids hostPath in the pod itself.
fn cache_volume(tenant: &Tenant, ns: &str, install: &Install) -> PersistentVolume {
    use k8s_openapi::api::core::v1::{HostPathVolumeSource, ObjectReference};
    PersistentVolume {
        metadata: meta(tenant, &cache_volume_name(ns), None),
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadOnlyMany".into()]),
            capacity: Some(BTreeMap::from([(
                "storage".to_owned(),
                Quantity("1Ti".into()),
            )])),
            host_path: Some(HostPathVolumeSource {
                path: install.model_cache.clone(),
                type_: Some("Directory".into()),
            }),
            claim_ref: Some(ObjectReference {
                namespace: Some(ns.to_owned()),
                name: Some(MODEL_CACHE_CLAIM.into()),
                ..ObjectReference::default()
            }),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some("finpool-model-cache".into()),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    }
}

fn cache_claim(tenant: &Tenant, ns: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(tenant, MODEL_CACHE_CLAIM, Some(ns)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadOnlyMany".into()]),
            storage_class_name: Some("finpool-model-cache".into()),
            volume_name: Some(cache_volume_name(ns)),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity("1Ti".into()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::tenant::{ClassQuota, TenantSpec};

    pub(crate) fn alpha() -> Tenant {
        let mut t = Tenant::new(
            "alpha",
            TenantSpec {
                display_name: "Alpha Securities".into(),
                namespaces: vec!["alpha-jobs".into(), "alpha-research".into()],
                quotas: vec![
                    ClassQuota {
                        gpu_class: "A100".into(),
                        guaranteed: 2,
                        borrowing_limit: Some(2),
                        lending_limit: Some(1),
                    },
                    ClassQuota {
                        gpu_class: "L4".into(),
                        guaranteed: 1,
                        borrowing_limit: None,
                        lending_limit: None,
                    },
                ],
                weight: 1,
                isolation: Isolation::SharedWithinTenant,
                allowed_models: vec![],
                allowed_locations: vec![],
                suspended: false,
                group: None,
            },
        );
        t.metadata.uid = Some("uid-alpha".into());
        t
    }

    #[test]
    fn every_namespace_is_fenced() {
        let objects = build(&alpha(), &Install::default());
        assert_eq!(objects.namespaces.len(), 2);
        for ns in &objects.namespaces {
            let labels = ns.metadata.labels.as_ref().unwrap();
            assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
            assert_eq!(labels[TENANT_LABEL], "alpha");
            let owner = &ns.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Tenant", "uid-alpha")
            );
        }
    }

    #[test]
    fn the_quota_caps_gpus_at_guarantees_plus_borrowing() {
        let objects = build(&alpha(), &Install::default());
        let hard = objects.quotas[0]
            .spec
            .as_ref()
            .unwrap()
            .hard
            .as_ref()
            .unwrap();
        // A100 2 + 2 borrowable, L4 1.
        assert_eq!(hard["requests.nvidia.com/gpu"], Quantity("5".into()));
        assert_eq!(
            hard["requests.nvidia.com/gpu.shared"],
            Quantity("50".into())
        );
        // Not a MIG tenant: no MIG slices at all.
        assert_eq!(
            hard["requests.nvidia.com/mig-1g.10gb"],
            Quantity("0".into())
        );
        let mut mig = alpha();
        mig.spec.isolation = Isolation::Mig;
        let hard = build(&mig, &Install::default()).quotas[0]
            .spec
            .clone()
            .unwrap()
            .hard
            .unwrap();
        assert_eq!(
            hard["requests.nvidia.com/mig-1g.10gb"],
            Quantity("35".into())
        );
    }

    #[test]
    fn network_is_default_deny_with_dns_and_the_model_cache_only() {
        let objects = build(&alpha(), &Install::default());
        let spec = objects.network_policies[0].spec.as_ref().unwrap();
        assert_eq!(spec.pod_selector, Some(LabelSelector::default()));
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
        );
        assert_eq!(spec.ingress.as_ref().map(Vec::len), Some(0));
        let egress = spec.egress.as_ref().unwrap();
        assert_eq!(egress.len(), 2);
        let ports: Vec<i32> = egress[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| match p.port {
                Some(IntOrString::Int(n)) => Some(n),
                _ => None,
            })
            .collect();
        assert_eq!(ports, [53, 53]);
        let cache = &egress[1].to.as_ref().unwrap()[0];
        let ns = cache.namespace_selector.as_ref().unwrap();
        assert_eq!(
            ns.match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "finpool-system"
        );
    }

    #[test]
    fn the_tenant_group_is_bound_to_the_tenant_role_in_its_namespaces_only() {
        let objects = build(&alpha(), &Install::default());
        assert_eq!(objects.role_bindings.len(), 2);
        for (rb, ns) in objects
            .role_bindings
            .iter()
            .zip(["alpha-jobs", "alpha-research"])
        {
            assert_eq!(rb.metadata.namespace.as_deref(), Some(ns));
            assert_eq!(rb.role_ref.kind, "ClusterRole");
            assert_eq!(rb.role_ref.name, TENANT_CLUSTER_ROLE);
            let subject = &rb.subjects.as_ref().unwrap()[0];
            assert_eq!(
                (subject.kind.as_str(), subject.name.as_str()),
                ("Group", "finpool:tenant:alpha")
            );
        }
    }

    #[test]
    fn the_model_cache_is_a_read_only_claim_bound_to_its_namespace() {
        let objects = build(&alpha(), &Install::default());
        let pv = &objects.volumes[0];
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(
            spec.access_modes.as_deref(),
            Some(&["ReadOnlyMany".to_owned()][..])
        );
        let claim = spec.claim_ref.as_ref().unwrap();
        assert_eq!(claim.namespace.as_deref(), Some("alpha-jobs"));
        let pvc = &objects.claims[0];
        assert_eq!(pvc.metadata.namespace.as_deref(), Some("alpha-jobs"));
        assert_eq!(
            pvc.spec.as_ref().unwrap().volume_name.as_deref(),
            Some("finpool-model-cache-alpha-jobs")
        );
    }

    #[test]
    fn a_tenant_cannot_take_another_tenants_or_a_foreign_namespace() {
        let t = alpha();
        assert!(check_ownership(&t, &[None, Some(Some("alpha".into()))]).is_ok());
        let e = check_ownership(&t, &[None, Some(Some("beta".into()))]).unwrap_err();
        assert_eq!(e.field, "spec.namespaces[1]");
        assert!(e.reason.contains("tenant beta"), "{e}");
        let e = check_ownership(&t, &[Some(None), None]).unwrap_err();
        assert_eq!(e.field, "spec.namespaces[0]");
    }

    #[test]
    fn two_tenants_fences_never_reach_each_other() {
        let a = build(&alpha(), &Install::default());
        let mut beta = alpha();
        beta.metadata.name = Some("beta".into());
        beta.spec.namespaces = vec!["beta-jobs".into()];
        let b = build(&beta, &Install::default());
        for rb in &a.role_bindings {
            let ns = rb.metadata.namespace.as_deref().unwrap();
            assert!(ns.starts_with("alpha-"), "{ns}");
            for subject in rb.subjects.iter().flatten() {
                assert_ne!(subject.name, group(&beta));
            }
        }
        for rb in &b.role_bindings {
            assert_eq!(rb.metadata.namespace.as_deref(), Some("beta-jobs"));
            assert_eq!(rb.subjects.as_ref().unwrap()[0].name, "finpool:tenant:beta");
        }
        // Only RoleBindings: a tenant is granted nothing cluster-wide.
        assert!(
            a.role_bindings
                .iter()
                .all(|rb| rb.role_ref.kind == "ClusterRole"
                    && rb.role_ref.name == TENANT_CLUSTER_ROLE)
        );
    }

    #[test]
    fn system_namespaces_are_refused_by_field() {
        let mut t = alpha();
        t.spec.namespaces.push("kube-system".into());
        let e = validate(&t).unwrap_err();
        assert_eq!(e.field, "spec.namespaces[2]");
    }

    #[test]
    fn the_store_row_matches_the_api_rules() {
        let input = store_input(&alpha()).unwrap();
        let tenant = input
            .validate(&["A100".into(), "L4".into()], finpool_domain::Timestamp(0))
            .unwrap();
        assert_eq!(tenant.quota("A100").guaranteed, 2);
        assert_eq!(tenant.quota("A100").limit, 4);
        assert_eq!(tenant.quota("A100").lending_limit, Some(1));
    }
}
