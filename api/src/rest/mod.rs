//! REST/JSON beside gRPC, as a gateway: each route names the gRPC method it
//! stands for, and a request goes through the same authenticated gRPC
//! service stack in-process (authentication, the method's rule, rate
//! limits, handlers). Both doors therefore answer alike by construction.
//!
//! Path and query parameters and the JSON body become the method's request
//! message (proto3 JSON mapping, field names as in the proto, unknown
//! fields refused); the reply message becomes JSON. Errors are
//! `application/problem+json` (RFC 9457) naming the field and the reason.
//! The OpenAPI document is generated from [`ROUTES`] and the proto
//! descriptors ([`openapi`]).

pub mod openapi;
mod problem;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, Value,
};
use tonic::{Code, Status};
use tower::ServiceExt;

pub use problem::problem;

/// Where the JSON body goes in the request message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTo {
    /// No body.
    None,
    /// The body is the request message (less the path's fields).
    Whole,
    /// The body is this message field of the request.
    Field(&'static str),
}

/// How the reply is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// One JSON document.
    Json,
    /// A server stream: one JSON document per line (`application/x-ndjson`).
    JsonLines,
    /// A stream of `bytes data` chunks, as raw text (`text/plain`).
    Text,
    /// A rendered document (`string content_type`, `bytes body`): the
    /// body itself, with its content type (a report as CSV or HTML).
    Document,
}

/// One REST route and the gRPC method behind it.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    /// With `{name}` segments naming request fields.
    pub path: &'static str,
    /// The gRPC method, `/package.Service/Method`.
    pub rpc: &'static str,
    pub body: BodyTo,
    pub reply: Reply,
    pub summary: &'static str,
}

const fn route(
    method: Method,
    path: &'static str,
    rpc: &'static str,
    body: BodyTo,
    reply: Reply,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        rpc,
        body,
        reply,
        summary,
    }
}

/// Every REST route. The router is built from this table, and so are the
/// OpenAPI document and the authorization matrix test.
pub const ROUTES: &[Route] = &[
    route(
        Method::POST,
        "/v1/jobs",
        "/finpool.v1.JobService/SubmitJob",
        BodyTo::Field("spec"),
        Reply::Json,
        "Submit a job (tenants). The same idempotency_key returns the same job.",
    ),
    route(
        Method::GET,
        "/v1/jobs",
        "/finpool.v1.JobService/ListJobs",
        BodyTo::None,
        Reply::Json,
        "List jobs the caller may see, newest first, a page at a time.",
    ),
    route(
        Method::GET,
        "/v1/jobs/{id}",
        "/finpool.v1.JobService/GetJob",
        BodyTo::None,
        Reply::Json,
        "One job with its history.",
    ),
    route(
        Method::POST,
        "/v1/jobs/{id}/cancel",
        "/finpool.v1.JobService/CancelJob",
        BodyTo::Whole,
        Reply::Json,
        "Cancel a job (its tenant or an operator).",
    ),
    route(
        Method::GET,
        "/v1/jobs/{id}/logs",
        "/finpool.v1.JobService/StreamLogs",
        BodyTo::None,
        Reply::Text,
        "A job's output; with follow=true, until the job ends.",
    ),
    route(
        Method::GET,
        "/v1/job-events",
        "/finpool.v1.JobService/WatchJobs",
        BodyTo::None,
        Reply::JsonLines,
        "Job state changes as they happen, one JSON document per line.",
    ),
    route(
        Method::POST,
        "/v1/tenants",
        "/finpool.v1.TenantService/CreateTenant",
        BodyTo::Whole,
        Reply::Json,
        "Create a tenant (operators).",
    ),
    route(
        Method::GET,
        "/v1/tenants",
        "/finpool.v1.TenantService/ListTenants",
        BodyTo::None,
        Reply::Json,
        "List tenants (a tenant sees itself only).",
    ),
    route(
        Method::GET,
        "/v1/tenants/{id}",
        "/finpool.v1.TenantService/GetTenant",
        BodyTo::None,
        Reply::Json,
        "One tenant and its quotas.",
    ),
    route(
        Method::PUT,
        "/v1/tenants/{tenant_id}/quotas/{gpu_class}",
        "/finpool.v1.TenantService/SetQuota",
        BodyTo::Field("quota"),
        Reply::Json,
        "Set a tenant's quota on one GPU class (operators).",
    ),
    route(
        Method::POST,
        "/v1/tenants/{id}/suspend",
        "/finpool.v1.TenantService/SuspendTenant",
        BodyTo::Whole,
        Reply::Json,
        "Suspend a tenant: its tokens are refused and its jobs wait (operators).",
    ),
    route(
        Method::POST,
        "/v1/tenants/{id}/resume",
        "/finpool.v1.TenantService/ResumeTenant",
        BodyTo::Whole,
        Reply::Json,
        "Resume a suspended tenant (operators).",
    ),
    route(
        Method::POST,
        "/v1/token-revocations",
        "/finpool.v1.TokenService/RevokeTokens",
        BodyTo::Whole,
        Reply::Json,
        "Refuse a subject's tokens issued before a time, by default now (operators).",
    ),
    route(
        Method::POST,
        "/v1/models",
        "/finpool.v1.ModelService/RegisterModel",
        BodyTo::Whole,
        Reply::Json,
        "Register a base model (operators).",
    ),
    route(
        Method::GET,
        "/v1/models",
        "/finpool.v1.ModelService/ListModels",
        BodyTo::None,
        Reply::Json,
        "List base models.",
    ),
    route(
        Method::GET,
        "/v1/nodes",
        "/finpool.v1.NodeService/ListNodes",
        BodyTo::None,
        Reply::Json,
        "The pool's nodes, cards and current allocation.",
    ),
    route(
        Method::GET,
        "/v1/usage",
        "/finpool.v1.UsageService/GetUsage",
        BodyTo::None,
        Reply::Json,
        "A tenant's metered GPU use so far.",
    ),
    route(
        Method::GET,
        "/v1/billing/usage",
        "/finpool.v1.BillingService/GetPeriodUsage",
        BodyTo::None,
        Reply::Json,
        "Metered usage per tenant, GPU class and kind from `from` to `to` (RFC 3339); tenants see their own.",
    ),
    route(
        Method::GET,
        "/v1/prices",
        "/finpool.v1.BillingService/ListPrices",
        BodyTo::None,
        Reply::Json,
        "Every price version.",
    ),
    route(
        Method::POST,
        "/v1/prices",
        "/finpool.v1.BillingService/SetPrice",
        BodyTo::Whole,
        Reply::Json,
        "Add a price version from its effective_from (operators).",
    ),
    route(
        Method::GET,
        "/v1/invoices",
        "/finpool.v1.BillingService/ListInvoices",
        BodyTo::None,
        Reply::Json,
        "Invoices (a tenant sees its own).",
    ),
    route(
        Method::GET,
        "/v1/invoices/{id}",
        "/finpool.v1.BillingService/GetInvoice",
        BodyTo::None,
        Reply::Json,
        "One invoice with its lines.",
    ),
    route(
        Method::GET,
        "/v1/billing-periods",
        "/finpool.v1.BillingService/ListPeriods",
        BodyTo::None,
        Reply::Json,
        "Billing periods on record and the current one.",
    ),
    route(
        Method::POST,
        "/v1/billing-periods/close",
        "/finpool.v1.BillingService/ClosePeriod",
        BodyTo::Whole,
        Reply::Json,
        "Meter and close a billing period: invoices, journal entries, freeze (operators).",
    ),
    route(
        Method::GET,
        "/v1/reports/usage",
        "/finpool.v1.ReportService/GetUsageReport",
        BodyTo::None,
        Reply::Document,
        "The regulator's usage report from `from` to `to` (RFC 3339), as `format` json, csv or html (staff).",
    ),
    route(
        Method::POST,
        "/v1/metering/run",
        "/finpool.v1.BillingService/MeterUsage",
        BodyTo::Whole,
        Reply::Json,
        "Run a metering pass now (operators).",
    ),
    route(
        Method::GET,
        "/v1/audit/entries",
        "/finpool.v1.AuditService/ListAuditEntries",
        BodyTo::None,
        Reply::Json,
        "The audit log after a seq, a page at a time (regulators and operators).",
    ),
    route(
        Method::GET,
        "/v1/audit/checkpoint",
        "/finpool.v1.AuditService/GetCheckpoint",
        BodyTo::None,
        Reply::Json,
        "The latest signed audit checkpoint and the log's public key (regulators and operators).",
    ),
];

/// The finpool.v1 descriptors.
pub(crate) static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(finpool_proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set is valid")
});

impl Route {
    /// The gRPC method's descriptor.
    pub fn method_descriptor(&self) -> MethodDescriptor {
        let (service, method) = self
            .rpc
            .trim_start_matches('/')
            .split_once('/')
            .expect("rpc paths are /service/method");
        DESCRIPTORS
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .unwrap_or_else(|| panic!("{} names no method", self.rpc))
    }

    /// The request fields the path fills.
    pub fn path_fields(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect()
    }
}

/// The largest REST body accepted, as for gRPC.
pub const MAX_BODY_BYTES: usize = crate::server::MAX_REQUEST_BYTES;

/// The authenticated gRPC stack the gateway calls into.
pub type GrpcStack = crate::auth::layer::AuthService<tonic::service::Routes>;

/// The REST router over `grpc`, plus `GET /openapi.json`.
pub fn router(grpc: GrpcStack) -> axum::Router {
    let mut router = axum::Router::new().route(
        "/openapi.json",
        axum::routing::get(|| async { axum::Json(openapi::DOCUMENT.clone()) }),
    );
    for r in ROUTES {
        let filter = MethodFilter::try_from(r.method.clone()).expect("standard methods");
        let grpc = grpc.clone();
        router = router.route(
            r.path,
            on(filter, move |request: Request| {
                let grpc = grpc.clone();
                async move { gateway(r, grpc, request).await }
            }),
        );
    }
    router.method_not_allowed_fallback(|| async {
        problem(&Status::new(
            Code::Unimplemented,
            "method not allowed on this path",
        ))
        .into_response()
    })
}

/// A request refused before it reaches the gRPC stack.
struct Refused(Box<Status>);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        problem(&self.0).into_response()
    }
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Refused {
    Refused(Box::new(Status::invalid_argument(format!(
        "{field}: {reason}"
    ))))
}

/// One REST call; the answer carries the request's id (`x-request-id`),
/// the one its audit entry names.
async fn gateway(route: &'static Route, grpc: GrpcStack, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let request_id = crate::audit::ensure_request_id(&mut parts.headers);
    let mut response = call_route(route, grpc, parts, body, &request_id).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(crate::audit::REQUEST_ID_HEADER, value);
    }
    response
}

async fn call_route(
    route: &'static Route,
    grpc: GrpcStack,
    mut parts: http::request::Parts,
    body: Body,
    request_id: &str,
) -> Response {
    // Who is calling, before a byte of the body is read.
    let peer = crate::auth::layer::peer_of(&parts.extensions);
    let principal = match grpc.gate().admit(route.rpc, &parts.headers, peer) {
        Ok(p) => p,
        Err(status) => return problem(&status).into_response(),
    };
    let method = route.method_descriptor();
    let input = method.input();
    let path: HashMap<String, String> =
        match Path::<HashMap<String, String>>::from_request_parts(&mut parts, &()).await {
            Ok(Path(p)) => p,
            Err(e) => return invalid("path", e.body_text()).into_response(),
        };
    if declared_length(&parts.headers).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    if !body.iter().all(u8::is_ascii_whitespace) && !is_json(&parts.headers) {
        return problem::with_http_status(
            &Status::invalid_argument("content-type: the body must be application/json (RFC 8259)"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        );
    }
    if let Some(path) = duplicate_key(&body) {
        return invalid(&path, "given more than once; each key may appear once").into_response();
    }
    let mut message = match request_body(route, &input, &body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    for (name, value) in &path {
        let Some(field) = input.get_field_by_name(name) else {
            return invalid(name, "not a field of this request").into_response();
        };
        if message.has_field(&field) {
            return invalid(name, "comes from the path, not the body").into_response();
        }
        if let Err(r) = set_scalar(&mut message, &field, value) {
            return r.into_response();
        }
    }
    if let Err(r) = apply_query(route, &input, &mut message, parts.uri.query().unwrap_or("")) {
        return r.into_response();
    }
    let grpc_request = http::Request::builder()
        .method(Method::POST)
        .uri(route.rpc)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(crate::audit::REQUEST_ID_HEADER, request_id);
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(encoded.len() + 5);
    framed.put_u8(0);
    framed.put_u32(encoded.len() as u32);
    framed.extend_from_slice(&encoded);
    let mut grpc_request = grpc_request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            framed.freeze(),
        )))
        .expect("a well-formed request");
    // Admitted above: the gRPC stack does not count the call again.
    grpc_request
        .extensions_mut()
        .insert(crate::auth::layer::Admitted(principal));
    let response = match grpc.oneshot(grpc_request).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (head, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&head.headers)
        && status.code() != Code::Ok
    {
        return problem(&status).into_response();
    }
    let output = method.output();
    match route.reply {
        Reply::Json | Reply::Document => unary_reply(route.reply, output, body).await,
        Reply::JsonLines | Reply::Text => stream_reply(route.reply, output, body),
    }
}

/// 413, saying so in the problem document too.
fn too_large() -> Response {
    problem::with_http_status(
        &Status::invalid_argument(format!(
            "request: larger than the {} MiB limit",
            MAX_BODY_BYTES >> 20
        )),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

/// The body length the client declared, if any.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the body is declared JSON: `application/json` or a
/// `application/*+json` type, with any parameters (say, a charset).
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// The path of the first key given twice in one JSON object of `body`
/// (RFC 8259 leaves duplicates to the parser; finpool refuses them rather
/// than silently keep one). `None` for a body without duplicates, or one
/// that is not JSON (the parser then says why).
fn duplicate_key(body: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    struct Walk<'a> {
        at: String,
        found: &'a RefCell<Option<String>>,
    }

    impl<'a> Walk<'a> {
        fn child(&self, step: &str) -> Walk<'a> {
            let at = match (self.at.is_empty(), step.starts_with('[')) {
                (true, _) | (false, true) => format!("{}{step}", self.at),
                (false, false) => format!("{}.{step}", self.at),
            };
            Walk {
                at,
                found: self.found,
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let child = self.child(&key);
                if !seen.insert(key) {
                    *self.found.borrow_mut() = Some(child.at);
                    return Err(A::Error::custom("duplicate key"));
                }
                map.next_value_seed(child)?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while seq
                .next_element_seed(self.child(&format!("[{i}]")))?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: Error>(self) -> Result<(), E> {
            Ok(())
        }
    }

    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Walk {
        at: String::new(),
        found: &found,
    }
    .deserialize(&mut de);
    found.into_inner()
}

/// The request message from the body, per the route's [`BodyTo`].
fn request_body(
    route: &Route,
    input: &MessageDescriptor,
    body: &Bytes,
) -> Result<DynamicMessage, Refused> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let parse = |desc: MessageDescriptor, what: &str| {
        let mut de = serde_json::Deserializer::from_slice(body);
        let m = DynamicMessage::deserialize_with_options(
            desc.clone(),
            &mut de,
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .and_then(|m| de.end().map(|()| m));
        m.map_err(|e| {
            // Name an unknown field by its path in the body.
            let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            match value.and_then(|v| unknown_field_path(&v, &desc, "")) {
                Some(path) => invalid(&path, "unknown field"),
                None => invalid(what, json_reason(&e)),
            }
        })
    };
    match route.body {
        BodyTo::None if blank => Ok(DynamicMessage::new(input.clone())),
        BodyTo::None => Err(invalid("body", "this route takes no body")),
        BodyTo::Whole if blank => Ok(DynamicMessage::new(input.clone())),
        BodyTo::Whole => parse(input.clone(), "body"),
        BodyTo::Field(name) => {
            let field = input
                .get_field_by_name(name)
                .expect("routes name real fields");
            let mut message = DynamicMessage::new(input.clone());
            if !blank {
                let Kind::Message(desc) = field.kind() else {
                    unreachable!("body fields are messages")
                };
                let value = parse(desc, name)?;
                message.set_field(&field, Value::Message(value));
            }
            Ok(message)
        }
    }
}

/// A serde error as a reason: "unknown field `x`", "invalid type …".
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((reason, _)) => format!("not valid JSON for this request: {reason}"),
        None => format!("not valid JSON for this request: {text}"),
    }
}

/// The path of the first key in `value` that `message` has no field for.
fn unknown_field_path(
    value: &serde_json::Value,
    message: &MessageDescriptor,
    at: &str,
) -> Option<String> {
    let object = value.as_object()?;
    let join = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    for (key, v) in object {
        let Some(field) = message
            .get_field_by_name(key)
            .or_else(|| message.get_field_by_json_name(key))
        else {
            return Some(join(key));
        };
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        if inner.full_name().starts_with("google.protobuf.") {
            continue;
        }
        let path = join(key);
        let found = if field.is_map() {
            let value_field = inner.map_entry_value_field();
            match value_field.kind() {
                Kind::Message(m) => v.as_object().and_then(|o| {
                    o.iter()
                        .find_map(|(k, item)| unknown_field_path(item, &m, &format!("{path}.{k}")))
                }),
                _ => None,
            }
        } else if field.is_list() {
            v.as_array().and_then(|items| {
                items
                    .iter()
                    .enumerate()
                    .find_map(|(i, item)| unknown_field_path(item, &inner, &format!("{path}[{i}]")))
            })
        } else {
            unknown_field_path(v, &inner, &path)
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Query parameters become the request's scalar fields (repeated ones may
/// repeat). Only routes without a body take them.
fn apply_query(
    route: &Route,
    input: &MessageDescriptor,
    message: &mut DynamicMessage,
    query: &str,
) -> Result<(), Refused> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| invalid("query", e))?;
    let path_fields = route.path_fields();
    for (name, value) in pairs {
        let field = input
            .get_field_by_name(&name)
            .filter(|f| !path_fields.contains(&f.name()) && openapi::is_query_field(f))
            .filter(|_| route.body == BodyTo::None)
            .ok_or_else(|| invalid(&name, "unknown query parameter"))?;
        if !field.is_list() && message.has_field(&field) {
            return Err(invalid(&name, "given more than once"));
        }
        set_scalar(message, &field, &value)?;
    }
    Ok(())
}

/// Sets (or, for a repeated field, appends) a field from its text.
fn set_scalar(
    message: &mut DynamicMessage,
    field: &FieldDescriptor,
    text: &str,
) -> Result<(), Refused> {
    let name = field.name();
    let number = |what: &str| invalid(name, format!("must be {what}, got {text:?}"));
    let value = match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(number("true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| number("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| number("an integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32(text.parse().map_err(|_| number("a non-negative integer"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(text.parse().map_err(|_| number("a non-negative integer"))?)
        }
        Kind::Enum(e) => {
            let wanted = text.to_ascii_uppercase();
            let value = e
                .values()
                .find(|v| v.name() == wanted || openapi::short_enum_name(v) == text)
                .filter(|v| v.number() != 0)
                .ok_or_else(|| {
                    invalid(
                        name,
                        format!(
                            "unknown value {text:?}; one of {}",
                            openapi::enum_names(&e).join(", ")
                        ),
                    )
                })?;
            Value::EnumNumber(value.number())
        }
        _ => return Err(invalid(name, "cannot be given as text")),
    };
    if field.is_list() {
        if let Value::List(list) = message.get_field_mut(field) {
            list.push(value);
        }
    } else {
        message.set_field(field, value);
    }
    Ok(())
}

fn to_json(message: &DynamicMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut ser, &finpool_proto::json_options())
        .expect("a decoded message serializes");
    out
}

/// Splits complete gRPC frames off the front of `buffer`.
fn take_frames(buffer: &mut BytesMut) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while buffer.len() >= 5 {
        let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
        if buffer.len() < 5 + len {
            break;
        }
        buffer.advance(5);
        frames.push(buffer.split_to(len).freeze());
    }
    frames
}

fn internal(what: &str) -> Response {
    tracing::error!(what, "REST gateway could not read a gRPC reply");
    problem(&Status::internal("internal error")).into_response()
}

async fn unary_reply(reply: Reply, output: MessageDescriptor, body: tonic::body::Body) -> Response {
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return problem(&Status::unavailable(e.to_string())).into_response(),
    };
    if let Some(status) = collected.trailers().and_then(Status::from_header_map)
        && status.code() != Code::Ok
    {
        return problem(&status).into_response();
    }
    let mut buffer = BytesMut::from(collected.to_bytes().as_ref());
    let Some(frame) = take_frames(&mut buffer).into_iter().next() else {
        return internal("no reply message");
    };
    let Ok(message) = DynamicMessage::decode(output, frame) else {
        return internal("an undecodable reply");
    };
    if reply == Reply::Document {
        let (Some(Value::String(content_type)), Some(Value::Bytes(document))) = (
            message
                .get_field_by_name("content_type")
                .map(|v| v.into_owned()),
            message.get_field_by_name("body").map(|v| v.into_owned()),
        ) else {
            return internal("a document without content_type and body");
        };
        let Ok(content_type) = HeaderValue::from_str(&content_type) else {
            return internal("a document with a bad content type");
        };
        let mut response = Response::new(Body::from(document));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        return response;
    }
    let mut response = Response::new(Body::from(to_json(&message)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A server stream as JSON lines or raw text. An error after the stream
/// began ends it with a last line (JSON lines: a problem document).
fn stream_reply(reply: Reply, output: MessageDescriptor, body: tonic::body::Body) -> Response {
    let data_field = output.get_field_by_name("data");
    let frames = http_body_util::BodyStream::new(body);
    let stream = futures::stream::unfold(
        (frames, BytesMut::new(), false),
        move |(mut frames, mut buffer, done)| {
            let output = output.clone();
            let data_field = data_field.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let chunks: Vec<Bytes> = take_frames(&mut buffer)
                        .into_iter()
                        .filter_map(|f| DynamicMessage::decode(output.clone(), f).ok())
                        .map(|m| match (reply, &data_field) {
                            (Reply::Text, Some(field)) => match m.get_field(field).as_ref() {
                                Value::Bytes(b) => b.clone(),
                                _ => Bytes::new(),
                            },
                            _ => {
                                let mut line = to_json(&m);
                                line.push(b'\n');
                                Bytes::from(line)
                            }
                        })
                        .collect();
                    if !chunks.is_empty() {
                        let joined: Bytes = chunks.concat().into();
                        return Some((Ok::<_, Infallible>(joined), (frames, buffer, false)));
                    }
                    match frames.next().await {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => buffer.extend_from_slice(&data),
                            Err(frame) => {
                                let status = frame
                                    .trailers_ref()
                                    .and_then(Status::from_header_map)
                                    .filter(|s| s.code() != Code::Ok);
                                let last = status.map(|s| match reply {
                                    Reply::Text => {
                                        Bytes::from(format!("\n[finpool: {}]\n", s.message()))
                                    }
                                    _ => {
                                        let mut line =
                                            problem::document(&s).to_string().into_bytes();
                                        line.push(b'\n');
                                        Bytes::from(line)
                                    }
                                });
                                return last.map(|l| (Ok(l), (frames, buffer, true)));
                            }
                        },
                        Some(Err(_)) | None => return None,
                    }
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    let content_type = match reply {
        Reply::Text => "text/plain; charset=utf-8",
        _ => "application/x-ndjson",
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Anything the gRPC router does not serve and no REST route matches.
pub async fn not_found() -> Response {
    problem(&Status::not_found("no such route")).into_response()
}
