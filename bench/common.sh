# Shared by the benchmarks that use the large corpus (sourced; needs msg, die, repo and bench_dir set).
#
# Sets kiln (KILN, or a release build of this checkout), corpus and store (the large corpus, built once with
# MAKE_STORE, default /work/shared/bench/make-store.sh), and defines nixhash.

if [ -n "${KILN:-}" ]; then
  kiln=$KILN
else
  msg "building: cargo build --release -p kiln --locked"
  (cd "$repo" && cargo build --release -p kiln --locked >&2) || die "cargo build failed"
  kiln=${CARGO_TARGET_DIR:-$repo/target}/release/kiln
fi
[ -x "$kiln" ] || die "kiln '$kiln' is missing"

corpus=$bench_dir/large
store=$corpus/nix/store
if [ ! -d "$store" ]; then
  make_store=${MAKE_STORE:-/work/shared/bench/make-store.sh}
  [ -f "$make_store" ] || die "no corpus at $corpus and no make-store.sh at $make_store (set MAKE_STORE)"
  msg "building the large corpus in $corpus (downloads Debian packages once)"
  mkdir -p "$bench_dir"
  tmp=$bench_dir/.large.tmp.$$
  rm -rf "$tmp"
  bash "$make_store" "$tmp" large >&2 || die "make-store.sh failed"
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
