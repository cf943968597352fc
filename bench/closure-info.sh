# Sourced by the benchmarks that hand kiln a closureInfo (bench/ext4.sh, erofs.sh, profiles.sh, scale.sh).
#
# closure_info_from IMAGE CI: makes CI, a closureInfo directory (what nixpkgs hands an image builder:
# `registration` and `store-paths`), from the `/nix-path-registration` kiln wrote into the ext4 image IMAGE
# (`--registration-file`), and removes IMAGE. Timed builds then check every narHash against it while copying, so
# a wrong entry would fail them. Needs debugfs and python3.
closure_info_from() {
  local image=$1 ci=$2
  rm -rf "$ci.tmp" && mkdir -p "$ci.tmp"
  debugfs -R 'cat /nix-path-registration' "$image" >"$ci.tmp/registration" 2>/dev/null
  [ -s "$ci.tmp/registration" ] || { printf 'bench: error: no /nix-path-registration in %s\n' "$image" >&2; exit 1; }
  python3 - "$ci.tmp/registration" >"$ci.tmp/store-paths" <<'PY'
import sys
lines = open(sys.argv[1]).read().split("\n")[:-1]
paths, i = [], 0
while i < len(lines):
    paths.append(lines[i]); i += 5 + int(lines[i + 4])
print("\n".join(sorted(paths)))
PY
  rm -rf "$ci" && mv "$ci.tmp" "$ci"
  rm -f "$image"
}

# system_closure_info TOP CI WORK: makes CI the closureInfo of the toplevel /nix/store/TOP of $store, unless it is
# there and newer than the store, from a scan build of kiln's (WORK holds its image meanwhile).
system_closure_info() {
  local top=$1 ci=$2 work=$3
  if [ ! -s "$ci/registration" ] || [ "$ci/registration" -ot "$store" ]; then
    printf 'bench: %s\n' "making a closureInfo for the system (once)" >&2
    "$kiln" build --system "/nix/store/$top" --store-dir "$store" --layout none --registration-file \
      --progress none --force --output "$work/scan.img" >&2 ||
      { printf 'bench: error: kiln build (scan) failed\n' >&2; exit 1; }
    closure_info_from "$work/scan.img" "$ci"
  fi
}
