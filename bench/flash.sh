#!/usr/bin/env bash
# Benchmarks `kiln flash` against bmaptool and dd, writing the usb-hybrid image of the large corpus onto a loop
# device backed by a file on the same disk, in two set-ups of that loop device:
#
#   cached   losetup's default: the loop device writes through the host's page cache of its backing file, so a
#            flush of the device is a writeback of that file, and "bypassing the page cache" bypasses the loop
#            device's cache only
#   direct   losetup --direct-io=on: the loop device reads and writes its backing file with O_DIRECT, like a
#            real disk, which has no page cache beneath it
#
# In each:
#
#   kiln-raw   kiln flash IMAGE.raw (its .bmap beside it)          vs  bmaptool copy --bmap IMAGE.raw.bmap
#                                                                   and dd if=IMAGE.raw bs=4M conv=fsync
#   kiln-zst   kiln flash IMAGE.raw.zst (the same .bmap)           vs  zstd -dc IMAGE.raw.zst | dd bs=4M oflag=direct
#
# kiln's time includes its read-back of everything it wrote (O_DIRECT) and the source checksums; the others
# verify nothing beyond what they do by default (bmaptool checks the bmap's checksums while writing). Every
# flashed device is checked afterwards (sgdisk -v; the data compared with the raw image) outside the timings.
# Prints median wall times and ratios; never asserts timings.
#
# Usage: bench/flash.sh [RUNS]                                    (default 3)
#
# LOOP_MODES="cached direct" (the default) picks the set-ups.
#
# Environment (all optional):
#   BENCH_DIR    corpus cache and work directory (default /var/tmp/kiln-bench); the loop device's backing file
#                goes here too
#   MAKE_STORE   the corpus builder (default /work/shared/bench/make-store.sh)
#   KILN         a built kiln binary to use instead of building one
#   BENCH_KEEP   if 1, keep the work directory
set -euo pipefail
export LC_ALL=C
export PATH=$PATH:/usr/sbin:/sbin

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
[ "$(id -u)" = 0 ] || die "run as root (it makes a loop device)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install the Debian package '$2' (scripts/install-deps)"; }
need bmaptool bmap-tools
need zstd zstd
need losetup mount
need sgdisk gdisk
need python3 python3
need cmp diffutils

# --- kiln ---------------------------------------------------------------------------------------------------------
# --- The large corpus and a bootable usb-hybrid system over it ----------------------------------------------------
# shellcheck source=bench/common.sh
source "$here/common.sh"
# The boot pieces come from this machine's Debian packages, as store paths of their own: systemd-boot's EFI
# binary (systemd-boot-efi) and GRUB's i386-pc modules (grub-pc-bin).
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || die "install the Debian package 'systemd-boot-efi'"
[ -f /usr/lib/grub/i386-pc/kernel.img ] || die "install the Debian package 'grub-pc-bin'"
kernel=$(cd "$store" && find . -mindepth 3 -path './*/boot/vmlinuz-*' -type f | sort | sed -n '1s|^\./||p')
[ -n "$kernel" ] || die "the corpus has no kernel (boot/vmlinuz-*)"
chmod u+w "$store"
sdb_name=$(store_path systemd-flashbench /usr/lib/systemd/boot/efi/systemd-bootx64.efi lib/systemd/boot/efi/systemd-bootx64.efi)
store_path grub-2.06-flashbench /usr/lib/grub/i386-pc lib/grub/i386-pc >/dev/null
top_name=$(toplevel nixos-system-flashbench x86_64-linux "$kernel" "$sdb_name")
chmod a-w "$store"

work=$(mktemp -d "$bench_dir/flash-bench.XXXXXX")
dev=
cleanup() {
  [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null || true
  if [ "${BENCH_KEEP:-0}" = 1 ]; then msg "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

msg "building the usb-hybrid image of the large corpus (raw + bmap, and raw.zst)"
build() {
  "$kiln" build --profile usb-hybrid --system "/nix/store/$top_name" --store-dir "$store" --progress none \
    --force --output "$@" >&2 || die "kiln build failed"
}
build "$work/usb.raw" --checksum
build "$work/usb.raw.zst" --format raw.zst --bmap --checksum
raw=$work/usb.raw
zst=$work/usb.raw.zst
bmap=$work/usb.raw.bmap
[ -f "$bmap" ] || die "no block map $bmap"
size=$(stat -c %s "$raw")
data=$(du -B1 "$raw" | cut -f1)

backing=$work/disk
truncate -s $((size + (64 << 20))) "$backing"
read -r -a modes <<<"${LOOP_MODES:-cached direct}"
for m in "${modes[@]}"; do
  case $m in cached | direct) ;; *) die "LOOP_MODES: '$m' is neither cached nor direct" ;; esac
done

# --- Timed runs ---------------------------------------------------------------------------------------------------
timed() { # name; appends wall seconds to $work/times.<name>
  local start end
  cat "$raw" "$zst" "$bmap" >/dev/null # the sources warm, as a freshly built image is
  sync
  start=$EPOCHREALTIME
  case $1 in
    kiln-raw) "$kiln" flash --progress none --force "$raw" "$dev" >"$work/log.$1" 2>&1 ;;
    kiln-zst) "$kiln" flash --progress none --force "$zst" "$dev" >"$work/log.$1" 2>&1 ;;
    bmaptool) bmaptool copy --bmap "$bmap" "$raw" "$dev" >"$work/log.$1" 2>&1 ;;
    dd-raw) dd if="$raw" of="$dev" bs=4M conv=fsync status=none >"$work/log.$1" 2>&1 ;;
    zstd-dd) { zstd -dc "$zst" | dd of="$dev" bs=4M iflag=fullblock oflag=direct status=none; } >"$work/log.$1" 2>&1 ;;
  esac || { cat "$work/log.$1" >&2; die "$1 failed"; }
  end=$EPOCHREALTIME
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }' >>"$work/times.$mode.$1"
  check "$1"
}

check() { # the device holds the image: its table fits the device (kiln) or is the image's own (the others)
  local out
  out=$(sgdisk -v "$dev" 2>&1) || die "$1: sgdisk -v failed: $out"
  case $1 in
    kiln-*) grep -q "No problems found" <<<"$out" || die "$1: sgdisk -v: $out" ;;
  esac
  # Compare the data past the first MiB up to the image's backup GPT (kiln moves that to the device's end).
  cmp -n $((size - (1 << 20) - 33 * 512)) -i $((1 << 20)) "$raw" "$dev" >/dev/null ||
    die "$1: the device does not hold the image"
}

tools=(kiln-raw bmaptool dd-raw kiln-zst zstd-dd)
for mode in "${modes[@]}"; do
  if [ "$mode" = direct ]; then
    dev=$(losetup -f --show --direct-io=on "$backing")
  else
    dev=$(losetup -f --show "$backing")
  fi
  for ((i = 1; i <= runs; i++)); do
    msg "$mode loop device $dev: round $i of $runs"
    # Rotate the order, so no tool always runs right after another's write-back.
    for ((j = 0; j < ${#tools[@]}; j++)); do timed "${tools[(i + j) % ${#tools[@]}]}"; done
  done
  losetup -d "$dev"
  dev=
done

# --- Report -------------------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
verdict() { awk -v x="$1" -v t="$2" 'BEGIN { print (x >= t ? "met" : "MISSED") }'; }

cat <<EOF

== kiln flash vs bmaptool and dd: the usb-hybrid image of the large corpus, $runs runs each ==
machine   $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r)
image     $raw: $size bytes, $data bytes of data; raw.zst $(stat -c %s "$zst") bytes
target    a loop device over $backing ($(df --output=fstype "$backing" | tail -n 1)), $(stat -c %s "$backing") bytes
kiln      $kiln (git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)); verify included
bmaptool  $(bmaptool --version 2>&1 | head -n 1)
EOF
for mode in "${modes[@]}"; do
  for t in "${tools[@]}"; do eval "m_${t//-/_}=$(median <"$work/times.$mode.$t")"; done
  cat <<EOF

-- $mode loop device --
median wall seconds
  kiln flash raw      $m_kiln_raw
  bmaptool copy       $m_bmaptool
  dd conv=fsync       $m_dd_raw
  kiln flash raw.zst  $m_kiln_zst
  zstd -dc | dd       $m_zstd_dd

all runs
$(for t in "${tools[@]}"; do printf '  %-9s %s\n' "$t" "$(tr '\n' ' ' <"$work/times.$mode.$t")"; done)

targets
  bmaptool / kiln (raw)      $(ratio "$m_bmaptool" "$m_kiln_raw")x   >= 1.5x   $(verdict "$(ratio "$m_bmaptool" "$m_kiln_raw")" 1.5)
  dd / kiln (raw)            $(ratio "$m_dd_raw" "$m_kiln_raw")x   >= 3x     $(verdict "$(ratio "$m_dd_raw" "$m_kiln_raw")" 3)
  zstd|dd / kiln (raw.zst)   $(ratio "$m_zstd_dd" "$m_kiln_zst")x   (informational)
EOF
done
