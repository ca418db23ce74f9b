//! The two database backends behind one set of SQL statements.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::StoreError;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A SQLite file (created if missing), in WAL mode.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl StoreConfig {
    /// `postgres://…` or `postgresql://…` selects PostgreSQL;
    /// `sqlite://PATH` or a plain path selects SQLite.
    pub fn from_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres(url.to_owned())
        } else {
            Self::Sqlite(PathBuf::from(url.strip_prefix("sqlite://").unwrap_or(url)))
        }
    }
}

pub(crate) enum Backend {
    Sqlite {
        /// One connection: SQLite has one writer, and serialising writes
        /// here avoids SQLITE_BUSY under load.
        write: SqlitePool,
        read: SqlitePool,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool for writes.
macro_rules! with_write_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            $crate::backend::Backend::Sqlite { write: $pool, .. } => $body,
            $crate::backend::Backend::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the backend's pool for reads.
macro_rules! with_read_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            $crate::backend::Backend::Sqlite { read: $pool, .. } => $body,
            $crate::backend::Backend::Postgres($pool) => $body,
        }
    };
}

pub(crate) use {with_read_pool, with_write_pool};

impl Backend {
    pub(crate) async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        match config {
            StoreConfig::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk before it is acknowledged.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    // Billing scans and indexes millions of usage events a
                    // month: a 64 MiB page cache (the default is 2 MiB) and
                    // reads through a memory map instead of one pread per
                    // page. Both grow only as pages are used.
                    .pragma("cache_size", "-65536")
                    .pragma("mmap_size", "1073741824");
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.clone())
                    .await?;
                let read = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite { write, read })
            }
            StoreConfig::Postgres(url) => {
                let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| {
                    StoreError::InvalidArgument {
                        field: "database_url".into(),
                        reason: e.to_string(),
                    }
                })?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_with(options)
                    .await?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite { write, .. } => sqlx::migrate!("./migrations/sqlite").run(write).await?,
            Self::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// How this backend's multi-row statements name their parameters.
    pub(crate) fn placeholders(&self) -> Placeholders {
        match self {
            Self::Sqlite { .. } => Placeholders::Positional,
            Self::Postgres(_) => Placeholders::Numbered,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        with_read_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }
}

/// Bind parameters of a multi-row `VALUES` list, one style per backend.
///
/// SQLite gets plain `?`, bound in order. sqlx resolves each numbered `$N`
/// through `sqlite3_bind_parameter_name`, a linear scan of the statement's
/// named parameters, so binding P numbered parameters costs O(P²): at 500
/// rows of 11 columns that was 87% of the time spent metering. PostgreSQL
/// gets `$N`. Either way each parameter is bound once, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholders {
    Positional,
    Numbered,
}

impl Placeholders {
    /// `rows` tuples of `columns` parameters each, comma-separated, with
    /// `literals` (SQL constants, e.g. `", 0, FALSE"`) closing each tuple.
    pub(crate) fn rows(self, rows: usize, columns: usize, literals: &str) -> String {
        use std::fmt::Write;
        let mut sql = String::with_capacity(rows * (columns * 5 + literals.len() + 3));
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..columns {
                if c > 0 {
                    sql.push_str(", ");
                }
                match self {
                    Self::Positional => sql.push('?'),
                    Self::Numbered => {
                        let _ = write!(sql, "${}", r * columns + c + 1);
                    }
                }
            }
            sql.push_str(literals);
            sql.push(')');
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::Placeholders;

    #[test]
    fn placeholders_number_postgres_and_leave_sqlite_positional() {
        assert_eq!(
            Placeholders::Numbered.rows(2, 2, ", 0"),
            "($1, $2, 0), ($3, $4, 0)"
        );
        assert_eq!(
            Placeholders::Positional.rows(2, 3, ""),
            "(?, ?, ?), (?, ?, ?)"
        );
        assert_eq!(Placeholders::Positional.rows(0, 3, ""), "");
    }
}
