"""The Kubernetes 1.33 API as discovery shows it, for the CI's offline checks.

Built-in group/versions with their resources (plural, kind, namespaced),
as a 1.33 API server with default feature gates serves them (alpha and
beta-off-by-default groups left out). `with_crds` adds the groups that
CustomResourceDefinition files define, as a server does once they are
applied. Used by .ci/k8s-discovery-stub (kubectl's REST mapping) and
.ci/rbac-check (which resources are cluster-scoped).
"""

import glob
import os

import yaml

NS, CLUSTER = True, False

# (group, version) -> [(plural, kind, namespaced)]
BUILTIN = {
    ("", "v1"): [
        ("bindings", "Binding", NS),
        ("componentstatuses", "ComponentStatus", CLUSTER),
        ("configmaps", "ConfigMap", NS),
        ("endpoints", "Endpoints", NS),
        ("events", "Event", NS),
        ("limitranges", "LimitRange", NS),
        ("namespaces", "Namespace", CLUSTER),
        ("nodes", "Node", CLUSTER),
        ("persistentvolumeclaims", "PersistentVolumeClaim", NS),
        ("persistentvolumes", "PersistentVolume", CLUSTER),
        ("pods", "Pod", NS),
        ("podtemplates", "PodTemplate", NS),
        ("replicationcontrollers", "ReplicationController", NS),
        ("resourcequotas", "ResourceQuota", NS),
        ("secrets", "Secret", NS),
        ("serviceaccounts", "ServiceAccount", NS),
        ("services", "Service", NS),
    ],
    ("apps", "v1"): [
        ("controllerrevisions", "ControllerRevision", NS),
        ("daemonsets", "DaemonSet", NS),
        ("deployments", "Deployment", NS),
        ("replicasets", "ReplicaSet", NS),
        ("statefulsets", "StatefulSet", NS),
    ],
    ("batch", "v1"): [
        ("cronjobs", "CronJob", NS),
        ("jobs", "Job", NS),
    ],
    ("autoscaling", "v2"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler", NS)],
    ("autoscaling", "v1"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler", NS)],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", NS)],
    ("rbac.authorization.k8s.io", "v1"): [
        ("clusterrolebindings", "ClusterRoleBinding", CLUSTER),
        ("clusterroles", "ClusterRole", CLUSTER),
        ("rolebindings", "RoleBinding", NS),
        ("roles", "Role", NS),
    ],
    ("networking.k8s.io", "v1"): [
        ("ingressclasses", "IngressClass", CLUSTER),
        ("ingresses", "Ingress", NS),
        ("ipaddresses", "IPAddress", CLUSTER),
        ("networkpolicies", "NetworkPolicy", NS),
        ("servicecidrs", "ServiceCIDR", CLUSTER),
    ],
    ("coordination.k8s.io", "v1"): [("leases", "Lease", NS)],
    ("events.k8s.io", "v1"): [("events", "Event", NS)],
    ("discovery.k8s.io", "v1"): [("endpointslices", "EndpointSlice", NS)],
    ("apiextensions.k8s.io", "v1"): [
        ("customresourcedefinitions", "CustomResourceDefinition", CLUSTER),
    ],
    ("apiregistration.k8s.io", "v1"): [("apiservices", "APIService", CLUSTER)],
    ("admissionregistration.k8s.io", "v1"): [
        ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", CLUSTER),
        ("validatingadmissionpolicies", "ValidatingAdmissionPolicy", CLUSTER),
        ("validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding", CLUSTER),
        ("validatingwebhookconfigurations", "ValidatingWebhookConfiguration", CLUSTER),
    ],
    ("certificates.k8s.io", "v1"): [
        ("certificatesigningrequests", "CertificateSigningRequest", CLUSTER),
    ],
    ("scheduling.k8s.io", "v1"): [("priorityclasses", "PriorityClass", CLUSTER)],
    ("node.k8s.io", "v1"): [("runtimeclasses", "RuntimeClass", CLUSTER)],
    ("storage.k8s.io", "v1"): [
        ("csidrivers", "CSIDriver", CLUSTER),
        ("csinodes", "CSINode", CLUSTER),
        ("csistoragecapacities", "CSIStorageCapacity", NS),
        ("storageclasses", "StorageClass", CLUSTER),
        ("volumeattachments", "VolumeAttachment", CLUSTER),
    ],
    ("flowcontrol.apiserver.k8s.io", "v1"): [
        ("flowschemas", "FlowSchema", CLUSTER),
        ("prioritylevelconfigurations", "PriorityLevelConfiguration", CLUSTER),
    ],
}

# Not built in: the Prometheus Operator's CRD, which the chart's optional
# ServiceMonitors need on a real cluster too.
PROMETHEUS_OPERATOR = {
    ("monitoring.coreos.com", "v1"): [("servicemonitors", "ServiceMonitor", NS)],
}


def crd_groups(crd_dir):
    """(group, version) -> resources of the CRDs in crd_dir (*.yaml)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "*.y*ml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                namespaced = spec.get("scope") == "Namespaced"
                for version in spec.get("versions", []):
                    if version.get("served", True):
                        out.setdefault((spec["group"], version["name"]), []).append(
                            (spec["names"]["plural"], spec["names"]["kind"], namespaced)
                        )
    return out


def api(crd_dir=None, extra=PROMETHEUS_OPERATOR):
    table = {k: list(v) for k, v in BUILTIN.items()}
    for source in (extra or {}), (crd_groups(crd_dir) if crd_dir else {}):
        for key, resources in source.items():
            table.setdefault(key, []).extend(resources)
    return table


def scopes(table):
    """(group, plural) -> namespaced, over every version."""
    out = {}
    for (group, _version), resources in table.items():
        for plural, _kind, namespaced in resources:
            out[(group, plural)] = namespaced
    return out
