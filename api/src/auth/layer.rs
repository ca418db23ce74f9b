//! A tower layer in front of every gRPC service. Its [`Gate`] decides each
//! call before any of the request's body is read: it authenticates the
//! bearer token, refuses revoked ones, applies the method's rule from
//! [`super::policy`] and the rate limits, and hands the
//! [`Principal`](super::Principal) to the handler in the request's
//! extensions. The REST gateway asks the same gate first, so a REST body
//! is read only for a caller already admitted.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tower::{Layer, Service};

use super::limit::RateLimiter;
use super::policy::{self, Access};
use super::revocation::Revocations;
use super::{AuthError, Principal, Verifier};
use crate::audit::{self, AuditLog, AuditNote};
use finpool_audit::Outcome;

/// Who is calling and whether they may: one decision for both doors.
#[derive(Debug)]
pub struct Gate {
    verifier: Verifier,
    /// Per tenant (per subject for operators and regulators).
    callers: RateLimiter,
    /// Per source address, for calls without a valid token (anonymous
    /// methods, and failed authentications, whose signature checks cost).
    anonymous: RateLimiter,
    revocations: Arc<Revocations>,
    /// Where refusals are recorded.
    audit: Option<AuditLog>,
}

/// A call the gate has admitted; the REST gateway puts it on the gRPC
/// request it makes, so the call is not counted twice. Only code in this
/// crate can make one (extensions never come from the wire).
#[derive(Debug, Clone)]
pub struct Admitted(pub(crate) Option<Principal>);

impl Gate {
    pub fn new(
        verifier: Verifier,
        callers: RateLimiter,
        anonymous: RateLimiter,
        revocations: Arc<Revocations>,
    ) -> Self {
        Self {
            verifier,
            callers,
            anonymous,
            revocations,
            audit: None,
        }
    }

    /// Records every refusal (and, in the layer, every mutation) in `audit`.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// Decides a call to `path` from `peer` with these headers: the caller
    /// (`None` for an anonymous method), or the status refusing it. Every
    /// refusal of a known method is written to the audit log.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<Principal>, Status> {
        self.decide(path, headers, peer)
            .map_err(|(status, principal)| {
                if let Some(log) = &self.audit
                    && status.code() != tonic::Code::Unimplemented
                {
                    let id = audit::request_id(headers)
                        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                    log.record(audit::entry(
                        path,
                        principal.as_ref(),
                        peer,
                        String::new(),
                        id,
                        Outcome::Denied(audit::code_name(status.code()).into()),
                    ));
                }
                status
            })
    }

    /// The decision, with the caller if it was known.
    fn decide(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<Principal>, (Status, Option<Principal>)> {
        let roles = match policy::rule(path) {
            None => {
                return Err((
                    Status::unimplemented(format!("unknown method {path}")),
                    None,
                ));
            }
            Some(Access::Anonymous) => {
                self.admit_anonymous(peer).map_err(|s| (s, None))?;
                return Ok(None);
            }
            Some(Access::Roles(roles)) => roles,
        };
        // A revoked token (or a suspended tenant's) is named in the audit
        // log by its subject: its signature was good, only its standing
        // is gone.
        let (checked, known) = match authenticate(&self.verifier, headers) {
            Ok(p) => match self.revocations.check(&p) {
                Ok(()) => (Ok(p), None),
                Err(e) => (Err(e), Some(p)),
            },
            Err(e) => (Err(e), None),
        };
        let principal = match checked {
            Ok(p) => p,
            Err(e) => {
                // A caller without a valid token is anonymous: limited by
                // address, so guessing tokens is as slow as any flood.
                self.admit_anonymous(peer).map_err(|s| (s, known.clone()))?;
                tracing::debug!(path, error = %e, "unauthenticated call");
                return Err((Status::unauthenticated(e.to_string()), known));
            }
        };
        if !roles.contains(&principal.role) {
            tracing::info!(path, subject = %principal.subject, role = %principal.role, "permission denied");
            let status = Status::permission_denied(format!(
                "the {} role may not call {path}",
                principal.role
            ));
            return Err((status, Some(principal)));
        }
        if let Err(wait) = self.callers.admit(&principal.bucket()) {
            tracing::debug!(path, subject = %principal.subject, "rate limited");
            let who = if principal.role == super::Role::Tenant {
                "tenant"
            } else {
                "caller"
            };
            return Err((rate_limited(who, wait), Some(principal)));
        }
        Ok(Some(principal))
    }

    fn admit_anonymous(&self, peer: Option<IpAddr>) -> Result<(), Status> {
        let key = match peer {
            Some(ip) => format!("address/{ip}"),
            None => "address/unknown".to_owned(),
        };
        self.anonymous
            .admit(&key)
            .map_err(|wait| rate_limited("address", wait))
    }
}

fn rate_limited(who: &str, wait: f64) -> Status {
    Status::resource_exhausted(format!(
        "rate limit: too many requests from this {who}; retry in {:.0} ms",
        (wait * 1000.0).ceil()
    ))
}

/// The caller's address, as the transport recorded it.
pub fn peer_of(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip())
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    gate: Arc<Gate>,
}

impl AuthLayer {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self { gate }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> AuthService<S> {
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
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
        let request_id = audit::ensure_request_id(request.headers_mut());
        let path = request.uri().path().to_owned();
        let decided = match request.extensions_mut().remove::<Admitted>() {
            Some(Admitted(principal)) => Ok(principal),
            None => {
                let peer = peer_of(request.extensions());
                self.gate.admit(&path, request.headers(), peer)
            }
        };
        match decided {
            Err(status) => Box::pin(async move {
                let mut response = status.into_http();
                echo_request_id(&mut response, &request_id);
                Ok(response)
            }),
            Ok(principal) => {
                // finpool's own methods are audited: mutations always,
                // reads when the handler refused another tenant's object.
                let audited = self
                    .gate
                    .audit()
                    .filter(|_| path.starts_with("/finpool.v1."))
                    .cloned()
                    .map(|log| (log, AuditNote::default()));
                if let Some((_, note)) = &audited {
                    request.extensions_mut().insert(note.clone());
                }
                if let Some(p) = &principal {
                    request.extensions_mut().insert(p.clone());
                }
                let call = inner.call(request);
                Box::pin(async move {
                    let mut response = call.await.map(too_large_is_invalid)?;
                    if let Some((log, note)) = audited {
                        let code = Status::from_header_map(response.headers())
                            .map_or(tonic::Code::Ok, |s| s.code());
                        let (target, cross_tenant) = note.get();
                        if policy::mutates(&path) || cross_tenant {
                            let entry = audit::entry(
                                &path,
                                principal.as_ref(),
                                None,
                                target,
                                request_id.clone(),
                                audit::outcome(code, cross_tenant),
                            );
                            log.record_waiting(entry).await;
                        }
                    }
                    echo_request_id(&mut response, &request_id);
                    Ok(response)
                })
            }
        }
    }
}

fn authenticate(verifier: &Verifier, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
    let header = headers
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

/// Answers carry the request's id, so a client can find its entry.
fn echo_request_id<R>(response: &mut http::Response<R>, id: &str) {
    if let Ok(value) = http::HeaderValue::from_str(id) {
        response
            .headers_mut()
            .insert(audit::REQUEST_ID_HEADER, value);
    }
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
