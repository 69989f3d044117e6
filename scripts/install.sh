#!/usr/bin/env bash
# Installs hpcc and its daemon hpccd into ~/.cargo/bin and runs a cached build of examples/hello: a miss, then a
# hit, then `hpcc stats`. Needs cargo and gcc (both present on a stock developer machine).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need gcc || ! need make; then
    sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq gcc g++ make >/dev/null
fi

# A statically linked binary starts faster (no dynamic loader work), and start-up is a large
# share of a cache hit.
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo install --quiet --locked --force --path "$repo/crates/hpcc-cli" --target "$host"
# The daemon is long-running, so its start-up does not matter; it links the remote-store
# clients and is built the ordinary way.
cargo install --quiet --locked --force --path "$repo/crates/hpcc-daemon"
bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$bin:$PATH"
echo "installed: $(command -v hpcc) ($(hpcc --version))"

# The demo uses its own cache directory so that it always starts empty.
demo_cache=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$demo_cache" "$work"' EXIT
export HPCC_CACHE_DIR=$demo_cache
# The first compile starts the daemon in the background (daemon.autostart); the demo's cache is
# temporary, so its daemon is stopped at the end.
trap 'hpcc stop >/dev/null 2>&1 || true; rm -rf "$demo_cache" "$work"' EXIT
cp -r "$repo/examples/hello/." "$work/"
cd "$work"
echo
echo "== first build (cache misses)"
make --no-print-directory CC="hpcc gcc"
./hello
echo
echo "== clean rebuild (cache hits)"
make --no-print-directory clean >/dev/null
make --no-print-directory CC="hpcc gcc"
./hello
echo
hpcc stats
echo
hpcc status || true
