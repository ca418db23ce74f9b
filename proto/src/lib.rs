//! The `finpool.v1` gRPC API: messages, clients and servers generated from
//! `proto/finpool/v1/*.proto`.

pub mod codec;

/// Generated `finpool.v1` types, clients and servers.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("finpool.v1");
}

/// The encoded `FileDescriptorSet` of every finpool proto file (with imports),
/// served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/finpool_descriptor.bin"));

/// How finpool writes messages as JSON, the REST API and the CLI alike:
/// the proto3 JSON mapping with proto field names, every field present
/// (defaults too), and 64-bit integers as JSON numbers (not the mapping's
/// strings: every finpool 64-bit value, fen and milliseconds, is far below
/// 2^53, so JavaScript and `jq` read them exactly).
pub fn json_options() -> prost_reflect::SerializeOptions {
    prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false)
}

/// A message as JSON, exactly as the REST API returns it (see
/// [`json_options`]).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let desc = codec::pool()
        .get_message_by_name(&M::full_name())
        .expect("every finpool message is in the descriptor set");
    let dynamic = prost_reflect::DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .expect("a message re-decodes from its own encoding");
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &json_options())
        .expect("proto3 JSON serialisation cannot fail for a valid message")
}
