# A disk image of a NixOS system, built by kiln as a plain derivation: no nixpkgs, no VM, no KVM, no shell.
#
#   import ./nix/make-image.nix {
#     kiln = <a statically linked kiln: a derivation or a store path with bin/kiln>;
#     toplevel = nixosConfig.config.system.build.toplevel;
#     profile = "amazon";            # a built-in profile (images/*.toml), or null
#     format = null; layout = null;  # kiln build's --format/--layout, or null for the profile's
#     name = null;                   # the image's file name without extension (default: nixpkgs' naming,
#                                    # nixos-image-<label>-<system>, chosen by kiln from the toplevel)
#     extraArgs = [ "--kernel-param" "quiet" ];   # more `kiln build` arguments
#   }
#
# The builder is kiln itself (`kiln nix-builder`): with __structuredAttrs, Nix writes the toplevel's closure
# (every path's narHash, narSize and references, from exportReferencesGraph) and these attributes into the
# build directory's structured-attrs file, and kiln reads them from there. No closureInfo derivation, no Perl,
# no jq; requiredSystemFeatures stays empty, so any builder of the kiln binary's platform can take the job (an
# aarch64 image builds on an x86_64 builder with an x86_64 kiln).
#
# $out holds the image file(s) (plus the block map and checksum the options ask for) and nix-support/
# hydra-build-products and hydra-release-name; an `ami` build makes $out the bundle itself, laid out as nixpkgs'
# amazon image (nix-support/image-info.json). The result also carries `filePath`, the image's path relative to
# $out when the name and format are known here (nixpkgs' image variants read it).
{
  kiln,
  toplevel,
  profile ? null,
  format ? null,
  layout ? null,
  name ? null,
  extraArgs ? [ ],
  # The platform kiln runs on (not the image's: that comes from the toplevel's bootspec).
  system ? if builtins.isAttrs kiln && kiln ? system then kiln.system else builtins.currentSystem,
}:
let
  profiles = import ./profiles.nix;

  effectiveFormat =
    if format != null then
      format
    else if profile != null then
      profiles.formatOf profile
    else
      null;

  toplevelName =
    let
      base = baseNameOf (builtins.unsafeDiscardStringContext "${toplevel}");
    in
    builtins.substring 33 (builtins.stringLength base) base;

  drvName =
    if name != null then
      name
    else
      "kiln-${if profile != null then baseNameOf (toString profile) else "image"}-${toplevelName}";

  drv = derivation {
    name = builtins.replaceStrings [ ".toml" ] [ "" ] drvName;
    inherit system;
    builder = "${kiln}/bin/kiln";
    args = [ "nix-builder" ];
    __structuredAttrs = true;
    exportReferencesGraph.closure = [ toplevel ];
    toplevel = "${toplevel}";
    inherit profile layout extraArgs;
    format = effectiveFormat;
    imageName = name;
    # The image is a function of the closure's contents alone: the same bytes on every builder, so Nix's
    # --check, remote builders and binary caches agree.
    allowSubstitutes = true;
  };

  filePath =
    if effectiveFormat == "ami" then
      null
    else if name != null && effectiveFormat != null && profiles.extensions ? ${effectiveFormat} then
      "${name}.${profiles.extensions.${effectiveFormat}}"
    else if name != null && effectiveFormat == null then
      "${name}.img"
    else
      null;
in
drv
// {
  inherit filePath;
  passthru = {
    inherit filePath;
  };
}
