//! The scheduling cycle is one path: the standalone shell (the store as its
//! job source, a fake runtime, a fake clock) and the simulator's in-memory
//! pool decide the same thing for the same scenario. And what the cycle
//! must not forget (a gang's reservation, who displaced whom, jobs being
//! preempted) survives a restart of the standalone shell.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use finpool_domain::{
    Gpu, GpuClass, GpuRequest, Inventory, IsolationLevel, Job, JobId, JobSpec, JobState, Name,
    Node, Quota, Resources, RestartPolicy, Tenant, Timestamp,
};
use finpool_ports::{Runtime, Shell};
use finpool_scheduler::{CycleConfig, Plan, Policy, QueuedJob, Stop};
use finpool_sim::pool::SimPool;
use finpool_store::StoreJobs;
use finpool_store::{Change, Store, StoreConfig};

const MINUTE: i64 = 60_000;

fn name(s: &str) -> Name {
    Name::parse("name", s).unwrap()
}

fn inventory() -> Arc<Inventory> {
    let node = |n: &str, class: &str, cards: u32| Node {
        name: n.into(),
        labels: BTreeMap::new(),
        cpu_milli: 64_000,
        memory_mib: 262_144,
        gpus: (0..cards)
            .map(|i| Gpu {
                index: i,
                uuid: format!("GPU-{n}-{i}"),
                class: class.into(),
                memory_mib: 81_920,
                mig: vec![],
            })
            .collect(),
        models: vec![],
    };
    Arc::new(Inventory {
        classes: vec![GpuClass {
            name: "A100".into(),
            memory_mib: 81_920,
        }],
        nodes: vec![node("node-a", "A100", 2), node("node-b", "A100", 2)],
    })
}

fn tenant(id: &str, guaranteed: u32, limit: u32) -> Tenant {
    Tenant {
        id: name(id),
        display_name: id.into(),
        quotas: [(
            "A100".to_owned(),
            Quota {
                guaranteed,
                limit,
                lending_limit: None,
            },
        )]
        .into(),
        weight: 1,
        isolation: IsolationLevel::SharedWithinTenant,
        created_at: Timestamp(0),
        suspended: None,
    }
}

/// One job of the scenario: (number, tenant, GPUs, runtime in minutes).
fn job(n: u128, tenant: &str, gpus: u32, minutes: u64, at: i64) -> Job {
    let spec = JobSpec {
        name: name(&format!("job-{n}")),
        model: None,
        command: vec!["true".into()],
        args: vec![],
        env: BTreeMap::new(),
        resources: Resources {
            gpu: GpuRequest::Whole { count: gpus },
            gpu_classes: vec![],
            cpu_milli: 1000,
            memory_mib: 1024,
        },
        priority: 0,
        max_runtime_ms: Some(minutes * MINUTE as u64),
        min_runtime_ms: None,
        idempotency_key: None,
        labels: BTreeMap::new(),
        restart_policy: RestartPolicy::Requeue,
    };
    Job::new(
        JobId(uuid::Uuid::from_u128(n)),
        name(tenant),
        spec,
        Timestamp(at),
    )
}

/// The scenario: per cycle, (time, arrivals, jobs that end before it).
fn scenario() -> Vec<(i64, Vec<Job>, Vec<u128>)> {
    vec![
        // alpha borrows every card (its guarantee is one; beta's two are idle).
        (
            0,
            vec![
                job(1, "alpha", 1, 60, 0),
                job(2, "alpha", 1, 60, 1),
                job(3, "alpha", 1, 90, 2),
                job(4, "alpha", 1, 90, 3),
            ],
            vec![],
        ),
        // beta wants its guarantee back: reclaim from alpha. gamma's gang
        // finds no room and reserves a node.
        (
            10 * MINUTE,
            vec![
                job(5, "beta", 1, 30, 10 * MINUTE),
                job(6, "beta", 1, 30, 10 * MINUTE + 1),
                job(7, "gamma", 2, 20, 10 * MINUTE + 2),
            ],
            vec![],
        ),
        // The victims are gone: the reclaimers start.
        (
            11 * MINUTE,
            vec![job(8, "gamma", 1, 5, 11 * MINUTE)],
            vec![],
        ),
        (45 * MINUTE, vec![], vec![5, 6]),
        (70 * MINUTE, vec![], vec![1, 2]),
        (100 * MINUTE, vec![], vec![3, 4, 7, 8]),
    ]
}

fn config() -> CycleConfig {
    CycleConfig {
        default_max_runtime_ms: 120 * MINUTE as u64,
        stop_grace_ms: 30_000,
        ..CycleConfig::default()
    }
}

fn tenants() -> Vec<Tenant> {
    vec![
        tenant("alpha", 1, 4),
        tenant("beta", 2, 2),
        tenant("gamma", 0, 4),
    ]
}

/// The standalone runtime's part, faked: starting a job records it
/// Running in the store at the fake clock's time; a stopped job is noted,
/// and the scenario requeues it at its next step (after the grace).
struct FakeRuntime {
    store: Store,
    clock: Arc<Mutex<i64>>,
    stopped: Arc<Mutex<Vec<JobId>>>,
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    type Job = Job;

    async fn start(&mut self, job: &Job) {
        let at = Timestamp(*self.clock.lock().unwrap());
        let _ = self
            .store
            .transition(
                job.id,
                Some(JobState::Admitted),
                Change::new(JobState::Running, "started", at),
            )
            .await;
    }

    async fn stop(&mut self, job: JobId, _stop: &Stop) {
        self.stopped.lock().unwrap().push(job);
    }
}

type StoreShell = Shell<StoreJobs, FakeRuntime, Arc<Inventory>>;

async fn store_shell(
    store: &Store,
    clock: &Arc<Mutex<i64>>,
    stopped: &Arc<Mutex<Vec<JobId>>>,
) -> StoreShell {
    Shell::new(
        config(),
        Policy::finpool(),
        StoreJobs {
            store: store.clone(),
        },
        FakeRuntime {
            store: store.clone(),
            clock: clock.clone(),
            stopped: stopped.clone(),
        },
        inventory(),
    )
    .await
    .unwrap()
}

async fn fresh_store(dir: &std::path::Path) -> Store {
    let store = Store::open(&StoreConfig::Sqlite(dir.join("finpool.db")))
        .await
        .unwrap();
    for t in tenants() {
        store.create_tenant(&t).await.unwrap();
    }
    store
}

/// What a plan decided, comparable across drivers.
fn decisions(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .admit
        .iter()
        .map(|a| {
            format!(
                "admit {} -> {:?} waits {:?}",
                a.job, a.placement, a.waits_for
            )
        })
        .collect();
    out.extend(plan.stop.iter().map(|s| format!("stop {}", s.preemption)));
    out.extend(plan.start.iter().map(|j| format!("start {j}")));
    out.extend(plan.waiting.iter().map(|(j, r)| format!("wait {j} {r}")));
    out.extend(plan.reservation.iter().map(|r| format!("reserve {r:?}")));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_shell_and_the_simulator_decide_alike() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let clock = Arc::new(Mutex::new(0i64));
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let mut standalone = store_shell(&store, &clock, &stopped).await;

    let mut sim = SimPool::new(config(), Policy::finpool(), inventory());
    sim.state().set_tenants(tenants());

    let mut seen = 0;
    for (at, arrivals, ends) in scenario() {
        *clock.lock().unwrap() = at;
        // Jobs end if they run (a preempted one may be queued again).
        for id in ends {
            let id = JobId(uuid::Uuid::from_u128(id));
            let running = store.get_job(id).await.unwrap().state == JobState::Running;
            let held = sim
                .state()
                .held
                .get(&id)
                .is_some_and(|h| h.started_at.is_some());
            assert_eq!(running, held, "job {id} runs in both or neither");
            if running {
                store
                    .transition(
                        id,
                        Some(JobState::Running),
                        Change::new(JobState::Succeeded, "exit code 0", Timestamp(at)),
                    )
                    .await
                    .unwrap();
                sim.finish(id);
            }
        }
        // Jobs stopped at the last step have wound down: they requeue,
        // in the simulator as in the store.
        let requeue: Vec<JobId> = sim.state().stopped.drain(..).map(|(id, _)| id).collect();
        for id in requeue {
            sim.requeue(id);
        }
        let requeue: Vec<JobId> = stopped.lock().unwrap().drain(..).collect();
        for id in requeue {
            for to in [JobState::Preempted, JobState::Pending] {
                store
                    .transition(id, None, Change::new(to, "preempted", Timestamp(at)))
                    .await
                    .unwrap();
            }
        }
        for job in &arrivals {
            store.submit(job.clone()).await.unwrap();
            sim.submit(QueuedJob::of(job));
        }
        let a = standalone.run_cycle(Timestamp(at)).await.unwrap();
        let b = sim.cycle(Timestamp(at));
        assert_eq!(decisions(&a.plan), decisions(&b.plan), "at {at} ms");
        seen += a.plan.admit.len() + a.plan.stop.len();
    }
    assert!(
        seen >= 8,
        "the scenario admits and preempts: {seen} decisions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_and_displaced_by_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let clock = Arc::new(Mutex::new(0i64));
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let mut shell = store_shell(&store, &clock, &stopped).await;
    for (at, arrivals, _) in scenario().into_iter().take(2) {
        *clock.lock().unwrap() = at;
        for job in &arrivals {
            store.submit(job.clone()).await.unwrap();
        }
        shell.run_cycle(Timestamp(at)).await.unwrap();
    }
    let before = shell.cycle_state().durable().clone();
    let reservation = before
        .reservation
        .clone()
        .expect("the gang holds a reservation");
    assert_eq!(reservation.job, JobId(uuid::Uuid::from_u128(7)));
    assert!(
        !before.displaced.is_empty(),
        "beta's jobs displaced alpha's"
    );
    assert!(
        !before.preempting.is_empty(),
        "alpha's jobs are being preempted"
    );
    drop(shell);

    // A new process on the same store: the memory comes back as it was.
    let store = Store::open(&StoreConfig::Sqlite(dir.path().join("finpool.db")))
        .await
        .unwrap();
    let mut restarted = store_shell(&store, &clock, &stopped).await;
    assert_eq!(restarted.cycle_state().durable(), &before);
    // And it keeps acting on it: the reservation stands, and a victim
    // cannot preempt back the job that displaced it.
    let at = 10 * MINUTE + 1000;
    *clock.lock().unwrap() = at;
    let report = restarted.run_cycle(Timestamp(at)).await.unwrap();
    assert_eq!(report.plan.reservation.as_ref(), Some(&reservation));
    assert!(report.plan.stop.is_empty(), "{:?}", report.plan.stop);
}

/// Fair share moves with every admission; it is stored at checkpoints (a
/// pool of thousands of tenants would otherwise store every average each
/// cycle) and whenever the pool stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_share_is_stored_at_checkpoints_and_on_a_clean_stop() {
    use finpool_ports::JobSource;
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let clock = Arc::new(Mutex::new(0i64));
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let mut shell = store_shell(&store, &clock, &stopped).await;
    let stored = || async {
        let json = StoreJobs {
            store: store.clone(),
        }
        .load_memory()
        .await
        .unwrap()
        .expect("memory was stored");
        serde_json::from_str::<finpool_scheduler::DurableMemory>(&json).unwrap()
    };
    // alpha's first job is within its guarantee: nothing borrowed.
    store.submit(job(1, "alpha", 1, 60, 0)).await.unwrap();
    shell.run_cycle(Timestamp(0)).await.unwrap();
    assert!(stored().await.fair_share.current.is_empty());
    // Its second borrows: remembered, not yet stored.
    *clock.lock().unwrap() = 1000;
    store.submit(job(2, "alpha", 1, 60, 1000)).await.unwrap();
    let report = shell.run_cycle(Timestamp(1000)).await.unwrap();
    assert_eq!(report.admitted, 1);
    let remembered = shell.cycle_state().durable().fair_share.clone();
    assert_eq!(remembered.current["alpha"]["A100"], 1000.0);
    assert!(stored().await.fair_share.current.is_empty());
    // A clean stop stores it.
    shell.save_memory().await.unwrap();
    assert_eq!(stored().await.fair_share, remembered);
}
