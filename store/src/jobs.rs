//! Jobs: reads, pages, and state transitions that follow the state machine.

use finpool_domain::{Job, JobId, JobState, Placement, TenantId, Timestamp, Transition};

use crate::backend::{Backend, with_read_pool};
use crate::events::JobEvent;
use crate::rows::{EventRow, JobRow, job_columns, to_json};
use crate::{Store, StoreError};

/// A requested state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub to: JobState,
    pub reason: String,
    pub at: Timestamp,
    /// The GPUs given, required when the job is Admitted.
    pub placement: Option<Placement>,
    /// The process's exit code, when it has one.
    pub exit_code: Option<i32>,
}

impl Change {
    pub fn new(to: JobState, reason: impl Into<String>, at: Timestamp) -> Self {
        Self {
            to,
            reason: reason.into(),
            at,
            placement: None,
            exit_code: None,
        }
    }
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this tenant's jobs; `None` for every tenant.
    pub tenant: Option<TenantId>,
    /// Only these states; empty for all.
    pub states: Vec<JobState>,
    pub page_size: u32,
    pub page_token: Option<String>,
}

/// One page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_page_token: Option<String>,
}

/// A page token is the (created_at, id) of the last job on the page.
fn encode_token(job: &Job) -> String {
    format!("{}_{}", job.created_at.0, job.id)
}

fn decode_token(token: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::InvalidArgument {
        field: "page_token".into(),
        reason: "is not a token from a previous page".into(),
    };
    let (at, id) = token.split_once('_').ok_or_else(bad)?;
    let at = at.parse::<i64>().map_err(|_| bad())?;
    JobId::parse("page_token", id).map_err(|_| bad())?;
    Ok((at, id.to_owned()))
}

/// Generates a transition function for one database type. Both backends
/// run this one body.
macro_rules! transition_fn {
    ($name:ident, $conn:ty) => {
        pub(crate) async fn $name(
            conn: &mut $conn,
            id: JobId,
            expected: Option<JobState>,
            change: &Change,
        ) -> Result<(Job, JobEvent), StoreError> {
            let row: Option<JobRow> = sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
            let mut job = row
                .ok_or_else(|| StoreError::NotFound(format!("job {id}")))?
                .into_job(Vec::new())?;
            let from = job.state;
            if expected.is_some_and(|e| e != from) || !from.can_transition_to(change.to) {
                return Err(StoreError::Conflict(format!(
                    "job {id} is {from}; cannot go to {}",
                    change.to
                )));
            }
            apply_change(&mut job, change)?;
            let updated = sqlx::query(
                "UPDATE jobs SET state = $1, reason = $2, reason_code = '', updated_at = $3, started_at = $4, \
                 finished_at = $5, exit_code = $6, placement = $7, attempts = $8 \
                 WHERE id = $9 AND state = $10",
            )
            .bind(job.state.as_str())
            .bind(&job.reason)
            .bind(job.updated_at.0)
            .bind(job.started_at.map(|t| t.0))
            .bind(job.finished_at.map(|t| t.0))
            .bind(job.exit_code)
            .bind(job.placement.as_ref().map(to_json))
            .bind(job.attempts as i64)
            .bind(id.to_string())
            .bind(from.as_str())
            .execute(&mut *conn)
            .await?;
            if updated.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!("job {id} changed concurrently")));
            }
            let seq: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id = $1")
                    .bind(id.to_string())
                    .fetch_one(&mut *conn)
                    .await?;
            sqlx::query(
                "INSERT INTO job_events (job_id, seq, from_state, to_state, at, reason) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id.to_string())
            .bind(seq + 1)
            .bind(from.as_str())
            .bind(change.to.as_str())
            .bind(change.at.0)
            .bind(&change.reason)
            .execute(&mut *conn)
            .await?;
            if change.to == JobState::Running {
                let placement = job.placement.clone().unwrap_or_else(|| Placement {
                    node: String::new(),
                    gpus: Vec::new(),
                });
                sqlx::query(
                    "INSERT INTO job_runs (job_id, attempt, tenant_id, node, placement, started_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id.to_string())
                .bind(job.attempts as i64)
                .bind(job.tenant_id.as_str())
                .bind(&placement.node)
                .bind(to_json(&placement))
                .bind(change.at.0)
                .execute(&mut *conn)
                .await?;
            }
            if from == JobState::Running {
                sqlx::query(
                    "UPDATE job_runs SET ended_at = $1 WHERE job_id = $2 AND attempt = $3 AND ended_at IS NULL",
                )
                .bind(change.at.0)
                .bind(id.to_string())
                .bind(job.attempts as i64)
                .execute(&mut *conn)
                .await?;
            }
            let event = JobEvent {
                job_id: id,
                tenant_id: job.tenant_id.clone(),
                transition: Transition {
                    from: Some(from),
                    to: change.to,
                    at: change.at,
                    reason: change.reason.clone(),
                },
            };
            Ok((job, event))
        }
    };
}

transition_fn!(transition_sqlite, sqlx::SqliteConnection);
transition_fn!(transition_postgres, sqlx::PgConnection);

/// The job's fields after `change`.
fn apply_change(job: &mut Job, change: &Change) -> Result<(), StoreError> {
    job.state = change.to;
    job.reason = change.reason.clone();
    job.reason_code.clear();
    job.updated_at = change.at;
    match change.to {
        JobState::Admitted => {
            job.placement =
                Some(
                    change
                        .placement
                        .clone()
                        .ok_or_else(|| StoreError::InvalidArgument {
                            field: "placement".into(),
                            reason: "an admitted job needs a placement".into(),
                        })?,
                );
        }
        JobState::Running => {
            job.started_at.get_or_insert(change.at);
            job.attempts += 1;
        }
        JobState::Pending => job.placement = None,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
            job.finished_at = Some(change.at);
            job.exit_code = change.exit_code;
        }
        JobState::Preempted => {}
    }
    Ok(())
}

impl Store {
    /// A job with its full history.
    pub async fn get_job(&self, id: JobId) -> Result<Job, StoreError> {
        let (row, events): (Option<JobRow>, Vec<EventRow>) = with_read_pool!(self.backend(), pool => {
            let row = sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?;
            let events = sqlx::query_as(
                "SELECT from_state, to_state, at, reason FROM job_events WHERE job_id = $1 ORDER BY seq",
            )
            .bind(id.to_string())
            .fetch_all(pool)
            .await?;
            (row, events)
        });
        let history = events
            .into_iter()
            .map(EventRow::into_transition)
            .collect::<Result<_, _>>()?;
        row.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?
            .into_job(history)
    }

    /// One page of jobs, newest first. Jobs in a page carry no history;
    /// [`Store::get_job`] has it.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let page_size = filter.page_size.clamp(1, 500);
        let (before_at, before_id) = match &filter.page_token {
            Some(t) if !t.is_empty() => decode_token(t)?,
            _ => (i64::MAX, "~".to_owned()),
        };
        // Seven state slots; unused ones repeat the first wanted state.
        let wanted: Vec<&str> = if filter.states.is_empty() {
            JobState::ALL.iter().map(|s| s.as_str()).collect()
        } else {
            filter.states.iter().map(|s| s.as_str()).collect()
        };
        let slot = |i: usize| wanted.get(i).copied().unwrap_or(wanted[0]).to_owned();
        let tenant = filter
            .tenant
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        let rows: Vec<JobRow> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE ($1 = '' OR tenant_id = $1) \
                 AND state IN ($2, $3, $4, $5, $6, $7, $8) \
                 AND (created_at < $9 OR (created_at = $9 AND id < $10)) \
                 ORDER BY created_at DESC, id DESC LIMIT $11"
            ))
            .bind(&tenant)
            .bind(slot(0))
            .bind(slot(1))
            .bind(slot(2))
            .bind(slot(3))
            .bind(slot(4))
            .bind(slot(5))
            .bind(slot(6))
            .bind(before_at)
            .bind(&before_id)
            .bind(page_size as i64 + 1)
            .fetch_all(pool)
            .await?
        });
        let mut jobs = rows
            .into_iter()
            .map(|r| r.into_job(Vec::new()))
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = if jobs.len() > page_size as usize {
            jobs.truncate(page_size as usize);
            jobs.last().map(encode_token)
        } else {
            None
        };
        Ok(JobPage {
            jobs,
            next_page_token,
        })
    }

    /// Jobs not yet finished (pending, admitted, running, preempted), oldest first.
    pub async fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows: Vec<JobRow> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE state IN ('pending', 'admitted', 'running', 'preempted') \
                 ORDER BY created_at, id"
            ))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(|r| r.into_job(Vec::new())).collect()
    }

    /// Every pending job as the order of admission reads it (id, tenant,
    /// priority, submit time): a light read, for queue positions.
    pub async fn pending_keys(&self) -> Result<Vec<finpool_scheduler::PendingKey>, StoreError> {
        let rows: Vec<(String, String, i32, i64)> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT id, tenant_id, priority, created_at FROM jobs WHERE state = 'pending'",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(id, tenant, priority, created_at)| {
                Ok(finpool_scheduler::PendingKey {
                    id: JobId::parse("id", &id).map_err(|e| crate::error::corrupt("job id", e))?,
                    tenant,
                    priority,
                    submitted_at: Timestamp(created_at),
                })
            })
            .collect()
    }

    /// Moves a job along the state machine. `expected` guards against a
    /// concurrent change: the transition fails with `Conflict` if the job
    /// is no longer in that state.
    pub async fn transition(
        &self,
        id: JobId,
        expected: Option<JobState>,
        change: Change,
    ) -> Result<Job, StoreError> {
        let mut results = self.transition_many(vec![(id, expected, change)]).await?;
        results.pop().expect("one result per change")
    }

    /// Several transitions in one transaction (one commit). Each succeeds
    /// or fails on its own; the outer error is for the transaction itself.
    pub async fn transition_many(
        &self,
        changes: Vec<(JobId, Option<JobState>, Change)>,
    ) -> Result<Vec<Result<Job, StoreError>>, StoreError> {
        macro_rules! run {
            ($pool:expr, $f:ident) => {{
                let order = self.lock_order(&changes).await?;
                let mut tx = $pool.begin().await?;
                let mut results: Vec<Option<Result<Job, StoreError>>> =
                    (0..changes.len()).map(|_| None).collect();
                let mut events = Vec::new();
                for i in order {
                    let (id, expected, change) = &changes[i];
                    // A savepoint per change, so one refusal does not abort the rest.
                    let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
                    match $f(&mut sp, *id, *expected, change).await {
                        Ok((job, event)) => {
                            sp.commit().await?;
                            events.push(event);
                            results[i] = Some(Ok(job));
                        }
                        Err(e @ StoreError::Unavailable(_)) => return Err(e),
                        Err(e) => {
                            sp.rollback().await?;
                            results[i] = Some(Err(e));
                        }
                    }
                }
                tx.commit().await?;
                for event in events {
                    self.publish(event);
                }
                Ok(results
                    .into_iter()
                    .map(|r| r.expect("every change answered"))
                    .collect())
            }};
        }
        match self.backend() {
            Backend::Sqlite { write, .. } => run!(write, transition_sqlite),
            Backend::Postgres(pool) => run!(pool, transition_postgres),
        }
    }

    /// The order to apply `changes` in: by their jobs' tenants, then ids.
    /// A change of state may move its tenant's pending count (a row the
    /// trigger locks until commit), and submit batches take tenants in
    /// this order too, so no two writers wait on each other in a cycle.
    /// The sort is stable (one job's changes keep their order); jobs not
    /// found go first, and fail on their own. SQLite has one writer, which
    /// cannot wait on another: its changes keep the caller's order, with no
    /// read before.
    async fn lock_order(
        &self,
        changes: &[(JobId, Option<JobState>, Change)],
    ) -> Result<Vec<usize>, StoreError> {
        let mut order: Vec<usize> = (0..changes.len()).collect();
        if changes.len() < 2 || matches!(self.backend(), Backend::Sqlite { .. }) {
            return Ok(order);
        }
        let placeholders = self.backend().placeholders();
        let mut tenant_of = std::collections::HashMap::new();
        for chunk in changes.chunks(500) {
            let sql = format!(
                "SELECT id, tenant_id FROM jobs WHERE id IN {}",
                placeholders.rows(1, chunk.len(), "")
            );
            let rows: Vec<(String, String)> = with_read_pool!(self.backend(), pool => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for (id, _, _) in chunk {
                    q = q.bind(id.to_string());
                }
                q.fetch_all(pool).await?
            });
            tenant_of.extend(rows);
        }
        let keys: Vec<(Option<String>, JobId)> = changes
            .iter()
            .map(|(id, _, _)| (tenant_of.remove(&id.to_string()), *id))
            .collect();
        order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        Ok(order)
    }

    /// Records why queued jobs are waiting (a stable code and its text),
    /// where that changed. Only Pending jobs are touched; the reason is not
    /// a state change.
    pub async fn set_waiting_reasons(
        &self,
        reasons: &[(JobId, &str, String)],
    ) -> Result<(), StoreError> {
        if reasons.is_empty() {
            return Ok(());
        }
        crate::backend::with_write_pool!(self.backend(), pool => {
            let mut tx = pool.begin().await?;
            for (id, code, reason) in reasons {
                sqlx::query(
                    "UPDATE jobs SET reason = $1, reason_code = $2 WHERE id = $3 AND state = 'pending' \
                     AND (reason <> $1 OR reason_code <> $2)",
                )
                .bind(reason)
                .bind(*code)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Cancels a job. A queued job is Cancelled at once; a running one is
    /// flagged, and the executor stops it and records the end.
    pub async fn request_cancel(
        &self,
        id: JobId,
        reason: &str,
        at: Timestamp,
    ) -> Result<Job, StoreError> {
        let job = self.get_job(id).await?;
        match job.state {
            s if s.is_terminal() => Err(StoreError::Conflict(format!("job {id} already {s}"))),
            JobState::Running => {
                crate::backend::with_write_pool!(self.backend(), pool => {
                    sqlx::query(
                        "UPDATE jobs SET cancel_requested = TRUE, updated_at = $1 WHERE id = $2 AND state = 'running'",
                    )
                    .bind(at.0)
                    .bind(id.to_string())
                    .execute(pool)
                    .await?;
                });
                let _ = self.inner.cancels.send((id, reason.to_owned()));
                self.get_job(id).await
            }
            s => {
                match self
                    .transition(id, Some(s), Change::new(JobState::Cancelled, reason, at))
                    .await
                {
                    // It moved on (say, it just started): try again from its new state.
                    Err(StoreError::Conflict(_)) => {
                        Box::pin(self.request_cancel(id, reason, at)).await
                    }
                    other => other,
                }
            }
        }
    }
}

impl Store {
    /// The scheduling cycle's durable memory (JSON), as last saved.
    pub async fn load_scheduler_memory(&self) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as("SELECT state FROM scheduler_memory WHERE id = 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(state,)| state))
    }

    /// Replaces the scheduling cycle's durable memory.
    pub async fn save_scheduler_memory(
        &self,
        state: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        crate::backend::with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO scheduler_memory (id, state, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(state)
            .bind(at.0)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = JobId::new_random();
        let (at, parsed) = decode_token(&format!("42_{id}")).unwrap();
        assert_eq!((at, parsed), (42, id.to_string()));
        for bad in [
            "",
            "x",
            "42_nope",
            "abc_00000000-0000-0000-0000-000000000000",
        ] {
            assert!(matches!(
                decode_token(bad),
                Err(StoreError::InvalidArgument { .. })
            ));
        }
    }
}
