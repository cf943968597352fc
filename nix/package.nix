# kiln for nixpkgs' callPackage:
#
#   pkgs.callPackage ./nix/package.nix { }                  # dynamically linked, for the command line
#   pkgs.pkgsStatic.callPackage ./nix/package.nix { }       # statically linked
#
# The built-in profiles are compiled into the binary (and installed to share/kiln/images for reading);
# shell completions and the manual page come from the binary itself.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
}:
let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
  # The workspace without what a build does not read (build outputs, VCS data, benchmarks' scratch).
  src = lib.cleanSourceWith {
    src = ../.;
    filter =
      path: type:
      let
        rel = lib.removePrefix (toString ../. + "/") (toString path);
      in
      !(lib.hasPrefix "target" rel || lib.hasPrefix ".git" rel || lib.hasPrefix "result" rel);
  };
in
rustPlatform.buildRustPackage {
  pname = "kiln";
  inherit (cargoToml.workspace.package) version;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "-p"
    "kiln"
    "--bin"
    "kiln"
  ];
  # The unit tests of the crates; the end-to-end suite (QEMU boots, loop devices, Nix) runs in the repository's
  # CI and the flake's checks, not inside this build's sandbox.
  cargoTestFlags = [
    "-p"
    "kiln"
    "-p"
    "kiln-formats"
    "-p"
    "kernel-params"
    "--lib"
  ];

  nativeBuildInputs = [ installShellFiles ];

  postInstall = ''
    install -Dm444 -t $out/share/kiln/images images/*.toml
  ''
  + lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd kiln \
      --bash <($out/bin/kiln completions bash) \
      --zsh <($out/bin/kiln completions zsh) \
      --fish <($out/bin/kiln completions fish)
    $out/bin/kiln man > kiln.1
    installManPage kiln.1
  '';

  meta = {
    description = "Builds bootable NixOS disk images in userspace: no VM, no root, no loop devices";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "kiln";
    platforms = lib.platforms.linux;
  };
}
