//! gRPC server reflection, `grpc.reflection.v1` and `v1alpha`, over the
//! descriptors of everything the server serves: finpool.v1, the health
//! service and reflection itself.
//!
//! Written here rather than taken from tonic-reflection because that one
//! ends the whole stream with an error status at the first unknown symbol.
//! The protocol answers every request on the stream with a response, a bad
//! one with an `error_response`, and keeps the stream open, which is what
//! clients such as grpcio's reflection database expect. The message and
//! server types still come from tonic-reflection's `pb` module.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use prost::Message;
use prost_reflect::{DescriptorError, DescriptorPool, FileDescriptor};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};

use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

/// The reflection service; one value serves both protocol versions.
#[derive(Debug, Clone)]
pub struct Reflection {
    index: Arc<Index>,
}

#[derive(Debug)]
struct Index {
    pool: DescriptorPool,
    /// Every service, sorted.
    services: Vec<String>,
    /// Each symbol (package, message, field, oneof, enum, enum value,
    /// service, method, extension) and the file that defines it.
    symbols: HashMap<String, FileDescriptor>,
}

impl Reflection {
    /// Indexes the embedded descriptor sets.
    pub fn new() -> Result<Self, DescriptorError> {
        let mut pool = DescriptorPool::new();
        for set in [
            finpool_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            v1::FILE_DESCRIPTOR_SET,
            v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            pool.decode_file_descriptor_set(set)?;
        }
        let mut symbols = HashMap::new();
        let mut add = |name: &str, file: FileDescriptor| {
            symbols.entry(name.to_owned()).or_insert(file);
        };
        for message in pool.all_messages() {
            add(message.full_name(), message.parent_file());
            for field in message.fields() {
                add(field.full_name(), message.parent_file());
            }
            for oneof in message.oneofs() {
                add(oneof.full_name(), message.parent_file());
            }
        }
        for e in pool.all_enums() {
            add(e.full_name(), e.parent_file());
            for value in e.values() {
                // Proto scopes values beside their enum; some clients
                // name them under it.
                add(value.full_name(), e.parent_file());
                add(
                    &format!("{}.{}", e.full_name(), value.name()),
                    e.parent_file(),
                );
            }
        }
        for service in pool.services() {
            add(service.full_name(), service.parent_file());
            for method in service.methods() {
                add(method.full_name(), service.parent_file());
            }
        }
        for extension in pool.all_extensions() {
            add(extension.full_name(), extension.parent_file());
        }
        let mut services: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        services.sort();
        Ok(Self {
            index: Arc::new(Index {
                pool,
                services,
                symbols,
            }),
        })
    }

    /// The services reflection lists.
    pub fn services(&self) -> &[String] {
        &self.index.services
    }

    /// The v1 server.
    pub fn v1(&self) -> v1::server_reflection_server::ServerReflectionServer<Self> {
        v1::server_reflection_server::ServerReflectionServer::new(self.clone())
    }

    /// The v1alpha server (grpcurl and older clients still ask for it).
    pub fn v1alpha(&self) -> v1alpha::server_reflection_server::ServerReflectionServer<Self> {
        v1alpha::server_reflection_server::ServerReflectionServer::new(self.clone())
    }
}

impl Index {
    /// The answer to one request. `sent` holds the files already sent on
    /// this stream, whose imports are not sent again.
    fn answer(
        &self,
        request: v1::ServerReflectionRequest,
        sent: &mut HashSet<String>,
    ) -> v1::ServerReflectionResponse {
        let message = match &request.message_request {
            None => error(Code::InvalidArgument, "the request asks nothing"),
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => match self.pool.get_file_by_name(name) {
                Some(file) => self.files(file, sent),
                None => error(Code::NotFound, format!("file {name:?} not found")),
            },
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                match self.symbols.get(symbol.trim_start_matches('.')) {
                    Some(file) => self.files(file.clone(), sent),
                    None => error(Code::NotFound, format!("symbol {symbol:?} not found")),
                }
            }
            Some(MessageRequest::FileContainingExtension(wanted)) => {
                let extension = self
                    .pool
                    .get_message_by_name(wanted.containing_type.trim_start_matches('.'))
                    .and_then(|m| {
                        m.extensions()
                            .find(|e| i64::from(e.number()) == i64::from(wanted.extension_number))
                    });
                match extension {
                    Some(e) => self.files(e.parent_file(), sent),
                    None => error(
                        Code::NotFound,
                        format!(
                            "no extension {} of {:?}",
                            wanted.extension_number, wanted.containing_type
                        ),
                    ),
                }
            }
            Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
                match self.pool.get_message_by_name(name.trim_start_matches('.')) {
                    Some(message) => {
                        let mut numbers: Vec<i32> = message
                            .extensions()
                            .filter_map(|e| i32::try_from(e.number()).ok())
                            .collect();
                        numbers.sort_unstable();
                        MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                            base_type_name: message.full_name().to_owned(),
                            extension_number: numbers,
                        })
                    }
                    None => error(Code::NotFound, format!("type {name:?} not found")),
                }
            }
        };
        v1::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(message),
        }
    }

    /// `file`, then those of its imports (transitively) not yet sent on this
    /// stream, as grpc-go does: the client gets what it needs to build the
    /// file in one answer.
    fn files(&self, file: FileDescriptor, sent: &mut HashSet<String>) -> MessageResponse {
        let mut encoded = Vec::new();
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([file]);
        while let Some(file) = queue.pop_front() {
            if !seen.insert(file.name().to_owned()) {
                continue;
            }
            let asked_for = encoded.is_empty();
            if sent.insert(file.name().to_owned()) || asked_for {
                encoded.push(file.encode_to_vec());
            }
            queue.extend(file.dependencies());
        }
        MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse {
            file_descriptor_proto: encoded,
        })
    }
}

fn error(code: Code, message: impl Into<String>) -> MessageResponse {
    MessageResponse::ErrorResponse(v1::ErrorResponse {
        error_code: code as i32,
        error_message: message.into(),
    })
}

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream =
        BoxStream<'static, Result<v1::ServerReflectionResponse, Status>>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let index = self.index.clone();
        let mut sent = HashSet::new();
        // One answer per request; only a broken request stream ends it
        // with an error.
        let answers = request
            .into_inner()
            .map(move |item| item.map(|r| index.answer(r, &mut sent)));
        Ok(Response::new(answers.boxed()))
    }
}

/// The two versions' messages are the same on the wire, so v1alpha is
/// served by re-encoding to and from v1.
fn same_wire<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice()).map_err(|e| {
        tracing::error!(error = %e, "reflection: v1alpha and v1 messages differ");
        Status::internal("internal error")
    })
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream =
        BoxStream<'static, Result<v1alpha::ServerReflectionResponse, Status>>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let index = self.index.clone();
        let mut sent = HashSet::new();
        let answers = request.into_inner().map(move |item| {
            let request: v1::ServerReflectionRequest = same_wire(&item?)?;
            same_wire(&index.answer(request, &mut sent))
        });
        Ok(Response::new(answers.boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(index: &Index, request: MessageRequest, sent: &mut HashSet<String>) -> MessageResponse {
        index
            .answer(
                v1::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                },
                sent,
            )
            .message_response
            .unwrap()
    }

    fn file_names(response: &MessageResponse) -> Vec<String> {
        let MessageResponse::FileDescriptorResponse(files) = response else {
            panic!("expected files, got {response:?}");
        };
        files
            .file_descriptor_proto
            .iter()
            .map(|f| {
                prost_types::FileDescriptorProto::decode(f.as_slice())
                    .unwrap()
                    .name
                    .unwrap()
            })
            .collect()
    }

    fn not_found(response: &MessageResponse) -> bool {
        matches!(response, MessageResponse::ErrorResponse(e) if e.error_code == Code::NotFound as i32)
    }

    #[test]
    fn lists_every_served_service() {
        let reflection = Reflection::new().unwrap();
        let services = reflection.services();
        for name in [
            "finpool.v1.JobService",
            "finpool.v1.UsageService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(services.iter().any(|s| s == name), "{name}: {services:?}");
        }
    }

    #[test]
    fn symbols_resolve_to_their_file_and_imports_once_per_stream() {
        let reflection = Reflection::new().unwrap();
        let index = &reflection.index;
        let mut sent = HashSet::new();
        let first = file_names(&ask(
            index,
            MessageRequest::FileContainingSymbol("finpool.v1.JobService.SubmitJob".into()),
            &mut sent,
        ));
        assert!(first[0].starts_with("finpool/v1/"), "{first:?}");
        assert!(
            first.iter().any(|f| f == "google/protobuf/timestamp.proto"),
            "imports come along: {first:?}"
        );
        // Asked again, the file comes, its imports do not.
        let again = file_names(&ask(
            index,
            MessageRequest::FileContainingSymbol("finpool.v1.JobSpec".into()),
            &mut sent,
        ));
        assert_eq!(again.len(), 1, "{again:?}");
        let health = file_names(&ask(
            index,
            MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
            &mut sent,
        ));
        assert!(health[0].ends_with("health.proto"), "{health:?}");
    }

    #[test]
    fn unknowns_are_not_found_answers() {
        let reflection = Reflection::new().unwrap();
        let index = &reflection.index;
        let mut sent = HashSet::new();
        for request in [
            MessageRequest::FileContainingSymbol("no.such.Symbol".into()),
            MessageRequest::FileByFilename("no/such.proto".into()),
            MessageRequest::AllExtensionNumbersOfType("no.such.Type".into()),
            MessageRequest::FileContainingExtension(v1::ExtensionRequest {
                containing_type: "finpool.v1.JobSpec".into(),
                extension_number: 1000,
            }),
        ] {
            let answer = ask(index, request.clone(), &mut sent);
            assert!(not_found(&answer), "{request:?}: {answer:?}");
        }
        let answer = ask(
            index,
            MessageRequest::AllExtensionNumbersOfType("finpool.v1.JobSpec".into()),
            &mut sent,
        );
        assert!(
            matches!(answer, MessageResponse::AllExtensionNumbersResponse(ref r) if r.base_type_name == "finpool.v1.JobSpec"),
            "{answer:?}"
        );
    }
}
