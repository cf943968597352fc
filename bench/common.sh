# Shared by the benchmarks that use a corpus (sourced; needs msg, die, repo and bench_dir set; corpus_size may
# name the corpus: small, medium or large, default large).
#
# Sets kiln (KILN, or a release build of this checkout), corpus and store (the corpus, built once with
# MAKE_STORE, default /work/shared/bench/make-store.sh), and defines nixhash, store_path and toplevel.

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
