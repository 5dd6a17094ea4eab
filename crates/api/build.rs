//! Generates the Open Inference Protocol's gRPC server from proto/inference.proto (protoc: Debian's
//! protobuf-compiler, installed by scripts/system-deps.sh).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    tonic_build::configure().build_client(false).compile_protos(&["proto/inference.proto"], &["proto"])?;
    Ok(())
}
