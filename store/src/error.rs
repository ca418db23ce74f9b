use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The row changed under us (for example, a job left the state a
    /// transition expected).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A per-tenant limit (such as the pending-job cap) would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The database cannot be reached or refused the work; try again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Stored data that does not decode; a bug or tampering.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                // PostgreSQL class 08 (connection), 57P (operator intervention:
                // shutdown, restart), 53 (insufficient resources); SQLite busy/locked.
                let code = db.code().unwrap_or_default();
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || code == "5"
                    || code == "6"
                {
                    StoreError::Unavailable(e.to_string())
                } else {
                    StoreError::Database(e.to_string())
                }
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(format!("migration failed: {e}"))
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}
