//! gRPC statuses as `application/problem+json` (RFC 9457) documents.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::{Code, Status};

/// The HTTP status for a gRPC code (as grpc-gateway maps them).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::METHOD_NOT_ALLOWED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The field a message like `resources.gpu.whole_gpus: must be …` names.
fn field_of(message: &str) -> Option<&str> {
    let (field, _) = message.split_once(": ")?;
    let is_path = !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
    is_path.then_some(field)
}

/// The problem document for a status.
pub fn document(status: &Status) -> serde_json::Value {
    document_as(status, http_status(status.code()))
}

/// The problem document for a status answered with the HTTP status `code`
/// (413 and 415 say what they are, not the 400 their gRPC code maps to).
fn document_as(status: &Status, code: StatusCode) -> serde_json::Value {
    let slug = format!("{:?}", status.code());
    let mut doc = serde_json::json!({
        "type": format!("urn:finpool:problem:{}", slug.to_ascii_lowercase()),
        "title": code.canonical_reason().unwrap_or("Error"),
        "status": code.as_u16(),
        "detail": status.message(),
        "grpc_code": slug,
    });
    if let Some(field) = field_of(status.message()) {
        doc["field"] = field.into();
        doc["reason"] = status.message()[field.len() + 2..].into();
    }
    doc
}

/// Seconds a refused caller should wait (RFC 9110 `Retry-After`), for a
/// rate limit whose message says "retry in N ms".
fn retry_after(status: &Status) -> Option<u64> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let (_, rest) = status.message().split_once("retry in ")?;
    let ms: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(ms.div_ceil(1000).max(1))
}

/// A status as a problem response.
pub fn problem(status: &Status) -> ProblemResponse {
    ProblemResponse(status.clone(), http_status(status.code()))
}

/// A status as a problem response with another HTTP status than its gRPC
/// code maps to; the document's `status` says the same.
pub fn with_http_status(status: &Status, code: StatusCode) -> Response {
    ProblemResponse(status.clone(), code).into_response()
}

pub struct ProblemResponse(Status, StatusCode);

impl IntoResponse for ProblemResponse {
    fn into_response(self) -> Response {
        let code = self.1;
        let mut response = (code, document_as(&self.0, code).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after(&self.0) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.0.code() == Code::Unauthenticated {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"finpool\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_name_their_field() {
        let doc = document(&Status::invalid_argument(
            "resources.gpu.whole_gpus: must be at least 1, got 0",
        ));
        assert_eq!(doc["status"], 400);
        assert_eq!(doc["field"], "resources.gpu.whole_gpus");
        assert_eq!(doc["reason"], "must be at least 1, got 0");
        let doc = document(&Status::not_found("job 1 not found"));
        assert_eq!(doc["status"], 404);
        assert!(doc.get("field").is_none());
    }

    #[test]
    fn rate_limits_say_when_to_retry() {
        let limited = problem(&Status::resource_exhausted(
            "rate limit: too many requests from this tenant; retry in 1250 ms",
        ))
        .into_response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "2");
        let soon = retry_after(&Status::resource_exhausted("rate limit: retry in 5 ms"));
        assert_eq!(soon, Some(1));
        // A full stream cap or pending queue names no time.
        assert_eq!(
            retry_after(&Status::resource_exhausted("streams: close one first")),
            None
        );
    }

    #[test]
    fn an_overridden_http_status_is_the_documents_status_too() {
        let doc = document_as(
            &Status::invalid_argument("request: larger than the 1 MiB limit"),
            StatusCode::PAYLOAD_TOO_LARGE,
        );
        assert_eq!(doc["status"], 413);
        assert_eq!(doc["title"], "Payload Too Large");
    }
}
