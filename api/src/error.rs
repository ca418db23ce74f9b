//! How domain and store errors reach a client.

use finpool_domain::FieldError;
use finpool_store::StoreError;
use tonic::Status;

pub fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn store(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
        StoreError::AlreadyExists(what) => Status::already_exists(format!("{what} already exists")),
        StoreError::Conflict(m) => Status::failed_precondition(m),
        StoreError::LimitExceeded(m) => Status::resource_exhausted(m),
        StoreError::InvalidArgument { field, reason } => {
            Status::invalid_argument(format!("{field}: {reason}"))
        }
        StoreError::Unavailable(m) => {
            tracing::warn!(error = %m, "database unavailable");
            Status::unavailable("the database is unavailable; retry shortly")
        }
        e @ (StoreError::Corrupt(_) | StoreError::Database(_)) => {
            tracing::error!(error = %e, "store failure");
            Status::internal("internal error")
        }
    }
}
