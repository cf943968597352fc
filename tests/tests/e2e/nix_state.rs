//! The Nix store inside the image is valid for Nix itself: database, schema file, profile, registration;
//! checked on the extracted root with Debian's Nix (on a copy: Nix rewrites any database it opens).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use kiln_tests::ext4::{self, extract};
use kiln_tests::{fixtures, nix, tools};

use crate::util::{kiln, store_of};

fn build_nix_fixture(store: &Path, img: &Path, extra: &[&str]) {
    let fx = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fx);
    let mut args: Vec<&OsStr> =
        ["build", "--layout", "none", "--progress", "none", "--system"].map(OsStr::new).to_vec();
    args.extend([
        OsStr::new(&top),
        OsStr::new("--store-dir"),
        store.as_os_str(),
        OsStr::new("--output"),
        img.as_os_str(),
    ]);
    args.extend(extra.iter().map(OsStr::new));
    kiln(args).ok();
}

fn check_image(img: &Path, expect_registration: bool) {
    let fx = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    extract(img, 0, &root).unwrap();
    assert_eq!(std::fs::read(root.join("nix/var/nix/db/schema")).unwrap(), b"10", "schema file is exactly `10`");
    let profiles = root.join("nix/var/nix/profiles");
    assert_eq!(std::fs::read_link(profiles.join("system")).unwrap(), Path::new("system-1-link"));
    assert_eq!(std::fs::read_link(profiles.join("system-1-link")).unwrap(), Path::new(&top));
    assert!(profiles.join("per-user").is_dir() && root.join("nix/var/nix/gcroots").is_dir());
    assert!(root.join("etc/NIXOS").is_file());
    assert_eq!(root.join("nix-path-registration").exists(), expect_registration);
    if expect_registration {
        assert_eq!(
            std::fs::read(root.join("nix-path-registration")).unwrap(),
            std::fs::read(fx.join("closure-info/registration")).unwrap()
        );
    }
    // Nix itself: every path's contents match the DB, and the closure is what Nix recorded.
    let checked = nix::verify_store_copy(&root).unwrap_or_else(|e| panic!("nix-store --verify:\n{e}"));
    let requisites: Vec<String> =
        std::fs::read_to_string(fx.join("expected/requisites")).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(checked.len(), requisites.len());
    assert_eq!(nix::requisites(Some(&root), &top), requisites);
    // Nothing in the image names the build host's store directory.
    let host = fx.to_string_lossy().into_owned();
    let bytes = std::fs::read(img).unwrap();
    assert!(!bytes.windows(host.len()).any(|w| w == host.as_bytes()), "the image mentions {host}");
    tools::run(Command::new("chmod").arg("-R").arg("u+w").arg(tmp.path()));
}

#[test]
fn nix_accepts_the_store_from_closure_info() {
    let fx = fixtures::nix_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    let ci = fx.join("closure-info");
    build_nix_fixture(
        &store_of(&fx.join("store-root")),
        &img,
        &["--closure-info", ci.to_str().unwrap(), "--registration-file"],
    );
    check_image(&img, true);
}

#[test]
fn nix_accepts_the_store_from_a_reference_scan() {
    // No closureInfo and no database: references come from a scan and hashes are computed before planning.
    let fx = fixtures::nix_closure();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("nix/store");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(store_of(&fx.join("store-root"))).arg(&copy));
    let img = tmp.path().join("root.img");
    build_nix_fixture(&copy, &img, &[]);
    check_image(&img, false);
    tools::run(Command::new("chmod").arg("-R").arg("u+w").arg(tmp.path()));
}

/// Identical files are one inode in the image whatever the host store's state: the fixture's store optimised
/// by Nix itself (identical files hard-linked through `.links`, as `auto-optimise-store` leaves a store) and a
/// copy with no hard links at all give byte-identical images, with one thread or two.
#[test]
fn optimised_and_unoptimised_stores_give_the_same_image() {
    use std::os::unix::fs::MetadataExt;
    let fx = fixtures::nix_closure();
    let tmp = tempfile::tempdir().unwrap();
    let ci = fx.join("closure-info");
    let hello = std::fs::read_dir(store_of(&fx.join("store-root")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with("-hello-data"))
        .expect("hello-data in the fixture");
    let etc = std::fs::read_dir(store_of(&fx.join("store-root")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with("-etc"))
        .expect("etc in the fixture");
    // The fixture's identical files (nix-closure.gen.sh): three plain ones across two store paths, the same
    // bytes executable, and two empty files.
    let same =
        [format!("{hello}/share/hello/same-a"), format!("{hello}/share/doc/same-b"), format!("{etc}/etc/same-c")];
    let same_x = format!("{hello}/share/doc/same-x");
    let empty = [format!("{hello}/share/hello/empty"), format!("{hello}/share/doc/empty-too")];

    // Optimised by Nix (on a copy of store and database: Nix rewrites the database it opens).
    let optimised = tmp.path().join("optimised");
    std::fs::create_dir(&optimised).unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(fx.join("store-root/nix")).arg(&optimised));
    let said = nix::optimise(&optimised);
    let ino = |root: &Path, rel: &str| std::fs::metadata(store_of(root).join(rel)).unwrap().ino();
    assert!(same.iter().all(|r| ino(&optimised, r) == ino(&optimised, &same[0])), "Nix linked none:\n{said}");
    assert_ne!(ino(&optimised, &same_x), ino(&optimised, &same[0]), "Nix links by NAR: the executable bit counts");
    assert_eq!(ino(&optimised, &empty[0]), ino(&optimised, &empty[1]), "Nix links empty files too");

    // Copied file by file: no hard links anywhere.
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    tools::run_ok(
        Command::new("cp")
            .args(["-R", "--no-preserve=links", "--preserve=mode"])
            .arg(fx.join("store-root/nix"))
            .arg(&plain),
    );
    let linked = tools::run_ok(Command::new("find").arg(store_of(&plain)).args(["-links", "+1", "!", "-type", "d"]));
    assert!(linked.stdout.is_empty(), "the plain copy has hard links:\n{}", String::from_utf8_lossy(&linked.stdout));

    let build = |root: &Path, name: &str, threads: &str| {
        let img = tmp.path().join(name);
        let args = ["--closure-info", ci.to_str().unwrap(), "--seed", "dedup", "--format", "raw", "--threads", threads];
        build_nix_fixture(&store_of(root), &img, &args);
        img
    };
    let images = [
        build(&optimised, "optimised-1.img", "1"),
        build(&optimised, "optimised-2.img", "2"),
        build(&plain, "plain-1.img", "1"),
        build(&plain, "plain-2.img", "2"),
    ];
    for other in &images[1..] {
        let cmp = tools::run(Command::new(tools::require("cmp", "diffutils")).arg(&images[0]).arg(other));
        assert!(
            cmp.status.success(),
            "{} and {} differ: {}",
            images[0].display(),
            other.display(),
            String::from_utf8_lossy(&cmp.stdout)
        );
    }

    // In the image: the three identical files are one inode with three names, the executable copy is another
    // inode, and the two empty files share one more.
    let inode = |rel: &str| {
        let path = format!("/nix/store/{rel}");
        ext4::inode_info(&images[0], 0, path.as_bytes()).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let a = inode(&same[0]);
    assert_eq!(a.links, 3, "{a:?}");
    for r in &same[1..] {
        assert_eq!(inode(r).ino, a.ino, "{r} is not one inode with {}", same[0]);
    }
    assert_ne!(inode(&same_x).ino, a.ino, "{same_x}: executable, so not linked with {}", same[0]);
    let e = inode(&empty[0]);
    assert_eq!((inode(&empty[1]).ino, e.links), (e.ino, 2), "{empty:?}");
    // And the whole store reads back with exactly the identical files linked.
    ext4::compare_tree(&images[0], 0, b"/nix/store", &store_of(&plain), ext4::Expect::NIX, ext4::Links::SameContents)
        .unwrap_or_else(|d| panic!("debugfs read-back differs:\n{}", d.join("\n")));
    tools::run(Command::new("chmod").arg("-R").arg("u+w").arg(tmp.path()));
}

/// `--extra-path` ships more store paths and their closures, registered with their references; Nix's newer
/// `nix store verify --all` accepts the result too.
#[test]
fn extra_paths_are_shipped_and_registered() {
    let fx = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("nix/store");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(store_of(&fx.join("store-root"))).arg(&store));
    let hello = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with("-hello-data"))
        .expect("hello-data in the fixture");
    // A store path outside the system's closure, referring to one inside it.
    let extra = "0a0b0c0d0f0g0h0i0j0k0l0m0n0p0q0r-offline-tool";
    std::fs::create_dir_all(store.join(extra).join("bin")).unwrap();
    std::fs::write(store.join(extra).join("bin/tool"), format!("#!/bin/sh\nexec /nix/store/{hello}/bin/hello\n"))
        .unwrap();
    let img = tmp.path().join("root.img");
    build_nix_fixture(&store, &img, &["--extra-path", &format!("/nix/store/{extra}")]);
    let root = tmp.path().join("root");
    extract(&img, 0, &root).unwrap();
    let checked = nix::verify_store_copy(&root).unwrap_or_else(|e| panic!("nix-store --verify:\n{e}"));
    assert!(checked.contains(&format!("/nix/store/{extra}")), "{checked:?}");
    let requisites = nix::requisites(Some(&root), &format!("/nix/store/{extra}"));
    assert!(
        requisites.contains(&format!("/nix/store/{hello}")),
        "the extra path's reference is registered: {requisites:?}"
    );
    assert!(nix::requisites(Some(&root), &top).len() < checked.len());
    // The new CLI's verifier, on a copy (Nix rewrites any store it opens).
    let copy = tmp.path().join("copy");
    tools::run_ok(Command::new("cp").arg("-a").arg(&root).arg(&copy));
    let out = tools::run(
        Command::new(tools::require("nix", "nix-bin"))
            .env("NIX_CONFIG", "build-users-group =")
            .args(["--extra-experimental-features", "nix-command", "store", "verify", "--all", "--no-trust", "--store"])
            .arg(format!("local?root={}", copy.display())),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "nix store verify --all:\n{text}");
    tools::run(Command::new("chmod").arg("-R").arg("u+w").arg(tmp.path()));
}

#[test]
fn an_extra_path_outside_the_store_is_refused() {
    let fx = fixtures::nix_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    let top = fixtures::toplevel_of(&fx);
    let store = store_of(&fx.join("store-root"));
    let args: Vec<&OsStr> = [
        OsStr::new("build"),
        OsStr::new("--layout"),
        OsStr::new("none"),
        OsStr::new("--system"),
        OsStr::new(&top),
        OsStr::new("--store-dir"),
        store.as_os_str(),
        OsStr::new("--output"),
        img.as_os_str(),
        OsStr::new("--extra-path"),
        OsStr::new("/nix/store/2123456789abcdfghijklmnpqrsvwxyz-gone"),
    ]
    .to_vec();
    kiln(args)
        .fails_with(&["--extra-path /nix/store/2123456789abcdfghijklmnpqrsvwxyz-gone", "not found in store directory"]);
    assert!(!img.exists());
}
