//! The authorization matrix and the JWT attack suite, through a real
//! server, on both doors (REST and gRPC).
//!
//! The REST routes come from the table the router is built from
//! (`finpool_api::rest::ROUTES`) and the gRPC methods from the served
//! descriptors, so a route or method without an entry here fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use common::*;
use finpool_api::Role;
use finpool_api::rest::ROUTES;
use finpool_cli::client::Clients;
use finpool_proto::v1 as pb;
use reqwest::StatusCode;
use serde_json::json;
use tonic::Code;

/// What a caller should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Another tenant's data: indistinguishable from missing.
    NotFound,
    /// The role may not do this.
    Denied,
    /// No token.
    Unauthenticated,
}

use Outcome::*;

const CALLERS: [&str; 5] = ["alpha", "beta", "operator", "regulator", "anonymous"];

/// Per method: the outcome for alpha, beta, an operator, a regulator and
/// an anonymous caller, every request aimed at tenant alpha's data.
fn expected() -> BTreeMap<&'static str, [Outcome; 5]> {
    let read_alpha = [Ok, NotFound, Ok, Ok, Unauthenticated];
    let read_any = [Ok, Ok, Ok, Ok, Unauthenticated];
    let operator_only = [Denied, Denied, Ok, Denied, Unauthenticated];
    BTreeMap::from([
        ("SubmitJob", [Ok, Ok, Denied, Denied, Unauthenticated]),
        ("GetJob", read_alpha),
        ("ListJobs", read_any),
        ("CancelJob", [Ok, NotFound, Ok, Denied, Unauthenticated]),
        ("WatchJobs", read_alpha),
        ("StreamLogs", read_alpha),
        ("CreateTenant", operator_only),
        ("GetTenant", read_alpha),
        ("ListTenants", read_any),
        ("SetQuota", operator_only),
        ("SuspendTenant", operator_only),
        ("ResumeTenant", operator_only),
        ("RevokeTokens", operator_only),
        ("RegisterModel", operator_only),
        ("ListModels", read_any),
        ("ListNodes", read_any),
        ("GetUsage", read_alpha),
        ("ListPrices", read_any),
        ("SetPrice", operator_only),
        ("GetPeriodUsage", read_alpha),
        ("ListInvoices", read_alpha),
        ("GetInvoice", read_alpha),
        ("ListPeriods", read_any),
        ("ClosePeriod", operator_only),
        ("MeterUsage", operator_only),
        ("GetUsageReport", [Denied, Denied, Ok, Ok, Unauthenticated]),
        (
            "ListAuditEntries",
            [Denied, Denied, Ok, Ok, Unauthenticated],
        ),
        ("GetCheckpoint", [Denied, Denied, Ok, Ok, Unauthenticated]),
    ])
}

fn rest_outcome(status: StatusCode) -> Option<Outcome> {
    match status.as_u16() {
        200 => Some(Ok),
        404 => Some(NotFound),
        403 => Some(Denied),
        401 => Some(Unauthenticated),
        _ => None,
    }
}

fn grpc_outcome(result: Result<(), tonic::Status>) -> Result<Outcome, tonic::Status> {
    match result {
        Result::Ok(()) => Result::Ok(Ok),
        Err(s) => match s.code() {
            Code::NotFound => Result::Ok(NotFound),
            Code::PermissionDenied => Result::Ok(Denied),
            Code::Unauthenticated => Result::Ok(Unauthenticated),
            _ => Err(s),
        },
    }
}

struct World {
    server: Server,
    tokens: [Option<String>; 5],
    alpha: Clients,
    alpha_job: String,
    beta_job: String,
    /// An invoice of alpha's, from a closed billing period.
    alpha_invoice: String,
}

impl World {
    async fn new(dir: &std::path::Path) -> World {
        // One-second billing periods, so that alpha's job is invoiced.
        let server = Server::start_with(
            dir,
            &[
                "--meter-interval",
                "1s",
                "--billing-period",
                "1s",
                "--meter-settle",
                "1s",
                "--meter-every",
                "1s",
            ],
        );
        let mut op = server.operator().await;
        create_tenant(&mut op, "alpha", 1, 2).await;
        create_tenant(&mut op, "beta", 1, 2).await;
        // Suspended and resumed by the matrix (alpha must stay usable).
        create_tenant(&mut op, "delta", 1, 2).await;
        let mut alpha = server.tenant("alpha").await;
        let mut beta = server.tenant("beta").await;
        let alpha_job = submit(&mut alpha, shell_job("a-job", whole(1), "echo alpha"))
            .await
            .id;
        let beta_job = submit(&mut beta, shell_job("b-job", whole(1), "echo beta"))
            .await
            .id;
        let alpha_invoice = invoice_of(&mut op, &mut alpha, &alpha_job).await;
        let tokens = [
            Some(server.token(Role::Tenant, Some("alpha"))),
            Some(server.token(Role::Tenant, Some("beta"))),
            Some(server.token(Role::Operator, None)),
            Some(server.token(Role::Regulator, None)),
            None,
        ];
        World {
            server,
            tokens,
            alpha,
            alpha_job,
            beta_job,
            alpha_invoice,
        }
    }

    /// A fresh job of alpha's, for calls that change it.
    async fn fresh_alpha_job(&mut self) -> String {
        submit(&mut self.alpha, shell_job("victim", whole(1), "sleep 30"))
            .await
            .id
    }
}

/// Prices every kind, waits for `job` to end, closes the billing period
/// it started in and returns the invoice of its tenant.
async fn invoice_of(op: &mut Clients, tenant: &mut Clients, job: &str) -> String {
    let classes = op
        .nodes
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .gpu_classes;
    let from = prost_types::Timestamp {
        seconds: 1_577_836_800, // 2020-01-01
        nanos: 0,
    };
    let mut prices: Vec<(String, &str)> = vec![(String::new(), "cpu"), (String::new(), "memory")];
    for c in classes {
        prices.push((c.name.clone(), "gpu_used"));
        prices.push((c.name, "gpu_held_idle"));
    }
    for (gpu_class, kind) in prices {
        op.billing
            .set_price(pb::SetPriceRequest {
                gpu_class,
                kind: kind.into(),
                rate_fen: 100_000,
                effective_from: Some(from),
            })
            .await
            .unwrap();
    }
    let jobs = wait_for(tenant, Duration::from_secs(30), "the job to end", |jobs| {
        jobs.iter()
            .any(|j| j.id == job && common::is_terminal(j.state))
    })
    .await;
    let started = jobs.iter().find(|j| j.id == job).unwrap().started_at;
    let at = finpool_domain::Timestamp(common::millis(&started)).to_rfc3339();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    op.billing
        .close_period(pb::ClosePeriodRequest { at })
        .await
        .unwrap();
    let invoices = tenant
        .billing
        .list_invoices(pb::ListInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invoices;
    invoices.first().expect("alpha is invoiced").id.clone()
}

/// The REST request for a route, aimed at alpha's data.
fn rest_request(
    rpc: &str,
    job: &str,
    n: usize,
) -> (
    Vec<(&'static str, String)>,
    Option<serde_json::Value>,
    &'static str,
) {
    let path = vec![
        (
            "id",
            match rpc {
                "GetTenant" => "alpha".to_owned(),
                "SuspendTenant" | "ResumeTenant" => "delta".to_owned(),
                _ => job.to_owned(),
            },
        ),
        ("tenant_id", "alpha".to_owned()),
        ("gpu_class", "A100".to_owned()),
    ];
    let (body, query) = match rpc {
        "SubmitJob" => (
            Some(
                json!({"name": format!("rest-{n}"), "command": ["true"], "resources": {"gpu": {"whole_gpus": 1}}}),
            ),
            "",
        ),
        "CancelJob" => (Some(json!({"reason": "matrix"})), ""),
        "CreateTenant" => (
            Some(json!({"id": format!("made-rest-{n}"), "display_name": "x", "weight": 1})),
            "",
        ),
        "SetQuota" => (Some(json!({"guaranteed": 1, "limit": 2})), ""),
        "SuspendTenant" => (Some(json!({"reason": "matrix"})), ""),
        "RevokeTokens" => (Some(json!({"subject": "matrix-subject"})), ""),
        "RegisterModel" => (
            Some(
                json!({"name": format!("model-rest-{n}"), "size_mib": 1024, "min_gpu_memory_mib": 1024}),
            ),
            "",
        ),
        "ListJobs" => (None, "?tenant_id=alpha"),
        "WatchJobs" => (None, "?job_id="),
        "GetUsage" => (None, "?tenant_id=alpha"),
        "GetPeriodUsage" => (None, "?tenant_id=alpha&from=2020-01-01T00:00:00Z"),
        "ListInvoices" => (None, "?tenant_id=alpha"),
        "SetPrice" => (
            Some(json!({"kind": "cpu", "rate_fen": 7, "effective_from": "2030-01-01T00:00:00Z"})),
            "",
        ),
        "ClosePeriod" => (Some(json!({"at": "2020-01-01T00:00:00Z"})), ""),
        "MeterUsage" => (Some(json!({})), ""),
        "GetUsageReport" => (
            None,
            "?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z&format=csv",
        ),
        _ => (None, ""),
    };
    (path, body, query)
}

async fn grpc_call(c: &mut Clients, rpc: &str, job: &str, n: usize) -> Result<(), tonic::Status> {
    match rpc {
        "SubmitJob" => c
            .jobs
            .submit_job(pb::SubmitJobRequest {
                spec: Some(shell_job(&format!("grpc-{n}"), whole(1), "true")),
            })
            .await
            .map(drop),
        "GetJob" => c
            .jobs
            .get_job(pb::GetJobRequest { id: job.into() })
            .await
            .map(drop),
        "ListJobs" => c
            .jobs
            .list_jobs(pb::ListJobsRequest {
                tenant_id: "alpha".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "CancelJob" => c
            .jobs
            .cancel_job(pb::CancelJobRequest {
                id: job.into(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "WatchJobs" => c
            .jobs
            .watch_jobs(pb::WatchJobsRequest { job_id: job.into() })
            .await
            .map(drop),
        "StreamLogs" => c
            .jobs
            .stream_logs(pb::StreamLogsRequest {
                id: job.into(),
                follow: false,
            })
            .await
            .map(drop),
        "CreateTenant" => c
            .tenants
            .create_tenant(pb::CreateTenantRequest {
                id: format!("made-grpc-{n}"),
                display_name: "x".into(),
                weight: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        "GetTenant" => c
            .tenants
            .get_tenant(pb::GetTenantRequest { id: "alpha".into() })
            .await
            .map(drop),
        "ListTenants" => c
            .tenants
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .map(drop),
        "SetQuota" => c
            .tenants
            .set_quota(pb::SetQuotaRequest {
                tenant_id: "alpha".into(),
                gpu_class: "A100".into(),
                quota: Some(pb::Quota {
                    guaranteed: 1,
                    limit: 2,
                    ..Default::default()
                }),
            })
            .await
            .map(drop),
        "SuspendTenant" => c
            .tenants
            .suspend_tenant(pb::SuspendTenantRequest {
                id: "delta".into(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "ResumeTenant" => c
            .tenants
            .resume_tenant(pb::ResumeTenantRequest { id: "delta".into() })
            .await
            .map(drop),
        "RevokeTokens" => c
            .tokens
            .revoke_tokens(pb::RevokeTokensRequest {
                subject: "matrix-subject".into(),
                not_before: None,
            })
            .await
            .map(drop),
        "RegisterModel" => c
            .models
            .register_model(pb::RegisterModelRequest {
                name: format!("model-grpc-{n}"),
                size_mib: 1024,
                min_gpu_memory_mib: 1024,
                load_time_ms: 0,
            })
            .await
            .map(drop),
        "ListModels" => c
            .models
            .list_models(pb::ListModelsRequest::default())
            .await
            .map(drop),
        "ListNodes" => c
            .nodes
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map(drop),
        "GetUsage" => c
            .usage
            .get_usage(pb::GetUsageRequest {
                tenant_id: "alpha".into(),
            })
            .await
            .map(drop),
        "ListPrices" => c
            .billing
            .list_prices(pb::ListPricesRequest {})
            .await
            .map(drop),
        "SetPrice" => c
            .billing
            .set_price(pb::SetPriceRequest {
                gpu_class: String::new(),
                kind: "cpu".into(),
                rate_fen: 7,
                effective_from: Some(prost_types::Timestamp {
                    seconds: 1_893_456_000, // 2030-01-01
                    nanos: 0,
                }),
            })
            .await
            .map(drop),
        "GetPeriodUsage" => c
            .billing
            .get_period_usage(pb::GetPeriodUsageRequest {
                tenant_id: "alpha".into(),
                from: "2020-01-01T00:00:00Z".into(),
                to: String::new(),
            })
            .await
            .map(drop),
        "ListInvoices" => c
            .billing
            .list_invoices(pb::ListInvoicesRequest {
                tenant_id: "alpha".into(),
                period: String::new(),
            })
            .await
            .map(drop),
        "GetInvoice" => c
            .billing
            .get_invoice(pb::GetInvoiceRequest { id: job.into() })
            .await
            .map(drop),
        "ListPeriods" => c
            .billing
            .list_periods(pb::ListPeriodsRequest {})
            .await
            .map(drop),
        "ClosePeriod" => c
            .billing
            .close_period(pb::ClosePeriodRequest {
                at: "2020-01-01T00:00:00Z".into(),
            })
            .await
            .map(drop),
        "MeterUsage" => c
            .billing
            .meter_usage(pb::MeterUsageRequest {})
            .await
            .map(drop),
        "GetUsageReport" => c
            .reports
            .get_usage_report(pb::GetUsageReportRequest {
                from: "2020-01-01T00:00:00Z".into(),
                to: "2020-01-02T00:00:00Z".into(),
                format: "html".into(),
            })
            .await
            .map(drop),
        "ListAuditEntries" => c
            .audit
            .list_audit_entries(pb::ListAuditEntriesRequest::default())
            .await
            .map(drop),
        "GetCheckpoint" => c
            .audit
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .map(drop),
        other => panic!("no gRPC call written for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_every_caller_on_both_doors() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path()).await;
    let table = expected();

    // Coverage: every REST route and every gRPC method has an entry.
    let pool = prost_reflect::DescriptorPool::decode(finpool_proto::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<String> = pool
        .services()
        .filter(|s| s.package_name() == "finpool.v1")
        .flat_map(|s| s.methods().map(|m| m.name().to_owned()).collect::<Vec<_>>())
        .collect();
    for m in &methods {
        assert!(
            table.contains_key(m.as_str()),
            "gRPC method {m} has no row in the matrix"
        );
    }
    for route in ROUTES {
        let rpc = route.rpc.rsplit('/').next().unwrap();
        assert!(
            table.contains_key(rpc),
            "REST route {} {} has no row",
            route.method,
            route.path
        );
    }
    assert_eq!(table.len(), methods.len(), "no stale rows");

    let mut n = 0;
    let mut failures = Vec::new();
    for route in ROUTES {
        let rpc = route.rpc.rsplit('/').next().unwrap();
        for (who, caller) in CALLERS.iter().enumerate() {
            let want = table[rpc][who];
            n += 1;
            let job = if rpc == "CancelJob" {
                w.fresh_alpha_job().await
            } else if rpc == "GetInvoice" {
                w.alpha_invoice.clone()
            } else {
                w.alpha_job.clone()
            };
            // REST
            let (params, body, query) = rest_request(rpc, &job, n);
            let mut path = route.path.to_owned();
            for (name, value) in &params {
                path = path.replace(&format!("{{{name}}}"), value);
            }
            let query = if query.ends_with('=') {
                format!("{query}{job}")
            } else {
                query.to_owned()
            };
            let mut request = w.server.rest(
                route.method.clone(),
                &format!("{path}{query}"),
                w.tokens[who].as_deref(),
            );
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let got = rest_outcome(status);
            if got != Some(want) {
                let text = response.text().await.unwrap_or_default();
                failures.push(format!(
                    "REST {} {path} as {caller}: want {want:?}, got {status} {text}",
                    route.method
                ));
            } else if rpc == "ListJobs" && who == 1 {
                let text = response.text().await.unwrap();
                assert!(
                    !text.contains(&w.alpha_job),
                    "beta's list shows alpha's job"
                );
                assert!(text.contains(&w.beta_job));
            }
            if want != Ok {
                assert_eq!(content_type, "application/problem+json", "{path}");
            }
            // gRPC
            let job = if rpc == "CancelJob" {
                w.fresh_alpha_job().await
            } else if rpc == "GetInvoice" {
                w.alpha_invoice.clone()
            } else {
                w.alpha_job.clone()
            };
            let mut client = Clients::connect(&w.server.addr, w.tokens[who].as_deref())
                .await
                .unwrap();
            match grpc_outcome(grpc_call(&mut client, rpc, &job, n).await) {
                Result::Ok(got) if got == want => {}
                got => failures.push(format!(
                    "gRPC {rpc} as {caller}: want {want:?}, got {got:?}"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The rules that need no token (health, reflection) are each tried without
/// one and answer, as are the HTTP probes: the matrix above covers every
/// other rule, which refuses anonymous callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_rules_answer_without_a_token() {
    use finpool_api::auth::policy::{Access, RULES};
    use tokio_stream::StreamExt;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::{v1, v1alpha};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let channel = tonic::transport::Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tried = Vec::new();
    for (path, access) in RULES {
        if *access != Access::Anonymous {
            continue;
        }
        let mut health = HealthClient::new(channel.clone());
        let result: Result<(), tonic::Status> = match *path {
            "/grpc.health.v1.Health/Check" => {
                health.check(HealthCheckRequest::default()).await.map(drop)
            }
            "/grpc.health.v1.Health/Watch" => {
                match health.watch(HealthCheckRequest::default()).await {
                    Result::Ok(r) => r.into_inner().next().await.unwrap().map(drop),
                    Err(e) => Err(e),
                }
            }
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" => {
                let list = v1::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
                    ),
                };
                match v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
                    .server_reflection_info(tokio_stream::iter([list]))
                    .await
                {
                    Result::Ok(r) => r.into_inner().next().await.unwrap().map(drop),
                    Err(e) => Err(e),
                }
            }
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => {
                let list = v1alpha::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        v1alpha::server_reflection_request::MessageRequest::ListServices(
                            String::new(),
                        ),
                    ),
                };
                match v1alpha::server_reflection_client::ServerReflectionClient::new(
                    channel.clone(),
                )
                .server_reflection_info(tokio_stream::iter([list]))
                .await
                {
                    Result::Ok(r) => r.into_inner().next().await.unwrap().map(drop),
                    Err(e) => Err(e),
                }
            }
            other => panic!("no anonymous call written for {other}"),
        };
        assert!(result.is_ok(), "{path} without a token: {result:?}");
        tried.push(*path);
    }
    assert_eq!(tried.len(), 4, "{tried:?}");
    assert!(
        RULES
            .iter()
            .all(|(p, a)| *a != Access::Anonymous || tried.contains(p))
    );
    for path in ["/healthz", "/readyz"] {
        let r = server
            .rest(reqwest::Method::GET, path, None)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

// ---------------------------------------------------------------------------
// JWT attacks (RFC 8725)

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Keys {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: String,
}

fn server_keys(dir: &std::path::Path) -> Keys {
    use ring::signature::KeyPair;
    let pkcs8 = std::fs::read(dir.join(finpool_api::auth::KEY_FILE)).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
    let kid = finpool_api::SigningKey::load(dir).unwrap().kid().to_owned();
    Keys {
        public: pair.public_key().as_ref().to_vec(),
        pkcs8,
        kid,
    }
}

fn valid_claims() -> serde_json::Value {
    let now = now_seconds();
    json!({
        "iss": finpool_api::auth::ISSUER, "aud": finpool_api::auth::AUDIENCE,
        "sub": "mallory", "role": "tenant", "tenant": "alpha",
        "iat": now, "nbf": now, "exp": now + 600,
    })
}

fn sign(keys: &Keys, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&keys.pkcs8),
    )
    .unwrap()
}

fn with(
    mut claims: serde_json::Value,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> serde_json::Value {
    f(claims.as_object_mut().unwrap());
    claims
}

/// A JWKS key of another issuer, and a token it signs.
fn idp_key() -> (Vec<u8>, serde_json::Value) {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "idp-2026", "use": "sig", "alg": "EdDSA",
        "x": b64(pair.public_key().as_ref())});
    (pkcs8.as_ref().to_vec(), jwk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_tokens_are_unauthenticated_on_both_doors() {
    let dir = tempfile::tempdir().unwrap();
    // Boot once to create the server key; then serve with a JWKS of an
    // external issuer beside it.
    drop(Server::start(dir.path()));
    let (idp_pkcs8, idp_jwk) = idp_key();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [idp_jwk]}).to_string()).unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            "--jwks",
            jwks.to_str().unwrap(),
            "--jwks-issuer",
            "https://idp.example",
            // Each attack is a failed authentication, which the per-address
            // limit counts: this suite checks the answers, not the limit.
            "--anonymous-rate-limit",
            "0",
        ],
    );
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let keys = server_keys(dir.path());
    let idp = Keys {
        pkcs8: idp_pkcs8,
        public: Vec::new(),
        kid: "idp-2026".into(),
    };

    // Controls: the test's own signing is sound, and the JWKS key works
    // with its issuer.
    let good = sign(&keys, &keys.kid, &valid_claims());
    let idp_good = sign(
        &idp,
        &idp.kid,
        &with(valid_claims(), |c| {
            c.insert("iss".into(), "https://idp.example".into());
        }),
    );
    for token in [&good, &idp_good] {
        assert_eq!(status_rest(&server, token).await, 200);
        assert_eq!(code_grpc(&server, token).await, Code::Ok);
    }

    let now = now_seconds();
    let payload = b64(valid_claims().to_string().as_bytes());
    let mut attacks: Vec<(String, String)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT", "kid": keys.kid})
            .to_string()
            .as_bytes());
        attacks.push((format!("alg {alg}"), format!("{header}.{payload}.")));
    }
    // HS256 keyed with the server's public key (raw, and as the JWKS x).
    for (what, secret) in [
        ("raw", keys.public.clone()),
        ("b64", b64(&keys.public).into_bytes()),
    ] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(keys.kid.clone());
        let t = jsonwebtoken::encode(
            &header,
            &valid_claims(),
            &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();
        attacks.push((format!("HS256 with the public key ({what})"), t));
    }
    attacks.push((
        "missing iss".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.remove("iss");
            }),
        ),
    ));
    attacks.push((
        "wrong iss".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.insert("iss".into(), "evil".into());
            }),
        ),
    ));
    attacks.push((
        "JWKS key with finpool's iss".into(),
        sign(&idp, &idp.kid, &valid_claims()),
    ));
    attacks.push((
        "missing aud".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.remove("aud");
            }),
        ),
    ));
    attacks.push((
        "wrong aud".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.insert("aud".into(), "other-api".into());
            }),
        ),
    ));
    attacks.push((
        "expired past the leeway".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.insert("exp".into(), (now - 120).into());
                c.insert("iat".into(), (now - 700).into());
                c.insert("nbf".into(), (now - 700).into());
            }),
        ),
    ));
    attacks.push((
        "missing exp".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.remove("exp");
            }),
        ),
    ));
    attacks.push((
        "nbf in the future".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.insert("nbf".into(), (now + 300).into());
            }),
        ),
    ));
    attacks.push((
        "unknown kid".into(),
        sign(&keys, "not-a-key", &valid_claims()),
    ));
    attacks.push(("no kid".into(), {
        let h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        jsonwebtoken::encode(
            &h,
            &valid_claims(),
            &jsonwebtoken::EncodingKey::from_ed_der(&keys.pkcs8),
        )
        .unwrap()
    }));
    attacks.push(("tampered payload".into(), {
        let parts: Vec<&str> = good.split('.').collect();
        let forged = b64(with(valid_claims(), |c| {
            c.insert("role".into(), "operator".into());
            c.remove("tenant");
        })
        .to_string()
        .as_bytes());
        format!("{}.{forged}.{}", parts[0], parts[2])
    }));
    attacks.push((
        "missing role".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.remove("role");
            }),
        ),
    ));
    attacks.push((
        "unknown role".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.insert("role".into(), "admin".into());
            }),
        ),
    ));
    attacks.push((
        "tenant role without tenant".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.remove("tenant");
            }),
        ),
    ));
    attacks.push((
        "missing sub".into(),
        sign(
            &keys,
            &keys.kid,
            &with(valid_claims(), |c| {
                c.remove("sub");
            }),
        ),
    ));
    attacks.push(("garbage".into(), "not.a.jwt".into()));

    let mut failures = Vec::new();
    for (what, token) in &attacks {
        let rest = status_rest(&server, token).await;
        let grpc = code_grpc(&server, token).await;
        if rest != 401 || grpc != Code::Unauthenticated {
            failures.push(format!("{what}: REST {rest}, gRPC {grpc:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "accepted or misclassified:\n{}",
        failures.join("\n")
    );
}

async fn status_rest(server: &Server, token: &str) -> u16 {
    server
        .rest(reqwest::Method::GET, "/v1/jobs", Some(token))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn code_grpc(server: &Server, token: &str) -> Code {
    let mut c = Clients::connect(&server.addr, Some(token)).await.unwrap();
    match c.jobs.list_jobs(pb::ListJobsRequest::default()).await {
        Result::Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}
