#!/usr/bin/env bash
# Usage: bench/remote.sh
#
# Remote-hit builds: how long a build takes on a "second machine" whose local cache is empty
# but whose remote tiers are warm, against the local warm build and a plain cold build, all in
# one run on this machine. Redis (Debian's redis-server) and an S3 server (moto, from PyPI)
# run on loopback. Phases, each a `make -jJOBS -f bench/build.mk` in one checkout:
#
#   plain-cold   plain gcc/g++, no cache
#   cold-local   hpcc without remote tiers, empty cache (the control for the next two)
#   cold-redis   hpcc with tiers [redis db 1], empty everything
#   fill         hpcc with tiers [redis, s3], empty everything: misses, uploads to both
#   local-warm   the same local cache, full                                   (REPEAT builds)
#   warm-local   a full local cache without remote tiers (the control)         (REPEAT builds)
#   redis-hit    empty local cache, tiers [redis, s3]: served by Redis       (REPEAT builds)
#   s3-hit       empty local cache, tiers [s3]: served by S3                 (REPEAT builds)
#
# Every hpcc build goes through the daemon (hpccd), which does the remote lookups; each
# remote-hit build starts a fresh daemon on a fresh cache directory. Per-object fetch latency
# (p50/p99, bucket upper bounds) comes from the daemon's per-tier histogram (`hpcc stats`).
#
# Environment: SETS (default "lua zstd"), ROCKSDB_N (40), JOBS (2), REPEAT (3), CORPUS, OUT,
# HPCC_BIN_DIR (default target/release, built if missing).
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
SETS=${SETS:-lua zstd}
ROCKSDB_N=${ROCKSDB_N:-40}
JOBS=${JOBS:-2}
REPEAT=${REPEAT:-3}
OUT=${OUT:-}
CORPUS=${CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/hpcc-bench/corpus}
say() { printf '%s\n' "$*" >&2; }
die() {
  say "remote.sh: $*"
  exit 2
}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, not '$REPEAT'"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive integer, not '$JOBS'"
command -v redis-server >/dev/null || die "redis-server not installed (apt-get install redis-server)"
python3 -c "import moto.server, flask" 2>/dev/null || die "moto not installed (pip install 'moto[server]')"

bin_dir=${HPCC_BIN_DIR:-}
if [[ -z $bin_dir ]]; then
  target=${CARGO_TARGET_DIR:-$repo/target}
  bin_dir=$target/release
  if [[ ! -x $bin_dir/hpcc || ! -x $bin_dir/hpccd ]]; then
    say "building: cargo build --release -p hpcc-cli -p hpcc-daemon"
    (cd "$repo" && cargo build --release -p hpcc-cli -p hpcc-daemon) >&2
  fi
fi
hpcc=$bin_dir/hpcc
"$here/corpus.sh" "$CORPUS" >&2

scratch=$(mktemp -d "${TMPDIR:-/tmp}/hpcc-remote.XXXXXX")
pids=()
cleanup() {
  local entry
  # Daemons still running (after a failure): their pids are in their lock files.
  for entry in "$scratch"/run/hpcc/*.lock; do
    [[ -f $entry ]] && kill "$(cat "$entry")" 2>/dev/null || true
  done
  for entry in "${pids[@]}"; do kill "$entry" 2>/dev/null || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  local port=$1 tries=0
  until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do
    tries=$((tries + 1))
    ((tries < 300)) || die "nothing listens on port $port"
    sleep 0.1
  done
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$scratch" \
  >/dev/null 2>&1 &
pids+=($!)
s3_port=$(free_port)
python3 -m moto.server -H 127.0.0.1 -p "$s3_port" >/dev/null 2>&1 &
pids+=($!)
wait_port "$redis_port"
wait_port "$s3_port"
python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$s3_port/hpcc', method='PUT'))"

redis_tier="{type = \"redis\", name = \"redis\", endpoint = \"redis://127.0.0.1:$redis_port\"}"
s3_tier="{type = \"s3\", name = \"s3\", bucket = \"hpcc\", endpoint = \"http://127.0.0.1:$s3_port\"}"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

checkout=$scratch/a
mkdir -p "$checkout" "$scratch/run"
chmod 0700 "$scratch/run"
read -r -a sets <<<"$SETS"
for set in "${sets[@]}"; do cp -R "$CORPUS/$set" "$checkout/"; done
: >"$checkout/.hpcc"
expected=$(make -s -f "$here/build.mk" SRC="$checkout" SETS="$SETS" ROCKSDB_N="$ROCKSDB_N" count)
say "remote benchmark: $expected files, make -j$JOBS, REPEAT=$REPEAT"

elapsed=
log=$scratch/make.log
# build CC CXX [VAR=VALUE...]: one timed make of the checkout, objects deleted first.
build() {
  local cc=$1 cxx=$2 start end found
  shift 2
  rm -rf "$checkout/obj"
  start=$EPOCHREALTIME
  (cd "$checkout" && env "$@" make -s -f "$here/build.mk" SRC=. OUT=obj SETS="$SETS" \
    ROCKSDB_N="$ROCKSDB_N" CC="$cc" CXX="$cxx" -j"$JOBS") >"$log" 2>&1 ||
    die "build failed: $(tail -5 "$log")"
  end=$EPOCHREALTIME
  elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
  found=$(find "$checkout/obj" -type f -name '*.o' | wc -l)
  ((found == expected)) || die "$found objects built, $expected expected"
}

# hpcc_env CACHE TIERS: the environment of an hpcc build through its own daemon.
hpcc_env() {
  printf '%s\n' "HPCC_CACHE_DIR=$1" "HPCC_CONFIG=$scratch/none.toml" "HPCC_DAEMON_ENABLED=true" \
    "HPCC_DAEMON_AUTOSTART=false" "XDG_RUNTIME_DIR=$scratch/run" "HPCC_REMOTE=$2"
}
with_daemon() { # with_daemon CACHE TIERS COMMAND...: runs COMMAND in that environment
  local cache=$1 tiers=$2
  shift 2
  local -a vars
  mapfile -t vars < <(hpcc_env "$cache" "$tiers")
  env "${vars[@]}" "$@"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# stat_of CACHE TIERS JQ-LIKE-PATH: a number from `hpcc stats --json` (python does the JSON).
stat_of() {
  with_daemon "$1" "$2" "$hpcc" stats --json |
    python3 -c "import json, sys; d = json.load(sys.stdin); p = sys.argv[1].split('/')
for k in p: d = d.get(k, {}) if isinstance(d, dict) else {}
print(d if not isinstance(d, dict) else 0)" "$3"
}

declare -A result
say "== plain cold"
build gcc g++
result[plain_cold]=$elapsed

# cold_with NAME TIERS: one cold hpcc build through a new daemon with TIERS; sets $elapsed.
cold_with() {
  local cache=$scratch/cache-$1 cold_vars
  with_daemon "$cache" "$2" "$hpcc" start >/dev/null
  mapfile -t cold_vars < <(hpcc_env "$cache" "$2")
  build "$hpcc gcc" "$hpcc g++" "${cold_vars[@]}"
  with_daemon "$cache" "$2" "$hpcc" stop >/dev/null
}
say "== cold, no remote tiers"
cold_with local "[]"
result[cold_local]=$elapsed
say "== warm, no remote tiers"
with_daemon "$scratch/cache-local" "[]" "$hpcc" start >/dev/null
mapfile -t vars < <(hpcc_env "$scratch/cache-local" "[]")
warm=()
for _ in $(seq "$REPEAT"); do
  build "$hpcc gcc" "$hpcc g++" "${vars[@]}"
  warm+=("$elapsed")
done
with_daemon "$scratch/cache-local" "[]" "$hpcc" stop >/dev/null
result[warm_local]=$(printf '%s\n' "${warm[@]}" | median)
say "== cold, Redis only"
cold_with redis-only "[{type = \"redis\", name = \"redis1\", db = 1, endpoint = \"redis://127.0.0.1:$redis_port\"}]"
result[cold_redis]=$elapsed

both="[$redis_tier, $s3_tier]"
fill_cache=$scratch/cache-fill
say "== fill (cold hpcc, uploads to Redis and S3)"
with_daemon "$fill_cache" "$both" "$hpcc" start >/dev/null
mapfile -t vars < <(hpcc_env "$fill_cache" "$both")
build "$hpcc gcc" "$hpcc g++" "${vars[@]}"
result[fill]=$elapsed
with_daemon "$fill_cache" "$both" "$hpcc" stop >/dev/null # writes the upload queue out

say "== local warm"
with_daemon "$fill_cache" "$both" "$hpcc" start >/dev/null
warm=()
for _ in $(seq "$REPEAT"); do
  build "$hpcc gcc" "$hpcc g++" "${vars[@]}"
  warm+=("$elapsed")
done
with_daemon "$fill_cache" "$both" "$hpcc" stop >/dev/null
result[local_warm]=$(printf '%s\n' "${warm[@]}" | median)

# remote_hits NAME TIERS TIER: REPEAT builds, each from an empty local cache and a new daemon.
remote_hits() {
  local name=$1 tiers=$2 tier=$3 times=() round cache hits p50 p99 round_vars
  for round in $(seq "$REPEAT"); do
    cache=$scratch/cache-$name-$round
    with_daemon "$cache" "$tiers" "$hpcc" start >/dev/null
    mapfile -t round_vars < <(hpcc_env "$cache" "$tiers")
    build "$hpcc gcc" "$hpcc g++" "${round_vars[@]}"
    times+=("$elapsed")
    with_daemon "$cache" "$tiers" "$hpcc" stop >/dev/null
  done
  hits=$(stat_of "$cache" "$tiers" "hits/direct")
  p50=$(stat_of "$cache" "$tiers" "remote/$tier/get_p50_us")
  p99=$(stat_of "$cache" "$tiers" "remote/$tier/get_p99_us")
  result[${name}]=$(printf '%s\n' "${times[@]}" | median)
  result[${name}_hits]=$hits
  result[${name}_p50]=$p50
  result[${name}_p99]=$p99
  result[${name}_tier_hits]=$(stat_of "$cache" "$tiers" "remote/$tier/hits")
}
say "== Redis hits (empty local cache)"
remote_hits redis "$both" redis
say "== S3 hits (empty local cache)"
remote_hits s3 "[$s3_tier]" s3

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
report() {
  echo "### Remote hits: SETS='$SETS'$([[ " $SETS " == *" rocksdb "* ]] && echo " ROCKSDB_N=$ROCKSDB_N"), $expected files, make -j$JOBS"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "| build | seconds | / local warm | / plain cold | hits | tier hits | fetch p50 | fetch p99 |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| plain cold | ${result[plain_cold]} | | 1.00 | | | | |"
  echo "| hpcc cold, no remote tiers | ${result[cold_local]} | | $(ratio "${result[cold_local]}" "${result[plain_cold]}") | 0 | | | |"
  echo "| hpcc cold, uploading to Redis | ${result[cold_redis]} | | $(ratio "${result[cold_redis]}" "${result[plain_cold]}") | 0 | | | |"
  echo "| hpcc cold, uploading to Redis + S3 | ${result[fill]} | | $(ratio "${result[fill]}" "${result[plain_cold]}") | 0 | | | |"
  echo "| hpcc warm, no remote tiers (median of $REPEAT) | ${result[warm_local]} | $(ratio "${result[warm_local]}" "${result[local_warm]}") | $(ratio "${result[warm_local]}" "${result[plain_cold]}") | $expected | | | |"
  echo "| hpcc local warm with Redis + S3 tiers (median of $REPEAT) | ${result[local_warm]} | 1.00 | $(ratio "${result[local_warm]}" "${result[plain_cold]}") | $expected | | | |"
  local name label
  for name in redis s3; do
    label="remote hits from $([[ $name == redis ]] && echo Redis || echo S3), empty local cache (median of $REPEAT)"
    echo "| $label | ${result[$name]} | $(ratio "${result[$name]}" "${result[local_warm]}") | $(ratio "${result[$name]}" "${result[plain_cold]}") | ${result[${name}_hits]} | ${result[${name}_tier_hits]} | <= ${result[${name}_p50]} us | <= ${result[${name}_p99]} us |"
  done
  echo
  echo "Hits: direct hits of the last build; tier hits: objects (manifests and results) that tier served in it. Fetch latency: the daemon's per-tier read histogram, bucket upper bounds."
}
report
if [[ -n $OUT ]]; then report >"$OUT"; fi
