//! Group commit for submissions: one writer task drains every submit
//! waiting at that moment into one transaction, commits once, then answers
//! each. Under load this turns N fsyncs into one; a lone submit still
//! commits at once.

use finpool_domain::{Job, JobState, Transition};
use tokio::sync::{mpsc, oneshot};

use crate::backend::Backend;
use crate::events::JobEvent;
use crate::rows::{JobRow, job_columns, to_json};
use crate::{Store, StoreError};

/// The most submits one transaction carries.
const MAX_BATCH: usize = 512;

pub(crate) struct Request {
    job: Job,
    /// The most pending jobs its tenant may have, this one included.
    pending_cap: Option<u32>,
    reply: oneshot::Sender<Result<(Job, bool), StoreError>>,
}

pub(crate) fn spawn_writer(store: Store, mut rx: mpsc::Receiver<Request>) {
    // The writer holds only a weak handle, so dropping the last Store ends it.
    let weak = std::sync::Arc::downgrade(&store.inner);
    drop(store);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let Some(inner) = weak.upgrade() else { break };
            let store = Store { inner };
            store.write_batch(&mut batch).await;
        }
    });
}

/// What inserting one job did.
enum Inserted {
    Created(Job),
    /// The id (tenant + idempotency key) was already taken by this job.
    Existing(Job),
}

/// A job the batch INSERT did not create: its id is taken (an idempotent
/// replay, answered with the stored job) or its tenant is at the pending
/// cap (refused unless it is such a replay).
macro_rules! existing_fn {
    ($name:ident, $conn:ty) => {
        async fn $name(conn: &mut $conn, job: &Job) -> Result<Inserted, StoreError> {
            let existing: Option<JobRow> = sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE id = $1"
            ))
            .bind(job.id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
            match existing {
                Some(row) => same_job(row.into_job(Vec::new())?, job),
                None => Err(StoreError::LimitExceeded(format!(
                    "pending jobs: tenant {} is at its cap; wait for some to start",
                    job.tenant_id
                ))),
            }
        }
    };
}

existing_fn!(existing_sqlite, sqlx::SqliteConnection);
existing_fn!(existing_postgres, sqlx::PgConnection);

/// An idempotent replay must carry the same spec.
fn same_job(existing: Job, job: &Job) -> Result<Inserted, StoreError> {
    if existing.tenant_id != job.tenant_id || existing.spec != job.spec {
        return Err(StoreError::Conflict(
            "idempotency_key: already used for a different job spec".into(),
        ));
    }
    Ok(Inserted::Existing(existing))
}

impl Store {
    /// Stores a new Pending job, durably. Returns the stored job and whether
    /// it was created (`false`: the idempotency key named an existing job).
    pub async fn submit(&self, job: Job) -> Result<(Job, bool), StoreError> {
        self.submit_capped(job, None).await
    }

    /// As [`Store::submit`], refusing with [`StoreError::LimitExceeded`] a
    /// new job whose tenant already has `pending_cap` jobs pending. The
    /// check and the insert share the writer's transaction, so concurrent
    /// submits cannot overshoot the cap.
    pub async fn submit_capped(
        &self,
        job: Job,
        pending_cap: Option<u32>,
    ) -> Result<(Job, bool), StoreError> {
        debug_assert_eq!(job.state, JobState::Pending);
        let (reply, answer) = oneshot::channel();
        self.inner
            .submits
            .send(Request {
                job,
                pending_cap,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))?
    }

    async fn write_batch(&self, batch: &mut Vec<Request>) {
        let jobs: Vec<(&Job, Option<u32>)> =
            batch.iter().map(|r| (&r.job, r.pending_cap)).collect();
        let results = match self.insert_all(&jobs).await {
            Ok(results) => results,
            // One bad row (or the batch's size) failed the transaction:
            // retry one by one so only the bad one is refused.
            Err(e) if batch.len() > 1 && !matches!(e, StoreError::Unavailable(_)) => {
                let mut results = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    results.push(
                        self.insert_all(std::slice::from_ref(job))
                            .await
                            .and_then(|mut r| r.pop().expect("one result")),
                    );
                }
                results
                    .into_iter()
                    .map(|r| r.map(Ok).unwrap_or_else(Err))
                    .collect()
            }
            Err(e) => {
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(clone_error(&e)));
                }
                return;
            }
        };
        for (request, result) in batch.drain(..).zip(results) {
            let answer = result.map(|inserted| match inserted {
                Inserted::Created(job) => {
                    self.publish(JobEvent {
                        job_id: job.id,
                        tenant_id: job.tenant_id.clone(),
                        transition: Transition {
                            from: None,
                            to: job.state,
                            at: job.created_at,
                            reason: job.reason.clone(),
                        },
                    });
                    (job, true)
                }
                Inserted::Existing(job) => (job, false),
            });
            let _ = request.reply.send(answer);
        }
    }

    /// Inserts every job in one transaction. The outer error fails them
    /// all (nothing was committed); inner results are per job.
    ///
    /// New jobs go in with one multi-row INSERT (and one for their first
    /// history rows), so a batch costs a few round trips, not a few per
    /// job. A job whose tenant is at its pending cap, or whose id was
    /// taken (an idempotent replay), takes the one-row path. The cap is
    /// counted as if every new id creates a job, so a replay in the same
    /// batch can only make the cap stricter, never looser.
    async fn insert_all(
        &self,
        jobs: &[(&Job, Option<u32>)],
    ) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
        use std::collections::{HashMap, HashSet};
        let capped: Vec<&str> = {
            let mut t: Vec<&str> = jobs
                .iter()
                .filter(|(_, cap)| cap.is_some())
                .map(|(j, _)| j.tenant_id.as_str())
                .collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        let placeholders = self.backend().placeholders();
        macro_rules! run {
            ($pool:expr, $one:ident) => {{
                let mut tx = $pool.begin().await?;
                let mut pending: HashMap<String, i64> = HashMap::new();
                if !capped.is_empty() {
                    let sql = format!(
                        "SELECT tenant_id, pending FROM tenant_pending WHERE tenant_id IN {}",
                        placeholders.rows(1, capped.len(), "")
                    );
                    let mut q = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
                    for t in &capped {
                        q = q.bind(*t);
                    }
                    pending.extend(q.fetch_all(&mut *tx).await?);
                }
                let mut results: Vec<Option<Result<Inserted, StoreError>>> =
                    (0..jobs.len()).map(|_| None).collect();
                let mut bulk = Vec::with_capacity(jobs.len());
                for (i, (job, cap)) in jobs.iter().enumerate() {
                    if let Some(cap) = cap {
                        let n = pending.entry(job.tenant_id.to_string()).or_insert(0);
                        if *n >= i64::from(*cap) {
                            results[i] = Some(keep_refusals($one(&mut tx, job).await)?);
                            continue;
                        }
                        *n += 1;
                    }
                    bulk.push(i);
                }
                // Each new job bumps its tenant's pending count (a row the
                // trigger locks until commit), and the ids' index locks too:
                // rows go in (tenant, id) order, so two writers over the same
                // tenants never wait on each other in a cycle. The sort is
                // stable: of one id's copies the first still makes the job.
                bulk.sort_by(|&a, &b| {
                    let key = |i: usize| (jobs[i].0.tenant_id.as_str(), jobs[i].0.id);
                    key(a).cmp(&key(b))
                });
                if !bulk.is_empty() {
                    let sql = format!(
                        "INSERT INTO jobs (id, tenant_id, name, idempotency_key, spec, state, reason, priority, \
                         created_at, updated_at, attempts, cancel_requested) VALUES {} \
                         ON CONFLICT (id) DO NOTHING RETURNING id",
                        placeholders.rows(bulk.len(), 10, ", 0, FALSE")
                    );
                    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
                    for &i in &bulk {
                        let job = jobs[i].0;
                        q = q
                            .bind(job.id.to_string())
                            .bind(job.tenant_id.as_str())
                            .bind(job.spec.name.as_str())
                            .bind(job.spec.idempotency_key.as_deref())
                            .bind(to_json(&job.spec))
                            .bind(job.state.as_str())
                            .bind(&job.reason)
                            .bind(job.spec.priority)
                            .bind(job.created_at.0)
                            .bind(job.created_at.0);
                    }
                    let mut created: HashSet<String> = q.fetch_all(&mut *tx).await?.into_iter().collect();
                    // The first of each created id made the job; the rest of
                    // the batch's copies replay it.
                    let mut made = Vec::new();
                    for &i in &bulk {
                        let job = jobs[i].0;
                        if created.remove(&job.id.to_string()) {
                            made.push(i);
                        }
                    }
                    if !made.is_empty() {
                        let sql = format!(
                            "INSERT INTO job_events (job_id, to_state, at, reason, seq, from_state) VALUES {}",
                            placeholders.rows(made.len(), 4, ", 1, NULL")
                        );
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                        for &i in &made {
                            let job = jobs[i].0;
                            q = q
                                .bind(job.id.to_string())
                                .bind(job.state.as_str())
                                .bind(job.created_at.0)
                                .bind(&job.reason);
                        }
                        q.execute(&mut *tx).await?;
                        for &i in &made {
                            results[i] = Some(Ok(Inserted::Created(jobs[i].0.clone())));
                        }
                    }
                    for &i in &bulk {
                        if results[i].is_none() {
                            results[i] = Some(keep_refusals($one(&mut tx, jobs[i].0).await)?);
                        }
                    }
                }
                tx.commit().await?;
                Ok(results.into_iter().map(|r| r.expect("every job answered")).collect())
            }};
        }
        match self.backend() {
            Backend::Sqlite { write, .. } => run!(write, existing_sqlite),
            Backend::Postgres(pool) => run!(pool, existing_postgres),
        }
    }
}

/// A per-job refusal stays with its job; any other error fails the batch.
fn keep_refusals(
    r: Result<Inserted, StoreError>,
) -> Result<Result<Inserted, StoreError>, StoreError> {
    match r {
        Err(e @ (StoreError::Conflict(_) | StoreError::LimitExceeded(_))) => Ok(Err(e)),
        other => other.map(Ok),
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::LimitExceeded(m) => StoreError::LimitExceeded(m.clone()),
        other => StoreError::Database(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use finpool_domain::{
        GpuRequest, IsolationLevel, JobId, JobSpec, Name, Resources, RestartPolicy, Tenant,
        Timestamp,
    };

    use super::*;
    use crate::{StoreConfig, testing};

    fn name(s: &str) -> Name {
        Name::parse("name", s).unwrap()
    }

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: name(id),
            display_name: String::new(),
            quotas: BTreeMap::new(),
            weight: 1,
            isolation: IsolationLevel::SharedWithinTenant,
            created_at: Timestamp(0),
            suspended: None,
        }
    }

    fn job(tenant: &str) -> Job {
        let spec = JobSpec {
            name: name("batch"),
            model: None,
            command: vec!["true".into()],
            args: vec![],
            env: BTreeMap::new(),
            resources: Resources {
                gpu: GpuRequest::None,
                gpu_classes: vec![],
                cpu_milli: 100,
                memory_mib: 64,
            },
            priority: 0,
            max_runtime_ms: None,
            min_runtime_ms: None,
            idempotency_key: None,
            labels: BTreeMap::new(),
            restart_policy: RestartPolicy::Fail,
        };
        Job::new(JobId::new_random(), name(tenant), spec, Timestamp(1))
    }

    /// A SQLite file, and a fresh PostgreSQL database when one is set for
    /// tests.
    async fn databases() -> (tempfile::TempDir, Vec<StoreConfig>) {
        let dir = tempfile::tempdir().unwrap();
        let mut configs = vec![StoreConfig::Sqlite(dir.path().join("finpool.db"))];
        if let Ok(base) = std::env::var(testing::TEST_DATABASE_URL_VAR) {
            let url = testing::fresh_postgres_database(&base).await.unwrap();
            configs.push(StoreConfig::Postgres(url));
        }
        (dir, configs)
    }

    /// Two writers on one database: two processes' stores on PostgreSQL
    /// (API replicas, the scheduler); on SQLite, where one process owns the
    /// data dir, one store's two handles.
    async fn two_writers(config: &StoreConfig) -> (Store, Store) {
        let one = Store::open(config).await.unwrap();
        let two = match config {
            StoreConfig::Sqlite(_) => one.clone(),
            StoreConfig::Postgres(_) => Store::open(config).await.unwrap(),
        };
        (one, two)
    }

    /// Two writers (two API replicas on one database) committing batches
    /// over the same tenants in opposite orders. Each new job bumps its
    /// tenant's pending count (a row a trigger upserts and locks until
    /// commit): unless a batch takes its tenants in one order, PostgreSQL
    /// aborts one of them as a deadlock, and its jobs fall back to one
    /// transaction each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_over_the_same_tenants_in_opposite_orders_both_commit() {
        let (_dir, configs) = databases().await;
        let tenants: Vec<String> = (0..64).map(|t| format!("t{t:02}")).collect();
        for config in configs {
            let (one, two) = two_writers(&config).await;
            for t in &tenants {
                one.create_tenant(&tenant(t)).await.unwrap();
            }
            for round in 0..5 {
                let forward: Vec<Job> = (0..MAX_BATCH)
                    .map(|i| job(&tenants[i % tenants.len()]))
                    .collect();
                let backward: Vec<Job> = (0..MAX_BATCH)
                    .map(|i| job(&tenants[tenants.len() - 1 - i % tenants.len()]))
                    .collect();
                let (a, b) = (one.clone(), two.clone());
                let first = tokio::spawn(async move {
                    let jobs: Vec<(&Job, Option<u32>)> =
                        forward.iter().map(|j| (j, None)).collect();
                    a.insert_all(&jobs).await.map(|r| r.len())
                });
                let second = tokio::spawn(async move {
                    let jobs: Vec<(&Job, Option<u32>)> =
                        backward.iter().map(|j| (j, None)).collect();
                    b.insert_all(&jobs).await.map(|r| r.len())
                });
                for (side, result) in [
                    ("first", first.await.unwrap()),
                    ("second", second.await.unwrap()),
                ] {
                    let stored =
                        result.unwrap_or_else(|e| panic!("{config:?}, round {round}, {side}: {e}"));
                    assert_eq!(stored, MAX_BATCH);
                }
            }
        }
    }

    /// The scheduler's admissions change many pending jobs in one
    /// transaction, each change moving its tenant's pending count too: a
    /// submit batch over the same tenants (taken in tenant order) must not
    /// wait on it in a cycle, whatever order the plan lists the jobs in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_changes_and_a_submit_batch_over_the_same_tenants_both_commit() {
        use crate::jobs::Change;
        let (_dir, configs) = databases().await;
        let tenants: Vec<String> = (0..64).map(|t| format!("t{t:02}")).collect();
        let batch = |tenants: &[String]| -> Vec<Job> {
            (0..MAX_BATCH)
                .map(|i| job(&tenants[i % tenants.len()]))
                .collect()
        };
        for config in configs {
            let (api, scheduler) = two_writers(&config).await;
            for t in &tenants {
                api.create_tenant(&tenant(t)).await.unwrap();
            }
            let mut pending = batch(&tenants);
            let jobs: Vec<(&Job, Option<u32>)> = pending.iter().map(|j| (j, None)).collect();
            api.insert_all(&jobs).await.unwrap();
            for round in 0..5 {
                // The plan lists the pending jobs in reverse tenant order.
                pending.sort_by(|a, b| b.tenant_id.cmp(&a.tenant_id));
                let changes: Vec<(JobId, Option<JobState>, Change)> = pending
                    .iter()
                    .map(|j| {
                        let change = Change::new(JobState::Cancelled, "test", Timestamp(2));
                        (j.id, Some(JobState::Pending), change)
                    })
                    .collect();
                let arriving = batch(&tenants);
                let (submitted, store) = (arriving.clone(), api.clone());
                let submit = tokio::spawn(async move {
                    let jobs: Vec<(&Job, Option<u32>)> =
                        submitted.iter().map(|j| (j, None)).collect();
                    store.insert_all(&jobs).await.map(|r| r.len())
                });
                let changed = scheduler.transition_many(changes).await;
                let stored = submit
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{config:?}, round {round}, submit: {e}"));
                let changed =
                    changed.unwrap_or_else(|e| panic!("{config:?}, round {round}, changes: {e}"));
                assert_eq!(stored, MAX_BATCH);
                assert!(
                    changed.iter().all(Result::is_ok),
                    "{config:?}, round {round}"
                );
                pending = arriving;
            }
        }
    }
}
