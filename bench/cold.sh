#!/usr/bin/env bash
# Usage: bench/cold.sh [TOOL...]     (tools: hpcc hpcc-daemon ccache; default hpcc hpcc-daemon)
#
# The miss overhead, measured against drift: cold builds of plain gcc and of each tool, one
# after the other in rounds (plain, tool1, tool2, plain, tool1, tool2, ...), each tool from an
# empty cache; reports every build, the median per tool, and each tool's median ratio of its
# build to the plain build of the same round. A slow spell of the machine then affects a round,
# not one tool.
#
# Environment: SETS (default rocksdb), ROCKSDB_N (40), JOBS (2), ROUNDS (3), HPCC
# (default target/release/hpcc), CORPUS (~/.cache/hpcc-bench/corpus), OUT (also write here).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
SETS=${SETS:-rocksdb}
ROCKSDB_N=${ROCKSDB_N:-40}
JOBS=${JOBS:-2}
ROUNDS=${ROUNDS:-3}
HPCC=${HPCC:-$repo/target/release/hpcc}
CORPUS=${CORPUS:-$HOME/.cache/hpcc-bench/corpus}
OUT=${OUT:-}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "cold: ROUNDS must be a positive integer" >&2; exit 2; }
tools=("$@")
((${#tools[@]} > 0)) || tools=(hpcc hpcc-daemon)

"$here/corpus.sh" "$CORPUS"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/hpcc-cold.XXXXXX")
daemon_env=(HPCC_CACHE_DIR="$scratch/cache" HPCC_CONFIG="$scratch/none.toml"
  HPCC_DAEMON_ENABLED=true HPCC_DAEMON_AUTOSTART=false XDG_RUNTIME_DIR="$scratch/run")
cleanup() {
  env "${daemon_env[@]}" "$HPCC" stop >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT
mkdir -p -m 0700 "$scratch/run" "$scratch/src"
read -r -a sets <<<"$SETS"
for set in "${sets[@]}"; do cp -R "$CORPUS/$set" "$scratch/src/"; done
: >"$scratch/src/.hpcc"

# build TOOL: one cold build in the checkout; prints its wall seconds.
build() {
  local tool=$1 cc=gcc cxx=g++ start end
  local env_vars=()
  rm -rf "$scratch/src/obj" "$scratch/cache"
  case $tool in
    plain) ;;
    ccache) env_vars=(CCACHE_DIR="$scratch/cache"); cc="ccache gcc" cxx="ccache g++" ;;
    hpcc)
      env_vars=(HPCC_CACHE_DIR="$scratch/cache" HPCC_CONFIG="$scratch/none.toml"
        HPCC_DAEMON_ENABLED=false)
      cc="$HPCC gcc" cxx="$HPCC g++"
      ;;
    hpcc-daemon)
      env_vars=("${daemon_env[@]}")
      env "${env_vars[@]}" "$HPCC" stop >/dev/null 2>&1 || true
      env "${env_vars[@]}" "$HPCC" start >/dev/null
      cc="$HPCC gcc" cxx="$HPCC g++"
      ;;
    *) echo "cold: unknown tool $tool" >&2; exit 2 ;;
  esac
  start=$EPOCHREALTIME
  (cd "$scratch/src" && env "${env_vars[@]}" make -s -f "$here/build.mk" SRC=. OUT=obj \
    SETS="$SETS" ROCKSDB_N="$ROCKSDB_N" CC="$cc" CXX="$cxx" -j"$JOBS") >"$scratch/make.log" 2>&1 ||
    { echo "cold: $tool build failed:" >&2; tail -n 5 "$scratch/make.log" >&2; exit 1; }
  end=$EPOCHREALTIME
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
}

declare -A times ratios
for ((round = 1; round <= ROUNDS; round++)); do
  plain=$(build plain)
  times[plain]+="$plain "
  echo "round $round: plain ${plain}s" >&2
  for tool in "${tools[@]}"; do
    took=$(build "$tool")
    times[$tool]+="$took "
    ratios[$tool]+="$(awk -v a="$took" -v b="$plain" 'BEGIN { printf "%.4f", a / b }') "
    echo "round $round: $tool ${took}s" >&2
  done
done

median() { printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END {
  m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'; }
report=("# Cold builds, interleaved" ""
  "- $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs; SETS='$SETS' ROCKSDB_N=$ROCKSDB_N, make -j$JOBS, $ROUNDS rounds"
  "" "| tool | builds (s) | median (s) | median of per-round ratios to plain |" "|---|---|---|---|"
  "| plain | ${times[plain]}| $(median "${times[plain]}") | 1.00 |")
for tool in "${tools[@]}"; do
  report+=("| $tool | ${times[$tool]}| $(median "${times[$tool]}") | $(median "${ratios[$tool]}") |")
done
printf '%s\n' "${report[@]}"
if [[ -n $OUT ]]; then printf '%s\n' "${report[@]}" >"$OUT"; fi
