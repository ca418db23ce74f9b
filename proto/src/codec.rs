//! A prost codec that refuses requests carrying fields this server does not
//! know. Protobuf normally drops unknown fields silently, which would let a
//! client believe a setting it sent (say, a field from a newer API) was
//! honoured. Requests are checked; responses stay lenient so an older
//! client still reads a newer server.

use std::marker::PhantomData;
use std::sync::OnceLock;

use bytes::Buf;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

pub(crate) fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set embedded at build time decodes")
    })
}

/// The codec used by every generated finpool client and server.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes `U`; when `U` is a request message, first checks it for unknown fields.
#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Name + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        if U::NAME.ends_with("Request") {
            check_no_unknown_fields(&U::full_name(), &bytes)?;
        }
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed {}: {e}", U::NAME)))
    }
}

/// Fails with INVALID_ARGUMENT naming the first unknown field found, by its
/// path and wire number, anywhere in the message tree.
pub fn check_no_unknown_fields(full_name: &str, bytes: &[u8]) -> Result<(), Status> {
    let Some(desc) = pool().get_message_by_name(full_name) else {
        return Ok(());
    };
    let message = DynamicMessage::decode(desc, bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed {full_name}: {e}")))?;
    match first_unknown_field(&message, "") {
        Some(path) => Err(Status::invalid_argument(format!(
            "{path}: unknown field (not part of {full_name})"
        ))),
        None => Ok(()),
    }
}

fn first_unknown_field(message: &DynamicMessage, prefix: &str) -> Option<String> {
    if let Some(field) = message.unknown_fields().next() {
        return Some(format!("{prefix}#{}", field.number()));
    }
    for (field, value) in message.fields() {
        let path = format!("{prefix}{}.", field.name());
        let found = match value {
            Value::Message(m) => first_unknown_field(m, &path),
            Value::List(items) => items.iter().find_map(|v| match v {
                Value::Message(m) => first_unknown_field(m, &path),
                _ => None,
            }),
            Value::Map(entries) => entries.values().find_map(|v| match v {
                Value::Message(m) => first_unknown_field(m, &path),
                _ => None,
            }),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{GetJobRequest, SubmitJobRequest};

    #[test]
    fn known_fields_pass() {
        let req = GetJobRequest { id: "abc".into() };
        check_no_unknown_fields(&GetJobRequest::full_name(), &req.encode_to_vec()).unwrap();
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let mut bytes = GetJobRequest { id: "abc".into() }.encode_to_vec();
        // field 9, wire type varint, value 1
        bytes.extend_from_slice(&[9 << 3, 1]);
        let err = check_no_unknown_fields(&GetJobRequest::full_name(), &bytes).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with("#9: unknown field"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn unknown_nested_field_is_named_by_path() {
        // SubmitJobRequest.spec (field 1, length-delimited) holding an unknown field 99.
        let inner = [0x98, 0x06, 0x01]; // tag (99 << 3 | 0) as varint, then value 1
        let mut bytes = vec![(1 << 3) | 2, inner.len() as u8];
        bytes.extend_from_slice(&inner);
        let err = check_no_unknown_fields(&SubmitJobRequest::full_name(), &bytes).unwrap_err();
        assert!(
            err.message().starts_with("spec.#99: unknown field"),
            "{}",
            err.message()
        );
    }
}
