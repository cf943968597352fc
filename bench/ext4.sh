#!/usr/bin/env bash
# Benchmarks kiln's ext4 writer against `mkfs.ext4 -d` and against a copy bound (read every file once, write
# it all into one file), on a store of real Debian packages. Prints numbers and ratios; never asserts timings.
#
# Usage: bench/ext4.sh [small|medium|large] [RUNS]       (defaults: large, 5)
#
# Environment (all optional):
#   BENCH_DIR   where the corpus is cached and the images are written (default /var/tmp/kiln-bench)
#   MAKE_STORE  corpus builder (default /work/shared/bench/make-store.sh if present, else a built-in copy)
#   KILN        a kiln binary to use instead of building one with cargo
#   THREADS     kiln's --threads (default: nproc)
#   BENCH_KEEP  if 1, keep the work directory (images and logs) instead of deleting it
#   RESULTS     also write the medians as tab-separated values to this file (bench/report reads it)
#
# Exits non-zero only if something failed to run (a build, the corpus, kiln, mkfs, the copy); missed targets
# are reported, not failed. See bench/README.md.
set -euo pipefail
export LC_ALL=C # '.' as the decimal separator for EPOCHREALTIME and awk; byte-wise sort

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

size=${1:-large}
runs=${2:-5}
case $size in small | medium | large) ;; *) die "unknown corpus size '$size' (usage: $0 [small|medium|large] [RUNS])" ;; esac
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
[ $# -le 2 ] || die "too many arguments (usage: $0 [small|medium|large] [RUNS])"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=bench/closure-info.sh
source "$here/closure-info.sh"
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
corpus=$bench_dir/$size
store=$corpus/nix/store
threads=${THREADS:-$(nproc)}
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, not '$threads'"

# Everything created on the way that must go if the script stops early.
cleanup_paths=()
cleanup() {
  local p
  for p in "${cleanup_paths[@]}"; do
    [ -e "$p" ] || [ -L "$p" ] || continue
    chmod -R u+w "$p" 2>/dev/null || true
    rm -rf "$p"
  done
}
trap cleanup EXIT

# --- Tools ----------------------------------------------------------------------------------------------------
export PATH=$PATH:/usr/sbin:/sbin
need() { # command debian-package
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install the Debian package '$2' (or run scripts/install-deps)"
}
need mkfs.ext4 e2fsprogs
need dumpe2fs e2fsprogs
need e2fsck e2fsprogs
need python3 python3
need xargs findutils
need find findutils
if [ ! -x /usr/bin/time ]; then
  msg "/usr/bin/time is missing: installing Debian's 'time' package"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "/usr/bin/time is missing and this is not root: apt-get install time"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q time >&2 ||
    { "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q time >&2; } ||
    die "could not install the 'time' package"
  [ -x /usr/bin/time ] || die "/usr/bin/time still missing after installing 'time'"
fi

# --- kiln -----------------------------------------------------------------------------------------------------
if [ -n "${KILN:-}" ]; then
  kiln=$KILN
  msg "using KILN=$kiln (not building)"
else
  command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain, or set KILN to a kiln binary)"
  msg "building kiln: cargo build --release -p kiln --locked"
  (cd "$repo" && cargo build --release -p kiln --locked >&2) || die "cargo build --release -p kiln --locked failed"
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac
  kiln=$target_dir/release/kiln
fi
[ -x "$kiln" ] || die "kiln binary '$kiln' is missing or not executable"

# --- Corpus ---------------------------------------------------------------------------------------------------
# 32 characters of Nix's base-32 alphabet derived from a name (the scheme of make-store.sh).
nixhash() {
  python3 -c '
import hashlib, sys
a = "0123456789abcdfghijklmnpqrsvwxyz"
h = int.from_bytes(hashlib.sha256(sys.argv[1].encode()).digest()[:20], "big")
print("".join(a[(h >> (5 * i)) & 31] for i in range(32)))' "$1"
}

# A copy of /work/shared/bench/make-store.sh, used when that file is not on this machine (same packages).
builtin_make_store() {
  cat <<'MAKE_STORE_EOF'
#!/usr/bin/env bash
set -euo pipefail
out=${1:?usage: make-store.sh OUT [small|medium|large]}
size=${2:-medium}
small=(coreutils bash libc6 zstd xz-utils gzip sed grep findutils tzdata)
medium=("${small[@]}" systemd libsystemd-shared util-linux e2fsprogs iproute2
  openssh-server openssh-client openssl libssl3 ca-certificates curl libcurl4
  perl-base perl-modules-5.36 python3.11-minimal libpython3.11-minimal
  libpython3.11-stdlib nginx-common nginx-core redis-server redis-tools
  postgresql-15 postgresql-client-15 libpq5 vim-runtime git git-man
  "$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image/{print $2; exit}')")
large=("${medium[@]}" libllvm14 gcc-12 cpp-12 libgcc-12-dev locales
  python3-pip python3-setuptools firmware-linux-free libicu72 libx11-data
  manpages man-db groff-base python3-botocore
  "$(apt-cache depends "$(apt-cache depends linux-headers-amd64 | awk '/Depends:/{print $2; exit}')" | awk '/Depends: linux-headers-.*-common/{print $2; exit}')")
case $size in small) pkgs=("${small[@]}");; medium) pkgs=("${medium[@]}");;
  large) pkgs=("${large[@]}");; *) echo "unknown size $size" >&2; exit 2;; esac
cache=${DEB_CACHE:-$HOME/.cache/bench-debs}
mkdir -p "$cache" "$out/nix/store"
(cd "$cache" && for p in "${pkgs[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q -o APT::Sandbox::User=root "$p" >/dev/null; done)
nixhash() {
  python3 - "$1" <<'PY'
import hashlib, sys
a = "0123456789abcdfghijklmnpqrsvwxyz"
h = int.from_bytes(hashlib.sha256(sys.argv[1].encode()).digest()[:20], "big")
print("".join(a[(h >> (5 * i)) & 31] for i in range(32)))
PY
}
for p in "${pkgs[@]}"; do
  deb=$(ls "$cache/${p}"_*.deb | head -1)
  ver=$(dpkg-deb -f "$deb" Version | tr ':~+' '___')
  dir="$out/nix/store/$(nixhash "$p-$ver")-$p-$ver"
  [ -d "$dir" ] && continue
  mkdir -p "$dir"; dpkg-deb -x "$deb" "$dir"
done
chmod -R a-w "$out/nix/store"/*
echo "$out/nix/store: $(ls "$out/nix/store" | wc -l) paths, $(find "$out/nix/store" | wc -l) entries, $(du -sh "$out/nix/store" | cut -f1)"
MAKE_STORE_EOF
}

mkdir -p "$bench_dir"
if [ ! -d "$store" ]; then
  # Built under a temporary name and renamed when complete, so an interrupted build is never used.
  tmp=$corpus.tmp.$$
  cleanup_paths+=("$tmp")
  if [ -n "${MAKE_STORE:-}" ]; then
    make_store=$MAKE_STORE
  elif [ -f /work/shared/bench/make-store.sh ]; then
    make_store=/work/shared/bench/make-store.sh
  else
    make_store=$bench_dir/make-store.builtin.sh
    builtin_make_store > "$make_store"
  fi
  [ -f "$make_store" ] || die "MAKE_STORE='$make_store' does not exist"
  need apt-get apt
  need dpkg-deb dpkg
  msg "building the $size corpus in $corpus with $make_store (downloads Debian packages once)"
  bash "$make_store" "$tmp" "$size" >&2 || die "building the corpus with $make_store failed"
  [ -d "$tmp/nix/store" ] || die "$make_store did not create $tmp/nix/store"
  mv "$tmp" "$corpus"
fi

# The NixOS-shaped toplevel kiln needs: refs/<path> -> /nix/store/<path> for every other store path (kiln finds
# the closure by scanning for store hashes when there is no Nix database), a bootspec v1 and an init.
top_name="$(nixhash nixos-system-bench)-nixos-system-bench"
top=$store/$top_name
# Leftovers of an interrupted run (the toplevel is built as a hidden temporary entry in the store).
while IFS= read -r -d '' stale; do
  chmod -R u+w "$stale" 2>/dev/null || true
  rm -rf "$stale"
done < <(find "$store" -mindepth 1 -maxdepth 1 -name '.*.tmp.*' -print0)
mapfile -t paths < <(find "$store" -mindepth 1 -maxdepth 1 ! -name '.*' ! -name "$top_name" -printf '%f\n' | sort)
[ ${#paths[@]} -gt 0 ] || die "the corpus store $store is empty"
toplevel_ok() {
  [ -f "$top/boot.json" ] && [ -f "$top/init" ] && [ -d "$top/refs" ] || return 1
  [ "$(find "$top/refs" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort)" = "$(printf '%s\n' "${paths[@]}")" ]
}
if ! toplevel_ok; then
  msg "adding the toplevel /nix/store/$top_name to the corpus (${#paths[@]} references)"
  # The bootspec's kernel: Debian's kernel image when the corpus has one, else any regular file.
  kernel=$(cd "$store" && find . -mindepth 3 -path './*/boot/vmlinuz-*' -type f | sort | sed -n '1s|^\./||p')
  [ -n "$kernel" ] || kernel=$(cd "$store" && find . -mindepth 2 -type f ! -path "./$top_name/*" | sort | sed -n '1s|^\./||p')
  [ -n "$kernel" ] || die "no regular file in $store to name as the kernel"
  tmp=$store/.$top_name.tmp.$$
  cleanup_paths+=("$tmp")
  chmod u+w "$store"
  mkdir -p "$tmp/refs"
  for p in "${paths[@]}"; do ln -s "/nix/store/$p" "$tmp/refs/$p"; done
  printf '#!/bin/sh\n# Stand-in init of the kiln benchmark toplevel.\nexit 0\n' > "$tmp/init"
  chmod 0555 "$tmp/init"
  cat > "$tmp/boot.json" <<JSON
{
  "org.nixos.bootspec.v1": {
    "init": "/nix/store/$top_name/init",
    "kernel": "/nix/store/$kernel",
    "kernelParams": [],
    "label": "bench",
    "system": "x86_64-linux",
    "toplevel": "/nix/store/$top_name"
  }
}
JSON
  find "$tmp" ! -type l -exec chmod a-w {} +
  if [ -e "$top" ]; then chmod -R u+w "$top" && rm -rf "$top"; fi
  mv "$tmp" "$top"
fi

# What the image holds: names of regular files, directories and symlinks; data bytes of distinct inodes.
read -r n_files n_dirs n_links n_inodes n_bytes < <(
  find "$store" -mindepth 1 -printf '%y %i %s\n' | awk '
    { c[$1]++ }
    $1 == "f" && !($2 in seen) { seen[$2] = 1; n++; b += $3 }
    END { printf "%d %d %d %d %d\n", c["f"], c["d"], c["l"], n, b }')
n_paths=$(( ${#paths[@]} + 1 ))
n_entries=$(( n_files + n_dirs + n_links ))

# --- Warm the page cache --------------------------------------------------------------------------------------
msg "warming the page cache (reading the corpus once)"
find "$store" -mindepth 1 -printf '%y %s %l\n' > /dev/null
find "$store" -type f -print0 | xargs -0 -r cat > /dev/null

# --- Commands -------------------------------------------------------------------------------------------------
work=$(mktemp -d "$bench_dir/run.XXXXXX")
if [ "${BENCH_KEEP:-0}" = 1 ]; then msg "keeping $work (BENCH_KEEP=1)"; else cleanup_paths+=("$work"); fi

scan_cmd=("$kiln" build --system "/nix/store/$top_name" --store-dir "$store" --layout none --format raw
  --size auto --extra-space 0 --threads "$threads" --progress none --output "$work/kiln.img" --force)

# A closureInfo for the corpus (what nixpkgs hands an image builder), made once: kiln's own registration of
# the corpus from a reference scan, taken out of an image it built. The timed runs verify every narHash
# against it while copying, so a wrong entry would fail them.
ci="$bench_dir/$size.closure-info"
if [ ! -s "$ci/registration" ] || [ "$ci/registration" -ot "$store" ]; then
  msg "making a closureInfo for the corpus (once)"
  "${scan_cmd[@]}" --registration-file
  closure_info_from "$work/kiln.img" "$ci"
fi

# The build timed against mkfs: closureInfo given, so each file is read once, hashed and copied.
kiln_cmd=("${scan_cmd[@]}" --closure-info "$ci")
# Informational: kiln's closure discovery and inventory alone, from the closureInfo.
dry_cmd=("${kiln_cmd[@]}" --dry-run)
# The copy bound: every file read once and all of it written into one file, by as many parallel readers as kiln
# has threads (a single cat is no bound for a parallel writer).
copy_cmd=(bash -c 'set -euo pipefail; : > "$2"; find "$1" -type f -print0 | xargs -0 -r -P "$3" -n 512 sh -c '"'"'cat "$@" >> "$0"'"'"' "$2"' copy "$store" "$work/one.bin" "$threads")

# Runs "$@" once under /usr/bin/time; appends "wall-seconds peak-RSS-KiB" to $work/times.NAME.
# Wall time is taken with bash's EPOCHREALTIME (microseconds) around the command; RSS from GNU time's %M.
timed() {
  local name=$1; shift
  local t0 t1 rc=0
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%e %M' -o "$work/time.$name" "$@" > "$work/$name.log" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  if [ $rc -ne 0 ]; then
    printf 'bench: error: %s failed (exit %d):\n  %s\n' "$name" "$rc" "$*" >&2
    sed 's/^/  | /' "$work/$name.log" | tail -n 20 >&2
    exit 1
  fi
  awk -v a="$t0" -v b="$t1" -v n="$name" '{ printf "%.6f %d\n", b - a, $2 }' "$work/time.$name" >> "$work/times.$name"
}

fsck_report() { # image -> prints "clean" or "NOT CLEAN (exit N)" plus the first problems
  local rc=0
  e2fsck -fn "$1" > "$1.fsck" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then echo clean; else
    echo "NOT CLEAN (e2fsck exit $rc; full log in $1.fsck with BENCH_KEEP=1)"
    { grep -v '^Pass\|^e2fsck \|^Checking\|^$' "$1.fsck" || true; } | sed -n '1,8s/^/      /p'
  fi
}

sb_field() { # image field -> value of "field:" in the image's saved `dumpe2fs -h`
  sed -n "s/^$2:[[:space:]]*//p" "$1.dumpe2fs" | sed -n 1p
}

# --- Reference runs (untimed): kiln's geometry, the matching mkfs command, e2fsck of both -------------------
msg "reference run of kiln (untimed)"
rm -f "$work/kiln.img"
timed kiln-ref "${kiln_cmd[@]}"
[ -f "$work/kiln.img" ] || die "kiln exited 0 but wrote no $work/kiln.img"
img_size=$(stat -c %s "$work/kiln.img")
# mkfs.ext4 -d stores every copy of identical files (kiln links them, as `nix-store --optimise` would): it gets
# kiln's size plus what kiln saved that way (the bytes, and a block per extra name for the rounding).
"${kiln_cmd[@]}" --dry-run > "$work/dry.txt" 2>&1 || { cat "$work/dry.txt" >&2; die "kiln --dry-run failed"; }
all_bytes=$(sed -n 's/^contents .* symlinks, \([0-9]*\) bytes.*/\1/p' "$work/dry.txt")
unique_bytes=$(sed -n 's/^hard links .* unique file data \([0-9]*\) bytes.*/\1/p' "$work/dry.txt")
extra_names=$(sed -n 's/^hard links .* groups, \([0-9]*\) extra names.*/\1/p' "$work/dry.txt")
for v in all_bytes unique_bytes extra_names; do [[ ${!v} =~ ^[0-9]+$ ]] || die "cannot read '$v' from kiln --dry-run"; done
mkfs_size=$(( (img_size + all_bytes - unique_bytes + extra_names * 4096 + 4095) / 4096 * 4096 ))
dumpe2fs -h "$work/kiln.img" > "$work/kiln.img.dumpe2fs" 2>&1 || {
  sed -n '1,20s/^/  | /p' "$work/kiln.img.dumpe2fs" >&2
  die "dumpe2fs cannot read kiln's image (is it an ext4 file system?)"
}
kf=$(sb_field "$work/kiln.img" 'Filesystem features')
bs=$(sb_field "$work/kiln.img" 'Block size')
isz=$(sb_field "$work/kiln.img" 'Inode size')
icount=$(sb_field "$work/kiln.img" 'Inode count')
ifree=$(sb_field "$work/kiln.img" 'Free inodes')
bcount=$(sb_field "$work/kiln.img" 'Block count')
bfree=$(sb_field "$work/kiln.img" 'Free blocks')
resv=$(sb_field "$work/kiln.img" 'Reserved block count')
bpg=$(sb_field "$work/kiln.img" 'Blocks per group')
flex=$(sb_field "$work/kiln.img" 'Flex block group size')
jblocks=$(sb_field "$work/kiln.img" 'Total journal blocks')
for v in bs isz icount bcount bpg; do [[ ${!v} =~ ^[0-9]+$ ]] || die "cannot read '$v' from dumpe2fs -h of kiln's image"; done
kiln_fsck=$(fsck_report "$work/kiln.img")
rm -f "$work/kiln.img"

# mkfs.ext4 with kiln's geometry: exactly kiln's feature set ("none," first clears mke2fs.conf's defaults),
# block and inode size, inode count, blocks per group, flex_bg size, reserved blocks, journal size, image size.
mkfs_cmd=(mkfs.ext4 -q -F -b "$bs" -I "$isz" -N "$icount" -g "$bpg" -O "none,${kf// /,}")
if [[ $resv =~ ^[0-9]+$ ]]; then
  mkfs_cmd+=(-m "$(awk -v r="$resv" -v b="$bcount" 'BEGIN { p = 100 * r / b; printf (p == 0 ? "0" : "%.4f"), p }')")
fi
[[ $flex =~ ^[0-9]+$ ]] && mkfs_cmd+=(-G "$flex")
if [[ " $kf " == *" has_journal "* ]] && [[ $jblocks =~ ^[0-9]+$ ]]; then
  jmib=$(( (jblocks * bs + (1 << 20) - 1) >> 20 ))
  mkfs_cmd+=(-J "size=$jmib")
fi
mkfs_cmd+=(-E lazy_itable_init=1,lazy_journal_init=1,nodiscard -d "$corpus" "$work/mkfs.img")

msg "reference run of mkfs.ext4 -d (untimed)"
rm -f "$work/mkfs.img"; truncate -s "$mkfs_size" "$work/mkfs.img"
timed mkfs-ref "${mkfs_cmd[@]}"
dumpe2fs -h "$work/mkfs.img" > "$work/mkfs.img.dumpe2fs" 2>&1 || die "dumpe2fs cannot read mkfs.ext4's image"
mf=$(sb_field "$work/mkfs.img" 'Filesystem features')
mkfs_icount=$(sb_field "$work/mkfs.img" 'Inode count')
mkfs_ifree=$(sb_field "$work/mkfs.img" 'Free inodes')
mkfs_bfree=$(sb_field "$work/mkfs.img" 'Free blocks')
mkfs_fsck=$(fsck_report "$work/mkfs.img")
rm -f "$work/mkfs.img"
sorted_words() { tr ' ' '\n' <<< "$1" | sed '/^$/d' | sort | tr '\n' ' ' | sed 's/ $//'; }
features_note="same features"
[ "$(sorted_words "$kf")" = "$(sorted_words "$mf")" ] ||
  features_note="FEATURES DIFFER: kiln [$(sorted_words "$kf")] vs mkfs [$(sorted_words "$mf")]"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Timed runs, interleaved (the order rotates each round), warm cache -------------------------------------
tools=(kiln mkfs copy dry)
for ((i = 0; i < runs; i++)); do
  msg "round $((i + 1))/$runs"
  for ((j = 0; j < ${#tools[@]}; j++)); do
    t=${tools[(i + j) % ${#tools[@]}]}
    case $t in
      kiln) rm -f "$work/kiln.img"; timed kiln "${kiln_cmd[@]}"; rm -f "$work/kiln.img" ;;
      mkfs) rm -f "$work/mkfs.img"; truncate -s "$mkfs_size" "$work/mkfs.img"
            timed mkfs "${mkfs_cmd[@]}"; rm -f "$work/mkfs.img" ;;
      copy) rm -f "$work/one.bin"; timed copy "${copy_cmd[@]}"; rm -f "$work/one.bin" ;;
      dry) timed dry "${dry_cmd[@]}" ;;
    esac
    sync # outside the timings: no write-back of one run's leftovers during the next
  done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report ---------------------------------------------------------------------------------------------------
median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{ print $c }' "$work/times.$1"; }
stat_of() { # tool -> "median min max peak-rss-KiB"
  printf '%s %.3f %.3f %s\n' "$(col "$1" 1 | median)" "$(col "$1" 1 | sort -n | sed -n 1p)" \
    "$(col "$1" 1 | sort -n | tail -n 1)" "$(col "$1" 2 | sort -n | tail -n 1)"
}
read -r k_med k_min k_max k_rss < <(stat_of kiln)
read -r m_med m_min m_max m_rss < <(stat_of mkfs)
read -r c_med c_min c_max c_rss < <(stat_of copy)
read -r d_med d_min d_max d_rss < <(stat_of dry)
human() { awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ }
  printf (i == 1 ? "%d %s" : "%.2f %s"), b, u[i] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
verdict() { awk -v x="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == ">=" ? x >= t : x <= t); print (ok ? "met" : "MISSED") }'; }
mkfs_over_kiln=$(ratio "$m_med" "$k_med")
kiln_over_copy=$(ratio "$k_med" "$c_med")
mkfs_over_kiln_best=$(ratio "$m_min" "$k_min")
kiln_over_copy_best=$(ratio "$k_min" "$c_min")
k_rss_mib=$(awk -v k="$k_rss" 'BEGIN { printf "%.1f", k / 1024 }')
k_rss_per_file=$(awk -v k="$k_rss" -v n="$n_files" 'BEGIN { printf "%.2f", (n > 0 ? k / n : 0) }')
kiln_version=$("$kiln" --version 2>/dev/null | head -n 1 || true)
git_rev=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)

cat <<EOF

== kiln ext4 benchmark: corpus '$size', $runs runs, warm page cache ==
machine   $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r); work dir on $(df --output=fstype "$work" | tail -n 1) ($bench_dir)
kiln      ${kiln_version:-kiln} (git $git_rev), --threads $threads
mkfs      $(mkfs.ext4 -V 2>&1 | head -n 1)
corpus    $corpus: $n_paths store paths, $n_files files ($n_inodes distinct inodes), $n_dirs directories, $n_links symlinks
          $n_bytes bytes of file data ($(human "$n_bytes"))
image     $img_size bytes ($(human "$img_size")), kiln --size auto --extra-space 0; block $bs, inode $isz, $icount inodes, $bcount blocks
          mkfs.ext4 image $mkfs_size bytes: kiln's plus the $((all_bytes - unique_bytes)) bytes in $extra_names names kiln links to identical files
          features: $kf ($features_note)
          used inodes: kiln $((icount - ifree)), mkfs $((mkfs_icount - mkfs_ifree)) (corpus entries: $n_entries); free blocks: kiln $bfree, mkfs $mkfs_bfree

                       median s     min s     max s   peak RSS
kiln                 $(printf '%9s %9s %9s %10s' "$k_med" "$k_min" "$k_max" "$(human $((k_rss * 1024)))")
mkfs.ext4 -d         $(printf '%9s %9s %9s %10s' "$m_med" "$m_min" "$m_max" "$(human $((m_rss * 1024)))")
copy bound (xargs -P) $(printf '%9s %9s %9s %10s' "$c_med" "$c_min" "$c_max" "-")
kiln --dry-run       $(printf '%9s %9s %9s %10s' "$d_med" "$d_min" "$d_max" "$(human $((d_rss * 1024)))")   (closure from closureInfo + inventory, part of kiln's time)
all runs (s, in order)
  kiln               $(awk '{ printf " %.3f", $1 }' "$work/times.kiln")
  mkfs.ext4 -d       $(awk '{ printf " %.3f", $1 }' "$work/times.mkfs")
  copy bound         $(awk '{ printf " %.3f", $1 }' "$work/times.copy")
  kiln --dry-run     $(awk '{ printf " %.3f", $1 }' "$work/times.dry")
load average (1/5/15 min) before the timed runs: $load_before; after: $load_after

mkfs / kiln      ${mkfs_over_kiln}x   target >= 5x     $(verdict "$mkfs_over_kiln" ">=" 5)   (of medians; of best runs ${mkfs_over_kiln_best}x)
kiln / copy      ${kiln_over_copy}x   target <= 1.15x  $(verdict "$kiln_over_copy" "<=" 1.15)   (of medians; of best runs ${kiln_over_copy_best}x)
kiln peak RSS    ${k_rss_mib} MiB   target <= 200 MiB   $(verdict "$k_rss_mib" "<=" 200)
kiln RSS / file  ${k_rss_per_file} KiB   target <= 1 KiB   $(verdict "$k_rss_per_file" "<=" 1)

e2fsck -fn kiln image: $kiln_fsck
e2fsck -fn mkfs image: $mkfs_fsck

Notes: wall times of single runs with the corpus in the page cache; writes go to the page cache (no sync inside
a timing; a sync between runs). mkfs.ext4 runs with -E lazy_itable_init=1,lazy_journal_init=1,nodiscard,
because kiln leaves unused inode tables and the journal as holes (effectively lazy); it gets kiln's image size
(plus what kiln saves by linking identical files, which mkfs.ext4 -d stores once per name), features, inode
count, journal size and group geometry. The copy bound is
'find STORE -type f -print0 | xargs -0 -P THREADS -n 512', each batch appended by 'cat FILES >> one.bin'. Peak RSS is the largest of GNU time's %M over the runs.
kiln runs with the corpus's closureInfo (as nixpkgs' image builders hand it one): every file is read once,
copied and hashed, and every store path's narHash is verified against the registration. kiln --dry-run is not a
target. Without a closureInfo or Nix database kiln would first scan every file for store hashes and hash them.
EOF
# For bench/report: the medians and peak RSS, tab-separated.
if [ -n "${RESULTS:-}" ]; then
  printf 'corpus\tfiles\tbytes\tthreads\tkiln_s\tkiln_rss_kib\tmkfs_s\tcopy_s\tkiln_fsck\n%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$size" "$n_files" "$n_bytes" "$threads" "$k_med" "$k_rss" "$m_med" "$c_med" "$kiln_fsck" >"$RESULTS"
fi
case $kiln_fsck in clean) ;; *) msg "WARNING: kiln's image is not clean under e2fsck -fn: its timings mean little" ;; esac
