//! The gRPC services. Authorization by role happens before a handler runs
//! (see [`crate::auth::policy`]); handlers scope data to what the caller may
//! see, answering NOT_FOUND for anything of another tenant's.

pub mod jobs;
pub mod nodes;
pub mod tenants;

use tonic::{Request, Status};

use crate::auth::Principal;

/// The caller, as authenticated by the auth layer.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials"))
}

/// Page sizes: 0 means `default`; otherwise 1..=500.
pub fn page_size(value: i32, default: u32) -> Result<u32, Status> {
    match value {
        0 => Ok(default),
        1..=500 => Ok(value as u32),
        v => Err(Status::invalid_argument(format!(
            "page_size: must be from 1 to 500 (or 0 for {default}), got {v}"
        ))),
    }
}
