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
