#!/usr/bin/env bash
# Usage: bench/run.sh [TOOL...]        TOOL: plain ccache sccache hpcc (default: all four)
#
# Times `make -jJOBS -f bench/build.mk` run inside a checkout of third-party sources, once per
# compiler wrapper, in three phases:
#   cold   empty cache                                     (COLD_REPEAT builds, each emptied)
#   warm   same checkout, objects deleted, cache full                   (REPEAT builds)
#   moved  identical checkout at another absolute path, cache full      (REPEAT builds)
# plus a "floor" row: the same make with CC=true CXX=true (make plus one trivial process per
# file), the least any wrapper could take. Every moved build happens at a path not built at
# before, so it can only hit through entries made by the builds in the first checkout.
#
# Prints machine information and Markdown tables (seconds, ratios, hit/miss counts); progress
# goes to stderr. See bench/README.md.
#
# Environment:
#   SETS       sets to compile: lua zstd rocksdb               (default "lua zstd")
#   ROCKSDB_N  compile the first N RocksDB library sources     (default 40)
#   JOBS       make -j                                         (default 2)
#   REPEAT     builds per warm and moved phase; median and min reported  (default 5)
#   COLD_REPEAT  cold builds, each from an emptied cache; median and min     (default 1)
#   HPCC       hpcc binary (default: target/release/hpcc of this repository, built if missing)
#   CCACHE, SCCACHE   ccache and sccache commands          (default: found on PATH)
#   CORPUS     where bench/corpus.sh lays out the sources  (default ~/.cache/hpcc-bench/corpus)
#   OUT        also write the report to this file          (optional)
set -euo pipefail
export LC_ALL=C # '.' as decimal point for EPOCHREALTIME, awk and sort

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

SETS=${SETS:-lua zstd}
ROCKSDB_N=${ROCKSDB_N:-40}
JOBS=${JOBS:-2}
REPEAT=${REPEAT:-5}
COLD_REPEAT=${COLD_REPEAT:-1}
OUT=${OUT:-}
HPCC=${HPCC:-}
CCACHE=${CCACHE:-ccache}
SCCACHE=${SCCACHE:-sccache}
CORPUS=${CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/hpcc-bench/corpus}
# A port of our own, so that a developer's sccache server on the default port is left alone.
sccache_port=${HPCC_BENCH_SCCACHE_PORT:-4229}

say() { printf '%s\n' "$*" >&2; }
die() {
  say "run.sh: $*"
  exit 2
}

# ---- arguments -------------------------------------------------------------------------------

[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, not '$REPEAT'"
[[ $COLD_REPEAT =~ ^[1-9][0-9]*$ ]] ||
  die "COLD_REPEAT must be a positive integer, not '$COLD_REPEAT'"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive integer, not '$JOBS'"
[[ $ROCKSDB_N =~ ^[0-9]+$ ]] || die "ROCKSDB_N must be a number, not '$ROCKSDB_N'"
read -r -a sets <<<"$SETS"
((${#sets[@]} > 0)) || die "SETS is empty"
for set in "${sets[@]}"; do
  case $set in
    lua | zstd | rocksdb) ;;
    *) die "unknown set '$set' (expected lua, zstd, rocksdb)" ;;
  esac
done
tools=("$@")
((${#tools[@]} > 0)) || tools=(plain ccache sccache hpcc)
for tool in "${tools[@]}"; do
  case $tool in
    plain | ccache | sccache | hpcc | hpcc-daemon) ;;
    *) die "unknown tool '$tool' (expected plain, ccache, sccache, hpcc, hpcc-daemon)" ;;
  esac
done

# ---- tools -----------------------------------------------------------------------------------

# The absolute path of command $1 (a name on PATH or a path), or nothing.
resolve() {
  local found
  if [[ $1 == */* ]]; then
    [[ -f $1 && -x $1 ]] && printf '%s/%s\n' "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")"
  else
    found=$(command -v "$1" 2>/dev/null) || return 0
    [[ $found == /* ]] && printf '%s\n' "$found"
  fi
  return 0
}

wants() { # is tool $1 among the arguments?
  local tool
  for tool in "${tools[@]}"; do [[ $tool == "$1" ]] && return 0; done
  return 1
}

if { wants hpcc || wants hpcc-daemon; } && [[ -z $HPCC ]]; then
  target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target=$repo/$target
  HPCC=$target/release/hpcc
  if [[ ! -x $HPCC ]]; then
    say "building hpcc: cargo build --release -p hpcc-cli -p hpcc-daemon"
    (cd "$repo" && cargo build --release -p hpcc-cli -p hpcc-daemon) >&2 || say "hpcc build failed"
  fi
fi
ccache_bin=$(resolve "$CCACHE")
sccache_bin=$(resolve "$SCCACHE")
if [[ -z $sccache_bin ]]; then # `cargo install` puts it here, which may not be on PATH
  sccache_bin=$(resolve "${CARGO_HOME:-$HOME/.cargo}/bin/sccache")
fi
hpcc_bin=
[[ -n $HPCC ]] && hpcc_bin=$(resolve "$HPCC")

declare -A bin=([plain]=gcc [ccache]=$ccache_bin [sccache]=$sccache_bin [hpcc]=$hpcc_bin
  [hpcc-daemon]=$hpcc_bin)
skipped=()
runnable=()
for tool in "${tools[@]}"; do
  if [[ -n ${bin[$tool]} ]]; then
    runnable+=("$tool")
  else
    skipped+=("skipped: $tool: not installed")
    say "skipped: $tool: not installed"
  fi
done

# ---- machine information ---------------------------------------------------------------------

first_line() { "$@" 2>/dev/null | head -n 1 || true; }
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
info=(
  "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  "cpus (nproc): $(nproc)"
  "cpu: ${cpu:-unknown}"
  "kernel: $(uname -sr)"
  "load average at start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
  "gcc: $(first_line gcc --version)"
  "make: $(first_line make --version)"
)
wants ccache && [[ -n $ccache_bin ]] && info+=("ccache: $(first_line "$ccache_bin" --version)")
wants sccache && [[ -n $sccache_bin ]] && info+=("sccache: $(first_line "$sccache_bin" --version)")
if { wants hpcc || wants hpcc-daemon; } && [[ -n $hpcc_bin ]]; then
  commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
  info+=("hpcc: $(first_line "$hpcc_bin" --version) ($hpcc_bin; repository HEAD at run time: $commit)")
fi

# ---- corpus and checkouts --------------------------------------------------------------------

"$here/corpus.sh" "$CORPUS"
CORPUS=$(cd "$CORPUS" && pwd)

scratch=$(mktemp -d "${TMPDIR:-/tmp}/hpcc-bench.XXXXXX")
sccache_up=
hpcc_daemon_env=()
cleanup() {
  if [[ -n $sccache_up ]]; then
    SCCACHE_SERVER_PORT=$sccache_port "$sccache_bin" --stop-server >/dev/null 2>&1 || true
  fi
  if ((${#hpcc_daemon_env[@]} > 0)); then
    env "${hpcc_daemon_env[@]}" "$hpcc_bin" stop >/dev/null 2>&1 || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Checkout A; moved checkouts are copies of it under another directory, renamed before each
# moved build so that every one of them is at a new path. Each has a .hpcc marker at its root.
checkout=$scratch/a
mkdir -p "$checkout" "$scratch/elsewhere"
for set in "${sets[@]}"; do cp -R "$CORPUS/$set" "$checkout/"; done
: >"$checkout/.hpcc"
moved=$scratch/elsewhere/b0
cp -Rp "$checkout" "$moved"
moved_count=0
next_moved_checkout() {
  moved_count=$((moved_count + 1))
  mv "$moved" "$scratch/elsewhere/b$moved_count"
  moved=$scratch/elsewhere/b$moved_count
}

expected=$(make -s -f "$here/build.mk" SRC="$checkout" SETS="$SETS" ROCKSDB_N="$ROCKSDB_N" count)
((expected > 0)) || die "SETS='$SETS' ROCKSDB_N=$ROCKSDB_N selects no sources"
sets_text="SETS='$SETS'"
[[ " $SETS " == *" rocksdb "* ]] && sets_text+=" ROCKSDB_N=$ROCKSDB_N"
info+=("build: $sets_text, $expected files, make -j$JOBS, REPEAT=$REPEAT, COLD_REPEAT=$COLD_REPEAT")
say "benchmark: $expected files, make -j$JOBS, REPEAT=$REPEAT, COLD_REPEAT=$COLD_REPEAT, scratch $scratch"

# ---- measuring -------------------------------------------------------------------------------

log=$scratch/make.log
elapsed=
# build DIR: deletes DIR/obj, then times one make in DIR with $cc/$cxx and the env $tool_env;
# sets $elapsed (seconds). Fails if make fails or (unless $count_objects is empty) objects
# are missing.
build() {
  local dir=$1 start end found
  rm -rf "$dir/obj"
  start=$EPOCHREALTIME
  if ! (cd "$dir" && env "${tool_env[@]}" make -s -f "$here/build.mk" SRC=. OUT=obj \
    SETS="$SETS" ROCKSDB_N="$ROCKSDB_N" CC="$cc" CXX="$cxx" -j"$JOBS") >"$log" 2>&1; then
    return 1
  fi
  end=$EPOCHREALTIME
  elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
  if [[ -n $count_objects ]]; then
    found=$(find "$dir/obj" -type f -name '*.o' | wc -l)
    if ((found != expected)); then
      echo "$found objects built, $expected expected" >>"$log"
      return 1
    fi
  fi
}

# A warm or moved build taking over a fifth of the cold time (and over a second) missed the
# cache: it is a rebuild, and is not repeated. Cache hits take around 1 % of the cold time, so
# the threshold holds even on a noisy machine.
is_rebuild() { awk -v t="$1" -v cold="$2" 'BEGIN { exit !(t >= 1 && t >= cold / 5) }'; }

# Median and minimum of the numbers given as arguments: "median min".
median_min() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f %.3f\n", m, v[1] }'
}

# Hit and miss counters of a wrapper's cache as "hits direct misses other" ("-" if unknown).
stats_zero() {
  case $1 in
    hpcc*) env "${tool_env[@]}" "$hpcc_bin" stats --zero >/dev/null 2>&1 ;;
    ccache) env "${tool_env[@]}" "$ccache_bin" --zero-stats >/dev/null 2>&1 ;;
    sccache) env "${tool_env[@]}" "$sccache_bin" --zero-stats >/dev/null 2>&1 ;;
  esac
}
stats_read() {
  case $1 in
    hpcc*)
      # Pretty-printed JSON: pick the counters, and add up the uncacheable and error maps.
      env "${tool_env[@]}" "$hpcc_bin" stats --json | awk '
        /"(uncacheable|errors)": \{/ { inmap = !/\}/; next }
        inmap && /\}/ { inmap = 0; next }
        inmap { gsub(/,/, ""); other += $NF; next }
        /"direct":/ { gsub(/,/, ""); direct = $NF }
        /"preprocessor":/ { gsub(/,/, ""); pre = $NF }
        /"misses":/ { gsub(/,/, ""); misses = $NF }
        END { print direct + pre, direct + 0, misses + 0, other + 0 }'
      ;;
    ccache)
      env "${tool_env[@]}" "$ccache_bin" --print-stats 2>/dev/null | awk -F'\t' '
        { v[$1] = $2 }
        END { if (!("cache_miss" in v)) { print "- - - -"; exit }
              print v["direct_cache_hit"] + v["preprocessed_cache_hit"], v["direct_cache_hit"] + 0,
                v["cache_miss"] + 0, "-" }'
      ;;
    sccache)
      env "${tool_env[@]}" "$sccache_bin" --show-stats 2>/dev/null | awk '
        /^Cache hits +[0-9]+$/ { hits = $NF; seen = 1 }
        /^Cache misses +[0-9]+$/ { misses = $NF }
        /^Non-cacheable (calls|compilations) +[0-9]+$/ { other += $NF }
        /^Non-compilation calls +[0-9]+$/ { other += $NF }
        END { if (seen) print hits + 0, "-", misses + 0, other + 0; else print "- - - -" }'
      ;;
  esac
}

declare -A result # "<tool>.<key>" -> value; keys: cold warm warm_min warm_n moved moved_min moved_n
stats_rows=()

# run_tool TOOL: the three phases of one tool (or of "floor"); fills $result and $stats_rows.
run_tool() {
  local tool=$1 cache=$scratch/cache-$1 phase runs i dir cold='' counters builds size median min
  local times=()
  tool_env=()
  cc=gcc cxx=g++ count_objects=yes
  rm -rf "$cache"
  mkdir -p "$cache"
  case $tool in
    floor) cc=true cxx=true count_objects= ;;
    plain) ;;
    ccache) tool_env=(CCACHE_DIR="$cache" CCACHE_BASEDIR="$scratch" CCACHE_NOHASHDIR=1) ;;
    sccache)
      tool_env=(SCCACHE_DIR="$cache" SCCACHE_CACHE_SIZE=10G SCCACHE_BASEDIRS="$scratch"
        SCCACHE_SERVER_PORT="$sccache_port" SCCACHE_IDLE_TIMEOUT=0)
      env "${tool_env[@]}" "$sccache_bin" --stop-server >/dev/null 2>&1 || true
      sccache_up=yes
      env "${tool_env[@]}" "$sccache_bin" --start-server >/dev/null 2>&1 || {
        echo "sccache --start-server failed" >"$log"
        return 1
      }
      ;;
    hpcc)
      tool_env=(HPCC_CACHE_DIR="$cache" HPCC_CONFIG="$scratch/no-hpcc-config.toml"
        HPCC_DAEMON_ENABLED=false)
      ;;
    hpcc-daemon)
      # A daemon of its own (private runtime directory), started before the cold build.
      mkdir -p -m 0700 "$scratch/run"
      tool_env=(HPCC_CACHE_DIR="$cache" HPCC_CONFIG="$scratch/no-hpcc-config.toml"
        HPCC_DAEMON_ENABLED=true HPCC_DAEMON_AUTOSTART=false XDG_RUNTIME_DIR="$scratch/run")
      hpcc_daemon_env=("${tool_env[@]}")
      env "${tool_env[@]}" "$hpcc_bin" start >/dev/null 2>"$log" || return 1
      ;;
  esac
  # Empties the cache between cold builds (sccache's server keeps an index, so it restarts).
  empty_cache() {
    if [[ $tool == sccache ]]; then
      env "${tool_env[@]}" "$sccache_bin" --stop-server >/dev/null 2>&1 || true
    fi
    if [[ $tool == hpcc-daemon ]]; then
      env "${tool_env[@]}" "$hpcc_bin" stop >/dev/null 2>&1 || true
    fi
    rm -rf "$cache"
    mkdir -p "$cache"
    if [[ $tool == sccache ]]; then
      env "${tool_env[@]}" "$sccache_bin" --start-server >/dev/null 2>&1 || {
        echo "sccache --start-server failed" >"$log"
        return 1
      }
    fi
    if [[ $tool == hpcc-daemon ]]; then
      env "${tool_env[@]}" "$hpcc_bin" start >/dev/null 2>"$log" || return 1
    fi
  }
  if [[ $tool == ccache || $tool == sccache || $tool == hpcc* ]]; then
    cc="${bin[$tool]} gcc" cxx="${bin[$tool]} g++"
  fi
  local with_stats=
  [[ $tool == ccache || $tool == sccache || $tool == hpcc* ]] && with_stats=yes

  for phase in cold warm moved; do
    [[ -n $with_stats ]] && { stats_zero "$tool" || return 1; }
    times=()
    runs=$REPEAT
    [[ $phase == cold ]] && runs=$COLD_REPEAT
    for ((i = 1; i <= runs; i++)); do
      if [[ $phase == cold ]] && ((i > 1)); then
        empty_cache || return 1
      fi
      if [[ $phase == moved ]]; then
        next_moved_checkout
        dir=$moved
      else
        dir=$checkout
      fi
      build "$dir" || return 1
      times+=("$elapsed")
      say "  $tool $phase #$i: ${elapsed}s"
      if [[ $phase != cold ]] && ((i == 1)) && is_rebuild "$elapsed" "$cold"; then
        say "  $tool $phase: as slow as a rebuild, not repeated"
        break
      fi
    done
    read -r median min <<<"$(median_min "${times[@]}")"
    result[$tool.$phase]=$median
    result[$tool.${phase}_min]=$min
    result[$tool.${phase}_n]=${#times[@]}
    [[ $phase == cold ]] && cold=$median
    if [[ -n $with_stats ]]; then
      counters=$(stats_read "$tool") || counters="- - - -"
      builds=${#times[@]}
      # Emptying the cache between cold builds also empties the tools' counters: they cover
      # the last cold build only.
      [[ $phase == cold ]] && builds=1
      size=-
      [[ $phase == cold ]] && size=$(du -sk "$cache" | awk '{ printf "%.1f", $1 / 1024 }')
      stats_rows+=("$tool $phase $builds $((builds * expected)) $counters $size")
    fi
  done
  if [[ $tool == sccache ]]; then
    env "${tool_env[@]}" "$sccache_bin" --stop-server >/dev/null 2>&1 || true
    sccache_up=
  fi
  if [[ $tool == hpcc-daemon ]]; then
    env "${tool_env[@]}" "$hpcc_bin" stop >/dev/null 2>&1 || true
    hpcc_daemon_env=()
  fi
  rm -rf "$cache"
}

failed=()
for tool in floor "${runnable[@]}"; do
  say "== $tool"
  if ! run_tool "$tool"; then
    failed+=("$tool")
    result[$tool.failed]=yes
    say "FAILED: $tool; last lines of its output:"
    tail -n 5 "$log" >&2 || true
  fi
done
info+=("load average at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)")

# ---- report ----------------------------------------------------------------------------------

get() { printf '%s' "${result[$1]:-}"; }
seconds() { # cell for result key $1; a phase that ran once where REPEAT were asked gets a mark
  local value n
  value=$(get "$1")
  [[ -n $value ]] || {
    printf -- '-'
    return
  }
  printf '%.2f' "$value"
  n=$(get "${1%_min}_n")
  if [[ $1 == *warm* || $1 == *moved* ]] && [[ -n $n ]] && ((n < REPEAT)); then printf ' †'; fi
}
ratio() { # value of key $1 divided by value of key $2, or "-"
  awk -v a="$(get "$1")" -v b="$(get "$2")" 'BEGIN {
    if (a == "" || b == "" || b + 0 == 0) { print "-"; exit }
    r = a / b; printf(r < 0.1 ? "%.4f\n" : "%.2f\n", r) }'
}

report() {
  local line tool row phase other builds total hits direct misses size verdict
  echo "# hpcc build benchmark"
  echo
  for line in "${info[@]}"; do echo "- $line"; done
  echo
  echo "Wall seconds of \`make -j$JOBS\` run inside the checkout; cold: median of $COLD_REPEAT"
  echo "build(s), each from an empty cache (min in the next column); warm and moved: median and"
  echo "minimum of up to $REPEAT builds. Ratios compare medians (cold with cold)."
  echo
  echo "| tool | cold | cold min | warm | warm min | moved | moved min | cold / plain cold | warm / ccache warm | moved / ccache moved |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for tool in floor plain ccache sccache hpcc hpcc-daemon; do
    [[ $tool == floor ]] || wants "$tool" || continue
    if [[ -n ${result[$tool.failed]:-} ]]; then
      echo "| $tool | FAILED | | | | | | | | |"
      continue
    fi
    [[ -n ${result[$tool.cold]:-} ]] || continue
    local ratios=(- - -)
    if [[ $tool != floor ]]; then
      ratios=("$(ratio "$tool.cold" plain.cold)" "$(ratio "$tool.warm" ccache.warm)"
        "$(ratio "$tool.moved" ccache.moved)")
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$tool" \
      "$(seconds "$tool.cold")" "$(seconds "$tool.cold_min")" \
      "$(seconds "$tool.warm")" "$(seconds "$tool.warm_min")" \
      "$(seconds "$tool.moved")" "$(seconds "$tool.moved_min")" "${ratios[@]}"
  done
  echo
  echo "floor: the same make with CC=true CXX=true. † ran once: it took over a fifth of the cold"
  echo "time (a rebuild: the cache missed), so it was not repeated."
  local hpcc_row
  for hpcc_row in hpcc hpcc-daemon; do
    [[ -n ${result[$hpcc_row.cold]:-} ]] || continue
    echo
    echo "$hpcc_row against the others (medians):"
    echo
    local pair
    for pair in "cold plain.cold" "cold ccache.cold" "warm ccache.warm" "moved ccache.moved" \
      "warm sccache.warm" "moved sccache.moved" "warm floor.warm" "moved floor.moved"; do
      read -r phase other <<<"$pair"
      [[ -n ${result[$other]:-} ]] || continue
      echo "- $hpcc_row $phase / ${other%.*} ${other#*.}: $(ratio "$hpcc_row.$phase" "$other")"
    done
    if [[ -n ${result[ccache.warm]:-} ]]; then
      awk -v name="$hpcc_row" -v h="$(get "$hpcc_row.warm")" -v c="$(get ccache.warm)" \
        -v f="$(get floor.warm)" 'BEGIN {
        if (c - f > 0) printf "- %s warm above floor / ccache warm above floor: %.2f (%.3f s vs %.3f s)\n",
          name, (h - f) / (c - f), h - f, c - f }'
    fi
  done
  if ((${#stats_rows[@]} > 0)); then
    echo
    echo "Cache counters per phase (the wrapper's own statistics, zeroed before each phase):"
    echo
    echo "| tool | phase | builds | compilations | hits | of which direct | misses | uncacheable/other | cache MiB | verdict |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for row in "${stats_rows[@]}"; do
      read -r tool phase builds total hits direct misses other size <<<"$row"
      if [[ $hits == - ]]; then
        verdict="no counters"
      elif ((hits == total && misses == 0)); then
        verdict="all hits"
      elif ((hits == 0 && misses == total)); then
        verdict="all misses"
      else
        verdict="$hits hits, $misses misses of $total"
      fi
      echo "| $tool | $phase | $builds | $total | $hits | $direct | $misses | $other | $size | $verdict |"
    done
  fi
  if ((${#skipped[@]} + ${#failed[@]} > 0)); then
    echo
    for line in "${skipped[@]}"; do echo "- $line"; done
    for tool in "${failed[@]}"; do echo "- FAILED: $tool (the build or its cache failed)"; done
  fi
}

report >"$scratch/report.md"
cat "$scratch/report.md"
if [[ -n $OUT ]]; then
  cp "$scratch/report.md" "$OUT"
  say "report written to $OUT"
fi
if ((${#failed[@]} > 0)); then exit 1; fi
