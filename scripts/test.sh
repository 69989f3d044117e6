#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests use (clang,
# ccache, cmake, redis-server, memcached, debootstrap, docker-registry; gcc/g++/make if
# missing; moto's S3 server from PyPI), then
# formatting, lints, unit and integration tests. The tests start and stop the servers
# themselves, on loopback.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

packages=()
for tool in gcc:gcc g++:g++ make:make clang:clang ccache:ccache cmake:cmake \
    redis-server:redis-server redis-cli:redis-tools memcached:memcached \
    debootstrap:debootstrap docker-registry:docker-registry; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || packages+=("${tool#*:}")
done
if ((${#packages[@]})); then
    sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
    echo "installing: ${packages[*]}"
    $sudo_cmd apt-get update -qq
    # policy-rc.d 101: packages (redis, memcached, docker-registry) must not start their own
    # services; the tests start every server they need on loopback and stop it.
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${packages[@]}" >/dev/null
    $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi

if ! python3 -c "import moto.server, flask" >/dev/null 2>&1; then
    echo "installing: moto[server] (pip)"
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
