#!/usr/bin/env bash
# Usage: bench/latency.sh [TOOL...]       (tools: ccache sccache hpcc hpcc-daemon
#                                          hpcc-daemon-metrics; default all)
#
# Per-hit latency: one compile served from a warm cache, N times in a row, for each tool; prints
# p50, p90, p99 and max in milliseconds, and p50 against ccache's. Each invocation is timed
# around the process (fork, exec, lookup, writing the object, exit) by a small Python loop, the
# same for every tool, so the figures compare wrappers, not the timer.
#
# Environment:
#   N          hits per tool and file                  (default 200)
#   HPCC       hpcc binary (default: target/release/hpcc of this repository)
#   CORPUS     where bench/corpus.sh lays out the sources  (default ~/.cache/hpcc-bench/corpus)
#   OUT        also write the report to this file
#
# hpcc-daemon-metrics is hpcc-daemon with its Prometheus endpoint on (daemon.metrics_listen)
# and scraped every second while the hits are timed, as a Prometheus server would.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
N=${N:-200}
HPCC=${HPCC:-$repo/target/release/hpcc}
CORPUS=${CORPUS:-$HOME/.cache/hpcc-bench/corpus}
OUT=${OUT:-}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "latency: N must be a positive integer" >&2; exit 2; }
tools=("$@")
((${#tools[@]} > 0)) || tools=(ccache sccache hpcc hpcc-daemon hpcc-daemon-metrics)
metrics_port=${HPCC_BENCH_METRICS_PORT:-9476}
scraper=

"$here/corpus.sh" "$CORPUS"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/hpcc-latency.XXXXXX")
sccache_bin=$(command -v sccache || echo "${CARGO_HOME:-$HOME/.cargo}/bin/sccache")
port=${HPCC_BENCH_SCCACHE_PORT:-4229}
cleanup() {
  SCCACHE_SERVER_PORT=$port "$sccache_bin" --stop-server >/dev/null 2>&1 || true
  for daemon in hpcc-daemon hpcc-daemon-metrics; do
    HPCC_CACHE_DIR="$scratch/cache-$daemon" HPCC_CONFIG=/nonexistent XDG_RUNTIME_DIR="$scratch/run" \
      "$HPCC" stop >/dev/null 2>&1 || true
  done
  [[ -z $scraper ]] || kill "$scraper" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

mkdir -p "$scratch/src" -m 0700 "$scratch/run"
cp -R "$CORPUS/lua" "$CORPUS/rocksdb" "$scratch/src/"
: >"$scratch/src/.hpcc"
rocksdb_file=$(head -n 1 "$CORPUS/rocksdb/lib_sources.txt")
# name|compiler|directory|arguments: the flags bench/build.mk uses.
files=(
  "lua/lapi.c|gcc|$scratch/src/lua|-O2 -g -DLUA_USE_LINUX -c lapi.c -o $scratch/out.o"
  "rocksdb/$rocksdb_file|g++|$scratch/src/rocksdb|-O2 -g -std=c++17 -w -DROCKSDB_PLATFORM_POSIX -DROCKSDB_LIB_IO_POSIX -DOS_LINUX -DNDEBUG -DROCKSDB_SUPPORT_THREAD_LOCAL -Iinclude -I. -c $rocksdb_file -o $scratch/out.o"
)

timer() { # dir, then the command: runs it N times, prints one latency in ms per line
  python3 - "$N" "$@" <<'EOF'
import subprocess, sys, time
n, cwd, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
for _ in range(n):
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit("command failed: " + " ".join(argv))
    print(f"{elapsed * 1000:.3f}")
EOF
}

percentiles() { # reads one number a line; prints "p50 p90 p99 max"
  sort -g | awk '{ v[NR] = $1 } END {
    i50 = int(NR * 0.50 + 0.5); i90 = int(NR * 0.90 + 0.5); i99 = int(NR * 0.99 + 0.5)
    if (i50 < 1) i50 = 1; if (i90 < 1) i90 = 1; if (i99 < 1) i99 = 1
    printf "%.2f %.2f %.2f %.2f\n", v[i50], v[i90], v[i99], v[NR] }'
}

declare -A p50
report=()
report+=("# Per-hit latency")
report+=("")
report+=("- date: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -sr)")
report+=("- $N hits per tool and file, each timed around the whole process; milliseconds")
report+=("")
report+=("| file | tool | p50 | p90 | p99 | max | p50 / ccache p50 |")
report+=("|---|---|---|---|---|---|---|")
# The floor: the same timer around /bin/true, i.e. what starting any process costs here.
read -r f50 f90 f99 fmax < <(bash -c "$(declare -f timer); N=$N; timer \"\$@\"" _ "$scratch" true |
  percentiles)
report+=("| (any) | floor: /bin/true | $f50 | $f90 | $f99 | $fmax | - |")
for entry in "${files[@]}"; do
  IFS='|' read -r name compiler dir args <<<"$entry"
  read -r -a argv <<<"$args"
  for tool in "${tools[@]}"; do
    cache=$scratch/cache-$tool
    rm -rf "$cache"
    env_vars=()
    case $tool in
      ccache) env_vars=(CCACHE_DIR="$cache" CCACHE_BASEDIR="$scratch" CCACHE_NOHASHDIR=1); wrapper=(ccache) ;;
      sccache)
        env_vars=(SCCACHE_DIR="$cache" SCCACHE_SERVER_PORT="$port" SCCACHE_IDLE_TIMEOUT=0)
        env "${env_vars[@]}" "$sccache_bin" --start-server >/dev/null 2>&1 || continue
        wrapper=("$sccache_bin")
        ;;
      hpcc) env_vars=(HPCC_CACHE_DIR="$cache" HPCC_CONFIG=/nonexistent HPCC_DAEMON_ENABLED=false); wrapper=("$HPCC") ;;
      hpcc-daemon)
        env_vars=(HPCC_CACHE_DIR="$cache" HPCC_CONFIG=/nonexistent HPCC_DAEMON_ENABLED=true
          HPCC_DAEMON_AUTOSTART=false XDG_RUNTIME_DIR="$scratch/run")
        env "${env_vars[@]}" "$HPCC" start >/dev/null
        wrapper=("$HPCC")
        ;;
      hpcc-daemon-metrics)
        env_vars=(HPCC_CACHE_DIR="$cache" HPCC_CONFIG=/nonexistent HPCC_DAEMON_ENABLED=true
          HPCC_DAEMON_AUTOSTART=false XDG_RUNTIME_DIR="$scratch/run"
          HPCC_DAEMON_METRICS_LISTEN="127.0.0.1:$metrics_port")
        env "${env_vars[@]}" "$HPCC" start >/dev/null
        wrapper=("$HPCC")
        (while :; do curl -sf "http://127.0.0.1:$metrics_port/metrics" >/dev/null || true; sleep 1; done) &
        scraper=$!
        ;;
      *) echo "latency: unknown tool $tool" >&2; exit 2 ;;
    esac
    # Warm the cache (a miss), then time hits.
    (cd "$dir" && env "${env_vars[@]}" "${wrapper[@]}" "$compiler" "${argv[@]}") >/dev/null 2>&1
    (cd "$dir" && env "${env_vars[@]}" "${wrapper[@]}" "$compiler" "${argv[@]}") >/dev/null 2>&1
    read -r q50 q90 q99 qmax < <(env "${env_vars[@]}" bash -c "$(declare -f timer); N=$N; timer \"\$@\"" _ \
      "$dir" "${wrapper[@]}" "$compiler" "${argv[@]}" | percentiles)
    p50[$name.$tool]=$q50
    ratio=$(awk -v a="$q50" -v b="${p50[$name.ccache]:-}" 'BEGIN { if (b == "" || b == 0) print "-"; else printf "%.2f\n", a / b }')
    report+=("| $name | $tool | $q50 | $q90 | $q99 | $qmax | $ratio |")
    echo "  $name $tool: p50 $q50 ms, p99 $q99 ms" >&2
    case $tool in
      sccache) env "${env_vars[@]}" "$sccache_bin" --stop-server >/dev/null 2>&1 || true ;;
      hpcc-daemon) env "${env_vars[@]}" "$HPCC" stop >/dev/null 2>&1 || true ;;
      hpcc-daemon-metrics)
        curl -sf "http://127.0.0.1:$metrics_port/metrics" | grep -q '^hpcc_daemon_hits_total' ||
          { echo "latency: the metrics endpoint did not count the hits" >&2; exit 1; }
        kill "$scraper" 2>/dev/null || true; scraper=
        env "${env_vars[@]}" "$HPCC" stop >/dev/null 2>&1 || true
        ;;
    esac
  done
done
printf '%s\n' "${report[@]}"
if [[ -n $OUT ]]; then printf '%s\n' "${report[@]}" >"$OUT"; fi
