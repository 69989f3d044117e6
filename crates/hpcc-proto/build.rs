//! Generates the message types from `proto/` with protox (a protobuf compiler in Rust) and
//! prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/hpcc/daemon/v1/daemon.proto",
        "proto/hpcc/agent/v1/agent.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
