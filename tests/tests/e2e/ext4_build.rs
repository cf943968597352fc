//! `kiln build --layout none`: bare ext4 root filesystems of real and synthetic closures, judged by e2fsck,
//! two independent readers (debugfs and the ext4-view crate), dumpe2fs, resize2fs and sha256.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tests::ext4::{Expect, Links, compare_tree, e2fsck_clean, ext4_view_compare, features, superblock_field};
use kiln_tests::{fixtures, tools};

use crate::util::{Run, kiln, sha256, store_of};

const CANONICAL: Expect = Expect::Canonical { uid: 0, gid: 0, mtime: 1 };

/// `kiln build --layout none` of a fixture into `out`.
fn build(fixture: &Path, store: &Path, out: &Path, extra: &[&str]) -> Run {
    let top = fixtures::toplevel_of(fixture);
    let mut args: Vec<&OsStr> = ["build", "--layout", "none", "--format", "raw", "--progress", "none", "--system"]
        .iter()
        .map(OsStr::new)
        .collect();
    args.extend([
        OsStr::new(&top),
        OsStr::new("--store-dir"),
        store.as_os_str(),
        OsStr::new("--output"),
        out.as_os_str(),
    ]);
    args.extend(extra.iter().map(OsStr::new));
    kiln(args)
}

/// Builds, then checks with e2fsck and both readers that `/nix/store` holds exactly the store directory.
fn build_and_check(fixture: &Path, store: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    build(fixture, store, &img, &[]).ok();
    e2fsck_clean(&img, 0).unwrap_or_else(|e| panic!("e2fsck -fn found problems:\n{e}"));
    compare_tree(&img, 0, b"/nix/store", store, CANONICAL, Links::SameContents)
        .unwrap_or_else(|d| panic!("debugfs read-back differs:\n{}", d.join("\n")));
    ext4_view_compare(&img, 0, b"/nix/store", store, CANONICAL)
        .unwrap_or_else(|d| panic!("ext4-view read-back differs:\n{}", d.join("\n")));
    (tmp, img)
}

#[test]
fn synthetic_edge_case_store_is_clean_and_reads_back() {
    let fx = fixtures::synthetic_store();
    build_and_check(&fx, &store_of(&fx));
}

#[test]
fn demo_closure_is_clean_and_reads_back() {
    let fx = fixtures::demo_closure();
    build_and_check(&fx, &store_of(&fx));
}

#[test]
fn real_nix_closure_is_clean_and_reads_back() {
    let fx = fixtures::nix_closure();
    build_and_check(&fx, &store_of(&fx.join("store-root")));
}

#[test]
fn filesystem_has_the_promised_features_and_identity() {
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    build(&fx, &store_of(&fx), &img, &[]).ok();
    let have = features(&img, 0);
    for f in [
        "has_journal",
        "ext_attr",
        "resize_inode",
        "dir_index",
        "filetype",
        "extent",
        "64bit",
        "flex_bg",
        "sparse_super",
        "large_file",
        "huge_file",
        "dir_nlink",
        "extra_isize",
        "metadata_csum",
    ] {
        assert!(have.contains(f), "feature {f} missing: {have:?}");
    }
    let field = |name: &str| superblock_field(&img, 0, name).unwrap_or_else(|| panic!("dumpe2fs lacks {name}"));
    assert_eq!(field("Filesystem volume name"), "nixos");
    assert_eq!(field("Block size"), "4096");
    assert_eq!(field("Inode size"), "256");
    assert!(field("Reserved GDT blocks").parse::<u64>().unwrap() > 0);
    assert_eq!(field("Filesystem state"), "clean");
    // The UUID comes from the seed: the default (the toplevel) is stable, another seed gives another.
    let uuid = field("Filesystem UUID");
    let img2 = tmp.path().join("seeded.img");
    build(&fx, &store_of(&fx), &img2, &["--seed", "another"]).ok();
    assert_ne!(superblock_field(&img2, 0, "Filesystem UUID").unwrap(), uuid);
    let img3 = tmp.path().join("again.img");
    build(&fx, &store_of(&fx), &img3, &[]).ok();
    assert_eq!(superblock_field(&img3, 0, "Filesystem UUID").unwrap(), uuid);
}

#[test]
fn same_bytes_with_one_or_two_threads_and_on_every_run() {
    for fx in [fixtures::demo_closure(), fixtures::synthetic_store()] {
        let tmp = tempfile::tempdir().unwrap();
        let images: Vec<PathBuf> = ["1", "2", "2"]
            .iter()
            .enumerate()
            .map(|(i, threads)| {
                let img = tmp.path().join(format!("root-{i}.img"));
                build(&fx, &store_of(&fx), &img, &["--threads", threads]).ok();
                img
            })
            .collect();
        let sums: Vec<String> = images.iter().map(|i| sha256(i)).collect();
        assert_eq!(sums[0], sums[1], "--threads 1 and 2 differ for {}", fx.display());
        assert_eq!(sums[1], sums[2], "two runs differ for {}", fx.display());
    }
}

#[test]
fn fixed_sizes_are_exact_and_too_small_is_refused_before_writing() {
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    let r = build(&fx, &store_of(&fx), &img, &["--size", "4M"]);
    r.fails_with(&["--size 4194304 is too small: the image needs at least"]);
    assert!(!img.exists(), "nothing may be left at the output path");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no temporary file left either");
    build(&fx, &store_of(&fx), &img, &["--size", "300M"]).ok();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 300 << 20);
    e2fsck_clean(&img, 0).unwrap();
}

#[test]
fn extra_space_is_left_free() {
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    build(&fx, &store_of(&fx), &img, &["--extra-space", "100M"]).ok();
    let free: u64 = superblock_field(&img, 0, "Free blocks").unwrap().parse().unwrap();
    assert!(free * 4096 >= 100 << 20, "only {free} free blocks");
    assert!(free * 4096 < 102 << 20, "auto size rounds to the MiB, not more: {free} free blocks");
}

#[test]
fn existing_output_is_kept_unless_forced() {
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    std::fs::write(&img, "precious").unwrap();
    build(&fx, &store_of(&fx), &img, &[]).fails_with(&["exists (use --force to replace it)"]);
    assert_eq!(std::fs::read(&img).unwrap(), b"precious");
    build(&fx, &store_of(&fx), &img, &["--force"]).ok();
    e2fsck_clean(&img, 0).unwrap();
}

#[test]
fn resize2fs_grows_the_image_eightfold_and_it_stays_clean() {
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    build(&fx, &store_of(&fx), &img, &[]).ok();
    let size = std::fs::metadata(&img).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    file.set_len(size * 8).unwrap();
    drop(file);
    tools::run_ok(Command::new(tools::require("resize2fs", "e2fsprogs")).arg(&img));
    let blocks: u64 = superblock_field(&img, 0, "Block count").unwrap().parse().unwrap();
    assert_eq!(blocks * 4096, size * 8);
    e2fsck_clean(&img, 0).unwrap_or_else(|e| panic!("after resize2fs:\n{e}"));
    compare_tree(&img, 0, b"/nix/store", &store_of(&fx), CANONICAL, Links::SameContents)
        .unwrap_or_else(|d| panic!("{}", d.join("\n")));
}

/// The Linux kernel mounts kiln's filesystem read-write (direct kernel boot of the demo closure's kernel and
/// initrd, the image as a virtio disk), creates, links, renames and deletes files, inserts into and deletes
/// from a hashed directory kiln wrote, remounts read-only and powers off; e2fsck then finds it clean.
#[test]
fn the_kernel_mounts_it_read_write_and_it_stays_clean() {
    use kiln_tests::boot::{Boot, DirectKernel, Firmware};
    let fx = fixtures::demo_closure();
    let store = store_of(&fx);
    let top = fixtures::toplevel_of(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("root.img");
    build(&fx, &store, &img, &[]).ok();
    let physical = |logical: &str| fx.join(logical.trim_start_matches('/'));
    let link = |logical: String| {
        let target = std::fs::read_link(physical(&logical)).unwrap();
        physical(target.to_str().unwrap())
    };
    let outcome = Boot::new(&img, "KILN-RW-TEST-OK")
        .firmware(Firmware::Bios)
        .writable(true)
        .failure_markers(&["KILN-RW-TEST-FAIL", "DEMO-STAGE1-FAIL", "Kernel panic", "EXT4-fs error"])
        .direct_kernel(DirectKernel {
            kernel: link(format!("{top}/kernel")),
            initrd: Some(link(format!("{top}/initrd"))),
            append: format!("console=ttyS0 panic=-1 loglevel=4 root=/dev/vda rw init={top}/bin/kiln-rw-test"),
        })
        .run()
        .unwrap_or_else(|e| panic!("read-write boot failed: {e}"));
    eprintln!("read-write test booted and finished in {:.1} s", outcome.elapsed.as_secs_f64());
    e2fsck_clean(&img, 0).unwrap_or_else(|e| panic!("after the kernel wrote to it:\n{e}"));
    let listing = tools::run_ok(
        Command::new(tools::require("debugfs", "e2fsprogs")).args(["-R", "ls -l /kiln-rw-test/sub"]).arg(&img),
    );
    assert!(String::from_utf8_lossy(&listing.stdout).contains("moved"), "the kernel's writes are on disk");
}

/// With a closureInfo, every store path is hashed from the same reads that copy it, and a path whose contents
/// differ from its registration stops the build naming it, leaving nothing at the output path.
#[test]
fn contents_differing_from_the_registration_are_refused_while_copying() {
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("fx");
    std::fs::create_dir_all(&copy).unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(fx.join("nix")).arg(fx.join("toplevel")).arg(&copy));
    let ci = fx.join("closure-info");
    let ci_arg = ["--closure-info", ci.to_str().unwrap()];
    let img = tmp.path().join("root.img");
    build(&copy, &store_of(&copy), &img, &ci_arg).ok();
    e2fsck_clean(&img, 0).unwrap();
    std::fs::remove_file(&img).unwrap();

    // Flip one byte of one file (same size, so only the hash can tell).
    let store = store_of(&copy);
    let victim_dir = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-demo-checks"))
        .expect("demo-checks store path");
    let victim =
        std::fs::read_dir(victim_dir.join("many")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_file()).unwrap();
    tools::run_ok(Command::new("chmod").arg("-R").arg("u+w").arg(&copy));
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let name = victim_dir.file_name().unwrap().to_str().unwrap().to_owned();
    build(&copy, &store, &img, &ci_arg).fails_with(&[
        &name,
        "contents differ from its registration",
        "narHash sha256:",
    ]);
    assert!(!img.exists(), "nothing may be left at the output path");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "no temporary file left either");
    // The check can be turned off.
    let mut off = ci_arg.to_vec();
    off.push("--no-verify-hashes");
    build(&copy, &store, &img, &off).ok();
    e2fsck_clean(&img, 0).unwrap();
}
