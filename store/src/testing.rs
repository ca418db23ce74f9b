//! Helpers for tests that need a database of their own.

use sqlx::Connection;

/// The environment variable naming the PostgreSQL server tests use.
pub const TEST_DATABASE_URL_VAR: &str = "FINPOOL_TEST_DATABASE_URL";

/// Creates an empty PostgreSQL database beside `base` (a URL ending in a
/// database name) and returns its URL. Test databases older than an hour
/// are dropped on the way, so aborted runs do not pile up.
pub async fn fresh_postgres_database(base: &str) -> Result<String, sqlx::Error> {
    let mut admin = sqlx::PgConnection::connect(base).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stale: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'finpool_test_%'")
            .fetch_all(&mut admin)
            .await?;
    for db in stale {
        let created = db
            .strip_prefix("finpool_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok())
            .unwrap_or(0);
        if now.saturating_sub(created) > 3600 {
            // Best effort: another run may be dropping it too.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
    let name = format!("finpool_test_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| sqlx::Error::Configuration("the URL names no database".into()))?;
    Ok(format!("{prefix}/{name}"))
}

/// Drops a database made by [`fresh_postgres_database`] (best effort: a
/// leftover is swept by a later call after an hour).
pub async fn drop_postgres_database(base: &str, url: &str) {
    let Some(name) = url
        .rsplit('/')
        .next()
        .filter(|n| n.starts_with("finpool_test_"))
    else {
        return;
    };
    if let Ok(mut admin) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}
