# Sourced by the benchmarks that hand kiln a closureInfo (bench/ext4.sh, bench/erofs.sh).
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
