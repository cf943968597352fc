# kiln's NixOS module: `system.build.kilnImage`, the options under `kiln.`, and every built-in profile as an
# image variant `kiln-<profile>` (nixpkgs' nixos/modules/image/images.nix builds each `image.modules.<name>`
# with extendModules: `nixos-rebuild build-image --image-variant kiln-amazon`).
#
#   imports = [ kiln.nixosModules.default ];
#   kiln.profile = "amazon";
#   kiln.extraKernelParams = [ "quiet" ];
#   # nix build .#nixosConfigurations.web1.config.system.build.kilnImage
#
# Defaults come from the NixOS configuration: the name from `system.nixos.label` and `nixpkgs.hostPlatform`
# (nixpkgs' `nixos-image-<label>-<system>`); the kernel command line is `boot.kernelParams` (already in the
# system's bootspec) plus `kiln.extraKernelParams`, minus `kiln.removeKernelParams`, which kiln applies while
# writing the image.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;

  # An option that is null unless set: kiln then takes the profile's value, else its own default.
  orProfile =
    type: description: extra:
    mkOption ({ type = types.nullOr type; default = null; inherit description; } // extra);
  cfg = config.kiln;

  makeImage = import ./make-image.nix;

  profiles = import ./profiles.nix;
  inherit (profiles) extensions;
  profileFormat = p: profiles.formatOf p;

  hostSystem =
    let
      p = config.nixpkgs.hostPlatform;
    in
    if builtins.isString p then p else p.system;

  format =
    if cfg.format != null then
      cfg.format
    else if cfg.profile != null && profileFormat cfg.profile != null then
      profileFormat cfg.profile
    else
      "raw";

  # Where the image lies in $out: an ami build's $out is the bundle, named as nixpkgs' amazon image.
  filePath =
    if format == "ami" then
      "nixos-amazon-image-${config.system.nixos.label}-${hostSystem}.vhd"
    else
      "${cfg.baseName}.${extensions.${format}}";

  flag = name: value: lib.optionals (value != null) [ name (toString value) ];

  args =
    flag "--size" cfg.size
    ++ flag "--extra-space" cfg.extraSpace
    ++ flag "--esp-size" cfg.espSize
    ++ flag "--sector-size" cfg.sectorSize
    ++ flag "--seed" cfg.seed
    ++ lib.optional cfg.bmap "--bmap"
    ++ lib.optional (cfg.checksum == true) "--checksum"
    ++ lib.optional (cfg.checksum == false) "--no-checksum"
    ++ lib.concatMap (p: [ "--remove-kernel-param" p ]) cfg.removeKernelParams
    ++ lib.concatMap (p: [ "--kernel-param" p ]) cfg.extraKernelParams
    ++ cfg.extraArgs;

  image = makeImage {
    kiln = cfg.package;
    toplevel = config.system.build.toplevel;
    inherit (cfg) profile;
    format = if cfg.format != null then cfg.format else null;
    layout = if cfg.layout == null && cfg.profile == null then "efi" else cfg.layout;
    name = cfg.baseName;
    extraArgs = args;
  };

  # One image variant per built-in profile: its profile wins over the host's own `kiln.profile`.
  variant =
    profile:
    { config, ... }:
    {
      kiln.profile = lib.mkForce profile;
      system.build.image = config.system.build.kilnImage;
      image.extension = lib.mkForce extensions.${profileFormat profile};
      image.filePath = lib.mkForce config.kiln.filePath;
    };
in
{
  options.kiln = {
    package = mkOption {
      type = types.package;
      # kiln runs on the machine that builds the image, not on the one the image is for.
      default = pkgs.buildPackages.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.buildPackages.callPackage ./package.nix { }";
      description = ''
        The kiln that builds the image: the builder of the image derivation, so it runs on the build machine
        (an aarch64 image builds on an x86_64 builder with an x86_64 kiln).
      '';
    };
    profile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "amazon";
      description = ''
        A built-in image profile (`kiln profiles` lists them: amazon, gce, azure, openstack, qemu-efi,
        qemu-bios, usb-hybrid, metal-efi). Null: no profile; the layout defaults to `efi`.
      '';
    };
    format = orProfile (types.enum (
      builtins.attrNames extensions
    )) "Output format (`kiln build --format`); null: the profile's, else raw." { };
    layout = mkOption {
      type = types.nullOr (
        types.enum [
          "efi"
          "efixbootldr"
          "legacy"
          "legacy+gpt"
          "hybrid"
          "none"
        ]
      );
      default = null;
      description = "Partition layout (`kiln build --layout`); null: the profile's, else efi.";
    };
    size = orProfile types.str "Disk size: `auto` (what the closure needs plus extraSpace) or a size." {
      example = "8G";
    };
    extraSpace = orProfile types.str "Free space left in the root filesystem of an `auto`-sized image." {
      example = "1G";
    };
    espSize = orProfile types.str "Size of the EFI system partition (kiln's default: 512M)." {
      example = "256M";
    };
    sectorSize = orProfile (types.enum [
      512
      4096
    ]) "Logical sector size of the disk (4096 for 4Kn disks, UEFI layouts only)." { };
    seed = orProfile types.str "Seed for the image's GUIDs, UUIDs and volume ids (default: from the toplevel)." { };
    bmap = mkOption {
      type = types.bool;
      default = false;
      description = "Also write a bmaptool block map beside a raw or raw.zst image.";
    };
    checksum = orProfile types.bool "Write the image's sha256 (`IMAGE.sha256`); null: the format's default." { };
    extraKernelParams = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "console=ttyS1,115200n8" ];
      description = ''
        Kernel parameters kiln adds to every boot entry of the image, after `boot.kernelParams` (which the
        system's bootspec already holds) and the profile's.
      '';
    };
    removeKernelParams = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "quiet" ];
      description = "Kernel parameters kiln removes from every boot entry (`KEY` or `KEY=VALUE`).";
    };
    kernelParams = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      description = ''
        The image's command line parameters besides the profile's: `boot.kernelParams` without
        `removeKernelParams`, then `extraKernelParams`.
      '';
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More `kiln build` arguments.";
    };
    filePath = mkOption {
      type = types.str;
      readOnly = true;
      description = "Where the image file lies inside the built derivation's output.";
    };
    baseName = mkOption {
      type = types.str;
      default = "nixos-image-${config.system.nixos.label}-${hostSystem}";
      defaultText = lib.literalExpression ''"nixos-image-''${config.system.nixos.label}-''${config.nixpkgs.hostPlatform.system}"'';
      description = "The image's file name without its extension (nixpkgs' `image.baseName`).";
    };
  };

  config = lib.mkMerge [
    {
      kiln.kernelParams =
        let
          removed =
            p:
            lib.any (
              r: r == p || (!(lib.hasInfix "=" r) && lib.hasPrefix "${r}=" p)
            ) cfg.removeKernelParams;
        in
        builtins.filter (p: !removed p) config.boot.kernelParams ++ cfg.extraKernelParams;
      kiln.filePath = filePath;
      system.build.kilnImage = image;
    }
    (lib.optionalAttrs (options ? image && options.image ? modules) {
      image.modules = lib.listToAttrs (
        map (p: lib.nameValuePair "kiln-${p}" [ (variant p) ]) profiles.names
      );
    })
  ];
}
