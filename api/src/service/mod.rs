//! The gRPC services. Authorization by role happens before a handler runs
//! (see [`crate::auth::policy`]); handlers scope data to what the caller may
//! see, answering NOT_FOUND for anything of another tenant's.

pub mod audit;
pub mod billing;
pub mod jobs;
pub mod nodes;
pub mod reports;
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

/// One page of `items` ordered by `key`: those after `token`, at most
/// `size`, with the token of the next page ("" on the last).
pub fn page_of<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> &str,
    size: u32,
    token: &str,
) -> (Vec<T>, String) {
    items.sort_by(|a, b| key(a).cmp(key(b)));
    let start = items.partition_point(|i| !token.is_empty() && key(i) <= token);
    let mut page: Vec<T> = items.into_iter().skip(start).collect();
    let next = if page.len() > size as usize {
        page.truncate(size as usize);
        page.last().map(|i| key(i).to_owned()).unwrap_or_default()
    } else {
        String::new()
    };
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once_in_order() {
        let items: Vec<String> = ["d", "a", "c", "b", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut token = String::new();
        let mut seen = Vec::new();
        loop {
            let (page, next) = page_of(items.clone(), |s| s.as_str(), 2, &token);
            assert!(page.len() <= 2);
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    }
}
