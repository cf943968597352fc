#!/usr/bin/env bash
# Benchmarks kiln inside Nix against the kiln CLI: the medium corpus registered in the host's Nix store as a
# NixOS system, made into a qcow2 (`--profile qemu-efi`) by `nix-build` of nix/make-image.nix (kiln as the
# derivation's builder, in Nix's sandbox) and by `kiln build` reading the same closure from the Nix database, in
# alternation, with the same statically linked kiln. Nix's overhead (evaluating, reading the graph into
# .attrs.json, the sandbox, hashing and registering the output) is the difference; the goal is under 10% of
# kiln's own time plus 2 s. Prints median wall times and the overhead; never asserts timings.
#
# Usage: bench/nix.sh [RUNS]                                      (default 3)
#
# Runs as root (Debian's nix-bin builds in /nix/store). Environment (all optional):
#   BENCH_DIR    corpus cache and work directory (default /var/tmp/kiln-bench)
#   MAKE_STORE   the corpus builder (default /work/shared/bench/make-store.sh)
#   CORPUS       small, medium (default) or large
set -euo pipefail
export LC_ALL=C

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$runs'"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
for tool in nix-build nix-store nix-hash python3; do
  command -v "$tool" >/dev/null || die "'$tool' not found: install the Debian packages nix-bin and python3"
done
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || die "install the Debian package 'systemd-boot-efi'"
export NIX_CONFIG="build-users-group =
gc-reserved-space = 0"
nix_opts=(--option sandbox true --option substituters '')

# The same kiln on both sides: statically linked (the sandbox holds nothing else), release profile.
triple=$(uname -m)-unknown-linux-gnu
static_target=$repo/target/static-release
msg "building: cargo build --release -p kiln --target $triple (static)"
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p kiln --bin kiln \
  --target "$triple" --target-dir "$static_target" >&2) || die "cargo build failed"
pkg=$bench_dir/kiln-static
mkdir -p "$pkg/bin"
cmp -s "$static_target/$triple/release/kiln" "$pkg/bin/kiln" || install -m 555 "$static_target/$triple/release/kiln" "$pkg/bin/kiln"
KILN=$pkg/bin/kiln
corpus_size=${CORPUS:-medium}
# shellcheck source=bench/common.sh
source "$here/common.sh"

# A NixOS system over the corpus: the host's kernel and systemd-boot as store paths of their own.
x86_kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$x86_kernel" ] || die "no /boot/vmlinuz-* (install linux-image-amd64)"
chmod u+w "$store"
kernel=$(store_path linux-nixbench "$x86_kernel" bzImage)
systemd=$(store_path systemd-nixbench /usr/lib/systemd/boot/efi/systemd-bootx64.efi lib/systemd/boot/efi/systemd-bootx64.efi)
top=$(toplevel nixos-system-nixbench-24.11 x86_64-linux "$kernel/bzImage" "$systemd")
chmod a-w "$store"

# Registered in the host store as nixpkgs' image builders register a closure (nix-store --load-db): each path
# with its NAR hash and size as Nix computes them; the toplevel refers to every path (itself too), the Debian packages
# to nothing.
if ! nix-store --check-validity "/nix/store/$top" 2>/dev/null; then
  msg "registering the $corpus_size corpus in /nix/store (NAR hashes by nix-hash)"
  reg=$(mktemp)
  mkdir -p /nix/store
  for p in $(cd "$store" && find . -mindepth 1 -maxdepth 1 ! -name '.*' -printf '%f\n' | sort); do
    [ -e "/nix/store/$p" ] || cp -a "$store/$p" "/nix/store/$p"
    {
      echo "/nix/store/$p"
      echo "sha256:$(nix-hash --type sha256 "/nix/store/$p")"
      nix-store --dump "/nix/store/$p" | wc -c
      echo
      if [ "$p" = "$top" ]; then
        refs=$(cd "$store" && find . -mindepth 1 -maxdepth 1 ! -name '.*' -printf '/nix/store/%f\n' | sort)
        echo "$refs" | wc -l
        echo "$refs"
      else
        echo 0
      fi
    } >>"$reg"
  done
  nix-store --load-db <"$reg" || die "nix-store --load-db failed"
  rm -f "$reg"
fi

work=$(mktemp -d "$bench_dir/nix-bench.XXXXXX")
cleanup() {
  for o in "$work"/out.*; do
    [ -f "$o" ] && nix-store --delete "$(cat "$o")" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
expr() { # NAME
  printf 'import %s/nix/make-image.nix { kiln = builtins.path { path = %s; name = "kiln"; }; toplevel = builtins.storePath "/nix/store/%s"; profile = "qemu-efi"; name = "%s"; }' \
    "$repo" "$pkg" "$top" "$1"
}
run_cli() {
  local start end
  sync
  start=$EPOCHREALTIME
  "$KILN" build --system "/nix/store/$top" --profile qemu-efi --progress none --force --output "$work/cli.qcow2" \
    >"$work/log.cli" 2>&1 || { cat "$work/log.cli" >&2; die "kiln build failed"; }
  end=$EPOCHREALTIME
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }' >>"$work/times.cli"
  rm -f "$work/cli.qcow2"
}
n=0
run_nix() {
  local start end out name
  n=$((n + 1))
  # A name of its own each time, so Nix builds instead of finding the output.
  name=nixbench-$$-$n
  sync
  start=$EPOCHREALTIME
  out=$(nix-build --no-out-link "${nix_opts[@]}" -E "$(expr "$name")" 2>"$work/log.nix") ||
    { cat "$work/log.nix" >&2; die "nix-build failed"; }
  end=$EPOCHREALTIME
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }' >>"$work/times.nix"
  echo "$out" >"$work/out.$n"
  nix-store --delete "$out" >/dev/null 2>&1 && rm -f "$work/out.$n"
}
msg "warming the page cache with one build of each"
run_cli
run_nix
rm -f "$work"/times.*
for ((i = 1; i <= runs; i++)); do
  msg "round $i of $runs"
  if ((i % 2)); then run_cli; run_nix; else run_nix; run_cli; fi
done

median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
mc=$(median <"$work/times.cli")
mn=$(median <"$work/times.nix")
overhead=$(awk -v n="$mn" -v c="$mc" 'BEGIN { printf "%.3f", n - c }')
budget=$(awk -v c="$mc" 'BEGIN { printf "%.3f", 0.1 * c + 2 }')
cat <<EOF

== qcow2 (qemu-efi) of the $corpus_size corpus: nix-build of make-image.nix vs kiln build, $runs runs each ==
machine   $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r)
kiln      $KILN (static, git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown))
nix       $(nix-build --version)
system    /nix/store/$top ($(find "$store" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l) store paths)

median wall seconds
  kiln build (CLI, closure from the Nix database)   $mc    (runs: $(tr '\n' ' ' <"$work/times.cli"))
  nix-build make-image.nix (sandbox)                $mn    (runs: $(tr '\n' ' ' <"$work/times.nix"))

target
  Nix's overhead   ${overhead} s   < 0.1 x kiln + 2 s = ${budget} s   $(awk -v o="$overhead" -v b="$budget" 'BEGIN { print (o < b ? "met" : "MISSED") }')
  ratio            $(awk -v n="$mn" -v c="$mc" 'BEGIN { printf "%.3f", n / c }')x
EOF
