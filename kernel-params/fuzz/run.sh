#!/usr/bin/env bash
# Fuzz kernel-params' parse_render target for a bounded time.
#
#   kernel-params/fuzz/run.sh SECONDS [libFuzzer options...]
#
# Installs cargo-fuzz (`cargo install cargo-fuzz --locked`, about 40 s on 2 cores) if it is missing.
# Works on a stable toolchain: by default the target is built without a sanitizer
# (`--sanitizer none`), which needs no nightly features; coverage guidance still works, and the crate
# has no unsafe code for AddressSanitizer to watch. `SANITIZER=address run.sh 60` builds with ASan;
# on a stable toolchain that needs RUSTC_BOOTSTRAP=1 (set here), on nightly it does not.
#
# New corpus entries go to kernel-params/fuzz/corpus/parse_render (ignored by git), crashes to
# kernel-params/fuzz/artifacts/parse_render; the checked-in seeds/parse_render is read, not written.
# Build output goes to the workspace's target/fuzz.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [libFuzzer options...]" >&2
    exit 2
fi
seconds=$1
shift

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
crate_dir=$(dirname "$fuzz_dir")
workspace_dir=$(dirname "$crate_dir")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it with cargo install cargo-fuzz --locked" >&2
    start=$SECONDS
    cargo install cargo-fuzz --locked
    echo "installed cargo-fuzz in $((SECONDS - start)) s" >&2
fi

sanitizer=${SANITIZER:-none}
if [[ $sanitizer != none ]] && ! rustc --version | grep -q nightly; then
    # -Zsanitizer is a nightly flag; let the stable compiler accept it.
    export RUSTC_BOOTSTRAP=1
fi

mkdir -p "$fuzz_dir/corpus/parse_render"
cd "$crate_dir"
exec cargo fuzz run \
    --sanitizer "$sanitizer" \
    --target-dir "$workspace_dir/target/fuzz" \
    parse_render \
    "$fuzz_dir/corpus/parse_render" "$fuzz_dir/seeds/parse_render" \
    -- -max_total_time="$seconds" "$@"
