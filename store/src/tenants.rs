//! Tenants and base models.

use finpool_domain::{BaseModel, Quota, Suspension, Tenant, TenantId, Timestamp};

use crate::backend::{with_read_pool, with_write_pool};
use crate::rows::{ModelRow, TenantRow, to_json};
use crate::{Store, StoreError};

/// `SELECT`s the columns a [`TenantRow`] reads, then `$rest`.
macro_rules! select_tenants {
    ($rest:literal) => {
        concat!(
            "SELECT id, display_name, weight, isolation, quotas, created_at, suspended_at, \
             suspended_reason FROM tenants ",
            $rest
        )
    };
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Clears the catalog cache when a write is done, whatever its outcome.
struct ClearOnDrop<'a>(&'a Store);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.inner.catalog.clear();
    }
}

impl Store {
    pub async fn create_tenant(&self, tenant: &Tenant) -> Result<Tenant, StoreError> {
        let _clear = ClearOnDrop(self);
        let result = with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO tenants (id, display_name, weight, isolation, quotas, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(tenant.id.as_str())
            .bind(&tenant.display_name)
            .bind(tenant.weight as i64)
            .bind(tenant.isolation.as_str())
            .bind(to_json(&tenant.quotas))
            .bind(tenant.created_at.0)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match result {
            Ok(_) => Ok(tenant.clone()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("tenant {}", tenant.id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Tenant, StoreError> {
        let row: Option<TenantRow> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                select_tenants!("WHERE id = $1"),
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("tenant {id}")))?
            .into_tenant()
    }

    /// Tenants ordered by id, after `after` (exclusive), at most `limit`.
    pub async fn list_tenants(&self, after: &str, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let rows: Vec<TenantRow> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                select_tenants!("WHERE id > $1 ORDER BY id LIMIT $2"),
            )
            .bind(after)
            .bind(limit as i64)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TenantRow::into_tenant).collect()
    }

    /// Sets one class's quota; the rest of the tenant is unchanged.
    pub async fn set_quota(
        &self,
        id: &TenantId,
        class: &str,
        quota: Quota,
        now: Timestamp,
    ) -> Result<Tenant, StoreError> {
        let _clear = ClearOnDrop(self);
        with_write_pool!(self.backend(), pool => {
            let mut tx = pool.begin().await?;
            let row: Option<TenantRow> = sqlx::query_as(
                select_tenants!("WHERE id = $1"),
            )
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let mut tenant = row
                .ok_or_else(|| StoreError::NotFound(format!("tenant {id}")))?
                .into_tenant()?;
            tenant.quotas.insert(class.to_owned(), quota);
            sqlx::query("UPDATE tenants SET quotas = $1, updated_at = $2 WHERE id = $3")
                .bind(to_json(&tenant.quotas))
                .bind(now.0)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(tenant)
        })
    }

    pub async fn register_model(&self, model: &BaseModel) -> Result<BaseModel, StoreError> {
        let _clear = ClearOnDrop(self);
        let result = with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO models (name, size_mib, min_gpu_memory_mib, load_time_ms, registered_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(model.name.as_str())
            .bind(model.size_mib as i64)
            .bind(model.min_gpu_memory_mib as i64)
            .bind(model.load_time_ms.map(|ms| ms as i64))
            .bind(model.registered_at.0)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match result {
            Ok(_) => Ok(model.clone()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("model {}", model.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_models(&self) -> Result<Vec<BaseModel>, StoreError> {
        let rows: Vec<ModelRow> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as(
                "SELECT name, size_mib, min_gpu_memory_mib, load_time_ms, registered_at FROM models ORDER BY name",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(ModelRow::into_model).collect()
    }

    /// Every tenant (for the scheduler's snapshot).
    pub async fn all_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut all = Vec::new();
        loop {
            let after = all
                .last()
                .map(|t: &Tenant| t.id.to_string())
                .unwrap_or_default();
            let page = self.list_tenants(&after, 1000).await?;
            let done = page.len() < 1000;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Suspends a tenant (`Some`) or resumes it (`None`). Suspending an
    /// already suspended tenant keeps its first time and reason.
    pub async fn set_suspension(
        &self,
        id: &TenantId,
        suspension: Option<&Suspension>,
        now: Timestamp,
    ) -> Result<Tenant, StoreError> {
        let _clear = ClearOnDrop(self);
        let (at, reason) = match suspension {
            Some(s) => (Some(s.at.0), s.reason.as_str()),
            None => (None, ""),
        };
        let done = with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "UPDATE tenants SET suspended_at = CASE WHEN $1 IS NULL THEN NULL ELSE COALESCE(suspended_at, $1) END, \
                 suspended_reason = CASE WHEN $1 IS NULL THEN '' WHEN suspended_at IS NULL THEN $2 ELSE suspended_reason END, \
                 updated_at = $3 WHERE id = $4",
            )
            .bind(at)
            .bind(reason)
            .bind(now.0)
            .bind(id.as_str())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound(format!("tenant {id}")));
        }
        self.get_tenant(id.as_str()).await
    }

    /// Refuses every token of `subject` issued before `not_before` (unix
    /// seconds). A later call moves the bar; it never moves back.
    pub async fn revoke_tokens(
        &self,
        subject: &str,
        not_before: u64,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        with_write_pool!(self.backend(), pool => {
            sqlx::query(
                "INSERT INTO token_revocations (subject, not_before, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (subject) DO UPDATE SET \
                 not_before = CASE WHEN excluded.not_before > token_revocations.not_before \
                 THEN excluded.not_before ELSE token_revocations.not_before END, \
                 updated_at = excluded.updated_at",
            )
            .bind(subject)
            .bind(not_before as i64)
            .bind(now.0)
            .execute(pool)
            .await?;
        });
        let bar: Option<i64> = with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar("SELECT not_before FROM token_revocations WHERE subject = $1")
                .bind(subject)
                .fetch_optional(pool)
                .await?
        });
        Ok(bar.unwrap_or(not_before as i64) as u64)
    }

    /// Every subject's not-before, for the API's revocation cache.
    pub async fn token_revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = with_read_pool!(self.backend(), pool => {
            sqlx::query_as("SELECT subject, not_before FROM token_revocations")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(s, t)| (s, t.max(0) as u64))
            .collect())
    }

    /// The ids of suspended tenants, for the API's revocation cache.
    pub async fn suspended_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let rows: Vec<String> = with_read_pool!(self.backend(), pool => {
            sqlx::query_scalar("SELECT id FROM tenants WHERE suspended_at IS NOT NULL ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        rows.iter()
            .map(|id| {
                finpool_domain::Name::parse("id", id)
                    .map_err(|e| StoreError::Corrupt(format!("tenant id: {e}")))
            })
            .collect()
    }
}
