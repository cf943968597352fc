//! `kiln verify`: a fresh image of the real Nix closure passes (and Nix itself agrees, on the extracted copy);
//! a flipped byte in one file, a stray store directory, non-canonical metadata or another `--system` fail, naming
//! what is wrong. The same image inside a GPT partition is found and passes. [`boot`] checks the boot files and
//! what lies outside the store; [`input`] what is not a whole image (truncated, a container, a FIFO) and the
//! deepest tree kiln builds.

mod boot;
mod input;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tests::{fixtures, nix, tools};

use crate::util::{Run, kiln, store_of};

/// A built image of a fixture, in its own temporary directory.
struct Built {
    tmp: tempfile::TempDir,
    img: PathBuf,
    toplevel: String,
    store: PathBuf,
}

impl Drop for Built {
    fn drop(&mut self) {
        // rdump copies store modes (0555 directories): make the tree removable again.
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.tmp.path()).status();
    }
}

/// `kiln build --layout none` of the real Nix fixture, with its closureInfo.
fn build_nix_image() -> Built {
    let fx = fixtures::nix_closure();
    let store = store_of(&fx.join("store-root"));
    let closure_info = fx.join("closure-info");
    build_image(&fx, store, &["--closure-info".as_ref(), closure_info.as_os_str()])
}

fn build_image(fx: &Path, store: PathBuf, extra: &[&OsStr]) -> Built {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    let toplevel = fixtures::toplevel_of(fx);
    let mut args: Vec<&OsStr> =
        ["build", "--layout", "none", "--format", "raw", "--progress", "none"].iter().map(OsStr::new).collect();
    args.extend([
        OsStr::new("--system"),
        OsStr::new(&toplevel),
        OsStr::new("--store-dir"),
        store.as_os_str(),
        OsStr::new("--output"),
        img.as_os_str(),
    ]);
    args.extend_from_slice(extra);
    kiln(args).ok();
    Built { tmp, img, toplevel, store }
}

fn verify(img: &Path, extra: &[&OsStr]) -> Run {
    let mut args = vec![OsStr::new("verify"), img.as_os_str()];
    args.extend_from_slice(extra);
    kiln(args)
}

fn debugfs(img: &Path, write: bool, request: &str) -> String {
    let mut cmd = Command::new(tools::require("debugfs", "e2fsprogs"));
    if write {
        cmd.arg("-w");
    }
    let out = tools::run_ok(cmd.arg("-R").arg(request).arg(img));
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts a failed verify: exit 1, the one-line error `verify: N problem…`, and every `want` on a `problem:`
/// line of stdout.
fn fails_naming(r: &Run, want: &[&str]) {
    r.fails_with(&["verify: ", " problem"]);
    let problems: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("problem: ")).collect();
    for w in want {
        assert!(problems.iter().any(|l| l.contains(w)), "no problem line names {w:?}:\n{}", r.stdout);
    }
}

/// The first regular file (in sorted order) of more than 64 bytes under the fixture's store, as a logical path:
/// big enough not to be stored inline.
fn some_file(store: &Path) -> String {
    fn walk(dir: &Path, found: &mut Option<PathBuf>) {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            if found.is_some() {
                return;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(&p, found);
            } else if md.is_file() && md.len() > 64 {
                *found = Some(p);
            }
        }
    }
    let mut found = None;
    walk(store, &mut found);
    let physical = found.expect("the fixture has a regular file over 64 bytes");
    format!("/nix/store/{}", physical.strip_prefix(store).unwrap().display())
}

#[test]
fn fresh_image_of_the_real_nix_closure_verifies_and_nix_agrees() {
    let b = build_nix_image();
    let out = verify(&b.img, &[]).ok();
    assert!(out.contains(&format!("profile        system -> {}", b.toplevel)), "{out}");
    assert!(out.contains("root filesystem: the whole image"), "{out}");
    assert!(!out.contains("problem"), "{out}");

    let out =
        verify(&b.img, &["--system".as_ref(), b.toplevel.as_ref(), "--store-dir".as_ref(), b.store.as_ref()]).ok();
    assert!(out.contains("compared with the Nix database"), "the fixture's store has a Nix database:\n{out}");

    // Nix's own check of the same image: extract it and run `nix-store --verify --check-contents` on a copy.
    let root = b.tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    debugfs(&b.img, false, &format!("rdump / {}", root.display()));
    let checked = nix::verify_store_copy(&root).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(checked.contains(&b.toplevel), "Nix checked {checked:?}");
}

#[test]
fn demo_image_verifies_against_the_hosts_copies() {
    let fx = fixtures::demo_closure();
    let b = build_image(&fx, store_of(&fx), &[]);
    let out =
        verify(&b.img, &["--system".as_ref(), b.toplevel.as_ref(), "--store-dir".as_ref(), b.store.as_ref()]).ok();
    assert!(out.contains("compared with the host's copies"), "the demo store has no Nix database:\n{out}");
}

#[test]
fn a_flipped_byte_fails_naming_the_store_path_and_both_hashes() {
    let b = build_nix_image();
    let file = some_file(&b.store);
    let store_path: String = file.split('/').take(4).collect::<Vec<_>>().join("/");
    let block: u64 = debugfs(&b.img, false, &format!("bmap {file} 0")).trim().parse().expect("bmap prints a block");
    let image = std::fs::OpenOptions::new().read(true).write(true).open(&b.img).unwrap();
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8];
    image.read_exact_at(&mut byte, block * 4096).unwrap();
    image.write_all_at(&[byte[0] ^ 0x01], block * 4096).unwrap();
    drop(image);
    let r = verify(&b.img, &[]);
    fails_naming(&r, &[&format!("{store_path}: contents differ")]);
    let line = r.stdout.lines().find(|l| l.contains("contents differ")).unwrap();
    assert_eq!(line.matches("narHash sha256:").count(), 2, "both hashes, nix32: {line}");
    assert_eq!(r.stdout.matches("problem: ").count(), 1, "only that path:\n{}", r.stdout);
}

#[test]
fn a_stray_store_directory_fails_naming_it() {
    let b = build_nix_image();
    let stray = "/nix/store/00000000000000000000000000000000-stray";
    debugfs(&b.img, true, &format!("mkdir {stray}"));
    fails_naming(&verify(&b.img, &[]), &[&format!("{stray}: in the store but not a valid path")]);
}

#[test]
fn non_canonical_metadata_fails_naming_the_entry() {
    let b = build_nix_image();
    let file = some_file(&b.store);
    debugfs(&b.img, true, &format!("sif {file} uid 1000"));
    fails_naming(&verify(&b.img, &[]), &[&format!("{file}: not canonical: owner 1000:0")]);
}

#[test]
fn another_system_fails() {
    let b = build_nix_image();
    let other = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-other";
    let r = verify(&b.img, &["--system".as_ref(), other.as_ref()]);
    fails_naming(
        &r,
        &[
            &format!("/nix/var/nix/profiles/system: points to {}, but --system is {other}", b.toplevel),
            &format!("{other}: the --system toplevel is not a valid path"),
        ],
    );
}

#[test]
fn the_root_partition_of_a_gpt_disk_is_found() {
    let b = build_nix_image();
    let disk = b.tmp.path().join("disk.img");
    let len = std::fs::metadata(&b.img).unwrap().len();
    std::fs::File::create(&disk).unwrap().set_len(len + (4 << 20)).unwrap();
    let sgdisk = tools::require("sgdisk", "gdisk");
    // Partition 1 is no ESP: a disk with one must hold kiln's boot files, which a bare root filesystem lacks.
    tools::run_ok(
        Command::new(sgdisk).args(["-n", "1:2048:+1M", "-t", "1:8300", "-n", "2:0:0", "-t", "2:8304"]).arg(&disk),
    );
    // Partition 2 starts right after partition 1 (2048 + 2048 sectors).
    tools::run_ok(
        Command::new(tools::require("dd", "coreutils"))
            .arg(format!("if={}", b.img.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=512", "seek=4096", "conv=notrunc,sparse", "status=none"]),
    );
    let out = verify(&disk, &[]).ok();
    assert!(out.contains("GPT partition 2 (Linux root (x86-64), 512-byte sectors)"), "{out}");
}
