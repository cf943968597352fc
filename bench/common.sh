# Shared by the benchmarks that use a corpus (sourced; needs msg, die, repo and bench_dir set; corpus_size may
# name the corpus: small, medium or large, default large).
#
# Sets kiln (KILN, or a release build of this checkout), corpus and store (the corpus, built once with
# MAKE_STORE, default /work/shared/bench/make-store.sh), and defines nixhash, store_path, toplevel, own_store
# and host_boot, and the timing helpers seconds and median.

if [ -n "${KILN:-}" ]; then
  kiln=$KILN
else
  msg "building: cargo build --release -p kiln --locked"
  (cd "$repo" && cargo build --release -p kiln --locked >&2) || die "cargo build failed"
  kiln=${CARGO_TARGET_DIR:-$repo/target}/release/kiln
fi
[ -x "$kiln" ] || die "kiln '$kiln' is missing"

corpus_size=${corpus_size:-large}
corpus=$bench_dir/$corpus_size
store=$corpus/nix/store
if [ ! -d "$store" ]; then
  make_store=${MAKE_STORE:-/work/shared/bench/make-store.sh}
  [ -f "$make_store" ] || die "no corpus at $corpus and no make-store.sh at $make_store (set MAKE_STORE)"
  msg "building the $corpus_size corpus in $corpus (downloads Debian packages once)"
  mkdir -p "$bench_dir"
  tmp=$bench_dir/.$corpus_size.tmp.$$
  rm -rf "$tmp"
  bash "$make_store" "$tmp" "$corpus_size" >&2 || die "make-store.sh failed"
  mv "$tmp" "$corpus"
fi

nixhash() { # 32 characters of Nix's base32 alphabet, derived from the name
  python3 - "$1" <<'PY'
import hashlib, sys
a = "0123456789abcdfghijklmnpqrsvwxyz"
h = int.from_bytes(hashlib.sha256(sys.argv[1].encode()).digest()[:20], "big")
print("".join(a[(h >> (5 * i)) & 31] for i in range(32)))
PY
}

# store_path NAME SOURCE DEST: SOURCE (a file or a directory) copied to DEST inside the store path
# $(nixhash NAME)-NAME of the corpus, made once and read-only; prints the store path's name. The store directory
# must be writable.
store_path() {
  local name dir
  name="$(nixhash "$1")-$1"
  dir=$store/$name
  if [ ! -e "$dir" ]; then
    mkdir -p "$dir/$(dirname "$3")"
    cp -r "$2" "$dir/$3"
    chmod -R a-w "$dir"
  fi
  printf '%s' "$name"
}

# toplevel NAME SYSTEM KERNEL SYSTEMD [EXCLUDE]: the NixOS toplevel $(nixhash NAME)-NAME, made once, referring to
# every store path of the corpus but itself and those whose names match EXCLUDE (a `find -name` pattern). KERNEL
# is the kernel file's path in the store (`<store path>/<file>`), SYSTEMD the store path holding systemd-boot, and
# SYSTEM the Nix system type. Prints its name. The store directory must be writable.
toplevel() {
  local name=$(nixhash "$1")-$1 system=$2 kernel=$3 systemd=$4 exclude=${5:-$1} t p
  if [ ! -f "$store/$name/boot.json" ]; then
    t=$store/.$name.tmp
    rm -rf "$t"
    mkdir -p "$t/refs"
    for p in $(cd "$store" && find . -mindepth 1 -maxdepth 1 ! -name '.*' ! -name "$name" ! -name "$exclude" -printf '%f\n' | sort); do
      ln -s "/nix/store/$p" "$t/refs/$p"
    done
    ln -s "/nix/store/$systemd" "$t/systemd"
    ln -s "/nix/store/$kernel" "$t/kernel"
    printf '#!/bin/sh\nexit 0\n' >"$t/init"
    chmod 0555 "$t/init"
    printf '%s' "$system" >"$t/system"
    cat >"$t/boot.json" <<JSON
{
  "org.nixos.bootspec.v1": {
    "init": "/nix/store/$name/init",
    "kernel": "/nix/store/$kernel",
    "kernelParams": [],
    "label": "$1",
    "system": "$system",
    "toplevel": "/nix/store/$name"
  }
}
JSON
    find "$t" ! -type l -exec chmod a-w {} +
    mv "$t" "$store/$name"
  fi
  printf '%s' "$name"
}

# own_store NAME: the corpus's store paths hard-linked into $bench_dir/$corpus_size-NAME (made once), and corpus
# and store pointed there, so the paths a benchmark adds stay out of the corpus the others copy whole (ext4.sh
# gives `mkfs.ext4 -d` the corpus directory); the toplevels and boot paths other benchmarks added are left out.
own_store() {
  local own=$bench_dir/$corpus_size-$1
  if [ ! -d "$own/nix/store" ]; then
    msg "linking the corpus into $own (once)"
    rm -rf "$own.tmp" && mkdir -p "$own.tmp/nix/store"
    (cd "$store" && find . -mindepth 1 -maxdepth 1 ! -name '.*' ! -name '*-nixos-system-*' ! -name '*bench' \
      -exec cp -al {} "$own.tmp/nix/store/" \;)
    mv "$own.tmp" "$own"
  fi
  corpus=$own
  store=$own/nix/store
}

# host_boot NAME: this machine's newest kernel (x86_kernel) and systemd-boot as store paths of their own,
# linux-NAME and systemd-NAME; sets kernel and systemd to their names. The store directory must be writable.
host_boot() {
  x86_kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
  [ -n "$x86_kernel" ] || die "no /boot/vmlinuz-* (install linux-image-amd64)"
  kernel=$(store_path "linux-$1" "$x86_kernel" bzImage)
  systemd=$(store_path "systemd-$1" /usr/lib/systemd/boot/efi/systemd-bootx64.efi lib/systemd/boot/efi/systemd-bootx64.efi)
}

# seconds START END: END - START (EPOCHREALTIME values), to the millisecond.
seconds() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.3f\n", e - s }'; }
# median: the median of the numbers on standard input, to the millisecond.
median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
