#!/usr/bin/env bash
# Usage: bench/corpus.sh DIR
#
# Fills DIR with the third-party sources the build benchmark compiles:
#   DIR/lua/      Lua 5.4 (C)
#   DIR/zstd/     zstd library (C)
#   DIR/rocksdb/  RocksDB (C++17), plus rocksdb/lib_sources.txt: its library sources, one a line
#
# Nothing is vendored in this repository: the sources are taken from crates on crates.io that
# bundle them, downloaded with `cargo fetch` into the cargo registry cache. The crate versions
# are pinned so that every machine compiles the same code. Running it again is a no-op once
# DIR/.corpus-done records the same versions.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi

# crate name, pinned version, directory inside the crate, name in DIR
readonly lua_crate=lua-src lua_version=551.1.0 lua_subdir=lua-5.4.9
readonly zstd_crate=zstd-sys zstd_version=2.1.2+zstd.1.5.7 zstd_subdir=zstd/lib
readonly rocksdb_crate=librocksdb-sys rocksdb_version=6.20.3 rocksdb_subdir=rocksdb
readonly stamp_text="$lua_crate $lua_version; $zstd_crate $zstd_version; $rocksdb_crate $rocksdb_version"

mkdir -p "$1"
dest=$(cd "$1" && pwd)
stamp=$dest/.corpus-done
if [[ -f $stamp && $(<"$stamp") == "$stamp_text" ]]; then
  exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hpcc-corpus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A throwaway package that depends on the three crates; `cargo fetch` downloads and unpacks them.
mkdir -p "$tmp/fetch/src"
printf 'fn main() {}\n' >"$tmp/fetch/src/main.rs"
cat >"$tmp/fetch/Cargo.toml" <<EOF
[package]
name = "hpcc-bench-corpus"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$lua_crate = "=$lua_version"
$zstd_crate = "=$zstd_version"
$rocksdb_crate = "=$rocksdb_version"
EOF
echo "corpus: fetching $stamp_text" >&2
(cd "$tmp/fetch" && cargo fetch --quiet)

# The unpacked crate lives in one of the registry source directories (one per registry index).
registry_src=${CARGO_HOME:-$HOME/.cargo}/registry/src
crate_dir() { # crate version -> path of the unpacked crate
  local found
  found=$(find "$registry_src" -mindepth 2 -maxdepth 2 -type d -name "$1-$2" -print -quit)
  if [[ -z $found ]]; then
    echo "corpus: $1 $2 not found under $registry_src after cargo fetch" >&2
    exit 1
  fi
  printf '%s\n' "$found"
}

# Lay the tree out in a staging directory, then move it into place.
stage=$tmp/stage
mkdir -p "$stage"
cp -R "$(crate_dir "$lua_crate" "$lua_version")/$lua_subdir" "$stage/lua"
cp -R "$(crate_dir "$zstd_crate" "$zstd_version")/$zstd_subdir" "$stage/zstd"
rocksdb_dir=$(crate_dir "$rocksdb_crate" "$rocksdb_version")
cp -R "$rocksdb_dir/$rocksdb_subdir" "$stage/rocksdb"
# The crate lists the library's sources separated by blanks; keep one path per line.
tr -s '[:space:]' '\n' <"$rocksdb_dir/rocksdb_lib_sources.txt" | sed '/^$/d' >"$stage/rocksdb/lib_sources.txt"

rm -f "$stamp"
for part in lua zstd rocksdb; do
  rm -rf "${dest:?}/$part"
  mv "$stage/$part" "$dest/$part"
done
printf '%s\n' "$stamp_text" >"$stamp"
echo "corpus: ready in $dest" >&2
