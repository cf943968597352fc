#!/usr/bin/env bash
# Benchmarks every built-in profile end to end (closure -> final artefact) on a corpus, against nixpkgs'
# pipeline for it modelled with the same tools it runs:
#
#   root fs    mkfs.ext4 -d of a directory holding the closure's nix/store (make-disk-image.nix), sized as kiln's
#              root partition
#   ESP        mkfs.vfat -F 32 of kiln's ESP size and mcopy of the kernel and systemd-boot onto it (nixpkgs runs
#              its bootloader installer in a VM: not modelled, the anchor gets it for free)
#   BIOS       grub-mkimage of an i386-pc core image, written into the BIOS boot partition (legacy layouts)
#   assembly   the disk file sized as kiln's, sfdisk with kiln's partition table, the filesystems dd'd in
#              (conv=notrunc,sparse)
#   container  amazon, azure: qemu-img convert -O vpc -o subformat=fixed,force_size
#              gce:           tar --sparse -czf (one gzip stream on one core, as nixpkgs' gce image does)
#              openstack:     qemu-img convert -c -O qcow2 (zlib, as kiln's profile)
#              qemu-efi, qemu-bios: qemu-img convert -c -O qcow2 -o compression_type=zstd (kiln's default)
#              usb-hybrid, metal-efi: the raw disk, and bmaptool create
#
# kiln runs `kiln build --profile P` with a closureInfo (every narHash checked while copying). Both timings end
# with the artefact on disk (kiln flushes before it renames; the anchor's files are flushed with `sync FILE…`
# inside its timing). Runs alternate, the corpus in the page cache, a sync before each. Prints, per profile, the
# median wall times, the ratio (target >= 4x) and the artefacts' sizes (target: no larger than the anchor's;
# compressed ones within 1.02x), and one markdown table at the end. Never asserts timings.
#
# Usage: bench/profiles.sh [RUNS] [PROFILE...]                    (default 3, every built-in profile)
#
# Environment (all optional):
#   CORPUS      small, medium or large (default large)
#   BENCH_DIR   corpus cache and work directory (default /var/tmp/kiln-bench)
#   MAKE_STORE  the corpus builder (default /work/shared/bench/make-store.sh)
#   KILN        a kiln binary to use instead of building one
#   THREADS     kiln's --threads (default: nproc)
#   RESULTS     also write the rows as tab-separated values to this file (bench/report reads it)
set -euo pipefail
export LC_ALL=C
export PATH=$PATH:/usr/sbin:/sbin

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
shift || true
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
threads=${THREADS:-$(nproc)}
profiles=("$@")
if [ ${#profiles[@]} = 0 ]; then
  profiles=()
  for f in "$repo"/images/*.toml; do profiles+=("$(basename "$f" .toml)"); done
fi
for t in mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk qemu-img:qemu-utils \
  bmaptool:bmap-tools grub-mkimage:grub-common tar:tar gzip:gzip debugfs:e2fsprogs python3:python3; do
  command -v "${t%%:*}" >/dev/null || die "'${t%%:*}' not found: install the Debian package ${t#*:}"
done
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || die "install the Debian package 'systemd-boot-efi'"
[ -f /usr/lib/grub/i386-pc/kernel.img ] || die "install the Debian package 'grub-pc-bin'"
corpus_size=${CORPUS:-large}
# shellcheck source=bench/common.sh
source "$here/common.sh"
# shellcheck source=bench/closure-info.sh
source "$here/closure-info.sh"

own_store profiles

# A NixOS system over the corpus: the host's kernel, systemd-boot and GRUB's i386-pc modules as store paths.
chmod u+w "$store"
host_boot profiles-bench
store_path grub-2.06-profiles-bench /usr/lib/grub/i386-pc lib/grub/i386-pc >/dev/null
top=$(toplevel nixos-system-profiles-bench-24.11 x86_64-linux "$kernel/bzImage" "$systemd")
chmod a-w "$store"

work=$(mktemp -d "$bench_dir/profiles-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

ci=$bench_dir/$corpus_size.profiles-closure-info
system_closure_info "$top" "$ci" "$work"

msg "warming the page cache (reading the corpus once)"
find "$store" -type f -print0 | xargs -0 -r cat >/dev/null

try_kiln_build() { # PROFILE OUTPUT [ARGS...]: its status; what kiln said in $work/log.kiln
  local p=$1 out=$2
  shift 2
  "$kiln" build --profile "$p" --system "/nix/store/$top" --store-dir "$store" --closure-info "$ci" \
    --threads "$threads" --progress none --force --output "$out" "$@" >"$work/log.kiln" 2>&1
}
kiln_build() { # PROFILE OUTPUT [ARGS...]
  try_kiln_build "$@" || { cat "$work/log.kiln" >&2; die "kiln build --profile $1 failed"; }
}

# The anchor's pipeline for profile $1, writing $work/anchor.*; the disk's geometry from $work/ref.raw (kiln's
# raw image of the same profile: the same table, so both write the same disk).
anchor() {
  local p=$1 ext=$2 disk=$work/anchor.disk.raw
  rm -rf "$work"/anchor.* "$work/esp.img" "$work/root.img" "$work/core.img"
  # The root filesystem from the closure, as big as kiln's root partition.
  mkfs.ext4 -q -F -b 4096 -L nixos -E root_owner=0:0 -d "$corpus" "$work/root.img" "$((root_size / 1024))k" \
    >"$work/log.mkfs" 2>&1 || { cat "$work/log.mkfs" >&2; die "mkfs.ext4 -d failed"; }
  if [ -n "$esp_size" ]; then
    mkfs.vfat -F 32 -n ESP -C "$work/esp.img" "$((esp_size / 1024))" >/dev/null
    mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/EFI/nixos ::/loader ::/loader/entries
    mcopy -i "$work/esp.img" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$work/esp.img" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/systemd/systemd-bootx64.efi
    mcopy -i "$work/esp.img" "$x86_kernel" ::/EFI/nixos/bzImage.efi
  fi
  truncate -s "$disk_size" "$disk"
  sfdisk -q "$disk" <"$work/ref.table" >/dev/null
  dd if="$work/root.img" of="$disk" bs=4M seek="$root_start" oflag=seek_bytes conv=notrunc,sparse status=none
  [ -z "$esp_size" ] ||
    dd if="$work/esp.img" of="$disk" bs=4M seek="$esp_start" oflag=seek_bytes conv=notrunc,sparse status=none
  if [ -n "$bios_start" ]; then
    grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,gpt3)/boot/grub' biosdisk part_gpt ext2
    dd if="$work/core.img" of="$disk" bs=4M seek="$bios_start" oflag=seek_bytes conv=notrunc status=none
    dd if=/usr/lib/grub/i386-pc/boot.img of="$disk" bs=440 count=1 conv=notrunc status=none
  fi
  case $p in
    amazon | azure)
      qemu-img convert -f raw -O vpc -o subformat=fixed,force_size "$disk" "$work/anchor.$ext"
      rm -f "$disk" ;;
    gce)
      (cd "$work" && mv "$disk" disk.raw && tar --sparse -czf "anchor.$ext" disk.raw && rm -f disk.raw) ;;
    openstack)
      qemu-img convert -f raw -O qcow2 -c "$disk" "$work/anchor.$ext"
      rm -f "$disk" ;;
    qemu-efi | qemu-bios)
      qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$disk" "$work/anchor.$ext"
      rm -f "$disk" ;;
    *)
      mv "$disk" "$work/anchor.$ext"
      bmaptool -q create -o "$work/anchor.bmap" "$work/anchor.$ext" ;;
  esac
  sync "$work"/anchor.*
}

# Size of an artefact for comparison: bytes allocated for raw and fixed-VHD disks (they are sparse), the file's
# length for compressed ones.
size_of() { # FILE KIND
  if [ "$2" = sparse ]; then echo $(($(stat -c %b "$1") * $(stat -c %B "$1"))); else stat -c %s "$1"; fi
}

table="| profile | artefact | kiln s | anchor s | anchor / kiln | kiln size | anchor size | size ratio |
|---|---|---|---|---|---|---|---|"
tsv=$'profile\tartefact\tkind\tkiln_s\tanchor_s\tkiln_bytes\tanchor_bytes\n'
report=""
for p in "${profiles[@]}"; do
  [ -f "$repo/images/$p.toml" ] || die "no built-in profile '$p' (images/$p.toml)"
  # The artefact's name for each (kext: kiln's output; amazon's is an AMI bundle directory holding the VHD).
  case $p in
    amazon) ext=vhd kext=ami kind=sparse ;;
    azure) ext=vhd kext=vhd kind=sparse ;;
    gce) ext=raw.tar.gz kext=raw.tar.gz kind=compressed ;;
    openstack | qemu-efi | qemu-bios) ext=qcow2 kext=qcow2 kind=compressed ;;
    *) ext=raw kext=raw kind=sparse ;;
  esac
  # As raw, or where the profile refuses that (its own compression goes with qcow2 only) as qcow2 without
  # compression, then converted to raw.
  msg "$p: kiln's disk of the same profile, as raw (geometry for the anchor)"
  if ! try_kiln_build "$p" "$work/ref.raw" --format raw --no-checksum; then
    kiln_build "$p" "$work/ref.qcow2" --format qcow2 --compress none
    qemu-img convert -f qcow2 -O raw "$work/ref.qcow2" "$work/ref.raw"
    rm -f "$work/ref.qcow2"
  fi
  sfdisk --dump "$work/ref.raw" | grep -v '^\(last-lba\|device\):' | sed "s|^$work/ref.raw[0-9]* : ||" >"$work/ref.table"
  disk_size=$(stat -c %s "$work/ref.raw")
  eval "$(sfdisk --json "$work/ref.raw" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
ss = t.get("sectorsize", 512)
v = {"root": None, "esp": None, "bios": None}
for p in t["partitions"]:
    ty = p["type"].upper()
    key = {"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "root", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "esp",
           "21686148-6449-6E6F-744E-656564454649": "bios"}.get(ty)
    if key: v[key] = (p["start"] * ss, p["size"] * ss)
print("root_start=%d root_size=%d" % v["root"])
print("esp_start=%s esp_size=%s" % (v["esp"] or ("", "")))
print("bios_start=%s" % (v["bios"] or ("",))[0])
')"
  rm -f "$work/ref.raw"
  run_kiln() {
    local start end
    rm -rf "$work/kiln.$kext" "$work/kiln.$kext".*
    sync
    start=$EPOCHREALTIME
    kiln_build "$p" "$work/kiln.$kext"
    end=$EPOCHREALTIME
    seconds "$start" "$end" >>"$work/times.kiln"
  }
  run_anchor() {
    local start end
    sync
    start=$EPOCHREALTIME
    anchor "$p" "$ext"
    end=$EPOCHREALTIME
    seconds "$start" "$end" >>"$work/times.anchor"
  }
  rm -f "$work"/times.*
  for ((i = 1; i <= runs; i++)); do
    msg "$p: round $i of $runs"
    if ((i % 2)); then run_kiln; run_anchor; else run_anchor; run_kiln; fi
  done
  mk=$(median <"$work/times.kiln")
  ma=$(median <"$work/times.anchor")
  art=$work/kiln.$kext
  [ ! -d "$art" ] || art=$(find "$art" -name "*.$ext" | head -n 1)
  ks=$(size_of "$art" "$kind")
  as=$(size_of "$work/anchor.$ext" "$kind")
  ratio=$(awk -v a="$ma" -v k="$mk" 'BEGIN { printf "%.2f", a / k }')
  sratio=$(awk -v a="$as" -v k="$ks" 'BEGIN { printf "%.3f", k / a }')
  smax=$([ "$kind" = compressed ] && echo 1.02 || echo 1.00)
  verdict=$(awk -v r="$ratio" -v s="$sratio" -v m="$smax" 'BEGIN { print (r >= 4 ? "met" : "MISSED") "/" (s <= m ? "met" : "MISSED") }')
  report+="$(printf '%-11s kiln %7.3f s  anchor %7.3f s  = %5.2fx (>= 4x: %s)   size %s / %s bytes = %sx (<= %sx: %s)' \
    "$p" "$mk" "$ma" "$ratio" "${verdict%/*}" "$ks" "$as" "$sratio" "$smax" "${verdict#*/}")"$'\n'
  msg "$(printf '%s' "$report" | tail -n 1)"
  table+=$'\n'"| $p | $ext | $mk | $ma | ${ratio}x | $ks | $as | ${sratio}x |"
  tsv+="$p	$ext	$kind	$mk	$ma	$ks	$as"$'\n'
  rm -rf "$work"/kiln.* "$work"/anchor.*
done

cat <<EOF

== every profile end to end, $corpus_size corpus: kiln build --profile P vs nixpkgs' pipeline modelled, $runs runs each ==
machine   $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r)
kiln      $kiln (git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)), --threads $threads
anchor    $(mkfs.ext4 -V 2>&1 | head -n 1); $(qemu-img --version | head -n 1); tar $(tar --version | head -n 1 | awk '{print $NF}'); gzip $(gzip --version | head -n 1 | awk '{print $NF}')
corpus    $(find "$store" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l) store paths, $(find "$store" -type f | wc -l) files, $(du -sb "$store" | cut -f1) bytes

median wall seconds, sizes (raw and VHD: bytes allocated; compressed: file length)
$report
$table
EOF
[ -z "${RESULTS:-}" ] || printf '%s' "$tsv" >"$RESULTS"
