#!/usr/bin/env bash
# Benchmarks how kiln's ext4 store writer scales with the number of files, against `mkfs.ext4 -d`, on synthetic
# stores of 100k, 300k and 1M files shaped like the large corpus: file sizes drawn from its files' sizes,
# directories, symlinks, hard links and store paths in its proportions (measured from the corpus when the
# script runs). Also two shapes that break writers: one directory of 100,000 entries (htree depth, hash
# collisions) and a 6 GiB sparse file.
#
# The largest tenth of the corpus's files (its shared libraries and archives: most of its bytes) are left out
# of the size distribution, so a million files (about 8 GB) and the image written from them fit in this
# machine's page cache at every size: the curve then shows what grows with the number of files, not the disk.
# The bytes themselves are bench/ext4.sh's subject.
#
# For each store: kiln build --layout none with a closureInfo (every narHash checked while copying), then
# mkfs.ext4 -d with kiln's image size and inode count, each RUNS times, the store in the page cache, a sync
# before each; wall time and peak RSS (GNU time's %M); e2fsck -fn of kiln's image outside the timings.
# Prints a table and the targets: kiln's time per file at 1M <= 1.1x its time per file at 100k, RSS growth
# <= 512 bytes per file (the slope between 100k and 1M: "per file plus a constant"), mkfs / kiln >= 5x at 1M.
# Never asserts timings.
#
# Usage: bench/scale.sh [RUNS] [FILES...]              (default 1; 100000 300000 1000000)
#
# Environment (all optional):
#   BENCH_DIR   corpus cache and work directory (default /var/tmp/kiln-bench); the stores are made here
#   MAKE_STORE  the corpus builder (default /work/shared/bench/make-store.sh)
#   KILN        a kiln binary to use instead of building one
#   THREADS     kiln's --threads (default: nproc)
#   RESULTS     also write the rows as tab-separated values to this file (bench/report reads it)
#   SHAPES      0 to skip the 100k-entry directory and the sparse file
#   ANCHOR_LIMIT  seconds after which a mkfs.ext4 run is stopped and recorded as "more than" (default 300:
#               mkfs.ext4 -d takes about 9 minutes for the 100k-entry directory here)
#   DIRTY       keep: leave the kernel's dirty-page limits as they are (see below)
set -euo pipefail
export LC_ALL=C
export PATH=$PATH:/usr/sbin:/sbin

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

runs=${1:-1}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100000 300000 1000000)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
threads=${THREADS:-$(nproc)}
for t in mkfs.ext4:e2fsprogs e2fsck:e2fsprogs dumpe2fs:e2fsprogs debugfs:e2fsprogs python3:python3 /usr/bin/time:time; do
  command -v "${t%%:*}" >/dev/null || die "'${t%%:*}' not found: install the Debian package ${t#*:}"
done
corpus_size=large
# shellcheck source=bench/common.sh
source "$here/common.sh"
# shellcheck source=bench/closure-info.sh
source "$here/closure-info.sh"
large_store=$store

work=$(mktemp -d "$bench_dir/scale-bench.XXXXXX")
# The kernel starts throttling writers once 20% of memory is dirty (Debian's vm.dirty_ratio): the image of a
# million files (8.6 GB) would then be written at the disk's speed, and the curve would measure the disk. As
# root, both limits are raised for the run (DIRTY=keep leaves them) and restored at exit.
dirty_saved=
if [ "${DIRTY:-raise}" != keep ] && [ -w /proc/sys/vm/dirty_ratio ]; then
  dirty_saved="$(cat /proc/sys/vm/dirty_ratio) $(cat /proc/sys/vm/dirty_background_ratio)"
  echo 80 >/proc/sys/vm/dirty_ratio
  echo 70 >/proc/sys/vm/dirty_background_ratio
fi
cleanup() {
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
  if [ -n "$dirty_saved" ]; then
    echo "${dirty_saved% *}" >/proc/sys/vm/dirty_ratio
    echo "${dirty_saved#* }" >/proc/sys/vm/dirty_background_ratio
  fi
}
trap cleanup EXIT

# The corpus's shape, measured once: sizes of its distinct files below the 90th percentile, and per file, the
# share of directories, symlinks, extra hard-link names and store paths.
shape=$work/shape.json
msg "measuring the large corpus's shape"
python3 - "$large_store" >"$shape" <<'PY'
import json, os, sys
store = sys.argv[1]
sizes, seen, dirs, links, names, paths = [], set(), 0, 0, 0, 0
for top in sorted(os.listdir(store)):
    if top.startswith(".") or "-nixos-system-" in top or top.endswith("bench"):
        continue
    paths += 1
    for root, ds, fs in os.walk(os.path.join(store, top)):
        dirs += len(ds)
        for f in fs:
            st = os.lstat(os.path.join(root, f))
            if os.path.islink(os.path.join(root, f)):
                links += 1
            elif (st.st_dev, st.st_ino) in seen:
                names += 1
            else:
                seen.add((st.st_dev, st.st_ino))
                sizes.append(st.st_size)
sizes.sort()
files = len(sizes)
json.dump({"sizes": sizes[: files * 9 // 10], "files": files, "dirs": dirs / files, "symlinks": links / files,
           "hardlinks": names / files, "paths": paths / files}, sys.stdout)
PY

# gen STORE FILES: a synthetic store of FILES distinct files shaped like the corpus.
gen() {
  python3 - "$1" "$2" "$shape" <<'PY'
import hashlib, json, os, random, sys
store, n, shape = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
rng = random.Random(n)
alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
def nixhash(name):
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:20], "big")
    return "".join(alphabet[(h >> (5 * i)) & 31] for i in range(32))
pool = rng.randbytes(1 << 20) * 2
sizes = shape["sizes"]
npaths = max(1, round(n * shape["paths"]))
ndirs, nlinks, nhard = round(n * shape["dirs"]), round(n * shape["symlinks"]), round(n * shape["hardlinks"])
paths = []
for p in range(npaths):
    d = os.path.join(store, "%s-scale-%d-pkg-%d" % (nixhash("scale-%d-%d" % (n, p)), n, p))
    os.makedirs(d)
    paths.append([d])
for i in range(ndirs):
    dirs = paths[rng.randrange(npaths)]
    d = os.path.join(rng.choice(dirs), "d%d" % i)
    os.mkdir(d)
    dirs.append(d)
files = []
for i in range(n):
    dirs = paths[rng.randrange(npaths)]
    f = os.path.join(rng.choice(dirs), "f%d.so" % i)
    size = sizes[rng.randrange(len(sizes))]
    head = b"%d\n" % i
    at = rng.randrange(1 << 20)
    data = (head + pool[at:at + max(0, size - len(head))])[:size]
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if i % 7 == 0 else 0o644)
    os.write(fd, data)
    os.close(fd)
    files.append(f)
for i in range(nhard):
    src = files[rng.randrange(n)]
    os.link(src, os.path.join(os.path.dirname(src), "h%d" % i))
for i in range(nlinks):
    dirs = paths[rng.randrange(npaths)]
    os.symlink("../lib/f%d.so" % rng.randrange(n), os.path.join(rng.choice(dirs), "l%d" % i))
PY
}

# system NAME: a toplevel over every store path of $store, printed.
system() {
  local k
  printf 'not a kernel\n' >"$work/bzImage"
  k=$(store_path "kernel-$1" "$work/bzImage" bzImage)
  toplevel "nixos-system-$1" x86_64-linux "$k/bzImage" "$k"
}

timed() { # NAME LIMIT CMD...: appends "seconds peak-RSS-KiB" to $work/times.NAME; a run stopped at LIMIT
  # seconds is recorded as taking LIMIT (a lower bound: the table then says ">")
  local name=$1 limit=$2 start end rc=0
  shift 2
  sync
  start=$EPOCHREALTIME
  timeout "$limit" /usr/bin/time -f %M -o "$work/rss" "$@" >"$work/log.$name" 2>&1 || rc=$?
  end=$EPOCHREALTIME
  if [ "$rc" = 124 ]; then
    msg "$name stopped after $limit s"
    echo "$limit 0 stopped" >>"$work/times.$name"
    return
  fi
  [ "$rc" = 0 ] || { cat "$work/log.$name" >&2; die "$name failed"; }
  echo "$(seconds "$start" "$end") $(cat "$work/rss")" >>"$work/times.$name"
}

rows=()
# measure LABEL FILES: builds the store at $work/s (made by the caller) both ways; appends a row.
measure() {
  local label=$1 files=$2 top ci img=$work/img k_s k_rss m_s fsck bytes inodes
  store=$work/s/nix/store
  top=$(system "$label")
  ci=$work/ci
  system_closure_info "$top" "$ci" "$work"
  find "$store" -type f -print0 | xargs -0 -r cat >/dev/null
  rm -f "$work"/times.*
  for ((i = 1; i <= runs; i++)); do
    msg "$label: kiln, run $i of $runs"
    rm -f "$img"
    timed kiln 3600 "$kiln" build --system "/nix/store/$top" --store-dir "$store" --closure-info "$ci" --layout none \
      --threads "$threads" --progress none --force --output "$img"
  done
  fsck=$(e2fsck -fn "$img" >"$work/log.fsck" 2>&1 && echo clean || echo "NOT CLEAN")
  bytes=$(stat -c %s "$img")
  inodes=$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Inode count/ { gsub(/ /, "", $2); print $2 }')
  rm -f "$img"
  for ((i = 1; i <= runs; i++)); do
    msg "$label: mkfs.ext4 -d, run $i of $runs"
    rm -f "$img"
    timed mkfs "${ANCHOR_LIMIT:-300}" mkfs.ext4 -q -F -b 4096 -N "$inodes" -E lazy_itable_init=1,lazy_journal_init=1,nodiscard \
      -d "$work/s" "$img" "$((bytes / 1024))k"
  done
  rm -f "$img"
  k_s=$(awk '{ print $1 }' "$work/times.kiln" | median)
  k_rss=$(awk '{ print $2 }' "$work/times.kiln" | sort -n | tail -n 1)
  m_s=$(awk '{ print $1 }' "$work/times.mkfs" | median)
  ! grep -q stopped "$work/times.mkfs" || m_s=">$m_s"
  rows+=("$label	$files	$(du -sb "$store" | cut -f1)	$k_s	$k_rss	$m_s	$fsck")
  chmod -R u+w "$work/s"
  rm -rf "$work/s" "$ci"
}

for n in "${counts[@]}"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "FILES must be positive integers, not '$n'"
  msg "making a store of $n files"
  mkdir -p "$work/s/nix/store"
  gen "$work/s/nix/store" "$n"
  measure "files-$n" "$n"
done
if [ "${SHAPES:-1}" != 0 ]; then
  msg "making a store with one directory of 100,000 entries"
  mkdir -p "$work/s/nix/store"
  python3 - "$work/s/nix/store/$(nixhash bigdir)-bigdir" <<'PY'
import os, sys
d = os.path.join(sys.argv[1], "share", "entries")
os.makedirs(d)
for i in range(100000):
    with open(os.path.join(d, "entry-%06d-%s" % (i, "x" * (i % 40))), "wb") as f:
        f.write(b"%d" % i)
PY
  measure bigdir-100k 100000
  msg "making a store with a 6 GiB sparse file"
  mkdir -p "$work/s/nix/store/$(nixhash sparse)-sparse"
  python3 - "$work/s/nix/store/$(nixhash sparse)-sparse/disk.img" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    for at in (0, 3 << 30, (6 << 30) - (1 << 20)):
        f.seek(at)
        f.write(os.urandom(1 << 20))
    f.truncate(6 << 30)
PY
  measure sparse-6GiB 1
fi

{
  printf 'case\tfiles\tbytes\tkiln_s\tkiln_rss_kib\tmkfs_s\tkiln_fsck\n'
  printf '%s\n' "${rows[@]}"
} >"$work/rows.tsv"
[ -z "${RESULTS:-}" ] || cp "$work/rows.tsv" "$RESULTS"

python3 - "$work/rows.tsv" "$runs" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("\n== scale: kiln build --layout none vs mkfs.ext4 -d, synthetic stores shaped like the large corpus, %s run(s) each ==" % sys.argv[2])
print("| case | files | bytes | kiln s | kiln us/file | kiln peak RSS | mkfs.ext4 -d s | mkfs / kiln | e2fsck -fn (kiln) |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    f, k, m = int(r["files"]), float(r["kiln_s"]), float(r["mkfs_s"].lstrip(">"))
    gt = ">" if r["mkfs_s"].startswith(">") else ""
    print("| %s | %d | %d | %.3f | %.2f | %.1f MiB | %s%.3f | %s%.2fx | %s |" % (
        r["case"], f, int(r["bytes"]), k, k / f * 1e6, int(r["kiln_rss_kib"]) / 1024, gt, m, gt, m / k, r["kiln_fsck"]))
ladder = sorted((r for r in rows if r["case"].startswith("files-")), key=lambda r: int(r["files"]))
if len(ladder) >= 2:
    lo, hi = ladder[0], ladder[-1]
    per = lambda r: float(r["kiln_s"]) / int(r["files"])
    lin = per(hi) / per(lo)
    slope = (int(hi["kiln_rss_kib"]) - int(lo["kiln_rss_kib"])) * 1024 / (int(hi["files"]) - int(lo["files"]))
    ratio = float(hi["mkfs_s"].lstrip(">")) / float(hi["kiln_s"])
    v = lambda ok: "met" if ok else "MISSED"
    print()
    print("time per file at %s / at %s files   %.2fx   target <= 1.1x  %s" % (hi["files"], lo["files"], lin, v(lin <= 1.1)))
    print("RSS growth per file (%s -> %s)     %.0f B   target <= 512 B  %s" % (lo["files"], hi["files"], slope, v(slope <= 512)))
    print("mkfs.ext4 -d / kiln at %s files        %.2fx   target >= 5x    %s" % (hi["files"], ratio, v(ratio >= 5)))
PY
