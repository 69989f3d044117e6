//! Repository tasks. `cargo xtask tidy` runs the style checks (they also run under `cargo test`).
fn main() {}
