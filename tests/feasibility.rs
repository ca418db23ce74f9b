//! Feasibility through a real server, on each store backend: a job that no
//! node of the pool could hold is refused at submit over gRPC and REST,
//! naming the field, with nothing stored; a pending job that the pool no
//! longer fits after a restart with a smaller inventory says why.

mod common;

use std::time::Duration;

use common::*;
use finpool_api::Role;
use finpool_proto::v1 as pb;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

/// One job that fits no node of [`TEST_POOL`], and the field that says so.
struct Case {
    tenant: &'static str,
    field: &'static str,
    gpu: Option<pb::gpu_request::Kind>,
    cpu_milli: i64,
    memory_mib: i64,
}

impl Case {
    fn grpc(&self) -> pb::JobSpec {
        pb::JobSpec {
            name: "too-big".into(),
            command: vec!["true".into()],
            resources: Some(pb::Resources {
                gpu: self.gpu.map(|kind| pb::GpuRequest { kind: Some(kind) }),
                gpu_classes: vec![],
                cpu_milli: self.cpu_milli,
                memory_mib: self.memory_mib,
            }),
            ..Default::default()
        }
    }

    fn rest(&self) -> Value {
        let mut resources = json!({"cpu_milli": self.cpu_milli, "memory_mib": self.memory_mib});
        match &self.gpu {
            Some(pb::gpu_request::Kind::WholeGpus(n)) => {
                resources["gpu"] = json!({"whole_gpus": n});
            }
            Some(pb::gpu_request::Kind::Share(s)) => {
                resources["gpu"] = json!({"share": {"milli": s.milli, "memory_mib": s.memory_mib}});
            }
            None => {}
        }
        json!({"name": "too-big", "command": ["true"], "resources": resources})
    }
}

fn cases() -> Vec<Case> {
    vec![
        // What outside testing found: accepted, then pending for ever.
        Case {
            tenant: "alpha",
            field: "resources.cpu_milli",
            gpu: None,
            cpu_milli: i64::MAX,
            memory_mib: 256,
        },
        // The largest node has 32 CPUs.
        Case {
            tenant: "alpha",
            field: "resources.cpu_milli",
            gpu: Some(whole(1)),
            cpu_milli: 32_001,
            memory_mib: 256,
        },
        Case {
            tenant: "alpha",
            field: "resources.memory_mib",
            gpu: Some(whole(1)),
            cpu_milli: 500,
            memory_mib: 1 << 40,
        },
        // The pool has no card in MIG mode for a MIG tenant's share.
        Case {
            tenant: "secure",
            field: "resources.gpu.share",
            gpu: Some(share(500)),
            cpu_milli: 500,
            memory_mib: 256,
        },
    ]
}

async fn create_mig_tenant(op: &mut finpool_cli::client::Clients, id: &str) {
    op.tenants
        .create_tenant(pb::CreateTenantRequest {
            id: id.into(),
            display_name: id.into(),
            quotas: [(
                "A100".to_owned(),
                pb::Quota {
                    guaranteed: 1,
                    limit: 2,
                    ..Default::default()
                },
            )]
            .into(),
            weight: 1,
            isolation: pb::IsolationLevel::Mig as i32,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_node_could_hold_is_refused_by_field_at_both_doors() {
    for backend in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let server = backend.start(dir.path(), &[]);
        let mut op = server.operator().await;
        create_tenant(&mut op, "alpha", 1, 2).await;
        create_mig_tenant(&mut op, "secure").await;
        for case in cases() {
            let what = format!("{} ({}, {})", case.field, case.tenant, backend.name());
            let mut grpc = server.tenant(case.tenant).await;
            let err = grpc
                .jobs
                .submit_job(pb::SubmitJobRequest {
                    spec: Some(case.grpc()),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert!(
                err.message().starts_with(&format!("{}: ", case.field))
                    && err.message().contains("could never run"),
                "{what}: {}",
                err.message()
            );

            let token = server.token(Role::Tenant, Some(case.tenant));
            let r = server
                .rest(Method::POST, "/v1/jobs", Some(&token))
                .json(&case.rest())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{what}");
            let problem: Value = r.json().await.unwrap();
            assert_eq!(problem["field"], case.field, "{what}: {problem}");
            assert!(
                problem["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("could never run"),
                "{what}: {problem}"
            );
        }
        // Nothing was stored, as the operator sees it.
        assert!(list_all(&mut op).await.is_empty(), "{}", backend.name());
        // At the limit, it fits: the largest node has exactly this much.
        let mut alpha = server.tenant("alpha").await;
        let mut fits = shell_job("fits", whole(1), "true");
        fits.resources.as_mut().unwrap().cpu_milli = 32_000;
        submit(&mut alpha, fits).await;
        assert_eq!(list_all(&mut op).await.len(), 1, "{}", backend.name());
        drop(server);
        backend.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_job_the_pool_no_longer_fits_says_why() {
    for backend in backends().await {
        let dir = tempfile::tempdir().unwrap();
        let server = backend.start(dir.path(), &[]);
        let mut op = server.operator().await;
        create_tenant(&mut op, "alpha", 1, 1).await;
        let mut alpha = server.tenant("alpha").await;
        // One card (alpha's limit) runs; the next job waits for quota. It
        // asks for 20 CPUs, which only node-a (32) has.
        let runner = submit(&mut alpha, shell_job("runner", whole(1), "sleep 600")).await;
        let mut big = shell_job("big-cpu", whole(1), "true");
        big.resources.as_mut().unwrap().cpu_milli = 20_000;
        let big = submit(&mut alpha, big).await;
        wait_for(
            &mut alpha,
            Duration::from_secs(30),
            "the runner to run and the big job to wait for quota",
            |jobs| {
                let state = |id: &str| jobs.iter().find(|j| j.id == id).cloned();
                state(&runner.id).is_some_and(|j| j.state == pb::JobState::Running as i32)
                    && state(&big.id).is_some_and(|j| {
                        j.state == pb::JobState::Pending as i32 && j.reason_code == "QuotaLimit"
                    })
            },
        )
        .await;
        server.kill();

        // The pool shrinks: no node has more than 16 CPUs now.
        let pool = dir.path().join("pool.toml");
        let smaller = TEST_POOL.replace("cpu_milli = 32000", "cpu_milli = 16000");
        assert_ne!(smaller, TEST_POOL);
        std::fs::write(&pool, smaller).unwrap();
        let server = backend.start(dir.path(), &[]);
        let mut alpha = server.tenant("alpha").await;
        let jobs = wait_for(
            &mut alpha,
            Duration::from_secs(30),
            "the big job to be marked infeasible",
            |jobs| {
                jobs.iter()
                    .any(|j| j.id == big.id && j.reason_code == "Infeasible")
            },
        )
        .await;
        let job = jobs.iter().find(|j| j.id == big.id).unwrap();
        assert_eq!(
            job.state,
            pb::JobState::Pending as i32,
            "{}",
            backend.name()
        );
        assert!(
            job.reason.contains("cpu_milli") && job.reason.contains("16000"),
            "{}: {}",
            backend.name(),
            job.reason
        );
        drop(server);
        backend.cleanup().await;
    }
}
