//! The real API server suite, envtest-style: etcd and kube-apiserver
//! started here on loopback (no kubelet, no controllers), RBAC on, a token
//! file with an admin, the operator's service account and two tenants'
//! users. It installs the CRDs and the chart's RBAC, runs the operator as
//! its own user, and applies a Tenant, a BaseModel and an InferenceJob.
//!
//! Runs when `KUBE_APISERVER_BIN` and `ETCD_BIN` name binaries (and helm is
//! found: `HELM_BIN`, else `.ci/tools/bin/helm`); prints a "skipped: …"
//! line otherwise. `KUBE_CONTROLLER_MANAGER_BIN` is accepted for quota and
//! garbage collection but not needed by these checks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use finpool_operator::build::Install;
use finpool_operator::controller::{self, Context};
use finpool_operator::crd::{self, InferenceJob};
use finpool_store::{Store, StoreConfig};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, Config};
use serde_json::json;

const NAMESPACE: &str = "finpool-system";
const OPERATOR_USER: &str = "system:serviceaccount:finpool-system:finpool-operator";
const SCHEDULER_USER: &str = "system:serviceaccount:finpool-system:finpool-scheduler";

struct Binaries {
    apiserver: PathBuf,
    etcd: PathBuf,
    helm: PathBuf,
    /// Optional: with it, quotas are enforced and owners' dependents
    /// collected, and the suite checks both.
    controller_manager: Option<PathBuf>,
}

fn binaries() -> Result<Binaries, String> {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .ok_or_else(|| format!("set {name}"))
    };
    let apiserver = var("KUBE_APISERVER_BIN")?;
    let etcd = var("ETCD_BIN")?;
    let helm = std::env::var_os("HELM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/tools/bin/helm"));
    for p in [&apiserver, &etcd, &helm] {
        if !p.exists() {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    let controller_manager = std::env::var_os("KUBE_CONTROLLER_MANAGER_BIN").map(PathBuf::from);
    if let Some(p) = &controller_manager
        && !p.exists()
    {
        return Err(format!("{} does not exist", p.display()));
    }
    Ok(Binaries {
        apiserver,
        etcd,
        helm,
        controller_manager,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the processes when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    url: String,
    cert: PathBuf,
    /// Where the processes' logs are.
    log: PathBuf,
    /// The service-account signing key (the controller manager needs it).
    key_file: PathBuf,
    processes: Processes,
    _dir: tempfile::TempDir,
}

/// Tokens in the token file: (token, user, groups).
const USERS: &[(&str, &str, &str)] = &[
    ("admin-token", "admin", "system:masters"),
    (
        "operator-token",
        OPERATOR_USER,
        "system:serviceaccounts,system:serviceaccounts:finpool-system",
    ),
    // The group the example Tenant names for alpha.
    (
        "scheduler-token",
        SCHEDULER_USER,
        "system:serviceaccounts,system:serviceaccounts:finpool-system",
    ),
    ("alice-token", "alice", "alpha-traders"),
    ("bob-token", "bob", "finpool:tenant:beta"),
];

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The DER certificates in a PEM file.
fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split("-----END CERTIFICATE-----").next())
        .map(|b64| {
            let clean: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(clean)
                .unwrap()
        })
        .collect()
}

fn start(bins: &Binaries) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let etcd_client = free_port();
    let etcd_peer = free_port();
    let secure = free_port();
    let mut processes = Processes(Vec::new());
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    processes.0.push(
        Command::new(&bins.etcd)
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{etcd_peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(log("etcd.log"))
            .spawn()
            .expect("starting etcd"),
    );
    // The service-account signing key: ECDSA P-256, PKCS#8.
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let key_file = dir.path().join("sa.key");
    std::fs::write(&key_file, pem("PRIVATE KEY", key.as_ref())).unwrap();
    // Its public half as SubjectPublicKeyInfo: the fixed P-256 header, then
    // the uncompressed point.
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        key.as_ref(),
        &rng,
    )
    .unwrap();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    use ring::signature::KeyPair;
    spki.extend_from_slice(pair.public_key().as_ref());
    let public_file = dir.path().join("sa.pub");
    std::fs::write(&public_file, pem("PUBLIC KEY", &spki)).unwrap();
    let tokens = dir.path().join("tokens.csv");
    let lines: Vec<String> = USERS
        .iter()
        .map(|(t, u, g)| format!("{t},{u},{u},\"{g}\""))
        .collect();
    std::fs::write(&tokens, lines.join("\n") + "\n").unwrap();
    let certs = dir.path().join("certs");
    processes.0.push(
        Command::new(&bins.apiserver)
            .args([
                &format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                &format!("--secure-port={secure}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=RBAC",
                "--disable-admission-plugins=ServiceAccount",
            ])
            .arg(format!(
                "--service-account-key-file={}",
                public_file.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key_file.display()
            ))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg(format!("--cert-dir={}", certs.display()))
            .stdout(Stdio::null())
            .stderr(log("apiserver.log"))
            .spawn()
            .expect("starting kube-apiserver"),
    );
    Cluster {
        url: format!("https://127.0.0.1:{secure}"),
        cert: certs.join("apiserver.crt"),
        log: dir.path().to_path_buf(),
        key_file,
        processes,
        _dir: dir,
    }
}

impl Cluster {
    /// Starts kube-controller-manager with only the controllers the
    /// suite needs (never node-lifecycle or pod-GC: no kubelet reports).
    fn start_controller_manager(&mut self, bin: &Path) {
        let kubeconfig = self.log.join("kcm.kubeconfig");
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "admin",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url, "certificate-authority": self.cert}}],
            "users": [{"name": "admin", "user": {"token": "admin-token"}}],
            "contexts": [{"name": "admin", "context": {"cluster": "test", "user": "admin"}}],
        });
        std::fs::write(&kubeconfig, config.to_string()).unwrap();
        let log = std::fs::File::create(self.log.join("kcm.log")).unwrap();
        self.processes.0.push(
            Command::new(bin)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg("--controllers=namespace,garbagecollector,resourcequota,serviceaccount,serviceaccount-token")
                .arg(format!(
                    "--service-account-private-key-file={}",
                    self.key_file.display()
                ))
                .args([
                    "--use-service-account-credentials=false",
                    "--leader-elect=false",
                    &format!("--secure-port={}", free_port()),
                    "--bind-address=127.0.0.1",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting kube-controller-manager"),
        );
    }

    async fn client(&self, token: &str) -> Client {
        let mut config = Config::new(self.url.parse().unwrap());
        // The server's self-signed CA, from the certificate it generated.
        config.root_cert = Some(pem_certs(&std::fs::read_to_string(&self.cert).unwrap()));
        config.auth_info.token = Some(token.to_owned().into());
        Client::try_from(config).unwrap()
    }

    /// Waits for `/readyz` (the serving certificate exists by then).
    async fn ready(&self) {
        let start = Instant::now();
        let mut last = String::from("no serving certificate yet");
        loop {
            if self.cert.exists() {
                let client = self.client("admin-token").await;
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                match client.request_text(req).await {
                    Ok(text) if text.trim() == "ok" => return,
                    Ok(text) => last = text,
                    Err(e) => last = e.to_string(),
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                let log =
                    std::fs::read_to_string(self.log.join("apiserver.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "kube-apiserver not ready in 60 s: {last}\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Applies every object of a multi-document YAML stream as `client`.
async fn apply_yaml(client: &Client, text: &str) {
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value.clone()).unwrap();
        let types = obj.types.clone().expect("typed objects");
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let (resource, caps) = discovery.resolve_gvk(&gvk).expect("known kind");
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            (kube::discovery::Scope::Namespaced, None) => {
                Api::namespaced_with(client.clone(), NAMESPACE, &resource)
            }
            (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        let name = obj.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("finpool-test").force(),
            &Patch::Apply(&value),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", gvk.kind));
    }
}

use serde::Deserialize;

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn allowed(admin: &Client, user: &str, group: &str, verb: &str, ns: &str) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![group.into()]),
            resource_attributes: Some(ResourceAttributes {
                group: Some("finpool.io".into()),
                resource: Some("inferencejobs".into()),
                verb: Some(verb.into()),
                namespace: Some(ns.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

/// A line on the test process's stderr itself: the harness captures
/// `eprintln!` of a passing test, and a skip must show in CI's log.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_against_a_real_api_server() {
    let bins = match binaries() {
        Ok(b) => b,
        Err(why) => {
            say(&format!(
                "skipped: the real API server suite needs KUBE_APISERVER_BIN, ETCD_BIN and helm ({why})"
            ));
            return;
        }
    };
    let started = Instant::now();
    let mut cluster = start(&bins);
    cluster.ready().await;
    if let Some(kcm) = &bins.controller_manager {
        cluster.start_controller_manager(kcm);
    }
    eprintln!("kube-apiserver ready in {:?}", started.elapsed());
    let admin = cluster.client("admin-token").await;

    // The CRDs, as the chart holds them; then the chart's RBAC.
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    for c in crd::all() {
        crds.patch(
            &c.metadata.name.clone().unwrap(),
            &PatchParams::apply("finpool-test").force(),
            &Patch::Apply(&c),
        )
        .await
        .unwrap();
    }
    for c in crd::all() {
        let name = c.metadata.name.clone().unwrap();
        eventually("CRDs established", || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let c = crds.get(&name).await.ok()?;
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap(),
        )
        .await
        .unwrap();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/finpool");
    let rendered = Command::new(&bins.helm)
        .args(["template", "finpool"])
        .arg(&chart)
        .args([
            "--namespace",
            NAMESPACE,
            "--show-only",
            "templates/rbac.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    apply_yaml(&admin, &String::from_utf8(rendered.stdout).unwrap()).await;

    // A GPU node, as GPU Feature Discovery labels one (no kubelet: the
    // test writes its status).
    let nodes = Api::<Node>::all(admin.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "gpu-1", "labels": {
                "nvidia.com/gpu.product": "A100", "nvidia.com/gpu.count": "4",
                "nvidia.com/gpu.memory": "81920", "topology.kubernetes.io/zone": "dc-1"}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    nodes
        .patch_status(
            "gpu-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"allocatable": {"cpu": "32", "memory": "128Gi",
                "nvidia.com/gpu": "4", "pods": "110"}, "capacity": {"cpu": "32",
                "memory": "128Gi", "nvidia.com/gpu": "4", "pods": "110"}}}),
            ),
        )
        .await
        .unwrap();

    // The operator, as its own user (the chart's RBAC, nothing more).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::Sqlite(dir.path().join("finpool.db")))
        .await
        .unwrap();
    let operator_client = cluster.client("operator-token").await;
    let ctx = Context::new(
        operator_client,
        store.clone(),
        Install {
            namespace: NAMESPACE.into(),
            ..Install::default()
        },
    );
    let operator = tokio::spawn({
        let ctx: Arc<Context> = ctx.clone();
        async move { controller::run(ctx, NAMESPACE, "test-operator").await }
    });

    // A tenant, a model and a job, applied as an admin would (kubectl).
    let examples = chart.join("examples");
    for file in ["tenant.yaml", "basemodel.yaml"] {
        apply_yaml(
            &admin,
            &std::fs::read_to_string(examples.join(file)).unwrap(),
        )
        .await;
    }
    let ns = eventually("the tenant's namespace", || {
        let admin = admin.clone();
        async move {
            Api::<Namespace>::all(admin)
                .get_opt("alpha-jobs")
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels["finpool.io/tenant"], "alpha");
    let quota = eventually("the quota", || {
        let admin = admin.clone();
        async move {
            Api::<ResourceQuota>::namespaced(admin, "alpha-jobs")
                .get_opt("finpool-gpu")
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert_eq!(
        quota.spec.unwrap().hard.unwrap()["requests.nvidia.com/gpu"].0,
        "4"
    );
    let deny = eventually("the network policy", || {
        let admin = admin.clone();
        async move {
            Api::<NetworkPolicy>::namespaced(admin, "alpha-jobs")
                .get_opt("finpool-default-deny")
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert_eq!(
        deny.spec.unwrap().policy_types.unwrap(),
        ["Ingress", "Egress"]
    );
    eventually("the tenant role binding", || {
        let admin = admin.clone();
        async move {
            Api::<RoleBinding>::namespaced(admin, "alpha-jobs")
                .get_opt("finpool-tenant")
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    eventually("the tenant in the store", || {
        let store = store.clone();
        async move { store.get_tenant("alpha").await.ok() }
    })
    .await;

    // The job: a Pod for finpool's scheduler, and a status from the store.
    let job_yaml = std::fs::read_to_string(examples.join("inferencejob.yaml")).unwrap();
    apply_yaml(&admin, &job_yaml).await;
    let job_name: String =
        serde_yaml_ng::from_str::<serde_json::Value>(&job_yaml).unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
    let pod = eventually("the job's pod", || {
        let admin = admin.clone();
        let name = job_name.clone();
        async move {
            Api::<Pod>::namespaced(admin, "alpha-jobs")
                .get_opt(&name)
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    let spec = pod.spec.unwrap();
    assert_eq!(spec.scheduler_name.as_deref(), Some("finpool-scheduler"));
    let status = eventually("the job's status", || {
        let admin = admin.clone();
        let name = job_name.clone();
        async move {
            let j = Api::<InferenceJob>::namespaced(admin, "alpha-jobs")
                .get(&name)
                .await
                .ok()?;
            j.status.filter(|s| s.job_id.is_some())
        }
    })
    .await;
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    // The same job over gRPC, from `finpool api` on the same store and
    // the cluster's nodes, as tenant alpha.
    let id = finpool_domain::JobId::parse("id", status.job_id.as_deref().unwrap()).unwrap();
    let stored = store.get_job(id).await.unwrap();
    assert_eq!(stored.tenant_id.as_str(), "alpha");
    let key = finpool_api::SigningKey::load_or_create(dir.path()).unwrap();
    let inventory = finpool_operator::cluster::NodeInventory::watch(admin.clone())
        .await
        .unwrap();
    let state = finpool_api::ApiState::new(
        store.clone(),
        Arc::new(inventory),
        Arc::new(finpool_operator::cluster::PodLogs {
            client: admin.clone(),
        }),
        finpool_api::ApiConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    tokio::spawn(finpool_api::server::serve(
        listener,
        state,
        key.verifier(),
        std::future::pending(),
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let alpha_id = finpool_domain::Name::parse("t", "alpha").unwrap();
    let token = key
        .issue(
            "alice",
            finpool_api::Role::Tenant,
            Some(&alpha_id),
            Duration::from_secs(600),
            now,
        )
        .unwrap();
    let mut grpc = finpool_proto::v1::job_service_client::JobServiceClient::connect(format!(
        "http://{api_addr}"
    ))
    .await
    .unwrap();
    let mut request = tonic::Request::new(finpool_proto::v1::GetJobRequest { id: id.to_string() });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let over_grpc = grpc.get_job(request).await.unwrap().into_inner();
    assert_eq!(over_grpc.tenant_id, "alpha");
    assert_eq!(over_grpc.spec.unwrap().name, job_name);
    assert_eq!(over_grpc.state, finpool_proto::v1::JobState::Pending as i32);

    // RBAC: a tenant's user manages jobs in its own namespace only.
    assert!(allowed(&admin, "alice", "alpha-traders", "create", "alpha-jobs").await);
    assert!(!allowed(&admin, "bob", "finpool:tenant:beta", "create", "alpha-jobs").await);
    assert!(!allowed(&admin, "bob", "finpool:tenant:beta", "list", "alpha-jobs").await);
    // And the tenant's own client really is refused there.
    let bob = cluster.client("bob-token").await;
    let denied = Api::<InferenceJob>::namespaced(bob, "alpha-jobs")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{denied}"
    );

    scheduler_checks(&cluster, &admin, &store, &job_name, &examples).await;

    if bins.controller_manager.is_some() {
        controller_manager_checks(&admin, &job_name).await;
    } else {
        say(
            "quota and garbage-collection checks skipped: set KUBE_CONTROLLER_MANAGER_BIN to run them",
        );
    }
    operator.abort();
}

/// Two `finpool scheduler` replicas, as the scheduler's own user (the
/// chart's RBAC): the one holding the Lease binds the job's pod to the node
/// that fits, with the cards annotated; a job that cannot fit now is
/// `Unschedulable` with its reason; the other replica never runs a cycle.
async fn scheduler_checks(
    cluster: &Cluster,
    admin: &Client,
    store: &Store,
    job_name: &str,
    examples: &Path,
) {
    use finpool_k8s_scheduler::driver::{self, DriverConfig};
    let replica = |identity: &'static str| {
        let store = store.clone();
        async move {
            let client = cluster.client("scheduler-token").await;
            let leading = driver::lease(client.clone(), NAMESPACE, identity)
                .await
                .unwrap();
            let metrics = finpool_telemetry::Metrics::new();
            let config = DriverConfig {
                cycle: finpool_scheduler::CycleConfig::default(),
                policy: finpool_scheduler::Policy::finpool,
                idle_tick: Duration::from_millis(500),
                identity: identity.into(),
            };
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(driver::run(
                client,
                store,
                config,
                metrics.clone(),
                finpool_telemetry::Readiness::default(),
                leading.clone(),
                stopped,
            ));
            (leading, metrics, stop, task)
        }
    };
    let (a_leads, a_metrics, _a_stop, a_task) = replica("scheduler-a").await;
    eventually("scheduler-a to lead", || {
        let leads = *a_leads.borrow();
        async move { leads.then_some(()) }
    })
    .await;
    let (b_leads, b_metrics, _b_stop, b_task) = replica("scheduler-b").await;

    let pods = Api::<Pod>::namespaced(admin.clone(), "alpha-jobs");
    let bound = eventually("the job's pod bound", || {
        let pods = pods.clone();
        let name = job_name.to_owned();
        async move {
            let p = pods.get(&name).await.ok()?;
            p.spec.as_ref()?.node_name.as_ref()?;
            Some(p)
        }
    })
    .await;
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("gpu-1"));
    let gpus = bound.metadata.annotations.unwrap()["finpool.io/gpus"].clone();
    assert_eq!(gpus.split(',').count(), 1, "{gpus}");

    // A job bigger than any node (256 GiB of memory; the node has 128):
    // it waits, and its pod says why.
    let mut big: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(examples.join("inferencejob.yaml")).unwrap(),
    )
    .unwrap();
    big["metadata"]["name"] = json!("too-big");
    big["spec"]["resources"]["memoryMiB"] = json!(262_144);
    apply_yaml(admin, &serde_yaml_ng::to_string(&big).unwrap()).await;
    let condition = eventually("the big job's pod unschedulable", || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt("too-big").await.ok()??;
            p.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        }
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    let message = condition.message.unwrap_or_default();
    let (code, _) = message.split_once(": ").expect("code: text");
    assert!(
        !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric()),
        "{message}"
    );
    eprintln!("the big job waits: {message}");

    // Only the Lease holder ran cycles.
    assert!(*a_leads.borrow() && !*b_leads.borrow());
    let cycles = |m: &finpool_telemetry::Metrics| {
        m.encode()
            .lines()
            .find(|l| l.starts_with("finpool_scheduler_cycle_duration_seconds_count"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(cycles(&a_metrics) > 0);
    assert_eq!(cycles(&b_metrics), 0, "the standby replica ran a cycle");

    reclaim_checks(admin, store, examples).await;
    assert_eq!(cycles(&b_metrics), 0, "the standby replica ran a cycle");
    a_task.abort();
    b_task.abort();
}

/// A guarantee reclaim: beta (no guarantee) borrows the node's three free
/// cards; alpha then asks for the second card of its guarantee, and
/// beta's pod is evicted. No kubelet finishes the graceful deletion here,
/// so the test completes it (as a kubelet would once the container
/// stopped); then beta's job is back in the queue and alpha's pod bound.
async fn reclaim_checks(admin: &Client, store: &Store, examples: &Path) {
    let mut beta: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(examples.join("tenant.yaml")).unwrap())
            .unwrap();
    beta["metadata"]["name"] = json!("beta");
    beta["spec"]["displayName"] = json!("Beta Brokers");
    beta["spec"]["namespaces"] = json!(["beta-jobs"]);
    beta["spec"]["group"] = json!("finpool:tenant:beta");
    beta["spec"]["quotas"] = json!([{"gpuClass": "A100", "guaranteed": 0, "borrowingLimit": 4}]);
    apply_yaml(admin, &serde_yaml_ng::to_string(&beta).unwrap()).await;
    eventually("beta in the store and its namespace", || {
        let store = store.clone();
        let admin = admin.clone();
        async move {
            store.get_tenant("beta").await.ok()?;
            Api::<Namespace>::all(admin)
                .get_opt("beta-jobs")
                .await
                .ok()?
        }
    })
    .await;
    let job = |ns: &str, name: &str, gpus: u32| {
        let mut j: serde_json::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(examples.join("inferencejob.yaml")).unwrap(),
        )
        .unwrap();
        j["metadata"]["namespace"] = json!(ns);
        j["metadata"]["name"] = json!(name);
        j["spec"]["resources"]["gpu"]["wholeGpus"] = json!(gpus);
        // Preemptible as soon as it runs.
        j["spec"]["minRuntimeSeconds"] = json!(null);
        serde_yaml_ng::to_string(&j).unwrap()
    };
    let bound = |ns: &'static str, name: &'static str| {
        let pods = Api::<Pod>::namespaced(admin.clone(), ns);
        async move {
            eventually(&format!("{ns}/{name} bound"), || {
                let pods = pods.clone();
                async move {
                    let p = pods.get_opt(name).await.ok()??;
                    p.spec.as_ref()?.node_name.as_ref()?;
                    Some(p)
                }
            })
            .await
        }
    };
    apply_yaml(admin, &job("beta-jobs", "borrower", 3)).await;
    bound("beta-jobs", "borrower").await;
    // Only a running job is preempted: say it runs, as its kubelet would.
    let beta_pods = Api::<Pod>::namespaced(admin.clone(), "beta-jobs");
    beta_pods
        .patch_status(
            "borrower",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    eventually("the borrower running in the store", || {
        let store = store.clone();
        async move {
            store.active_jobs().await.ok()?.into_iter().find(|j| {
                j.spec.name.as_str() == "borrower" && j.state == finpool_domain::JobState::Running
            })
        }
    })
    .await;

    apply_yaml(admin, &job("alpha-jobs", "reclaimer", 1)).await;
    let evicted = eventually("the borrower evicted", || {
        let pods = beta_pods.clone();
        async move {
            let p = pods.get_opt("borrower").await.ok()??;
            p.metadata.deletion_timestamp.is_some().then_some(p)
        }
    })
    .await;
    let why = evicted.metadata.annotations.unwrap()["finpool.io/preempted"].clone();
    assert!(why.contains("reclaims"), "{why}");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), "beta-jobs");
    eventually("a Preempted event on the borrower", || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("Preempted")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("borrower")
            })
        }
    })
    .await;
    // The reclaimer waits for its victim's cards.
    let reclaimer = Api::<Pod>::namespaced(admin.clone(), "alpha-jobs")
        .get("reclaimer")
        .await
        .unwrap();
    assert!(reclaimer.spec.unwrap().node_name.is_none());

    // What the kubelet would do once the container stopped.
    beta_pods
        .delete(
            "borrower",
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    bound("alpha-jobs", "reclaimer").await;
    let beta_id = finpool_domain::Name::parse("t", "beta").unwrap();
    let requeued = store
        .list_jobs(&finpool_store::JobFilter {
            tenant: Some(beta_id),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let borrower = requeued
        .jobs
        .iter()
        .find(|j| j.spec.name.as_str() == "borrower")
        .unwrap();
    // A listing carries no history; the job itself does.
    let borrower = store.get_job(borrower.id).await.unwrap();
    assert!(
        borrower
            .history
            .iter()
            .any(|t| t.to == finpool_domain::JobState::Preempted),
        "{:?}",
        borrower.history
    );
}

/// With kube-controller-manager: the tenant's quota is enforced by
/// admission, and deleting an InferenceJob collects its Pod.
async fn controller_manager_checks(admin: &Client, job_name: &str) {
    let quotas = Api::<ResourceQuota>::namespaced(admin.clone(), "alpha-jobs");
    eventually("the quota's status", || {
        let quotas = quotas.clone();
        async move {
            let q = quotas.get("finpool-gpu").await.ok()?;
            q.status?
                .hard
                .filter(|h| h.contains_key("requests.nvidia.com/gpu"))
        }
    })
    .await;
    // Five cards over a limit of four: refused at admission.
    let greedy: Pod = serde_json::from_value(json!({
        "metadata": {"name": "greedy", "namespace": "alpha-jobs"},
        "spec": {"schedulerName": "finpool-scheduler", "containers": [{
            "name": "job", "image": "registry.example/x:1",
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            "resources": {"limits": {"nvidia.com/gpu": "5"}, "requests": {"nvidia.com/gpu": "5"}}}]}
    }))
    .unwrap();
    let refused = Api::<Pod>::namespaced(admin.clone(), "alpha-jobs")
        .create(&PostParams::default(), &greedy)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota")),
        "{refused}"
    );
    // The job's Pod goes with its InferenceJob (after the operator's
    // finalizer has cancelled the job).
    Api::<InferenceJob>::namespaced(admin.clone(), "alpha-jobs")
        .delete(job_name, &Default::default())
        .await
        .unwrap();
    eventually("the pod collected with its owner", || {
        let admin = admin.clone();
        let name = job_name.to_owned();
        async move {
            match Api::<Pod>::namespaced(admin, "alpha-jobs")
                .get_opt(&name)
                .await
            {
                Ok(None) => Some(()),
                // No kubelet: a bound-less pod is deleted at once, but a
                // graceful delete may leave it terminating.
                Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => Some(()),
                _ => None,
            }
        }
    })
    .await;
}
