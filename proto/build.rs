//! Compiles finpool.v1 with protox (pure Rust), so a build needs no system
//! `protoc`. The file descriptor set is kept for gRPC reflection and for the
//! strict request decoder that refuses unknown fields.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "finpool/v1/jobs.proto",
        "finpool/v1/pool.proto",
        "finpool/v1/billing.proto",
        "finpool/v1/reports.proto",
        "finpool/v1/audit.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("finpool_descriptor.bin"), fds.encode_to_vec())?;

    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
