{
  description = "kiln: NixOS disk images built in userspace, in one planned pass: no VM, no root, no loop devices";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # A minimal NixOS system for the checks: systemd-boot, the root file system kiln's layouts label `nixos`.
      testSystem =
        system:
        lib.nixosSystem {
          modules = [
            self.nixosModules.default
            {
              nixpkgs.hostPlatform = system;
              boot.loader.systemd-boot.enable = true;
              fileSystems."/" = {
                device = "/dev/disk/by-label/nixos";
                fsType = "ext4";
              };
              fileSystems."/boot" = {
                device = "/dev/disk/by-label/ESP";
                fsType = "vfat";
              };
              system.stateVersion = "25.05";
              kiln.package = self.packages.${system}.kiln-static;
            }
          ];
        };
    in
    {
      packages = forAllSystems (
        system: pkgs: {
          kiln = pkgs.callPackage ./nix/package.nix { };
          # What make-image.nix needs where nothing but the binary reaches the build (any builder, any store).
          kiln-static = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
          default = self.packages.${system}.kiln;
        }
      );

      # import ./nix/make-image.nix, as a flake output: `kiln.lib.makeImage { kiln = …; toplevel = …; … }`.
      lib.makeImage = import ./nix/make-image.nix;

      nixosModules.default = ./nix/module.nix;
      nixosModules.kiln = ./nix/module.nix;

      # The offline tests of the Nix integration as flake checks: the package with its unit tests, images of a
      # minimal NixOS system through make-image.nix and through the module, and the module's image variants.
      checks = forAllSystems (
        system: pkgs:
        let
          nixos = testSystem system;
          makeImage =
            args:
            self.lib.makeImage (
              {
                kiln = self.packages.${system}.kiln-static;
                toplevel = nixos.config.system.build.toplevel;
              }
              // args
            );
          variants = builtins.attrNames nixos.config.image.modules;
          profiles = map (f: lib.removeSuffix ".toml" f) (
            builtins.filter (lib.hasSuffix ".toml") (builtins.attrNames (builtins.readDir ./images))
          );
        in
        {
          package = self.packages.${system}.kiln;
          make-image-qemu-efi = makeImage {
            profile = "qemu-efi";
            format = "raw";
          };
          make-image-amazon = makeImage { profile = "amazon"; };
          module-image = nixos.config.system.build.kilnImage;
          module-variants =
            assert lib.all (p: builtins.elem "kiln-${p}" variants) profiles;
            nixos.config.system.build.images.kiln-qemu-efi;
        }
      );

      formatter = forAllSystems (system: pkgs: pkgs.nixfmt-rfc-style);
    };
}
