#!/usr/bin/env bash
# Benchmarks building an aarch64-linux image against building the same image for x86_64-linux: the large
# corpus registered twice as a NixOS system, once with the host's x86-64 kernel and systemd-boot, once with
# Debian's arm64 kernel (`Image`) and systemd-bootaa64.efi (taken from the aarch64 demo closure), built with
# `kiln build --layout efi` (raw) in alternation. Both closures hold both kernels, so only the ESP differs. kiln runs no target code, so nothing should be slower: the
# goal is aarch64 within 1.05x of x86_64. Prints median wall times and the ratio; never asserts timings.
#
# Usage: bench/arch.sh [RUNS]                                     (default 3)
#
# Environment (all optional):
#   BENCH_DIR    corpus cache and work directory (default /var/tmp/kiln-bench)
#   MAKE_STORE   the corpus builder (default /work/shared/bench/make-store.sh)
#   KILN         a built kiln binary to use instead of building one
set -euo pipefail
export LC_ALL=C

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
command -v python3 >/dev/null || die "'python3' not found: install the Debian package 'python3'"
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || die "install the Debian package 'systemd-boot-efi'"

# shellcheck source=bench/common.sh
source "$here/common.sh"
# The arm64 kernel and systemd-boot: those of the aarch64 demo closure (Debian arm64 packages, downloaded once).
arm_demo=$bench_dir/arm64-demo
if [ ! -d "$arm_demo" ]; then
  msg "building the aarch64 demo closure in $arm_demo (downloads Debian arm64 packages once)"
  ARCH=aarch64 DEB_CACHE=$bench_dir/debian-arm64 bash "$repo/tests/fixtures/demo-closure.gen.sh" "$arm_demo" >&2 ||
    die "the aarch64 demo closure failed"
fi
arm_image=$(find "$arm_demo/nix/store" -mindepth 2 -maxdepth 2 -path '*-linux-*/Image' -type f | sort | head -n 1)
arm_sdboot=$(find "$arm_demo/nix/store" -path '*/lib/systemd/boot/efi/systemd-bootaa64.efi' -type f | head -n 1)
[ -n "$arm_image" ] && [ -n "$arm_sdboot" ] || die "the aarch64 demo closure has no Image or systemd-bootaa64.efi"

x86_kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$x86_kernel" ] || die "no /boot/vmlinuz-* (install linux-image-amd64)"
chmod u+w "$store"
xk=$(store_path linux-x86_64-archbench "$x86_kernel" bzImage)
xs=$(store_path systemd-x86_64-archbench /usr/lib/systemd/boot/efi/systemd-bootx64.efi lib/systemd/boot/efi/systemd-bootx64.efi)
ak=$(store_path linux-aarch64-archbench "$arm_image" Image)
as=$(store_path systemd-aarch64-archbench "$arm_sdboot" lib/systemd/boot/efi/systemd-bootaa64.efi)
# Both toplevels refer to every store path but the toplevels, both kernels and both systemd-boots among them, so
# the two root filesystems hold the same files; the ESPs differ by the kernel each boots.
top_x86=$(toplevel nixos-system-archbench-x86_64 x86_64-linux "$xk/bzImage" "$xs" '*-nixos-system-archbench-*')
top_arm=$(toplevel nixos-system-archbench-aarch64 aarch64-linux "$ak/Image" "$as" '*-nixos-system-archbench-*')
chmod a-w "$store"

work=$(mktemp -d "$bench_dir/arch-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
timed() { # ARCH TOPLEVEL
  local start end
  sync
  start=$EPOCHREALTIME
  "$kiln" build --layout efi --system "/nix/store/$2" --store-dir "$store" --progress none --force \
    --output "$work/$1.raw" >"$work/log.$1" 2>&1 || { cat "$work/log.$1" >&2; die "kiln build ($1) failed"; }
  end=$EPOCHREALTIME
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }' >>"$work/times.$1"
  rm -f "$work/$1.raw"
}
msg "warming the page cache with one build of each"
timed x86_64 "$top_x86"
timed aarch64 "$top_arm"
rm -f "$work"/times.*
for ((i = 1; i <= runs; i++)); do
  msg "round $i of $runs"
  if ((i % 2)); then timed x86_64 "$top_x86"; timed aarch64 "$top_arm"; else timed aarch64 "$top_arm"; timed x86_64 "$top_x86"; fi
done

mx=$(median <"$work/times.x86_64")
ma=$(median <"$work/times.aarch64")
ratio=$(awk -v a="$ma" -v b="$mx" 'BEGIN { printf "%.3f", a / b }')
cat <<EOF

== kiln build --layout efi of the large corpus: aarch64-linux vs x86_64-linux, $runs runs each ==
machine   $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r)
kiln      $kiln (git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown))
corpus    $store

median wall seconds
  x86_64-linux    $mx    (runs: $(tr '\n' ' ' <"$work/times.x86_64"))
  aarch64-linux   $ma    (runs: $(tr '\n' ' ' <"$work/times.aarch64"))

target
  aarch64 / x86_64   ${ratio}x   <= 1.05x   $(awk -v r="$ratio" 'BEGIN { print (r <= 1.05 ? "met" : "MISSED") }')
EOF
