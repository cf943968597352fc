//! What a BIOS build must never do on the build host: run a program from the closure (bug 8: the closure's
//! `bin/grub-mkimage` was run, as root), or write through a fixed, predictable scratch path (bug 1: the early
//! GRUB config went to `$TMPDIR/kiln-grub-early.cfg`, following a planted symlink, and parallel builds took each
//! other's config).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::{fixtures, tools};

use crate::util::{kiln_cmd, run, sha256, store_of};

/// The arguments of a `legacy+gpt` build of the demo system from the closure at `closure` into `output`.
fn bios_build_args(closure: &Path, output: &Path) -> Vec<std::ffi::OsString> {
    let top = fixtures::toplevel_of(closure);
    let mut args: Vec<std::ffi::OsString> =
        ["build", "--progress", "none", "--layout", "legacy+gpt", "--system"].into_iter().map(Into::into).collect();
    args.push(top.into());
    args.extend([OsStr::new("--store-dir").into(), store_of(closure).into_os_string()]);
    args.extend([OsStr::new("--closure-info").into(), closure.join("closure-info").into_os_string()]);
    args.extend([OsStr::new("--output").into(), output.as_os_str().to_owned()]);
    args
}

/// The demo closure's GRUB store path (physical) under `closure`.
fn grub_store_path(closure: &Path) -> PathBuf {
    std::fs::read_dir(store_of(closure))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with("-grub-2.06"))
        .expect("the demo closure has a grub-2.06 store path")
}

/// Makes `path` and its parent writable by the owner (the fixture's store is read-only).
fn make_writable(path: &Path) {
    for p in [path.parent().unwrap(), path] {
        let mut perm = std::fs::metadata(p).unwrap().permissions();
        perm.set_mode(perm.mode() | 0o200);
        std::fs::set_permissions(p, perm).unwrap();
    }
}

/// Rewrites the registration of `store_path` (physical, under `closure`) after its contents changed: a
/// consistent closure, as an attacker who controls it would make it, so the build's hash check passes.
fn reregister(closure: &Path, store_path: &Path) {
    let out = tools::run_ok(
        Command::new(tools::require("nix-hash", "nix-bin")).args(["--type", "sha256", "--base32"]).arg(store_path),
    );
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let size = kiln_tests::nix::nar_size(store_path);
    let reg = closure.join("closure-info/registration");
    let logical = format!("/nix/store/{}", store_path.file_name().unwrap().to_string_lossy());
    let mut lines: Vec<String> = std::fs::read_to_string(&reg).unwrap().lines().map(str::to_owned).collect();
    // Its entry: the path, then its hash (the path also appears in other entries' references).
    let at = (0..lines.len() - 1)
        .find(|&i| lines[i] == logical && lines[i + 1].starts_with("sha256:"))
        .expect("the store path is registered");
    lines[at + 1] = format!("sha256:{hash}");
    lines[at + 2] = size.to_string();
    make_writable(&reg);
    std::fs::write(&reg, lines.join("\n") + "\n").unwrap();
}

/// A copy of the demo closure whose GRUB `bin/grub-mkimage` would leave `marker` behind and fail if run.
fn closure_with_hostile_grub_mkimage(dir: &Path, marker: &Path) -> PathBuf {
    let copy = dir.join("closure");
    tools::run_ok(Command::new("cp").arg("-a").arg(fixtures::demo_closure()).arg(&copy));
    let grub = grub_store_path(&copy);
    let program = grub.join("bin/grub-mkimage");
    make_writable(&program);
    std::fs::remove_file(&program).unwrap();
    std::fs::write(&program, format!("#!/bin/sh\necho \"ran as $(id -u): $*\" >> '{}'\nexit 1\n", marker.display()))
        .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o555)).unwrap();
    reregister(&copy, &grub);
    copy
}

#[test]
fn a_bios_build_never_runs_the_closures_grub_mkimage() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("grub-mkimage-ran");
    let closure = closure_with_hostile_grub_mkimage(tmp.path(), &marker);

    // The closure's GRUB, found by kiln, and the same package given with --grub.
    let img = tmp.path().join("disk.img");
    let built = run(kiln_cmd().args(bios_build_args(&closure, &img)));
    assert!(!marker.exists(), "kiln ran the closure's grub-mkimage: {}", std::fs::read_to_string(&marker).unwrap());
    built.ok();
    let given = tmp.path().join("given.img");
    let mut args = bios_build_args(&closure, &given);
    args.extend([OsStr::new("--grub").into(), grub_store_path(&closure).into_os_string()]);
    let built = run(kiln_cmd().args(args));
    assert!(!marker.exists(), "kiln ran --grub's grub-mkimage: {}", std::fs::read_to_string(&marker).unwrap());
    built.ok();
    assert_eq!(sha256(&img), sha256(&given), "the same GRUB either way");

    // And the image boots: GRUB from the closure's modules, with kiln's own core.img.
    let want = std::fs::read_to_string(closure.join("marker")).unwrap();
    let outcome = Boot::new(&img, want)
        .firmware(Firmware::Bios)
        .timeout(Duration::from_secs(180))
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot under SeaBIOS: {e}", img.display()));
    eprintln!("booted in {:.1} s; the hostile grub-mkimage never ran", outcome.elapsed.as_secs_f64());
    // The copied store is read-only, as the fixture's: let the temporary directory go without root's help.
    tools::run_ok(Command::new("chmod").args(["-R", "u+w"]).arg(&closure));
}

#[test]
fn a_bios_build_follows_no_symlink_planted_where_scratch_files_could_go() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "the victim's contents\n").unwrap();
    let tmpdir = tmp.path().join("tmp");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&tmpdir).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // The fixed name kiln used, in $TMPDIR, beside the output and in the working directory (the output's).
    let planted = ["kiln-grub-early.cfg", "early.cfg", "grub-early.cfg", "core.img"];
    for dir in [&tmpdir, &out] {
        for name in planted {
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
    }
    let fx = fixtures::demo_closure();
    run(kiln_cmd().args(bios_build_args(&fx, &out.join("disk.img"))).env("TMPDIR", &tmpdir).current_dir(&out)).ok();

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the victim's contents\n", "a planted symlink was followed");
    for dir in [&tmpdir, &out] {
        for name in planted {
            assert_eq!(std::fs::read_link(dir.join(name)).unwrap(), victim, "{name} in {} was replaced", dir.display());
        }
    }
    // No scratch file is left behind in $TMPDIR (none is made for GRUB at all).
    let mut left: Vec<String> =
        std::fs::read_dir(&tmpdir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort_unstable();
    let mut want: Vec<String> = planted.iter().map(|s| (*s).to_owned()).collect();
    want.sort_unstable();
    assert_eq!(left, want, "what the build left in $TMPDIR");
}

#[test]
fn parallel_bios_builds_equal_their_serial_builds() {
    const BUILDS: usize = 8;
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let build = |dir: &str, i: usize| {
        let img = tmp.path().join(dir).join(format!("{i}.img"));
        let mut cmd = kiln_cmd();
        cmd.args(bios_build_args(&fx, &img)).args(["--seed", &format!("parallel-{i}")]);
        (img, cmd)
    };
    std::fs::create_dir_all(tmp.path().join("serial")).unwrap();
    std::fs::create_dir_all(tmp.path().join("parallel")).unwrap();
    let serial: Vec<String> = (0..BUILDS)
        .map(|i| {
            let (img, mut cmd) = build("serial", i);
            run(&mut cmd).ok();
            let hash = sha256(&img);
            std::fs::remove_file(&img).unwrap();
            hash
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = serial.iter().collect();
    assert_eq!(distinct.len(), BUILDS, "different seeds make different disks (filesystem UUIDs, GUIDs)");

    let children: Vec<(PathBuf, std::process::Child)> = (0..BUILDS)
        .map(|i| {
            let (img, mut cmd) = build("parallel", i);
            let child = cmd
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
            (img, child)
        })
        .collect();
    for (i, (img, child)) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "parallel build {i}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(sha256(&img), serial[i], "parallel build {i} differs from the same build run alone");
    }
}
