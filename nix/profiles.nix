# What kiln's Nix files need to know of its built-in profiles (images/*.toml) and output formats, with builtins
# only (make-image.nix needs no nixpkgs).
let
  # A built-in's file from its name; a path is a profile file of the user's (copied into the store for the build);
  # any other string with a `/` or ending in `.toml` is a file kiln reads itself (null here).
  fileOf =
    p:
    if builtins.isPath p then
      p
    else if builtins.match ".*(/.*|[.]toml)" p != null then
      null
    else
      ../images + "/${p}.toml";
in
rec {
  # The built-in profiles' names.
  names = map (f: builtins.substring 0 (builtins.stringLength f - 5) f) (
    builtins.filter (f: builtins.match ".*[.]toml" f != null) (builtins.attrNames (builtins.readDir ../images))
  );

  # The format a profile gives (following `extends`), or null when it names none or is not readable here.
  formatOf =
    p:
    let
      file = fileOf p;
      doc = builtins.fromTOML (builtins.readFile file);
    in
    if file == null || !(builtins.pathExists file) then
      null
    else if doc ? format then
      doc.format
    else if doc ? extends then
      formatOf doc.extends
    else
      null;

  # The file extension nixpkgs' image builders give each format (ami: the disk inside the bundle).
  extensions = {
    raw = "img";
    "raw.zst" = "img.zst";
    qcow2 = "qcow2";
    vhd = "vhd";
    vhdx = "vhdx";
    vmdk = "vmdk";
    gce = "raw.tar.gz";
    ami = "vhd";
  };
}
