//! Generates the message types from `proto/` with protox (a protobuf compiler in Rust) and
//! prost-build, and the tonic services of the scheduler and worker protocols when the
//! `client` or `server` feature asks for them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/hpcc/daemon/v1/daemon.proto",
        "proto/hpcc/agent/v1/agent.proto",
        "proto/hpcc/scheduler/v1/scheduler.proto",
        "proto/hpcc/worker/v1/worker.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let client = std::env::var_os("CARGO_FEATURE_CLIENT").is_some();
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    tonic_prost_build::configure()
        .build_client(client)
        .build_server(server)
        .build_transport(client || server)
        .compile_fds(descriptors)?;
    Ok(())
}
