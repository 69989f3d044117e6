//! Firecracker (next).
