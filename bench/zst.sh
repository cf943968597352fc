#!/usr/bin/env bash
# Benchmarks kiln's raw.zst writer (formats/examples/zst.rs) against `zstd -T0 -LEVEL` on a raw image, warm
# page cache. Prints every run's time, the medians, the sizes and the ratio; checks that `zstd -d` of kiln's
# output is the image (cmp). Never asserts timings.
#
# Usage: bench/zst.sh [IMAGE] [RUNS] [LEVEL]      (defaults: /var/tmp/kiln-bench/large.raw, 5, 3)
#
# Environment (all optional):
#   WORK_DIR  where the outputs are written (a fresh directory in it, removed at exit; default /var/tmp)
#   THREADS   kiln's zstd workers (default: nproc)
#   KILN_ZST  the example binary to use instead of building it with cargo
#
# Exits non-zero only if something failed to run or kiln's output does not decompress to the image.
set -euo pipefail
export LC_ALL=C

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

image=${1:-/var/tmp/kiln-bench/large.raw}
runs=${2:-5}
level=${3:-3}
[ $# -le 3 ] || die "too many arguments (usage: $0 [IMAGE] [RUNS] [LEVEL])"
[ -f "$image" ] || die "no image at $image"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
[[ $level =~ ^-?[0-9]+$ ]] || die "LEVEL must be an integer, not '$level'"
threads=${THREADS:-$(nproc)}
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, not '$threads'"
command -v zstd >/dev/null || die "'zstd' not found: install the Debian package 'zstd'"
command -v cmp >/dev/null || die "'cmp' not found: install the Debian package 'diffutils'"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
if [ -n "${KILN_ZST:-}" ]; then
  kiln_zst=$KILN_ZST
else
  msg "building the example: cargo build --release -p kiln-formats --example zst"
  (cd "$repo" && cargo build --release -p kiln-formats --example zst >&2) || die "cargo build failed"
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac
  kiln_zst=$target_dir/release/examples/zst
fi

work=$(mktemp -d "${WORK_DIR:-/var/tmp}/kiln-zst.XXXXXX")
trap 'rm -rf "$work"' EXIT

msg "warming the page cache (reading $image once)"
cat "$image" > /dev/null

kiln_cmd=("$kiln_zst" "$image" "$work/kiln.zst" "$level" "$threads")
zstd_cmd=(zstd -q -f -T0 "-$level" "$image" -o "$work/zstd.zst")

msg "reference run (untimed): kiln's output must decompress to the image"
"${kiln_cmd[@]}" > /dev/null
zstd -q -d -c "$work/kiln.zst" | cmp - "$image" || die "zstd -d of kiln's output differs from $image"
kiln_size=$(stat -c %s "$work/kiln.zst")
"${zstd_cmd[@]}"
zstd_size=$(stat -c %s "$work/zstd.zst")
rm -f "$work/kiln.zst" "$work/zstd.zst"

# Runs "$@" once; appends its wall time (bash's EPOCHREALTIME) to $work/times.NAME and, with GNU time, its CPU
# time (user + system) to $work/cpu.NAME.
timed() {
  local name=$1; shift
  local t0=$EPOCHREALTIME
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f '%U %S' -o "$work/time.out" "$@" > /dev/null || die "$name failed: $*"
    awk '{ printf "%.2f\n", $1 + $2 }' "$work/time.out" >> "$work/cpu.$name"
  else
    "$@" > /dev/null || die "$name failed: $*"
  fi
  local t1=$EPOCHREALTIME
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }' >> "$work/times.$name"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((i = 0; i < runs; i++)); do
  msg "round $((i + 1))/$runs"
  if ((i % 2 == 0)); then order=(kiln zstd); else order=(zstd kiln); fi
  for t in "${order[@]}"; do
    case $t in
      kiln) timed kiln "${kiln_cmd[@]}"; rm -f "$work/kiln.zst" ;;
      zstd) timed zstd "${zstd_cmd[@]}"; rm -f "$work/zstd.zst" ;;
    esac
    sync # outside the timings
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
k_med=$(median < "$work/times.kiln")
z_med=$(median < "$work/times.zstd")
k_min=$(sort -n "$work/times.kiln" | awk 'NR == 1 { printf "%.3f", $1 }')
z_min=$(sort -n "$work/times.zstd" | awk 'NR == 1 { printf "%.3f", $1 }')
ratio=$(awk -v a="$k_med" -v b="$z_med" 'BEGIN { printf "%.3f", a / b }')
ratio_best=$(awk -v a="$k_min" -v b="$z_min" 'BEGIN { printf "%.3f", a / b }')
size_ratio=$(awk -v a="$kiln_size" -v b="$zstd_size" 'BEGIN { printf "%.4f", a / b }')
cpu_line="CPU time  not measured (GNU time, Debian package 'time', is missing)"
if [ -s "$work/cpu.kiln" ] && [ -s "$work/cpu.zstd" ]; then
  k_cpu=$(median < "$work/cpu.kiln")
  z_cpu=$(median < "$work/cpu.zstd")
  cpu_line="CPU time  user+sys medians: kiln $k_cpu s, zstd $z_cpu s (kiln / zstd = $(awk -v a="$k_cpu" -v b="$z_cpu" 'BEGIN { printf "%.3f", a / b }')): less noisy than wall time on a shared machine"
fi
verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.1 ? "met" : "MISSED") }')
allocated=$(( $(stat -c %b "$image") * $(stat -c %B "$image") ))

cat <<EOF

== kiln raw.zst vs zstd -T0 -$level: $runs runs, warm page cache ==
machine   $(nproc) CPUs, $(uname -r); load average before: $load_before, after: $load_after
image     $image: $(stat -c %s "$image") bytes, $allocated allocated
zstd      $(zstd -V)
kiln      level $level, $threads workers ($kiln_zst)

                      median s     min s   all runs (s)
kiln raw.zst         $(printf '%9s %9s' "$k_med" "$k_min")  $(awk '{ printf " %.3f", $1 }' "$work/times.kiln")
zstd -T0 -$level          $(printf '%9s %9s' "$z_med" "$z_min")  $(awk '{ printf " %.3f", $1 }' "$work/times.zstd")

sizes     kiln $kiln_size bytes, zstd $zstd_size bytes (kiln / zstd = $size_ratio)
time      kiln / zstd = ${ratio}x   target <= 1.1x   $verdict   (of medians; of best runs ${ratio_best}x)
$cpu_line
check     zstd -d of kiln's output = the image (cmp): ok
EOF
