//! Compiles `proto/` with protox (a protobuf compiler in Rust, so no `protoc` is needed) and
//! generates the tonic clients and servers. The encoded descriptor set feeds gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<PathBuf> = [
        "session",
        "contacts",
        "assignment",
        "events",
        "ghlsync",
        "operations",
        "tokens",
    ]
    .iter()
    .map(|service| root.join(format!("whatsnap/{service}/v1/{service}.proto")))
    .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
