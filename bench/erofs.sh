#!/usr/bin/env bash
# Benchmarks kiln's verified store against what nixpkgs' verity store module runs for it: the corpus as a
# NixOS system built with `kiln build --layout efi-verity` (the whole disk: ESP, the store as EROFS, its
# dm-verity tree, the ext4 root; every narHash checked while copying) against `mkfs.erofs` of the same store
# plus `veritysetup format` of the result (the store partition and its tree alone), in alternation, the
# corpus in the page cache. Both timings end with the output on disk: kiln flushes its image before it renames
# it into place, and the anchor's two files are flushed (`sync FILE…`) inside its timing; the anchor's time
# before that flush is printed too. A sync before every timing. Prints median wall times, the ratios and the
# sizes; never asserts timings.
#
# Usage: bench/erofs.sh [RUNS]                                   (default 3)
#
# Environment (all optional):
#   COMPRESS    none (default) or lz4: kiln --store-compression lz4 against mkfs.erofs -zlz4
#   CORPUS      small, medium or large (default large)
#   BENCH_DIR   corpus cache and work directory (default /var/tmp/kiln-bench)
#   MAKE_STORE  the corpus builder (default /work/shared/bench/make-store.sh)
#   KILN        a kiln binary to use instead of building one
#   THREADS     kiln's --threads (default: nproc)
set -euo pipefail
export LC_ALL=C

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
threads=${THREADS:-$(nproc)}
export PATH=$PATH:/usr/sbin:/sbin
for t in mkfs.erofs:erofs-utils veritysetup:cryptsetup-bin debugfs:e2fsprogs python3:python3; do
  command -v "${t%%:*}" >/dev/null || die "'${t%%:*}' not found: install the Debian package ${t#*:}"
done
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || die "install the Debian package 'systemd-boot-efi'"
corpus_size=${CORPUS:-large}
compress=${COMPRESS:-none}
case $compress in
  none) kiln_z=(); mkfs_z=(); target=3 ;;
  lz4) kiln_z=(--store-compression lz4); mkfs_z=(-zlz4); target=2 ;;
  *) die "COMPRESS must be none or lz4, not '$compress'" ;;
esac
# shellcheck source=bench/common.sh
source "$here/common.sh"
# shellcheck source=bench/closure-info.sh
source "$here/closure-info.sh"

own_store verity

# A NixOS system over the corpus: the host's kernel and systemd-boot as store paths of their own.
chmod u+w "$store"
host_boot verity-bench
top=$(toplevel nixos-system-verity-bench-24.11 x86_64-linux "$kernel/bzImage" "$systemd")
chmod a-w "$store"

work=$(mktemp -d "$bench_dir/erofs-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A closureInfo for the system (what nixpkgs hands an image builder), made once from kiln's own registration
# of a reference scan: the timed builds check every narHash against it while copying.
ci=$bench_dir/$corpus_size.verity-closure-info
system_closure_info "$top" "$ci" "$work"

msg "warming the page cache (reading the corpus once)"
find "$store" -type f -print0 | xargs -0 -r cat >/dev/null

run_kiln() {
  local start end
  rm -f "$work/kiln.img"
  sync
  start=$EPOCHREALTIME
  "$kiln" build --system "/nix/store/$top" --store-dir "$store" --closure-info "$ci" --layout efi-verity \
    "${kiln_z[@]}" --threads "$threads" --progress none --force --output "$work/kiln.img" >"$work/log.kiln" 2>&1 ||
    { cat "$work/log.kiln" >&2; die "kiln build failed"; }
  end=$EPOCHREALTIME
  seconds "$start" "$end" >>"$work/times.kiln"
}
run_anchor() {
  local start mid end synced
  rm -f "$work/store.erofs" "$work/hashes"
  sync
  start=$EPOCHREALTIME
  # What systemd-repart does for a Format=erofs partition (it runs mkfs.erofs), with the store's own times and
  # owners, then Verity=hash: veritysetup format over the filesystem.
  mkfs.erofs "${mkfs_z[@]}" -T1 --all-root -U 5b6f1d8e-3c5a-4d2e-9f00-000000000001 "$work/store.erofs" "$corpus" \
    >"$work/log.mkfs" 2>&1 || { cat "$work/log.mkfs" >&2; die "mkfs.erofs failed"; }
  mid=$EPOCHREALTIME
  veritysetup format "$work/store.erofs" "$work/hashes" >"$work/log.verity" 2>&1 ||
    { cat "$work/log.verity" >&2; die "veritysetup format failed"; }
  end=$EPOCHREALTIME
  # kiln's time ends with its output on disk (it flushes before it renames): so does the anchor's.
  sync "$work/store.erofs" "$work/hashes"
  synced=$EPOCHREALTIME
  seconds "$start" "$synced" >>"$work/times.anchor"
  seconds "$start" "$end" >>"$work/times.unsynced"
  seconds "$start" "$mid" >>"$work/times.mkfs"
}
msg "one untimed run of each"
run_kiln
run_anchor
rm -f "$work"/times.*
for ((i = 1; i <= runs; i++)); do
  msg "round $i of $runs"
  if ((i % 2)); then run_kiln; run_anchor; else run_anchor; run_kiln; fi
done

mk=$(median <"$work/times.kiln")
ma=$(median <"$work/times.anchor")
mm=$(median <"$work/times.mkfs")
mu=$(median <"$work/times.unsynced")
store_part=$(sfdisk --json "$work/kiln.img" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    if p.get("name") == "store":
        print(p["start"] * 512, p["size"] * 512)')
kiln_fs=$("$kiln" inspect --json "$work/kiln.img" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitions"]:
    fs = p.get("filesystem") or {}
    if fs.get("kind") == "erofs":
        print(fs["size"])')
cat <<EOF

== verified store of the $corpus_size corpus (compression: $compress): kiln build --layout efi-verity ${kiln_z[*]} vs mkfs.erofs ${mkfs_z[*]} + veritysetup format, $runs runs each ==
machine   $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r)
kiln      $kiln (git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)), --threads $threads
anchor    mkfs.erofs $(dpkg-query -W -f '${Version}' erofs-utils 2>/dev/null || echo "?"); $(veritysetup --version)
corpus    $(find "$store" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l) store paths, $(find "$store" -type f | wc -l) files, $(du -sb "$store" | cut -f1) bytes

median wall seconds
  kiln build --layout efi-verity (whole disk)   $mk    (runs: $(tr '\n' ' ' <"$work/times.kiln"))
  mkfs.erofs + veritysetup format + sync        $ma    (runs: $(tr '\n' ' ' <"$work/times.anchor"))
    of which mkfs.erofs                         $mm
    before the sync                             $mu    (anchor / kiln = $(awk -v a="$mu" -v k="$mk" 'BEGIN { printf "%.2f", a / k }')x, for information)

ratio     anchor / kiln = $(awk -v a="$ma" -v k="$mk" 'BEGIN { printf "%.2f", a / k }')x   (target >= ${target}x: $(awk -v a="$ma" -v k="$mk" -v t="$target" 'BEGIN { print (a / k >= t ? "met" : "MISSED") }'))
sizes     kiln's EROFS $kiln_fs bytes (partition $store_part), mkfs.erofs $(stat -c %s "$work/store.erofs") bytes = $(awk -v k="$kiln_fs" -v m="$(stat -c %s "$work/store.erofs")" 'BEGIN { printf "%.3f", k / m }')x   (target <= 1.02x)
EOF
