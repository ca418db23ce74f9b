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

/// A message as proto3 JSON (the canonical mapping, with proto field
/// names), as grpcurl and the REST API show it.
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let desc = codec::pool()
        .get_message_by_name(&M::full_name())
        .expect("every finpool message is in the descriptor set");
    let dynamic = prost_reflect::DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .expect("a message re-decodes from its own encoding");
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("proto3 JSON serialisation cannot fail for a valid message")
}
