//! Store behaviour, run against every backend: SQLite always, and
//! PostgreSQL when FINPOOL_TEST_DATABASE_URL is set (CI sets it). Each
//! PostgreSQL test gets a database of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use finpool_domain::{
    BaseModel, GpuAssignment, GpuRequest, IsolationLevel, Job, JobId, JobSpec, JobState, Name,
    Placement, Quota, Resources, RestartPolicy, Tenant, Timestamp,
};
use finpool_store::{Change, JobFilter, Store, StoreConfig, StoreError, testing};
use sqlx::Connection;

struct Backend {
    store: Store,
    /// For poking at the database behind the store's back.
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("finpool.db");
    let mut all = vec![Backend {
        store: Store::open(&StoreConfig::Sqlite(path.clone()))
            .await
            .unwrap(),
        url: format!("sqlite://{}", path.display()),
        _dir: Some(dir),
    }];
    if let Ok(base) = std::env::var(testing::TEST_DATABASE_URL_VAR) {
        let url = testing::fresh_postgres_database(&base)
            .await
            .unwrap_or_else(|e| panic!("{base} is set for tests but unusable: {e}"));
        all.push(Backend {
            store: Store::open(&StoreConfig::Postgres(url.clone()))
                .await
                .unwrap(),
            url,
            _dir: None,
        });
    }
    all
}

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: name(id),
        display_name: format!("Tenant {id}"),
        quotas: [(
            "A100".to_owned(),
            Quota {
                guaranteed: 1,
                limit: 2,
                lending_limit: None,
            },
        )]
        .into(),
        weight: 2,
        isolation: IsolationLevel::SharedWithinTenant,
        created_at: Timestamp(1_000),
        suspended: None,
    }
}

fn spec(n: &str, key: Option<&str>) -> JobSpec {
    JobSpec {
        name: name(n),
        model: None,
        command: vec!["echo".into(), "hi".into()],
        args: vec![],
        env: BTreeMap::new(),
        resources: Resources {
            gpu: GpuRequest::Whole { count: 1 },
            gpu_classes: vec![],
            cpu_milli: 1000,
            memory_mib: 512,
        },
        priority: 0,
        max_runtime_ms: None,
        min_runtime_ms: None,
        idempotency_key: key.map(str::to_owned),
        labels: BTreeMap::new(),
        restart_policy: RestartPolicy::Fail,
    }
}

fn new_job(t: &str, n: &str, at: i64) -> Job {
    Job::new(JobId::new_random(), name(t), spec(n, None), Timestamp(at))
}

fn placement() -> Placement {
    Placement {
        node: "node-a".into(),
        gpus: vec![GpuAssignment {
            index: 3,
            uuid: "GPU-3".into(),
            class: "A100".into(),
            milli: 1000,
            memory_mib: 81920,
            mig_slice: None,
        }],
    }
}

#[tokio::test]
async fn tenants_and_models() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha")).await.unwrap();
        s.create_tenant(&tenant("beta")).await.unwrap();
        assert!(matches!(
            s.create_tenant(&tenant("alpha")).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert_eq!(s.get_tenant("alpha").await.unwrap(), tenant("alpha"));
        assert!(matches!(
            s.get_tenant("nobody").await,
            Err(StoreError::NotFound(_))
        ));
        let page = s.list_tenants("", 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(
            s.list_tenants("alpha", 10).await.unwrap()[0].id.as_str(),
            "beta"
        );
        let updated = s
            .set_quota(
                &name("beta"),
                "H100",
                Quota {
                    guaranteed: 0,
                    limit: 4,
                    lending_limit: None,
                },
                Timestamp(2_000),
            )
            .await
            .unwrap();
        assert_eq!(updated.quota("H100").limit, 4);
        assert_eq!(updated.quota("A100").limit, 2, "other classes are kept");
        assert_eq!(s.get_tenant("beta").await.unwrap(), updated);

        let model = BaseModel {
            name: name("qwen2-7b"),
            size_mib: 15_000,
            min_gpu_memory_mib: 20_000,
            load_time_ms: Some(12_000),
            registered_at: Timestamp(5),
        };
        s.register_model(&model).await.unwrap();
        assert!(matches!(
            s.register_model(&model).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert_eq!(s.list_models().await.unwrap(), vec![model]);
    }
}

#[tokio::test]
async fn concurrent_submits_with_one_key_make_one_job() {
    for b in backends().await {
        let s = b.store.clone();
        s.create_tenant(&tenant("alpha")).await.unwrap();
        let t = name("alpha");
        let id = JobId::for_idempotency_key(&t, "order-42");
        let mut handles = Vec::new();
        for _ in 0..50 {
            let s = s.clone();
            let job = Job::new(id, t.clone(), spec("risk", Some("order-42")), Timestamp(10));
            handles.push(tokio::spawn(async move { s.submit(job).await.unwrap() }));
        }
        let mut created = 0;
        for h in handles {
            let (job, was_created) = h.await.unwrap();
            assert_eq!(job.id, id);
            created += was_created as usize;
        }
        assert_eq!(created, 1, "{}", s.backend_kind());
        let page = s
            .list_jobs(&JobFilter {
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.jobs.len(), 1);

        // The same key with another spec is refused, not silently merged.
        let other = Job::new(
            id,
            t.clone(),
            spec("different", Some("order-42")),
            Timestamp(11),
        );
        assert!(matches!(
            s.submit(other).await,
            Err(StoreError::Conflict(_))
        ));
    }
}

#[tokio::test]
async fn transitions_follow_the_state_machine_and_keep_history() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha")).await.unwrap();
        let mut events = s.subscribe();
        let (job, _) = s.submit(new_job("alpha", "a", 100)).await.unwrap();
        assert_eq!(
            events.recv().await.unwrap().transition.to,
            JobState::Pending
        );

        // Running straight from Pending is not an edge.
        let err = s
            .transition(
                job.id,
                None,
                Change::new(JobState::Running, "x", Timestamp(101)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
        // Admitted needs a placement.
        assert!(matches!(
            s.transition(
                job.id,
                Some(JobState::Pending),
                Change::new(JobState::Admitted, "x", Timestamp(101))
            )
            .await,
            Err(StoreError::InvalidArgument { .. })
        ));

        let mut admit = Change::new(JobState::Admitted, "placed", Timestamp(200));
        admit.placement = Some(placement());
        s.transition(job.id, Some(JobState::Pending), admit)
            .await
            .unwrap();
        // A stale expectation is a conflict.
        assert!(matches!(
            s.transition(
                job.id,
                Some(JobState::Pending),
                Change::new(JobState::Cancelled, "x", Timestamp(201))
            )
            .await,
            Err(StoreError::Conflict(_))
        ));
        s.transition(
            job.id,
            Some(JobState::Admitted),
            Change::new(JobState::Running, "started", Timestamp(300)),
        )
        .await
        .unwrap();
        let mut done = Change::new(JobState::Succeeded, "exit code 0", Timestamp(10_300));
        done.exit_code = Some(0);
        s.transition(job.id, Some(JobState::Running), done)
            .await
            .unwrap();

        let stored = s.get_job(job.id).await.unwrap();
        assert_eq!(stored.state, JobState::Succeeded);
        assert_eq!(stored.exit_code, Some(0));
        assert_eq!(stored.started_at, Some(Timestamp(300)));
        assert_eq!(stored.finished_at, Some(Timestamp(10_300)));
        assert_eq!(stored.attempts, 1);
        assert_eq!(stored.placement, Some(placement()));
        let path: Vec<_> = stored.history.iter().map(|t| t.to).collect();
        assert_eq!(
            path,
            vec![
                JobState::Pending,
                JobState::Admitted,
                JobState::Running,
                JobState::Succeeded
            ]
        );
        assert_eq!(stored.history[0].from, None);
        assert_eq!(stored.history[3].from, Some(JobState::Running));

        // 10 s on one whole card = 10,000 milli-GPU-seconds.
        let usage = s
            .tenant_usage(&name("alpha"), Timestamp(99_999))
            .await
            .unwrap();
        assert_eq!(usage.classes["A100"].gpu_milli_seconds, 10_000);
        assert_eq!(usage.classes["A100"].gpus_in_use, 0);
        assert_eq!(usage.jobs_total, 1);
    }
}

#[tokio::test]
async fn preempted_jobs_requeue_and_meter_each_run() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha")).await.unwrap();
        let (job, _) = s.submit(new_job("alpha", "a", 0)).await.unwrap();
        for (start, stop) in [(1_000, 3_000), (5_000, 6_000)] {
            let mut admit = Change::new(JobState::Admitted, "placed", Timestamp(start));
            admit.placement = Some(placement());
            s.transition(job.id, Some(JobState::Pending), admit)
                .await
                .unwrap();
            s.transition(
                job.id,
                None,
                Change::new(JobState::Running, "started", Timestamp(start)),
            )
            .await
            .unwrap();
            if start == 1_000 {
                s.transition(
                    job.id,
                    None,
                    Change::new(JobState::Preempted, "reclaimed", Timestamp(stop)),
                )
                .await
                .unwrap();
                let back = s
                    .transition(
                        job.id,
                        None,
                        Change::new(JobState::Pending, "requeued", Timestamp(stop)),
                    )
                    .await
                    .unwrap();
                assert_eq!(back.placement, None);
            }
        }
        let usage = s
            .tenant_usage(&name("alpha"), Timestamp(6_000))
            .await
            .unwrap();
        // 2 s + 1 s (the open run, up to now).
        assert_eq!(usage.classes["A100"].gpu_milli_seconds, 3_000);
        assert_eq!(usage.classes["A100"].gpus_in_use, 1);
        assert_eq!(s.get_job(job.id).await.unwrap().attempts, 2);
    }
}

#[tokio::test]
async fn listing_pages_filters_and_scopes_by_tenant() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha")).await.unwrap();
        s.create_tenant(&tenant("beta")).await.unwrap();
        let mut alpha_ids = Vec::new();
        for i in 0..7 {
            // Two jobs share each timestamp, to exercise the id tie-break.
            let (j, _) = s.submit(new_job("alpha", "a", i / 2)).await.unwrap();
            alpha_ids.push(j.id);
        }
        s.submit(new_job("beta", "b", 3)).await.unwrap();
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = s
                .list_jobs(&JobFilter {
                    tenant: Some(name("alpha")),
                    states: vec![],
                    page_size: 3,
                    page_token: token.clone(),
                })
                .await
                .unwrap();
            assert!(page.jobs.iter().all(|j| j.tenant_id.as_str() == "alpha"));
            seen.extend(page.jobs.iter().map(|j| j.id));
            token = page.next_page_token;
            if token.is_none() {
                break;
            }
        }
        let mut expected = alpha_ids.clone();
        expected.sort();
        let mut got = seen.clone();
        got.sort();
        assert_eq!(got, expected, "every job exactly once");
        assert_eq!(seen.len(), 7);

        let mut admit = Change::new(JobState::Admitted, "placed", Timestamp(50));
        admit.placement = Some(placement());
        s.transition(alpha_ids[0], None, admit).await.unwrap();
        let admitted = s
            .list_jobs(&JobFilter {
                states: vec![JobState::Admitted],
                page_size: 50,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(admitted.jobs.len(), 1);
        assert_eq!(s.active_jobs().await.unwrap().len(), 8);

        let bad = s
            .list_jobs(&JobFilter {
                page_token: Some("garbage".into()),
                page_size: 3,
                ..Default::default()
            })
            .await;
        assert!(
            matches!(bad, Err(StoreError::InvalidArgument { field, .. }) if field == "page_token")
        );
    }
}

#[tokio::test]
async fn cancel_stops_queued_jobs_and_flags_running_ones() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha")).await.unwrap();
        let (queued, _) = s.submit(new_job("alpha", "q", 0)).await.unwrap();
        let cancelled = s
            .request_cancel(queued.id, "user asked", Timestamp(5))
            .await
            .unwrap();
        assert_eq!(cancelled.state, JobState::Cancelled);
        assert!(matches!(
            s.request_cancel(queued.id, "again", Timestamp(6)).await,
            Err(StoreError::Conflict(_))
        ));

        let (running, _) = s.submit(new_job("alpha", "r", 0)).await.unwrap();
        let mut admit = Change::new(JobState::Admitted, "placed", Timestamp(1));
        admit.placement = Some(placement());
        s.transition(running.id, None, admit).await.unwrap();
        s.transition(
            running.id,
            None,
            Change::new(JobState::Running, "go", Timestamp(2)),
        )
        .await
        .unwrap();
        let mut cancels = s.subscribe_cancels();
        let flagged = s
            .request_cancel(running.id, "user asked", Timestamp(7))
            .await
            .unwrap();
        assert_eq!(flagged.state, JobState::Running);
        assert!(flagged.cancel_requested);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), cancels.recv())
                .await
                .unwrap()
                .unwrap(),
            (running.id, "user asked".to_owned())
        );
    }
}

#[tokio::test]
async fn job_history_is_append_only() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha")).await.unwrap();
        s.submit(new_job("alpha", "a", 0)).await.unwrap();
        let refused = if b.url.starts_with("sqlite") {
            let mut c = sqlx::SqliteConnection::connect(&b.url).await.unwrap();
            let u = sqlx::query("UPDATE job_events SET reason = 'forged'")
                .execute(&mut c)
                .await;
            let d = sqlx::query("DELETE FROM job_events").execute(&mut c).await;
            u.is_err() && d.is_err()
        } else {
            let mut c = sqlx::PgConnection::connect(&b.url).await.unwrap();
            let u = sqlx::query("UPDATE job_events SET reason = 'forged'")
                .execute(&mut c)
                .await;
            let d = sqlx::query("DELETE FROM job_events").execute(&mut c).await;
            let t = sqlx::query("TRUNCATE job_events").execute(&mut c).await;
            u.is_err() && d.is_err() && t.is_err()
        };
        assert!(
            refused,
            "{}: history rows could be changed",
            s.backend_kind()
        );
    }
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let id = {
        let s = Store::open(&StoreConfig::Sqlite(path.clone()))
            .await
            .unwrap();
        s.create_tenant(&tenant("alpha")).await.unwrap();
        s.submit(new_job("alpha", "a", 0)).await.unwrap().0.id
    };
    let s = Store::open(&StoreConfig::Sqlite(path)).await.unwrap();
    assert_eq!(s.get_job(id).await.unwrap().state, JobState::Pending);
}

#[tokio::test]
async fn the_pending_cap_holds_under_concurrency_and_follows_transitions() {
    for b in backends().await {
        let s = b.store.clone();
        s.create_tenant(&tenant("alpha")).await.unwrap();
        s.create_tenant(&tenant("beta")).await.unwrap();
        // 40 concurrent submits against a cap of 10: exactly 10 get in.
        let mut handles = Vec::new();
        for i in 0..40 {
            let s = s.clone();
            let job = new_job("alpha", &format!("j{i}"), 100 + i);
            handles.push(tokio::spawn(
                async move { s.submit_capped(job, Some(10)).await },
            ));
        }
        let mut ok = Vec::new();
        let mut refused = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok((job, true)) => ok.push(job),
                Err(StoreError::LimitExceeded(m)) => {
                    assert!(m.contains("alpha"), "{m}");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((ok.len(), refused), (10, 30), "{}", s.backend_kind());
        // Another tenant is not affected; a replay of a stored job passes.
        assert!(
            s.submit_capped(new_job("beta", "b", 1), Some(10))
                .await
                .is_ok()
        );
        let replay = Job::new(
            ok[0].id,
            ok[0].tenant_id.clone(),
            ok[0].spec.clone(),
            Timestamp(999),
        );
        assert!(!s.submit_capped(replay, Some(10)).await.unwrap().1);
        // A job leaving Pending frees a place; nothing else does.
        let mut admit = Change::new(JobState::Admitted, "placed", Timestamp(300));
        admit.placement = Some(placement());
        s.transition(ok[0].id, Some(JobState::Pending), admit)
            .await
            .unwrap();
        assert!(
            s.submit_capped(new_job("alpha", "k1", 400), Some(10))
                .await
                .is_ok()
        );
        assert!(matches!(
            s.submit_capped(new_job("alpha", "k2", 401), Some(10)).await,
            Err(StoreError::LimitExceeded(_))
        ));
    }
}

#[tokio::test]
async fn reports_read_preemptions_and_reclaim_waits_from_the_history() {
    for b in backends().await {
        let s = &b.store;
        s.create_tenant(&tenant("alpha")).await.unwrap();
        s.create_tenant(&tenant("beta")).await.unwrap();
        let (victim, _) = s.submit(new_job("beta", "v", 0)).await.unwrap();
        let (reclaimer, _) = s.submit(new_job("alpha", "r", 1_000)).await.unwrap();
        let (plain, _) = s.submit(new_job("alpha", "p", 1_000)).await.unwrap();
        let admit = |reason: &str, at| {
            let mut c = Change::new(JobState::Admitted, reason, Timestamp(at));
            c.placement = Some(placement());
            c
        };
        let run = |at| Change::new(JobState::Running, "started", Timestamp(at));
        s.transition(
            victim.id,
            None,
            admit("admitted to node-a (borrowing idle capacity)", 100),
        )
        .await
        .unwrap();
        s.transition(victim.id, None, run(200)).await.unwrap();
        s.transition(
            victim.id,
            None,
            Change::new(
                JobState::Preempted,
                "preempted: tenant alpha reclaims its guaranteed GPUs for job x",
                Timestamp(2_000),
            ),
        )
        .await
        .unwrap();
        s.transition(
            reclaimer.id,
            None,
            admit(
                "admitted to node-a (within guarantee, reclaimed from 1 job(s))",
                1_500,
            ),
        )
        .await
        .unwrap();
        s.transition(reclaimer.id, None, run(9_000)).await.unwrap();
        s.transition(
            plain.id,
            None,
            admit("admitted to node-a (within guarantee)", 1_200),
        )
        .await
        .unwrap();

        let preempted = s
            .preemptions_between(Timestamp(0), Timestamp(10_000))
            .await
            .unwrap();
        assert_eq!(preempted.len(), 1);
        assert!(preempted[0].1.contains("reclaims"));
        assert!(
            s.preemptions_between(Timestamp(2_001), Timestamp(10_000))
                .await
                .unwrap()
                .is_empty()
        );

        let rows = s
            .reclaim_histories(Timestamp(5_000), Timestamp(10_000))
            .await
            .unwrap();
        let jobs: std::collections::BTreeSet<_> = rows.iter().map(|r| r.job_id.clone()).collect();
        assert_eq!(jobs.len(), 1, "only the reclaiming job: {rows:?}");
        assert_eq!(rows[0].job_id, reclaimer.id.to_string());
        assert_eq!(
            rows.iter().map(|r| r.to_state.as_str()).collect::<Vec<_>>(),
            ["pending", "admitted", "running"]
        );
        assert_eq!(rows[0].class().as_deref(), Some("A100"));
        assert!(rows.windows(2).all(|w| w[0].at <= w[1].at));
    }
}
