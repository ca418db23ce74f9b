//! Each reconcile path against a mock API server (tower-test), in the
//! style of kube-rs controller-rs's `ApiServerVerifier`: every request's
//! verb, path and body is asserted in order, and answered. The store is a
//! real SQLite one in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use finpool_operator::build::Install;
use finpool_operator::controller::{Context, Error, job, tenant};
use finpool_operator::crd::tenant::{ClassQuota, Isolation, TenantSpec};
use finpool_operator::crd::{InferenceJob, Tenant};
use finpool_store::{Store, StoreConfig};
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, pair};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A mock API server: the test answers each request the client makes.
struct Verifier {
    handle: ApiHandle,
}

/// One request, as the verifier saw it.
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl Verifier {
    /// The next request, and the handle that answers it.
    async fn next(&mut self) -> (Seen, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .expect("the reconcile made no further request")
                .expect("the client is gone");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let seen = Seen {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body,
        };
        (seen, send)
    }

    /// The next request, answered with `status` and `reply`.
    async fn answer(&mut self, status: StatusCode, reply: Value) -> Seen {
        let (seen, send) = self.next().await;
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        seen
    }

    /// Expects `method path`, answered with `reply` (a status patch returns
    /// the whole object).
    async fn expect_reply(&mut self, method: Method, path: &str, reply: Value) -> Seen {
        let seen = self.answer(StatusCode::OK, reply).await;
        assert_eq!(
            (&seen.method, seen.path.as_str()),
            (&method, path),
            "unexpected request"
        );
        seen
    }

    /// Expects `method path`, echoes the body back (as an apply would).
    async fn expect_echo(&mut self, method: Method, path: &str) -> Seen {
        let (seen, send) = self.next().await;
        assert_eq!(
            (&seen.method, seen.path.as_str()),
            (&method, path),
            "unexpected request"
        );
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&seen.body).unwrap()))
                .unwrap(),
        );
        seen
    }
}

async fn setup() -> (Arc<Context>, Verifier, Store, tempfile::TempDir) {
    let (mock, handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::Sqlite(dir.path().join("finpool.db")))
        .await
        .unwrap();
    let ctx = Context::new(client, store.clone(), Install::default());
    (ctx, Verifier { handle }, store, dir)
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": format!("{kind} \"{name}\" not found")})
}

fn alpha(finalized: bool) -> Tenant {
    let mut t = Tenant::new(
        "alpha",
        TenantSpec {
            display_name: "Alpha Securities".into(),
            namespaces: vec!["alpha-jobs".into()],
            quotas: vec![ClassQuota {
                gpu_class: "A100".into(),
                guaranteed: 2,
                borrowing_limit: Some(2),
                lending_limit: None,
            }],
            weight: 1,
            isolation: Isolation::SharedWithinTenant,
            allowed_models: vec![],
            allowed_locations: vec![],
            suspended: false,
            group: None,
        },
    );
    t.metadata.uid = Some("uid-alpha".into());
    t.metadata.generation = Some(1);
    t.metadata.resource_version = Some("1".into());
    if finalized {
        t.metadata.finalizers = Some(vec![tenant::FINALIZER.into()]);
    }
    t
}

#[tokio::test]
async fn a_new_tenant_first_gets_its_finalizer() {
    let (ctx, mut api, _store, _dir) = setup().await;
    let run = tokio::spawn(tenant::reconcile(Arc::new(alpha(false)), ctx));
    let seen = api
        .answer(StatusCode::OK, serde_json::to_value(alpha(true)).unwrap())
        .await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, "/apis/finpool.io/v1alpha1/tenants/alpha");
    assert!(
        seen.body.to_string().contains(tenant::FINALIZER),
        "{}",
        seen.body
    );
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_tenant_is_fenced_applied_once_per_object_and_stored() {
    let (ctx, mut api, store, _dir) = setup().await;
    let run = tokio::spawn(tenant::reconcile(Arc::new(alpha(true)), ctx));
    // Dereference: the namespace does not exist yet.
    let get = api
        .answer(StatusCode::NOT_FOUND, not_found("namespaces", "alpha-jobs"))
        .await;
    assert_eq!(
        (get.method, get.path.as_str()),
        (Method::GET, "/api/v1/namespaces/alpha-jobs")
    );
    // Namespace first, then the cache volume, then the namespaced fences;
    // every write is a server-side apply by finpool-operator, forced.
    let expected = [
        "/api/v1/namespaces/alpha-jobs",
        "/api/v1/persistentvolumes/finpool-model-cache-alpha-jobs",
        "/api/v1/namespaces/alpha-jobs/resourcequotas/finpool-gpu",
        "/api/v1/namespaces/alpha-jobs/limitranges/finpool-defaults",
        "/apis/networking.k8s.io/v1/namespaces/alpha-jobs/networkpolicies/finpool-default-deny",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/alpha-jobs/rolebindings/finpool-tenant",
        "/api/v1/namespaces/alpha-jobs/persistentvolumeclaims/finpool-model-cache",
    ];
    let mut bodies = Vec::new();
    for path in expected {
        let seen = api.expect_echo(Method::PATCH, path).await;
        assert!(
            seen.query.contains("fieldManager=finpool-operator")
                && seen.query.contains("force=true"),
            "{path}: {}",
            seen.query
        );
        bodies.push(seen.body);
    }
    assert_eq!(
        bodies[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert_eq!(
        bodies[2]["spec"]["hard"]["requests.nvidia.com/gpu"], "4",
        "{}",
        bodies[2]
    );
    assert_eq!(bodies[5]["subjects"][0]["name"], "finpool:tenant:alpha");
    let status = api
        .expect_reply(
            Method::PATCH,
            "/apis/finpool.io/v1alpha1/tenants/alpha/status",
            serde_json::to_value(alpha(true)).unwrap(),
        )
        .await;
    assert_eq!(status.body["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(status.body["status"]["conditions"][0]["status"], "True");
    run.await.unwrap().unwrap();
    // The system of record has the tenant, with the same quota.
    let row = store.get_tenant("alpha").await.unwrap();
    assert_eq!(row.quota("A100").guaranteed, 2);
    assert_eq!(row.quota("A100").limit, 4);
    assert!(!row.is_suspended());
}

#[tokio::test]
async fn an_invalid_tenant_is_refused_with_an_event_and_a_status() {
    let (ctx, mut api, store, _dir) = setup().await;
    let mut bad = alpha(true);
    bad.spec.namespaces.push("kube-system".into());
    let run = tokio::spawn(tenant::reconcile(Arc::new(bad), ctx));
    api.answer(StatusCode::NOT_FOUND, not_found("namespaces", "alpha-jobs"))
        .await;
    api.answer(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
    )
    .await;
    let event = api.answer(StatusCode::OK, json!({})).await;
    assert_eq!(event.method, Method::POST);
    assert!(event.path.ends_with("/events"), "{}", event.path);
    assert_eq!(event.body["reason"], "Invalid");
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("spec.namespaces[1]"),
        "{}",
        event.body
    );
    let status = api
        .expect_reply(
            Method::PATCH,
            "/apis/finpool.io/v1alpha1/tenants/alpha/status",
            serde_json::to_value(alpha(true)).unwrap(),
        )
        .await;
    assert_eq!(status.body["status"]["conditions"][0]["status"], "False");
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Finalizer(_)), "{err}");
    assert!(store.get_tenant("alpha").await.is_err(), "nothing stored");
}

/// Tenant alpha in the store, as the Tenant controller would write it.
async fn store_alpha(store: &Store) -> finpool_domain::Tenant {
    let row = finpool_operator::build::tenant::store_input(&alpha(true))
        .unwrap()
        .validate(&["A100".into()], finpool_domain::Timestamp(0))
        .unwrap();
    store.create_tenant(&row).await.unwrap();
    row
}

/// Submits `input` for `tenant` as the submit path would (a pool of one
/// 4-card A100 node), under `id`.
async fn submit_for(
    store: &Store,
    tenant: &finpool_domain::Tenant,
    input: &finpool_domain::JobSpecInput,
    id: finpool_domain::JobId,
) -> finpool_domain::Job {
    let classes = [finpool_domain::GpuClass {
        name: "A100".into(),
        memory_mib: 81920,
    }];
    let spec = input
        .validate(&finpool_domain::job::SubmitContext {
            tenant,
            classes: &classes,
            models: &[],
            max_gpus_per_node: &[("A100".to_owned(), 4)].into(),
            max_runtime_cap_ms: 3_600_000,
        })
        .unwrap();
    let job = finpool_domain::Job::new(
        id,
        tenant.id.clone(),
        spec,
        finpool_domain::Timestamp::now(),
    );
    store.submit(job).await.unwrap().0
}

fn var_job() -> InferenceJob {
    let mut j: InferenceJob = serde_json::from_value(json!({
        "apiVersion": "finpool.io/v1alpha1",
        "kind": "InferenceJob",
        "metadata": {
            "name": "var-run", "namespace": "alpha-jobs", "uid": "uid-var",
            "generation": 1, "resourceVersion": "7",
            "finalizers": [job::FINALIZER]
        },
        "spec": {
            "image": "registry.example/risk:1", "command": ["python", "-m", "risk.var"],
            "resources": {"gpu": {"wholeGpus": 1}, "cpuMilli": 1000, "memoryMiB": 1024},
            "maxRuntimeSeconds": 600
        }
    }))
    .unwrap();
    j.metadata.generation = Some(1);
    j
}

fn gpu_node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "gpu-1", "labels": {
            "nvidia.com/gpu.product": "A100", "nvidia.com/gpu.count": "4",
            "nvidia.com/gpu.memory": "81920"}},
        "status": {"allocatable": {"cpu": "32", "memory": "128Gi"}}
    })
}

#[tokio::test]
async fn a_tenant_cannot_claim_another_tenants_namespace() {
    let (ctx, mut api, store, _dir) = setup().await;
    let run = tokio::spawn(tenant::reconcile(Arc::new(alpha(true)), ctx));
    api.answer(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "alpha-jobs", "labels": {"finpool.io/tenant": "beta"}}}),
    )
    .await;
    let event = api.answer(StatusCode::OK, json!({})).await;
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("belongs to tenant beta"),
        "{}",
        event.body
    );
    api.expect_reply(
        Method::PATCH,
        "/apis/finpool.io/v1alpha1/tenants/alpha/status",
        serde_json::to_value(alpha(true)).unwrap(),
    )
    .await;
    assert!(run.await.unwrap().is_err());
    // Nothing was applied to beta's namespace, nothing stored.
    assert!(store.get_tenant("alpha").await.is_err());
}

#[tokio::test]
async fn a_job_is_submitted_once_through_the_store_and_gets_its_pod() {
    let (ctx, mut api, store, _dir) = setup().await;
    store_alpha(&store).await;
    for round in 0..2 {
        let run = tokio::spawn(job::reconcile(Arc::new(var_job()), ctx.clone()));
        // Dereference: the namespace names its tenant.
        let ns = api
            .answer(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "alpha-jobs", "labels": {"finpool.io/tenant": "alpha"}}}),
            )
            .await;
        assert_eq!(ns.path, "/api/v1/namespaces/alpha-jobs");
        // The submit path checks against the cluster's inventory.
        let nodes = api
            .answer(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [gpu_node()]}),
            )
            .await;
        assert_eq!(nodes.path, "/api/v1/nodes");
        if round == 0 {
            let event = api.answer(StatusCode::OK, json!({})).await;
            assert_eq!(event.method, Method::POST);
            assert_eq!(event.body["reason"], "Submitted");
        }
        let t = api
            .answer(StatusCode::OK, serde_json::to_value(alpha(true)).unwrap())
            .await;
        assert_eq!(t.path, "/apis/finpool.io/v1alpha1/tenants/alpha");
        let get_pod = if round == 0 {
            api.answer(
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "pods \"var-run\" not found"}),
            )
            .await
        } else {
            api.answer(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "var-run", "namespace": "alpha-jobs"}}),
            )
            .await
        };
        assert_eq!(get_pod.path, "/api/v1/namespaces/alpha-jobs/pods/var-run");
        if round == 0 {
            let pod = api
                .expect_echo(Method::PATCH, "/api/v1/namespaces/alpha-jobs/pods/var-run")
                .await;
            assert_eq!(pod.body["spec"]["schedulerName"], "finpool-scheduler");
            assert_eq!(
                pod.body["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
                "1"
            );
            assert_eq!(
                pod.body["metadata"]["ownerReferences"][0]["kind"],
                "InferenceJob"
            );
        }
        let status = api
            .expect_reply(
                Method::PATCH,
                "/apis/finpool.io/v1alpha1/namespaces/alpha-jobs/inferencejobs/var-run/status",
                serde_json::to_value(var_job()).unwrap(),
            )
            .await;
        assert_eq!(status.body["status"]["phase"], "Pending");
        assert!(status.body["status"]["jobId"].is_string());
        run.await.unwrap().unwrap();
    }
    // Applied twice, submitted once: the uid is the idempotency key.
    let jobs = store.active_jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].tenant_id.as_str(), "alpha");
    assert_eq!(jobs[0].spec.labels["k8s-uid"], "uid-var");
}

#[tokio::test]
async fn a_job_in_a_namespace_of_no_tenant_is_refused_and_nothing_is_stored() {
    let (ctx, mut api, store, _dir) = setup().await;
    let run = tokio::spawn(job::reconcile(Arc::new(var_job()), ctx));
    api.answer(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "alpha-jobs"}}),
    )
    .await;
    let event = api.answer(StatusCode::OK, json!({})).await;
    assert_eq!(event.body["reason"], "Refused");
    let status = api
        .expect_reply(
            Method::PATCH,
            "/apis/finpool.io/v1alpha1/namespaces/alpha-jobs/inferencejobs/var-run/status",
            serde_json::to_value(var_job()).unwrap(),
        )
        .await;
    assert_eq!(status.body["status"]["phase"], "Refused");
    assert!(
        status.body["status"]["message"]
            .as_str()
            .unwrap()
            .contains("belongs to no tenant"),
        "{}",
        status.body
    );
    run.await.unwrap().unwrap();
    assert!(store.active_jobs().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_model_is_registered_and_precached_per_node() {
    use finpool_operator::controller::model;
    use finpool_operator::crd::BaseModel;
    let (ctx, mut api, store, _dir) = setup().await;
    let m: BaseModel = serde_json::from_value(json!({
        "apiVersion": "finpool.io/v1alpha1", "kind": "BaseModel",
        "metadata": {"name": "llama-3-8b", "uid": "uid-m"},
        "spec": {"source": {"uri": "s3://models/llama-3-8b.tar"}, "sizeMiB": 16384,
            "minGpuMemoryMiB": 20480, "loadTimeSeconds": 40, "precacheNodes": ["gpu-1"]}
    }))
    .unwrap();
    let run = tokio::spawn(model::reconcile(Arc::new(m.clone()), ctx));
    let get = api
        .answer(
            StatusCode::NOT_FOUND,
            not_found("jobs", "precache-llama-3-8b-gpu-1"),
        )
        .await;
    assert_eq!(
        get.path,
        "/apis/batch/v1/namespaces/finpool-system/jobs/precache-llama-3-8b-gpu-1"
    );
    let job = api
        .expect_echo(
            Method::PATCH,
            "/apis/batch/v1/namespaces/finpool-system/jobs/precache-llama-3-8b-gpu-1",
        )
        .await;
    assert_eq!(job.body["spec"]["template"]["spec"]["nodeName"], "gpu-1");
    let list = api
        .answer(
            StatusCode::OK,
            json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": []}),
        )
        .await;
    assert_eq!(list.path, "/apis/batch/v1/namespaces/finpool-system/jobs");
    assert!(
        list.query.contains("finpool.io%2Fmodel%3Dllama-3-8b"),
        "{}",
        list.query
    );
    let status = api
        .expect_reply(
            Method::PATCH,
            "/apis/finpool.io/v1alpha1/basemodels/llama-3-8b/status",
            serde_json::to_value(&m).unwrap(),
        )
        .await;
    assert_eq!(status.body["status"]["readyNodes"], json!([]));
    assert_eq!(status.body["status"]["conditions"][0]["reason"], "Caching");
    run.await.unwrap().unwrap();
    let models = store.list_models().await.unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].load_time_ms, Some(40_000));
}

#[tokio::test]
async fn a_job_from_the_api_is_mirrored_as_an_inference_job() {
    use finpool_operator::controller::mirror;
    let (ctx, mut api, store, _dir) = setup().await;
    let tenant_row = store_alpha(&store).await;
    let input = finpool_domain::JobSpecInput {
        name: "from-grpc".into(),
        command: vec!["true".into()],
        resources: finpool_domain::job::ResourcesInput {
            gpu: Some(finpool_domain::job::GpuRequestInput {
                whole_gpus: Some(1),
                share: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let job = submit_for(
        &store,
        &tenant_row,
        &input,
        finpool_domain::JobId::new_random(),
    )
    .await;
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { mirror::sync_once(&ctx).await }
    });
    api.answer(StatusCode::OK, serde_json::to_value(alpha(true)).unwrap())
        .await;
    let name = mirror::object_name(&job);
    let get = api
        .answer(StatusCode::NOT_FOUND, not_found("inferencejobs", &name))
        .await;
    assert_eq!(
        get.path,
        format!("/apis/finpool.io/v1alpha1/namespaces/alpha-jobs/inferencejobs/{name}")
    );
    let created = api
        .expect_echo(
            Method::POST,
            "/apis/finpool.io/v1alpha1/namespaces/alpha-jobs/inferencejobs",
        )
        .await;
    assert_eq!(
        created.body["metadata"]["annotations"]["finpool.io/job-id"],
        job.id.to_string()
    );
    assert_eq!(created.body["spec"]["resources"]["gpu"]["wholeGpus"], 1);
    assert_eq!(run.await.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn deleting_an_inference_job_cancels_its_job_and_keeps_the_record() {
    let (ctx, mut api, store, _dir) = setup().await;
    let tenant_row = store_alpha(&store).await;
    // Submitted earlier through the object, as the apply path does.
    let object = var_job();
    let input = finpool_operator::build::job::store_input(&object).unwrap();
    let id = finpool_domain::JobId::for_idempotency_key(&tenant_row.id, &input.idempotency_key);
    let stored = submit_for(&store, &tenant_row, &input, id).await;
    let mut deleting = object;
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    deleting.status = Some(finpool_operator::crd::InferenceJobStatus {
        job_id: Some(stored.id.to_string()),
        ..Default::default()
    });
    let run = tokio::spawn(job::reconcile(Arc::new(deleting.clone()), ctx));
    // The finalizer comes off once the store has the cancel.
    let seen = api
        .answer(StatusCode::OK, serde_json::to_value(&deleting).unwrap())
        .await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(
        seen.path,
        "/apis/finpool.io/v1alpha1/namespaces/alpha-jobs/inferencejobs/var-run"
    );
    run.await.unwrap().unwrap();
    let after = store.get_job(stored.id).await.unwrap();
    assert_eq!(after.state, finpool_domain::JobState::Cancelled);
    assert!(
        after.reason.contains("InferenceJob was deleted"),
        "{}",
        after.reason
    );
}
