#!/usr/bin/env bash
# Benchmarks kiln's qcow2 writer against `qemu-img convert -c -O qcow2`, for zstd and for zlib, on a raw image.
# Prints median wall times, output sizes and ratios; checks every output with `qemu-img check` and
# `qemu-img compare`. Never asserts timings.
#
# Usage: bench/qcow2.sh [RUNS]                                  (default 3)
#
# Environment (all optional):
#   INPUT        the raw image (default /var/tmp/kiln-bench/large.raw; sparse files are fine)
#   BENCH_DIR    where the outputs are written, in a temporary directory removed at exit (default /var/tmp)
#   KILN_QCOW2   a built `qcow2` example binary to use instead of building one with cargo
#   THREADS      kiln's --threads (default: rayon's, one per CPU)
#   BENCH_KEEP   if 1, keep the work directory
#
# Exits non-zero if something failed to run or an output is not a correct image; missed targets are reported,
# not failed. See bench/README.md.
set -euo pipefail
export LC_ALL=C # '.' as the decimal separator for EPOCHREALTIME and awk

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
[ $# -le 1 ] || die "too many arguments (usage: $0 [RUNS])"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
input=${INPUT:-/var/tmp/kiln-bench/large.raw}
[ -f "$input" ] || die "no raw image at $input (set INPUT, or build one: see bench/README.md)"
threads_opt=()
if [ -n "${THREADS:-}" ]; then
  [[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, not '$THREADS'"
  threads_opt=(--threads "$THREADS")
fi
command -v qemu-img >/dev/null || die "qemu-img not found: install the Debian package 'qemu-utils'"
[ -x /usr/bin/time ] || die "/usr/bin/time not found: install the Debian package 'time'"

# --- kiln's qcow2 example ----------------------------------------------------------------------------------
if [ -n "${KILN_QCOW2:-}" ]; then
  kiln=$KILN_QCOW2
  msg "using KILN_QCOW2=$kiln (not building)"
else
  command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain, or set KILN_QCOW2)"
  msg "building: cargo build --release -p kiln-formats --example qcow2 --locked"
  (cd "$repo" && cargo build --release -p kiln-formats --example qcow2 --locked >&2) || die "cargo build failed"
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac
  kiln=$target_dir/release/examples/qcow2
fi
[ -x "$kiln" ] || die "kiln's qcow2 example '$kiln' is missing or not executable"

bench_dir=${BENCH_DIR:-/var/tmp}
mkdir -p "$bench_dir"
work=$(mktemp -d "$bench_dir/kiln-qcow2-bench.XXXXXX")
cleanup() { if [ "${BENCH_KEEP:-0}" = 1 ]; then msg "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT

# --- Timed runs ------------------------------------------------------------------------------------------------
msg "warming the page cache with $input"
cat "$input" >/dev/null

# tool mode: runs once, writing $work/<tool>-<mode>.qcow2; appends "wall-seconds cpu-seconds" (CPU: user + system,
# from GNU time) to $work/times.<tool>-<mode>
timed() {
  local out=$work/$1-$2.qcow2 cmd start end user sys
  case $1-$2 in
    # What `kiln build --format qcow2` writes: zstd level 1 in 256 KiB clusters (see builder/src/emit.rs).
    kiln-zstd) cmd=("$kiln" "${threads_opt[@]}" --compress zstd --level 1 --cluster-size 262144 "$input" "$out") ;;
    kiln-*) cmd=("$kiln" "${threads_opt[@]}" --compress "$2" "$input" "$out") ;;
    qemu-zstd) cmd=(qemu-img convert -c -O qcow2 -o compression_type=zstd "$input" "$out") ;;
    qemu-zlib) cmd=(qemu-img convert -c -O qcow2 "$input" "$out") ;; # zlib: qemu-img's default
  esac
  rm -f "$out"
  sync # outside the timing: no write-back of the previous run's output during this one
  start=$EPOCHREALTIME
  /usr/bin/time -f '%U %S' -o "$work/cpu" "${cmd[@]}" >"$work/log.$1-$2" 2>&1 ||
    { cat "$work/log.$1-$2" >&2; die "$1 ($2) failed: ${cmd[*]}"; }
  end=$EPOCHREALTIME
  read -r user sys <"$work/cpu"
  awk -v s="$start" -v e="$end" -v u="$user" -v y="$sys" 'BEGIN { printf "%.3f %.2f\n", e - s, u + y }' >>"$work/times.$1-$2"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((i = 1; i <= runs; i++)); do
  msg "round $i of $runs"
  # Alternate who goes first, so neither always runs right after the other's write-back.
  if ((i % 2)); then order=(kiln qemu); else order=(qemu kiln); fi
  for mode in zstd zlib; do
    for tool in "${order[@]}"; do timed "$tool" "$mode"; done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Checks (of the last run's outputs) ------------------------------------------------------------------------
verdicts=()
for mode in zstd zlib; do
  for tool in kiln qemu; do
    out=$work/$tool-$mode.qcow2
    check=clean
    qemu-img check -q "$out" >"$work/check.$tool-$mode" 2>&1 || check="NOT CLEAN (qemu-img check: $(head -n 3 "$work/check.$tool-$mode" | tr '\n' ' '))"
    compare=identical
    qemu-img compare -q -f raw -F qcow2 "$input" "$out" >/dev/null 2>&1 || compare=DIFFERENT
    type=$(qemu-img info --output=json "$out" | awk -F'"' '/"compression-type"/ { print $4 }')
    verdicts+=("$(printf '%-5s %-5s check %s, compare with the raw image: %s, compression type %s' "$tool" "$mode" "$check" "$compare" "$type")")
    [ "$check" = clean ] && [ "$compare" = identical ] && [ "$type" = "$mode" ] || failed=1
  done
done

# --- Report ----------------------------------------------------------------------------------------------------
median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
verdict() { awk -v x="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == ">=" ? x >= t : x <= t); print (ok ? "met" : "MISSED") }'; }
size_of() { stat -c %s "$work/$1-$2.qcow2"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

cat <<EOF

== kiln qcow2 vs qemu-img convert: $runs runs each, warm page cache ==
machine   $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r); outputs on $(df --output=fstype "$work" | tail -n 1)
input     $input: $(stat -c %s "$input") bytes, $(du -B1 "$input" | cut -f1) allocated
kiln      $kiln ${threads_opt[*]} (git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown))
qemu-img  $(qemu-img --version | head -n 1)
load average (1/5/15 min) before: $load_before; after: $load_after

EOF
printf '%-6s %9s %9s %8s   %9s %9s %8s   %11s %11s %7s\n' mode "kiln s" "qemu s" speedup "kiln cpu" "qemu cpu" "cpu x" "kiln MiB" "qemu MiB" "size x"
for mode in zstd zlib; do
  k=$(awk '{ print $1 }' "$work/times.kiln-$mode" | median)
  q=$(awk '{ print $1 }' "$work/times.qemu-$mode" | median)
  kc=$(awk '{ print $2 }' "$work/times.kiln-$mode" | median)
  qc=$(awk '{ print $2 }' "$work/times.qemu-$mode" | median)
  ks=$(size_of kiln "$mode")
  qs=$(size_of qemu "$mode")
  printf '%-6s %9s %9s %7sx   %9s %9s %7sx   %11s %11s %6sx\n' "$mode" "$k" "$q" "$(ratio "$q" "$k")" "$kc" "$qc" \
    "$(ratio "$qc" "$kc")" "$(mib "$ks")" "$(mib "$qs")" "$(ratio "$ks" "$qs")"
  eval "speed_$mode=$(ratio "$q" "$k"); cpu_$mode=$(ratio "$qc" "$kc")"
  eval "size_$mode=$(awk -v a="$ks" -v b="$qs" 'BEGIN { printf "%.4f", a / b }')"
done
echo
echo "all runs (wall s / cpu s, in order)"
for mode in zstd zlib; do
  for tool in kiln qemu; do
    printf '  %-5s %-5s %s\n' "$tool" "$mode" "$(awk '{ printf " %s/%s", $1, $2 }' "$work/times.$tool-$mode")"
  done
done
cat <<EOF

targets (medians of wall time; CPU time, user + system, shown beside as the measure a busy machine disturbs less)
  zstd: qemu-img / kiln wall   ${speed_zstd}x   >= 2x     $(verdict "$speed_zstd" ">=" 2)   (cpu ${cpu_zstd}x)
  zstd: kiln / qemu-img size   ${size_zstd}x   <= 1.02x  $(verdict "$size_zstd" "<=" 1.02)
  zlib: qemu-img / kiln wall   ${speed_zlib}x   >= 5x     $(verdict "$speed_zlib" ">=" 5)   (cpu ${cpu_zlib}x)

outputs
EOF
printf '  %s\n' "${verdicts[@]}"
[ -z "${failed:-}" ] || die "an output is not a correct image (see above)"
