//! A tower layer in front of every gRPC service: it authenticates the
//! bearer token, applies the method's rule from [`super::policy`], and hands
//! the [`Principal`](super::Principal) to the handler in the request's
//! extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tower::{Layer, Service};

use super::limit::RateLimiter;
use super::policy::{self, Access};
use super::{AuthError, Verifier};

#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
    limiter: Arc<RateLimiter>,
}

impl AuthLayer {
    pub fn new(verifier: Verifier, limiter: RateLimiter) -> Self {
        Self {
            verifier: Arc::new(verifier),
            limiter: Arc::new(limiter),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<Verifier>,
    limiter: Arc<RateLimiter>,
}

impl<S, B, R> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service goes to this call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        let denied = match policy::rule(path) {
            None => Some(Status::unimplemented(format!("unknown method {path}"))),
            Some(Access::Anonymous) => None,
            Some(Access::Roles(roles)) => match authenticate(&self.verifier, &request) {
                Err(e) => {
                    tracing::debug!(path, error = %e, "unauthenticated call");
                    Some(Status::unauthenticated(e.to_string()))
                }
                Ok(principal) if !roles.contains(&principal.role) => {
                    tracing::info!(path, subject = %principal.subject, role = %principal.role, "permission denied");
                    Some(Status::permission_denied(format!(
                        "the {} role may not call {path}",
                        principal.role
                    )))
                }
                Ok(principal) => match self.limiter.admit(&principal) {
                    Err(wait) => {
                        tracing::debug!(path, subject = %principal.subject, "rate limited");
                        Some(Status::resource_exhausted(format!(
                            "rate limit: too many requests from this {}; retry in {:.0} ms",
                            if principal.role == super::Role::Tenant {
                                "tenant"
                            } else {
                                "caller"
                            },
                            (wait * 1000.0).ceil()
                        )))
                    }
                    Ok(()) => {
                        request.extensions_mut().insert(principal);
                        None
                    }
                },
            },
        };
        match denied {
            Some(status) => Box::pin(async move { Ok(status.into_http()) }),
            None => {
                let call = inner.call(request);
                Box::pin(async move { call.await.map(too_large_is_invalid) })
            }
        }
    }
}

fn authenticate<B>(
    verifier: &Verifier,
    request: &http::Request<B>,
) -> Result<super::Principal, AuthError> {
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid("the authorization header is not text".into()))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| AuthError::Invalid("expected 'Bearer <token>'".into()))?;
    verifier.verify(token.trim())
}

/// tonic refuses an oversized message with OUT_OF_RANGE; finpool's
/// contract (and REST's 413) says the argument is invalid.
fn too_large_is_invalid<R>(mut response: http::Response<R>) -> http::Response<R> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("request%3A%20larger%20than%20the%201%20MiB%20limit"),
        );
    }
    response
}
