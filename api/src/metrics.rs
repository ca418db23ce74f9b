//! Counts every API call by method and code: a REST call by its route and
//! HTTP status, a gRPC call by its method and status code. A gRPC call's
//! code is in its headers when it failed before answering (trailers-only:
//! a refused token, say), else in its trailers, so the body is watched to
//! its end.

use std::pin::Pin;
use std::task::{Context, Poll};

use finpool_telemetry::Metrics;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct CountLayer {
    metrics: Metrics,
}

impl CountLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Count {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    metrics: Metrics,
}

/// A gRPC status code's name, as Prometheus labels show it.
fn code_name(headers: &HeaderMap) -> Option<&'static str> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    })
}

/// A method name for the label: the gRPC path less its slash; anything
/// else (an unknown path) is one label value, so that a scan of random
/// paths cannot grow the metric without bound.
fn method_label(path: &str) -> String {
    match path.strip_prefix('/') {
        Some(m) if crate::auth::policy::rule(path).is_some() => m.to_owned(),
        _ => "unknown".to_owned(),
    }
}

impl<S, B, RB> Service<Request<B>> for Count<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body + Send + 'static,
{
    type Response = Response<Counted<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // A REST route is labelled by its pattern, never its raw path.
        let rest = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|m| format!("{} {}", request.method(), m.as_str()));
        let method = rest
            .clone()
            .unwrap_or_else(|| method_label(request.uri().path()));
        let metrics = self.metrics.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let mut pending = Some((metrics, method));
            if rest.is_some()
                && let Some((m, method)) = pending.take()
            {
                m.api_request(&method, response.status().as_str());
            } else if let Some(code) = code_name(response.headers())
                && let Some((m, method)) = pending.take()
            {
                m.api_request(&method, code);
            }
            Ok(response.map(|inner| Counted {
                inner: Box::pin(inner),
                pending,
            }))
        })
    }
}

/// A response body that records its call's code when the trailers pass.
pub struct Counted<B> {
    inner: Pin<Box<B>>,
    /// Set until the code is recorded.
    pending: Option<(Metrics, String)>,
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some((m, method)) = self.pending.take()
                {
                    m.api_request(&method, code_name(trailers).unwrap_or("UNKNOWN"));
                }
            }
            // Ended without a status: the stream was cut.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some((m, method)) = self.pending.take() {
                    m.api_request(&method, "UNKNOWN");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    /// A client that went away mid-stream ends the call too.
    fn drop(&mut self) {
        if let Some((m, method)) = self.pending.take() {
            m.api_request(&method, "CANCELLED");
        }
    }
}
