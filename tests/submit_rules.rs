//! Submission rules through the real server: idempotency under concurrency,
//! and bad input refused by field with nothing stored.

mod common;

use std::collections::BTreeSet;

use common::*;
use finpool_proto::v1 as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_submits_with_one_key_make_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    let alpha = server.tenant("alpha").await;
    let mut spec = shell_job("once", whole(1), "echo once");
    spec.idempotency_key = "trade-2026-11-30-0001".into();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = alpha.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            c.jobs
                .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        ids.insert(r.job.unwrap().id);
        created += r.created as usize;
    }
    assert_eq!(ids.len(), 1, "one job id for one key");
    assert_eq!(created, 1, "exactly one submit created it");
    let mut alpha = alpha;
    assert_eq!(list_all(&mut alpha).await.len(), 1);

    // The same key with a different spec is refused rather than merged.
    let mut other = spec.clone();
    other.command = vec!["echo".into(), "twice".into()];
    let err = alpha
        .jobs
        .submit_job(pb::SubmitJobRequest { spec: Some(other) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().starts_with("idempotency_key"),
        "{}",
        err.message()
    );
}

/// A SubmitJobRequest from a "newer client": a field this server does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct SubmitWithExtra {
    #[prost(message, optional, tag = "1")]
    spec: Option<pb::JobSpec>,
    #[prost(string, tag = "15")]
    priority_class: String,
}

/// A JobSpec with an unknown field nested inside the request.
#[derive(Clone, PartialEq, prost::Message)]
struct SpecWithExtra {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "3")]
    command: Vec<String>,
    #[prost(int64, tag = "40")]
    gpus: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SubmitNestedExtra {
    #[prost(message, optional, tag = "1")]
    spec: Option<SpecWithExtra>,
}

async fn raw_submit<M: prost::Message + Send + Sync + 'static>(
    server: &Server,
    token: &str,
    message: M,
) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/finpool.v1.JobService/SubmitJob");
    grpc.unary::<M, pb::SubmitJobResponse, _>(request, path, tonic_prost::ProstCodec::default())
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    op.models
        .register_model(pb::RegisterModelRequest {
            name: "qwen2-7b".into(),
            size_mib: 15000,
            min_gpu_memory_mib: 20000,
            load_time_ms: 0,
        })
        .await
        .unwrap();
    let mut alpha = server.tenant("alpha").await;
    let token = server.token(finpool_api::Role::Tenant, Some("alpha"));

    // Unknown fields, at the top level and nested.
    let err = raw_submit(
        &server,
        &token,
        SubmitWithExtra {
            spec: Some(shell_job("x", whole(1), "true")),
            priority_class: "urgent".into(),
        },
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("#15: unknown field"),
        "{}",
        err.message()
    );
    let err = raw_submit(
        &server,
        &token,
        SubmitNestedExtra {
            spec: Some(SpecWithExtra {
                name: "x".into(),
                command: vec!["true".into()],
                gpus: 2,
            }),
        },
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("spec.#40: unknown field"),
        "{}",
        err.message()
    );

    let base = || shell_job("ok-name", whole(1), "true");
    let mut cases: Vec<(&str, pb::JobSpec)> = Vec::new();
    let mut s = base();
    s.resources.as_mut().unwrap().gpu = Some(pb::GpuRequest {
        kind: Some(whole(0)),
    });
    cases.push(("resources.gpu.whole_gpus", s));
    let mut s = base();
    s.resources.as_mut().unwrap().gpu = Some(pb::GpuRequest {
        kind: Some(whole(-2)),
    });
    cases.push(("resources.gpu.whole_gpus", s));
    let mut s = base();
    s.resources.as_mut().unwrap().gpu = Some(pb::GpuRequest {
        kind: Some(share(1001)),
    });
    cases.push(("resources.gpu.share.milli", s));
    let mut s = base();
    s.resources.as_mut().unwrap().gpu_classes = vec!["V100".into()];
    cases.push(("resources.gpu_classes[0]", s));
    let mut s = base();
    s.model = "llama-unknown".into();
    cases.push(("model", s));
    let mut s = base();
    s.command = vec!["sh".into(), "-c".into(), "x".repeat(64 * 1024 + 1)];
    cases.push(("command", s));
    let mut s = base();
    s.name = "Not_A_Valid Name".into();
    cases.push(("name", s));
    let mut s = base();
    s.resources.as_mut().unwrap().cpu_milli = -1;
    cases.push(("resources.cpu_milli", s));

    for (field, spec) in cases {
        let err = alpha
            .jobs
            .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "expected {field}, got {:?}",
            err.message()
        );
    }
    assert!(list_all(&mut alpha).await.is_empty(), "nothing is stored");
    let mut regulator = server
        .client(&server.token(finpool_api::Role::Regulator, None))
        .await;
    assert!(list_all(&mut regulator).await.is_empty());
}
