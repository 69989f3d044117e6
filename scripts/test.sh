#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests use (clang,
# ccache, cmake, redis-server, memcached, debootstrap, docker-registry, openssl, systemd's
# systemd-analyze, prometheus, QEMU, e2fsprogs;
# gcc/g++/make if missing; moto's S3 server from PyPI; vhost-device-vsock from crates.io),
# then
# formatting, lints, unit and integration tests. The tests start and stop the servers
# themselves, on loopback.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

packages=()
for tool in gcc:gcc g++:g++ make:make clang:clang ccache:ccache cmake:cmake \
    redis-server:redis-server redis-cli:redis-tools memcached:memcached \
    debootstrap:debootstrap docker-registry:docker-registry openssl:openssl \
    systemd-analyze:systemd prometheus:prometheus; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || packages+=("${tool#*:}")
done
# Installed without their recommendations: QEMU's would be a desktop's worth of GUI libraries.
bare_packages=()
for tool in qemu-system-x86_64:qemu-system-x86 /sbin/mkfs.ext4:e2fsprogs /sbin/debugfs:e2fsprogs; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || bare_packages+=("${tool#*:}")
done
if ((${#packages[@]} + ${#bare_packages[@]})); then
    sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
    echo "installing: ${packages[*]} ${bare_packages[*]}"
    $sudo_cmd apt-get update -qq
    # policy-rc.d 101: packages (redis, memcached, docker-registry, prometheus) must not start their own
    # services; the tests start every server they need on loopback and stop it.
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod +x /usr/sbin/policy-rc.d
    if ((${#packages[@]})); then
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${packages[@]}" >/dev/null
    fi
    if ((${#bare_packages[@]})); then
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
            "${bare_packages[@]}" >/dev/null
    fi
    $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi

if ! python3 -c "import moto.server, flask" >/dev/null 2>&1; then
    echo "installing: moto[server] (pip)"
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi

# QEMU's vsock device backend for the microVM tests (the same hybrid-vsock protocol as
# Firecracker's). Built once per machine, into ~/.cargo/bin.
if ! command -v vhost-device-vsock >/dev/null 2>&1 \
    && [[ ! -x "$HOME/.cargo/bin/vhost-device-vsock" ]]; then
    echo "installing: vhost-device-vsock (cargo install)"
    cargo install --locked --quiet vhost-device-vsock
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Two stages, both always run: guests under software emulation keep both cores of a small
# machine busy, so the tests that boot them (named guest_vm::*) run after the others, not beside them.
status=0
echo "== cargo test (all but the microVM tests)"
cargo test --workspace --locked --no-fail-fast -- --skip guest_vm:: || status=$?
echo "== cargo test (microVM tests)"
cargo test --locked --no-fail-fast -p hpcc-runtime -p hpcc-e2e --test it -- guest_vm:: || status=$?
exit "$status"
