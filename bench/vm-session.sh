#!/usr/bin/env bash
# Usage: bench/vm-session.sh
#
# The qemu runtime's session costs, under TCG (software emulation; no KVM here):
#   - cold boot (until the agent answers) against restore from a snapshot, p50/p99;
#   - a warm guest's per-job time against a sandbox session's for the same job, p50/p99
#     (`true`, and gcc -O2 -g -c on a small file);
#   - RSS of an idle guest's QEMU (booted after one compile, and restored) -> guests per GiB.
# Runs crates/hpcc-runtime/examples/vm_session.rs with the VM tests' image and kernel (built
# once per target directory: needs root, debootstrap, qemu-system-x86_64). Prints Markdown.
#
# Environment: BOOTS (10: boots and restores each), JOBS (30 per job kind and runtime),
# MEMORY_MIB (1024), VCPUS (2), OUT (also write the report there), CARGO_TARGET_DIR.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
report=$(cargo run -q -p hpcc-runtime --example vm_session)
printf '%s\n' "$report"
if [[ -n ${OUT:-} ]]; then
  printf '%s\n' "$report" >"$OUT"
fi
