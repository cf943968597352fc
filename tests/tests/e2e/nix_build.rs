//! kiln inside Nix: `nix/make-image.nix` built by Debian's `nix-build` (Nix 2.8), offline, in Nix's sandbox,
//! with a statically linked kiln added to the store with `builtins.path` as the derivation's builder. The
//! system is the bootable demo closure registered in the host's Nix store (`nix-store --load-db`, as nixpkgs'
//! image builders register a closure). The image from `$out` boots, `kiln verify` and Nix's own
//! `nix-store --verify --check-contents` of its store are clean, `hydra-build-products` lists exactly the files
//! that exist, and `nix-build --check` (Nix's determinism check: a second build must give the same bytes)
//! passes. Bad inputs fail the derivation with kiln's error in the build log, and register nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::disk::partitions;
use kiln_tests::ext4::extract;
use kiln_tests::{fixtures, nix, tools};

use crate::util::kiln;

const TIMEOUT: Duration = Duration::from_secs(180);

/// The demo closure registered in the host store, and the static kiln: (toplevel, kiln package directory).
fn setup() -> &'static (String, PathBuf) {
    static SETUP: OnceLock<(String, PathBuf)> = OnceLock::new();
    SETUP.get_or_init(|| {
        tools::require("nix-build", "nix-bin");
        let fx = fixtures::demo_closure();
        nix::register_in_host_store(&fx).unwrap_or_else(|e| panic!("registering the demo closure: {e:#}"));
        (fixtures::toplevel_of(&fx), fixtures::static_kiln())
    })
}

/// The Nix expression calling make-image.nix for the demo system with `args` (Nix attribute bindings).
fn expr(args: &str) -> String {
    let (top, kiln) = setup();
    let make = fixtures::workspace_root().join("nix/make-image.nix");
    format!(
        "import {} {{ kiln = builtins.path {{ path = {}; name = \"kiln\"; }}; toplevel = builtins.storePath \
         \"{top}\"; {args} }}",
        make.display(),
        kiln.display()
    )
}

fn build(args: &str, extra: &[&str]) -> PathBuf {
    let scratch = tempfile::tempdir().unwrap();
    nix::build_expr(&expr(args), scratch.path(), extra).unwrap_or_else(|log| panic!("nix-build failed:\n{log}"))
}

/// `nix-build` must fail; returns its log.
fn build_fails(expr: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    match nix::build_expr(expr, scratch.path(), &[]) {
        Ok(out) => panic!("nix-build succeeded: {}", out.display()),
        Err(log) => log,
    }
}

/// The output path `expr` would have: the derivation is instantiated, not built.
fn out_path_of(expr: &str) -> PathBuf {
    let out = tools::run_ok(nix::nix_command("nix-instantiate").args(["--eval", "-E", &format!("({expr}).outPath")]));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().trim_matches('"'))
}

/// Every regular file under `dir` (relative), symlinks and directories not counted.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(root, &p, out);
            } else if md.is_file() {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// `nix-support/hydra-build-products`: every line `file <subtype> <path>`, each path absolute, inside `out` and
/// existing; returns (subtype, path relative to `out`).
fn products(out: &Path) -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string(out.join("nix-support/hydra-build-products")).unwrap();
    text.lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts.len(), 3, "`file <subtype> <path>`: {line:?}");
            assert_eq!(parts[0], "file", "{line:?}");
            let path = Path::new(parts[2]);
            assert!(path.is_absolute() && path.starts_with(out), "{line:?} is not inside {}", out.display());
            assert!(path.is_file(), "{line:?} names no file");
            (parts[1].to_owned(), path.strip_prefix(out).unwrap().to_path_buf())
        })
        .collect()
}

fn marker() -> String {
    std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap()
}

/// The image boots to the demo's marker under OVMF, `kiln verify` finds no problem, and Nix's own
/// `nix-store --verify --check-contents` of the store inside (extracted from the root partition) is clean.
fn boots_and_verifies(img: &Path, qemu_format: &str) {
    let outcome = Boot::new(img, marker())
        .firmware(Firmware::Uefi)
        .format(qemu_format)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot: {e}", img.display()));
    eprintln!("{} (built by Nix) booted in {:.1} s", img.display(), outcome.elapsed.as_secs_f64());
    let verified = kiln(["verify".as_ref(), img.as_os_str()]).ok();
    assert!(!verified.contains("problem"), "{verified}");
    let parts = partitions(img);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    extract(img, parts[1].0, &root).unwrap();
    let checked = nix::verify_store_copy(&root).unwrap_or_else(|e| panic!("nix-store --verify:\n{e:#}"));
    assert!(checked.contains(&setup().0), "Nix checked {checked:?}");
    tools::run(std::process::Command::new("chmod").arg("-R").arg("u+w").arg(tmp.path()));
}

#[test]
fn make_image_builds_a_raw_image_that_boots_verifies_and_passes_nixs_check() {
    let out = build(r#"profile = "qemu-efi"; format = "raw"; name = "demo";"#, &[]);
    let img = out.join("demo.img");
    let listed = products(&out);
    assert_eq!(listed, [("raw-image".to_owned(), PathBuf::from("demo.img"))]);
    let mut want: BTreeSet<PathBuf> = listed.iter().map(|(_, p)| p.clone()).collect();
    want.extend(["nix-support/hydra-build-products", "nix-support/hydra-release-name"].map(PathBuf::from));
    assert_eq!(files_under(&out), want, "$out holds the image and nix-support only");
    assert_eq!(std::fs::read_to_string(out.join("nix-support/hydra-release-name")).unwrap(), "demo\n");

    boots_and_verifies(&img, "raw");

    // Nix builds it again and compares: a difference fails with "may not be deterministic".
    let again = build(r#"profile = "qemu-efi"; format = "raw"; name = "demo";"#, &["--check"]);
    assert_eq!(again, out);
}

#[test]
fn make_image_names_images_as_nixpkgs_and_makes_an_amazon_bundle() {
    // No name: nixpkgs' `nixos-image-<label>-<system>`, with the block map and checksum asked for.
    let out = build(r#"profile = "usb-hybrid"; extraArgs = [ "--checksum" ];"#, &[]);
    let listed = products(&out);
    let names: Vec<String> = listed.iter().map(|(t, p)| format!("{t} {}", p.display())).collect();
    let stem = listed[0].1.to_string_lossy().trim_end_matches(".img").to_owned();
    assert!(stem.starts_with("nixos-image-") && stem.ends_with("-x86_64-linux"), "{names:?}");
    assert_eq!(
        names,
        [format!("raw-image {stem}.img"), format!("bmap {stem}.img.bmap"), format!("sha256 {stem}.img.sha256")]
    );
    assert_eq!(std::fs::read_to_string(out.join("nix-support/hydra-release-name")).unwrap(), format!("{stem}\n"));

    // amazon: $out is the bundle, as nixpkgs' amazon image.
    let out = build(r#"profile = "amazon";"#, &[]);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("nix-support/image-info.json")).unwrap()).unwrap();
    assert_eq!((info["system"].as_str(), info["boot_mode"].as_str()), (Some("x86_64-linux"), Some("uefi")));
    let vhd = PathBuf::from(info["file"].as_str().unwrap());
    assert!(vhd.starts_with(&out) && vhd.is_file(), "{info}");
    let listed = products(&out);
    assert_eq!(listed, [("vpc".to_owned(), vhd.strip_prefix(&out).unwrap().to_path_buf())]);
    let mut want: BTreeSet<PathBuf> = listed.iter().map(|(_, p)| p.clone()).collect();
    want.extend(
        [
            "SHA256SUMS",
            "nix-support/image-info.json",
            "nix-support/hydra-build-products",
            "nix-support/hydra-release-name",
        ]
        .map(PathBuf::from),
    );
    assert_eq!(files_under(&out), want, "the bundle holds the disk, its checksums and nix-support only");
    let release = std::fs::read_to_string(out.join("nix-support/hydra-release-name")).unwrap();
    assert_eq!(release, format!("{}\n", vhd.file_stem().unwrap().to_string_lossy()), "the disk's name");
    boots_and_verifies(&vhd, "vpc");
    let again = build(r#"profile = "amazon";"#, &["--check"]);
    assert_eq!(again, out, "nix-build --check: the same bytes again");
}

#[test]
fn bad_inputs_fail_the_derivation_with_kilns_error_and_register_nothing() {
    let (_, pkg) = setup();
    // Not a NixOS system: the kiln package itself.
    let not_nixos = expr(r#"profile = "qemu-efi";"#).replace(
        &format!("builtins.storePath \"{}\"", setup().0),
        &format!("builtins.path {{ path = {}; name = \"kiln\"; }}", pkg.display()),
    );
    let log = build_fails(&not_nixos);
    assert!(log.contains("has no bootspec"), "{log}");
    assert!(!nix::is_valid(&out_path_of(&not_nixos)), "a failed build registers no output");

    let unknown = expr(r#"profile = "nonesuch";"#);
    let log = build_fails(&unknown);
    assert!(log.contains("nonesuch") && log.contains("built-ins"), "{log}");
    assert!(!nix::is_valid(&out_path_of(&unknown)));

    // A derivation of its own whose structured attrs carry no closure graph.
    let bare = format!(
        "derivation {{ name = \"no-graph\"; system = builtins.currentSystem; __structuredAttrs = true; \
         builder = \"${{builtins.path {{ path = {}; name = \"kiln\"; }}}}/bin/kiln\"; args = [ \"nix-builder\" ]; profile = \"qemu-efi\"; \
         toplevel = \"${{builtins.storePath \"{}\"}}\"; }}",
        pkg.display(),
        setup().0
    );
    let log = build_fails(&bare);
    assert!(log.contains("no exportReferencesGraph"), "{log}");
    assert!(!nix::is_valid(&out_path_of(&bare)));
}

#[test]
fn nix_builder_outside_nix_says_what_it_needs() {
    let r = crate::util::run(
        crate::util::kiln_cmd()
            .arg("nix-builder")
            .env_remove("NIX_ATTRS_JSON_FILE")
            .env("NIX_BUILD_TOP", tempfile::tempdir().unwrap().path()),
    );
    r.fails_with(&["no structured-attrs file", "__structuredAttrs"]);

    // A malformed file, and a graph that lacks the system's own path: errors naming the file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join(".attrs.json");
    std::fs::write(&bad, "{\"outputs\": {\"out\": ").unwrap();
    kiln(["nix-builder".as_ref(), "--attrs".as_ref(), bad.as_os_str()])
        .fails_with(&[&bad.display().to_string(), "not valid JSON"]);
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let attrs = serde_json::json!({
        "outputs": { "out": dir.path().join("out") },
        "toplevel": top,
        "profile": "qemu-efi",
        "exportReferencesGraph": { "closure": [ top ] },
        "closure": [],
    });
    std::fs::write(&bad, attrs.to_string()).unwrap();
    let r = crate::util::run(
        crate::util::kiln_cmd()
            .args(["build", "--system", &top, "--store-dir"])
            .arg(crate::util::store_of(&fx))
            .arg("--closure-attrs")
            .arg(&bad)
            .arg("--output")
            .arg(dir.path().join("x.img"))
            .args(["--layout", "efi", "--progress", "none"]),
    );
    r.fails_with(&[&top, "is not in the closure from structured attrs", &bad.display().to_string()]);
    assert!(!dir.path().join("x.img").exists());
}

/// nixpkgs' `lib/` (the module system): `$KILN_NIXPKGS_LIB`, else `../shared/nixpkgs-lib/lib` beside the
/// workspace. The full nixpkgs is not available offline; a missing lib fails the test.
fn nixpkgs_lib() -> PathBuf {
    let lib = std::env::var_os("KILN_NIXPKGS_LIB")
        .map_or_else(|| fixtures::workspace_root().parent().unwrap().join("shared/nixpkgs-lib/lib"), PathBuf::from);
    assert!(
        lib.join("default.nix").is_file(),
        "nixpkgs' lib/ not found at {} (set KILN_NIXPKGS_LIB to a nixpkgs lib/ directory)",
        lib.display()
    );
    lib
}

/// The module evaluation harness (tests/fixtures/nix-module-eval.nix) with `modules` (Nix list items), bound to
/// `r`, then `body` (an expression using `r`).
fn module_expr(modules: &str, body: &str) -> String {
    let (top, kiln) = setup();
    format!(
        "let lib = import {}; r = import {} {{ inherit lib; kiln = builtins.path {{ path = {}; name = \"kiln\"; }}; \
         toplevel = builtins.storePath \"{top}\"; modules = [ {modules} ]; }}; in {body}",
        nixpkgs_lib().display(),
        fixtures::scripts_dir().join("nix-module-eval.nix").display(),
        kiln.display()
    )
}

/// `nix-instantiate --eval --strict --json` of `expr`.
fn eval_json(expr: &str) -> serde_json::Value {
    let out = tools::run(nix::nix_command("nix-instantiate").args(["--eval", "--strict", "--json", "-E", expr]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "evaluating failed:\n{stderr}\n{expr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn module_merges_options_takes_nixos_defaults_and_offers_every_profile_as_a_variant() {
    let host = r#"{ boot.kernelParams = [ "console=ttyS0" "quiet" ]; kiln.extraKernelParams = [ "a" ];
                   kiln.profile = "qemu-efi"; }
                 { kiln.extraKernelParams = [ "b" ]; kiln.removeKernelParams = [ "quiet" ]; }"#;
    let v = eval_json(&module_expr(
        host,
        r#"{ params = r.config.kiln.kernelParams; args = r.image.drvAttrs.extraArgs;
             name = r.config.kiln.baseName; file = r.image.filePath; profile = r.image.drvAttrs.profile;
             variants = r.variants;
             amazon = let a = r.variant "kiln-amazon"; in { file = a.passthru.filePath; profile = a.drvAttrs.profile; };
             gce = (r.variant "kiln-gce").passthru.filePath; }"#,
    ));
    // Both modules' parameters, after boot.kernelParams without the removed one.
    let params: Vec<&str> = v["params"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(params[0], "console=ttyS0");
    assert_eq!(params[1..].iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from(["a", "b"]), "{v}");
    let args = v["args"].to_string();
    assert!(
        args.contains(r#""--kernel-param","a""#)
            && args.contains(r#""--kernel-param","b""#)
            && args.contains(r#""--remove-kernel-param","quiet""#),
        "{args}"
    );
    // nixpkgs' naming from system.nixos.label and nixpkgs.hostPlatform.
    assert_eq!(v["name"], "nixos-image-24.11.demo-x86_64-linux");
    assert_eq!(v["file"], "nixos-image-24.11.demo-x86_64-linux.qcow2");
    assert_eq!(v["profile"], "qemu-efi");
    let want: Vec<String> = std::fs::read_dir(fixtures::workspace_root().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".toml").to_owned())
        .map(|p| format!("kiln-{p}"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(v["variants"], serde_json::json!(want));
    // A variant's profile wins over the host's own; the file paths are nixpkgs'.
    assert_eq!(v["amazon"]["profile"], "amazon");
    assert_eq!(v["amazon"]["file"], "nixos-amazon-image-24.11.demo-x86_64-linux.vhd");
    assert_eq!(v["gce"], "nixos-image-24.11.demo-x86_64-linux.raw.tar.gz");

    // mkForce replaces every other definition; an attribute-set hostPlatform names the image too.
    let forced = r#"{ kiln.extraKernelParams = [ "a" ]; }
                   { kiln.extraKernelParams = lib.mkForce [ "c" ]; nixpkgs.hostPlatform = { system = "aarch64-linux"; };
                     kiln.size = "8G"; kiln.sectorSize = 4096; kiln.checksum = false; }"#;
    let v = eval_json(&module_expr(
        forced,
        "{ params = r.config.kiln.kernelParams; name = r.config.kiln.baseName; layout = r.image.drvAttrs.layout;
           args = r.image.drvAttrs.extraArgs; }",
    ));
    assert_eq!(v["params"], serde_json::json!(["c"]));
    assert_eq!(v["name"], "nixos-image-24.11.demo-aarch64-linux");
    assert_eq!(v["layout"], "efi", "no profile and no layout: efi");
    assert_eq!(
        v["args"],
        serde_json::json!(["--size", "8G", "--sector-size", "4096", "--no-checksum", "--kernel-param", "c"])
    );
}

#[test]
fn module_variant_builds_a_bootable_image() {
    let expr = module_expr(r#"{ kiln.extraKernelParams = [ "kiln.module=1" ]; }"#, r#"r.variant "kiln-qemu-efi""#);
    let file = eval_json(&module_expr(
        r#"{ kiln.extraKernelParams = [ "kiln.module=1" ]; }"#,
        r#"(r.variant "kiln-qemu-efi").passthru.filePath"#,
    ));
    let scratch = tempfile::tempdir().unwrap();
    let out = nix::build_expr(&expr, scratch.path(), &[]).unwrap_or_else(|log| panic!("nix-build failed:\n{log}"));
    let img = out.join(file.as_str().unwrap());
    assert_eq!(products(&out), [("qcow2-image".to_owned(), PathBuf::from(file.as_str().unwrap()))]);
    let outcome = Boot::new(&img, marker())
        .firmware(Firmware::Uefi)
        .format("qcow2")
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot: {e}", img.display()));
    let cmdline = outcome.cmdline();
    assert!(cmdline.split_whitespace().any(|p| p == "kiln.module=1"), "the module's parameter is not on {cmdline:?}");
}

/// Every `.nix` file of the repository, for `nix-instantiate --parse`.
fn nix_files() -> Vec<PathBuf> {
    let root = fixtures::workspace_root();
    let mut files = vec![root.join("flake.nix")];
    for dir in ["nix", "tests/fixtures"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "nix") {
                files.push(p);
            }
        }
    }
    files
}

/// nixpkgs is not available offline: flake.nix and package.nix are evaluated against stand-ins for the few
/// nixpkgs attributes they use (`rustPlatform.buildRustPackage` returns its arguments), with nixpkgs' real `lib`.
/// `nix flake check` itself needs the nixpkgs input (and flakes are experimental in Nix 2.8): the flake's checks
/// are the tests of this file, run here with nix-build.
#[test]
fn nix_files_parse_and_the_flake_and_package_evaluate() {
    for f in nix_files() {
        let out = tools::run(nix::nix_command("nix-instantiate").arg("--parse").arg(&f));
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
    }
    let root = fixtures::workspace_root();
    let expr = format!(
        r#"let
          lib = import {lib};
          pkgsFor = system: rec {{
            inherit system lib;
            stdenv = {{ buildPlatform.canExecute = _: true; hostPlatform.system = system; }};
            callPackage = f: extra: import f ({{
              inherit lib stdenv;
              rustPlatform.buildRustPackage = a: a // {{ type = "derivation"; name = "${{a.pname}}-${{a.version}}"; }};
              installShellFiles = "installShellFiles";
            }} // extra);
            pkgsStatic = {{ inherit callPackage; }};
            buildPackages = {{ inherit callPackage; }};
            nixfmt-rfc-style = null;
          }};
          nixpkgs = {{ inherit lib; legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor; }};
          flake = (import {root}/flake.nix).outputs {{ self = flake; inherit nixpkgs; }};
          pkg = flake.packages.x86_64-linux.kiln;
        in {{
          packages = builtins.attrNames flake.packages.x86_64-linux;
          systems = builtins.attrNames flake.packages;
          inherit (pkg) pname version;
          lock = toString pkg.cargoLock.lockFile;
          install = pkg.postInstall;
          makeImage = builtins.isFunction flake.lib.makeImage;
          module = toString flake.nixosModules.default;
          checks = builtins.attrNames flake.checks.x86_64-linux;
        }}"#,
        lib = nixpkgs_lib().display(),
        root = root.display()
    );
    let v = eval_json(&expr);
    assert_eq!(v["packages"], serde_json::json!(["default", "kiln", "kiln-static"]));
    assert_eq!(v["systems"], serde_json::json!(["aarch64-linux", "x86_64-linux"]));
    assert_eq!((v["pname"].as_str(), v["version"].as_str()), (Some("kiln"), Some(env!("CARGO_PKG_VERSION"))));
    assert_eq!(v["lock"], root.join("Cargo.lock").display().to_string());
    let install = v["install"].as_str().unwrap();
    for want in ["share/kiln/images", "completions bash", "completions zsh", "completions fish", "installManPage"] {
        assert!(install.contains(want), "postInstall lacks {want}:\n{install}");
    }
    assert_eq!(v["makeImage"], true);
    assert_eq!(v["module"], root.join("nix/module.nix").display().to_string());
    assert_eq!(
        v["checks"],
        serde_json::json!(["make-image-amazon", "make-image-qemu-efi", "module-image", "module-variants", "package"])
    );

    // What package.nix's postInstall runs: completions and a manual page from the binary.
    for shell in ["bash", "zsh", "fish"] {
        let out = kiln(["completions", shell]).ok();
        assert!(out.contains("kiln") && out.contains("nix-builder"), "{shell}: {out}");
    }
    let man = kiln(["man"]).ok();
    assert!(man.contains(".TH kiln 1") && man.contains("flash"), "{man}");
}

/// A build farm of one: the image built with `--max-jobs 0 --builders ssh://…` on an SSH builder at 127.0.0.1
/// whose store is not the client's (a chroot store behind `nix-store --serve`), so kiln, the closure and the
/// image are copied both ways; then `nix-build --check` builds it again here and Nix compares the bytes.
#[test]
fn a_remote_builder_makes_the_same_image_as_the_local_build() {
    let (top, _) = setup();
    let builder = kiln_tests::ssh_builder::SshBuilder::start().unwrap();
    // A name of its own, so the client store does not hold the output yet and the builder must build it.
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let expr = expr(&format!(r#"profile = "qemu-efi"; name = "remote-{}-{nonce}";"#, std::process::id()));
    let system = format!("{}-linux", std::env::consts::ARCH);
    let builders = builder.builders(&system);
    let opts = builder.ssh_opts();
    let scratch = tempfile::tempdir().unwrap();
    let out = nix::build_expr_env(
        &expr,
        scratch.path(),
        &["--max-jobs", "0", "--builders", &builders],
        &[("NIX_SSHOPTS", &opts)],
    )
    .unwrap_or_else(|log| panic!("the remote build failed:\n{log}\nsshd:\n{}", builder.log()));
    let _remove = Removed(out.clone());
    // Copied there: the system's closure and kiln; built there; copied back here.
    for logical in [Path::new(top.as_str()), out.as_path()] {
        kiln_tests::ssh_builder::ensure_copied(&builder, logical).unwrap();
    }
    let drv_kiln = std::fs::read_dir(builder.physical(Path::new("/nix/store")))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().ends_with("-kiln"));
    assert!(drv_kiln, "kiln was not copied to the builder");
    assert!(nix::is_valid(&out));
    let image = out.join(products(&out)[0].1.clone());
    assert_eq!(image.extension().unwrap(), "qcow2");

    // The local build, compared by Nix with what the builder made.
    let checked = nix::build_expr(&expr, scratch.path(), &["--check"])
        .unwrap_or_else(|log| panic!("the local build differs from the remote one:\n{log}"));
    assert_eq!(checked, out);
}

/// Removes a store path from the host store when dropped, also when the test fails.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let check = PathBuf::from(format!("{}.check", self.0.display()));
        if check.exists() {
            tools::run(std::process::Command::new("rm").arg("-rf").arg(&check));
        }
        if let Err(e) = nix::delete(&[&self.0]) {
            eprintln!("{e:#}");
        }
    }
}
