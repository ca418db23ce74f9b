//! End to end: a real `finpool up`, two brokerages submitting through the
//! real gRPC client, and the guarantees a brokerage relies on.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use finpool_api::Role;
use finpool_proto::v1 as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokerages_share_the_pool_safely() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 2).await;
    create_tenant(&mut op, "beta", 1, 3).await;
    let mut alpha = server.tenant("alpha").await;
    let mut beta = server.tenant("beta").await;

    // Each job prints the GPUs it was given, then works a little.
    let script = "echo \"gpus=$CUDA_VISIBLE_DEVICES milli=${FINPOOL_GPU_MILLI:-1000}\"; sleep 1";
    let mut alpha_ids = Vec::new();
    for i in 0..4 {
        alpha_ids.push(
            submit(&mut alpha, shell_job(&format!("a{i}"), whole(1), script))
                .await
                .id,
        );
    }
    let mut beta_ids = Vec::new();
    for i in 0..3 {
        beta_ids.push(
            submit(&mut beta, shell_job(&format!("b{i}"), whole(1), script))
                .await
                .id,
        );
    }
    for i in 0..2 {
        beta_ids.push(
            submit(&mut beta, shell_job(&format!("s{i}"), share(300), script))
                .await
                .id,
        );
    }

    // While they run, alpha never holds more than its limit of 2 cards, and
    // its extra work waits (with a reason) instead of running.
    let mut saw_alpha_waiting_at_limit = false;
    let jobs = loop {
        let jobs = list_all(&mut op).await;
        let alpha_cards: std::collections::BTreeSet<_> = jobs
            .iter()
            .filter(|j| j.tenant_id == "alpha" && j.state == pb::JobState::Running as i32)
            .flat_map(|j| {
                let p = j.placement.clone().unwrap();
                p.gpus.into_iter().map(move |g| (p.node.clone(), g.index))
            })
            .collect();
        assert!(
            alpha_cards.len() <= 2,
            "alpha holds {alpha_cards:?}, over its limit of 2"
        );
        if alpha_cards.len() == 2
            && jobs.iter().any(|j| {
                j.tenant_id == "alpha"
                    && j.state == pb::JobState::Pending as i32
                    && j.reason_code == "QuotaLimit"
                    && j.reason.starts_with("quota: A100 limit 2 GPUs")
                    && j.reason.contains("holding 2, this job asks 1")
            })
        {
            saw_alpha_waiting_at_limit = true;
        }
        if jobs.len() == 9 && jobs.iter().all(|j| is_terminal(j.state)) {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        saw_alpha_waiting_at_limit,
        "alpha's work over its limit should wait"
    );

    // Every job ran and succeeded, on the GPUs Get reports.
    for job in &jobs {
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:#?}");
        let owner = if job.tenant_id == "alpha" {
            &mut alpha
        } else {
            &mut beta
        };
        let got = owner
            .jobs
            .get_job(pb::GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        let placed: Vec<String> = got
            .placement
            .unwrap()
            .gpus
            .iter()
            .map(|g| g.index.to_string())
            .collect();
        let printed = read_logs(owner, &job.id).await;
        assert!(
            printed.contains(&format!("gpus={} ", placed.join(","))),
            "job printed {printed:?} but was placed on {placed:?}"
        );
        let history: Vec<i32> = got.history.iter().map(|t| t.to).collect();
        assert_eq!(
            history,
            [
                pb::JobState::Pending,
                pb::JobState::Admitted,
                pb::JobState::Running,
                pb::JobState::Succeeded
            ]
            .map(|s| s as i32)
        );
    }

    // No card was ever held by two tenants at once.
    /// (started, finished, tenant) of each job on a card.
    type Spans = Vec<(i64, i64, String)>;
    let mut by_card: BTreeMap<(String, u32), Spans> = BTreeMap::new();
    for job in &jobs {
        let p = job.placement.clone().unwrap();
        for g in p.gpus {
            by_card.entry((p.node.clone(), g.index)).or_default().push((
                millis(&job.started_at),
                millis(&job.finished_at),
                job.tenant_id.clone(),
            ));
        }
    }
    for (card, spans) in &by_card {
        for a in spans {
            for b in spans {
                assert!(
                    a.2 == b.2 || a.1 <= b.0 || b.1 <= a.0,
                    "{card:?} was shared by {} and {} at once",
                    a.2,
                    b.2
                );
            }
        }
    }

    // Tenants see only their own jobs; another tenant's job is NotFound.
    let listed: Vec<String> = list_all(&mut alpha)
        .await
        .into_iter()
        .map(|j| j.tenant_id)
        .collect();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|t| t == "alpha"));
    let theirs = beta_ids[0].clone();
    let err = alpha
        .jobs
        .get_job(pb::GetJobRequest { id: theirs.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = alpha
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: theirs.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = alpha
        .jobs
        .stream_logs(pb::StreamLogsRequest {
            id: theirs.clone(),
            follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = alpha
        .jobs
        .list_jobs(pb::ListJobsRequest {
            tenant_id: "beta".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        err.jobs.iter().all(|j| j.tenant_id == "alpha"),
        "a tenant cannot list another's jobs"
    );

    // Usage is metered: alpha ran 4 one-GPU jobs of about a second each.
    let usage = alpha
        .usage
        .get_usage(pb::GetUsageRequest::default())
        .await
        .unwrap()
        .into_inner();
    let a100 = usage
        .classes
        .iter()
        .find(|c| c.gpu_class == "A100")
        .unwrap();
    assert!(a100.gpu_milli_seconds >= 4 * 900, "{usage:?}");
    let err = alpha
        .usage
        .get_usage(pb::GetUsageRequest {
            tenant_id: "beta".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A regulator reads everything and changes nothing.
    let mut regulator = server.client(&server.token(Role::Regulator, None)).await;
    assert_eq!(list_all(&mut regulator).await.len(), 9);
    let err = regulator
        .jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(shell_job("r", whole(1), "true")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = regulator
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: alpha_ids[0].clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = regulator
        .tenants
        .set_quota(pb::SetQuotaRequest {
            tenant_id: "alpha".into(),
            gpu_class: "A100".into(),
            quota: Some(pb::Quota {
                guaranteed: 6,
                limit: 6,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Missing, expired or wrongly signed tokens are Unauthenticated.
    let mut anonymous = finpool_cli::client::Clients::connect(&server.addr, None)
        .await
        .unwrap();
    let err = anonymous
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let expired = {
        let key = finpool_api::SigningKey::load(&server.data_dir).unwrap();
        let t = finpool_domain::Name::parse("t", "alpha").unwrap();
        key.issue(
            "x",
            Role::Tenant,
            Some(&t),
            Duration::from_secs(60),
            now_seconds() - 7200,
        )
        .unwrap()
    };
    let err = server
        .client(&expired)
        .await
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let other_dir = tempfile::tempdir().unwrap();
    finpool_api::SigningKey::load_or_create(other_dir.path()).unwrap();
    let forged = token_for(
        other_dir.path(),
        Role::Operator,
        None,
        Duration::from_secs(600),
    );
    let err = server
        .client(&forged)
        .await
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_max_runtime_stop_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 2, 4).await;
    let mut alpha = server.tenant("alpha").await;

    // A job that ignores SIGTERM is killed after the grace period.
    let stubborn = submit(
        &mut alpha,
        shell_job(
            "stubborn",
            whole(1),
            "trap '' TERM; echo started; while true; do sleep 0.1; done",
        ),
    )
    .await;
    let mut limited = shell_job("limited", whole(1), "sleep 30");
    limited.max_runtime = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let limited = submit(&mut alpha, limited).await;
    let failing = submit(
        &mut alpha,
        shell_job("failing", whole(1), "echo oops >&2; exit 3"),
    )
    .await;

    wait_for(
        &mut alpha,
        Duration::from_secs(20),
        "the stubborn job to run",
        |jobs| {
            jobs.iter()
                .any(|j| j.id == stubborn.id && j.state == pb::JobState::Running as i32)
        },
    )
    .await;
    let cancelled = alpha
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: stubborn.id.clone(),
            reason: "not needed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cancelled.state,
        pb::JobState::Running as i32,
        "stopping takes the grace period"
    );
    let jobs = wait_for(
        &mut alpha,
        Duration::from_secs(20),
        "all three to end",
        |jobs| jobs.iter().all(|j| is_terminal(j.state)),
    )
    .await;
    let get = |id: &str| jobs.iter().find(|j| j.id == id).unwrap().clone();
    let s = get(&stubborn.id);
    assert_eq!(s.state, pb::JobState::Cancelled as i32);
    assert!(s.reason.contains("not needed"), "{}", s.reason);
    let l = get(&limited.id);
    assert_eq!(l.state, pb::JobState::Failed as i32);
    assert!(l.reason.contains("max runtime"), "{}", l.reason);
    let f = get(&failing.id);
    assert_eq!(f.state, pb::JobState::Failed as i32);
    assert_eq!(f.exit_code, Some(3));
    assert_eq!(f.reason, "exit code 3");
    assert_eq!(read_logs(&mut alpha, &failing.id).await, "oops\n");

    // Cancelling a queued job is immediate; cancelling a finished one is refused.
    let err = alpha
        .jobs
        .cancel_job(pb::CancelJobRequest {
            id: failing.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_a_running_job_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 1).await;
    let mut alpha = server.tenant("alpha").await;
    let job = submit(
        &mut alpha,
        shell_job(
            "ticker",
            share(100),
            "for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done",
        ),
    )
    .await;
    use tokio_stream::StreamExt;
    let mut stream = alpha
        .jobs
        .stream_logs(pb::StreamLogsRequest {
            id: job.id.clone(),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = Vec::new();
    let collected = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            text.extend(chunk.unwrap().data);
        }
    })
    .await;
    assert!(collected.is_ok(), "follow should end when the job ends");
    assert_eq!(
        String::from_utf8_lossy(&text),
        "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"
    );
}

/// grpcurl's view: server reflection answers without a token and
/// describes finpool's services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_describes_the_api_like_grpcurl_sees_it() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let channel = tonic::transport::Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "finpool.v1.JobService".into(),
            )),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    use tokio_stream::StreamExt;
    let listed = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "finpool.v1.JobService",
        "finpool.v1.TenantService",
        "finpool.v1.ModelService",
        "finpool.v1.NodeService",
        "finpool.v1.UsageService",
    ] {
        assert!(names.contains(&service.to_owned()), "{names:?}");
    }
    let file = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(fds)) = file.message_response else {
        panic!("expected descriptors, got {file:?}");
    };
    assert!(!fds.file_descriptor_proto.is_empty());
}

/// Watch streams a tenant's own job events, and nothing of anyone else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_only_the_callers_events() {
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut op = server.operator().await;
    create_tenant(&mut op, "alpha", 1, 1).await;
    create_tenant(&mut op, "beta", 1, 1).await;
    let mut alpha = server.tenant("alpha").await;
    let mut beta = server.tenant("beta").await;
    let mut alpha_events = alpha
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut beta_events = beta
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let job = submit(&mut alpha, shell_job("watched", whole(1), "true")).await;

    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = alpha_events.next().await {
            let event = event.unwrap();
            assert_eq!(event.job_id, job.id);
            let to = event.transition.unwrap().to;
            seen.push(to);
            if to == pb::JobState::Succeeded as i32 {
                break;
            }
        }
    })
    .await
    .expect("alpha sees its job end");
    assert_eq!(
        seen,
        [
            pb::JobState::Pending,
            pb::JobState::Admitted,
            pb::JobState::Running,
            pb::JobState::Succeeded
        ]
        .map(|s| s as i32)
    );
    let leaked = tokio::time::timeout(Duration::from_millis(500), beta_events.next()).await;
    assert!(
        leaked.is_err(),
        "beta must not see alpha's events: {leaked:?}"
    );

    // Watching another tenant's job by id is NotFound.
    let err = beta
        .jobs
        .watch_jobs(pb::WatchJobsRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
