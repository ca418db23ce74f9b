//! A fake API server behind tower-test's mock service: it answers the
//! scheduler's LISTs, keeps its watches open (the test pushes events into
//! them), and records and answers bindings, status patches, evictions and
//! events the way the real one does (a bound pod leaves the pending watch
//! and joins the bound one; an evicted pod is deleted).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::client::Body;
use serde_json::{Value, json};

pub type FakeBody = BoxBody<Bytes, Infallible>;

/// Which of the scheduler's three watches a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feed {
    Nodes,
    Pending,
    Bound,
}

/// One write the scheduler made.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    nodes: Vec<Node>,
    pending: Vec<Pod>,
    bound: Vec<Pod>,
    watches: HashMap<Feed, Vec<mpsc::UnboundedSender<Bytes>>>,
    writes: Vec<Write>,
    /// Pods whose binding is answered 409 (already bound).
    conflict: Vec<String>,
    version: u64,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn reply(status: StatusCode, body: &Value) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "reason": reason, "code": code, "message": message})
}

fn list(kind: &str, items: Vec<Value>, version: u64) -> Value {
    json!({"kind": kind, "apiVersion": "v1",
        "metadata": {"resourceVersion": version.to_string()}, "items": items})
}

impl FakeApi {
    pub fn new(nodes: Vec<Node>, pending: Vec<Pod>, bound: Vec<Pod>) -> Self {
        let api = Self::default();
        {
            let mut s = api.state.lock().unwrap();
            s.nodes = nodes;
            s.pending = pending;
            s.bound = bound;
            s.version = 1;
        }
        api
    }

    /// A kube client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let api = api.clone();
                tokio::spawn(async move {
                    send.send_response(api.answer(request).await);
                });
            }
        });
        kube::Client::new(mock, "default")
    }

    pub fn conflict_on(&self, pod: &str) {
        self.state.lock().unwrap().conflict.push(pod.to_owned());
    }

    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// Writes whose path ends with `suffix` (`/binding`, `/eviction`…).
    pub fn writes_to(&self, suffix: &str) -> Vec<Write> {
        self.writes()
            .into_iter()
            .filter(|w| w.path.ends_with(suffix))
            .collect()
    }

    /// Waits until `pred` holds over the writes, or panics after `secs`.
    pub async fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[Write]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if pred(&self.writes()) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; writes: {:#?}", self.writes());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn add_node(&self, node: Node) {
        let mut s = self.state.lock().unwrap();
        s.nodes.push(node.clone());
        push_locked(
            &mut s,
            Feed::Nodes,
            "ADDED",
            serde_json::to_value(node).unwrap(),
        );
    }

    pub fn add_pending(&self, pod: Pod) {
        let mut s = self.state.lock().unwrap();
        s.pending.push(pod.clone());
        push_locked(
            &mut s,
            Feed::Pending,
            "ADDED",
            serde_json::to_value(pod).unwrap(),
        );
    }

    fn feed_of(path: &str, query: &str) -> Option<Feed> {
        let query = urlencoding_decode(query);
        match path {
            "/api/v1/nodes" => Some(Feed::Nodes),
            "/api/v1/pods" if query.contains("spec.nodeName!=") => Some(Feed::Bound),
            "/api/v1/pods" if query.contains("spec.schedulerName=finpool-scheduler") => {
                Some(Feed::Pending)
            }
            _ => None,
        }
    }

    async fn answer(&self, request: Request<Body>) -> Response<FakeBody> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if parts.method == Method::GET
            && let Some(feed) = Self::feed_of(&path, &query)
        {
            return self.list_or_watch(feed, query.contains("watch=true"));
        }
        let mut s = self.state.lock().unwrap();
        s.writes.push(Write {
            method: parts.method.clone(),
            path: path.clone(),
            body: body.clone(),
        });
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // api/v1/namespaces/{ns}/pods/{name}[/{sub}]
        match (parts.method.clone(), segments.as_slice()) {
            (Method::POST, ["api", "v1", "namespaces", _, "pods", name, "binding"]) => {
                let name = name.to_string();
                if s.conflict.contains(&name) {
                    return reply(
                        StatusCode::CONFLICT,
                        &status(409, "Conflict", "pod is already assigned to node"),
                    );
                }
                let Some(i) = s
                    .pending
                    .iter()
                    .position(|p| p.metadata.name.as_deref() == Some(&name))
                else {
                    return reply(
                        StatusCode::NOT_FOUND,
                        &status(404, "NotFound", "no such pod"),
                    );
                };
                if body["metadata"]["uid"] != json!(s.pending[i].metadata.uid) {
                    return reply(
                        StatusCode::CONFLICT,
                        &status(409, "Conflict", "Precondition failed: UID in precondition"),
                    );
                }
                let mut pod = s.pending.remove(i);
                pod.spec.as_mut().unwrap().node_name =
                    Some(body["target"]["name"].as_str().unwrap().to_owned());
                let annotations = pod.metadata.annotations.get_or_insert_default();
                if let Some(a) = body["metadata"]["annotations"].as_object() {
                    for (k, v) in a {
                        annotations.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
                    }
                }
                s.bound.push(pod.clone());
                let value = serde_json::to_value(&pod).unwrap();
                push_locked(&mut s, Feed::Pending, "DELETED", value.clone());
                push_locked(&mut s, Feed::Bound, "ADDED", value);
                reply(StatusCode::CREATED, &status(201, "", ""))
            }
            (Method::POST, ["api", "v1", "namespaces", _, "pods", name, "eviction"]) => {
                let name = name.to_string();
                let Some(i) = s
                    .bound
                    .iter()
                    .position(|p| p.metadata.name.as_deref() == Some(&name))
                else {
                    return reply(
                        StatusCode::NOT_FOUND,
                        &status(404, "NotFound", "no such pod"),
                    );
                };
                let pod = s.bound.remove(i);
                push_locked(
                    &mut s,
                    Feed::Bound,
                    "DELETED",
                    serde_json::to_value(&pod).unwrap(),
                );
                reply(StatusCode::CREATED, &status(201, "", ""))
            }
            (Method::PATCH, ["api", "v1", "namespaces", _, "pods", name, ..]) => {
                let name = name.to_string();
                let pod = s
                    .pending
                    .iter()
                    .chain(s.bound.iter())
                    .find(|p| p.metadata.name.as_deref() == Some(&name))
                    .cloned();
                match pod {
                    Some(p) => reply(StatusCode::OK, &serde_json::to_value(p).unwrap()),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        &status(404, "NotFound", "no such pod"),
                    ),
                }
            }
            (Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                reply(StatusCode::CREATED, &body)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", "not served by the fake"),
            ),
        }
    }

    fn list_or_watch(&self, feed: Feed, watch: bool) -> Response<FakeBody> {
        let mut s = self.state.lock().unwrap();
        if watch {
            let (tx, rx) = mpsc::unbounded::<Bytes>();
            s.watches.entry(feed).or_default().push(tx);
            let stream = rx.map(|b| Ok::<_, Infallible>(Frame::data(b)));
            return Response::builder()
                .status(StatusCode::OK)
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
        }
        let v = s.version;
        let body = match feed {
            Feed::Nodes => list(
                "NodeList",
                s.nodes
                    .iter()
                    .map(|n| serde_json::to_value(n).unwrap())
                    .collect(),
                v,
            ),
            Feed::Pending => list(
                "PodList",
                s.pending
                    .iter()
                    .map(|p| serde_json::to_value(p).unwrap())
                    .collect(),
                v,
            ),
            Feed::Bound => list(
                "PodList",
                s.bound
                    .iter()
                    .map(|p| serde_json::to_value(p).unwrap())
                    .collect(),
                v,
            ),
        };
        reply(StatusCode::OK, &body)
    }
}

fn push_locked(s: &mut State, feed: Feed, type_: &str, mut object: Value) {
    s.version += 1;
    object["metadata"]["resourceVersion"] = json!(s.version.to_string());
    let mut line = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap();
    line.push(b'\n');
    let line = Bytes::from(line);
    if let Some(watches) = s.watches.get_mut(&feed) {
        watches.retain(|w| w.unbounded_send(line.clone()).is_ok());
    }
}

/// Enough percent-decoding for field selectors.
fn urlencoding_decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len() + 1
            && let Ok(b) =
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
