//! The Linux kernel accepts kiln's ext4 metadata for writing, not only for reading: random trees (wide htree
//! directories, hard links, slow symlinks, sparse files) built by `kiln build --layout none` are attached to a
//! loop device, mounted read-write, changed the ways a running system changes its root (files appended,
//! truncated, removed, renamed across directories, hard-linked, new files, directories and a large file
//! written, an htree directory filled and emptied), unmounted, and must then be clean for `e2fsck -fn`, with
//! the changes read back. And the reliability soak (`scripts/soak`) itself.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tests::ext4::e2fsck_clean;
use kiln_tests::tools;
use kiln_tests::trees::{TreeSize, random_system};

use crate::flash::Loop;
use crate::util::{Unmount, kiln, walk};

/// Changes the tree mounted at `root` (the store path inside the mounted image); returns what the new big file
/// and the appended file must read back as.
fn change(root: &Path, seed: u64) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    walk(root, &mut all);
    let mut expect = Vec::new();
    let fresh = root.join("kiln-rw");
    std::fs::create_dir(&fresh).unwrap();
    // Each inode is changed through one of its names only, so what it must read back is known.
    let mut seen = std::collections::HashSet::new();
    for (i, p) in all.iter().enumerate() {
        let Ok(m) = std::fs::symlink_metadata(p) else { continue };
        if !seen.insert(m.ino()) {
            continue;
        }
        if m.is_file() {
            match i % 4 {
                0 => {
                    let mut data = std::fs::read(p).unwrap();
                    let more = format!("appended {seed}/{i}\n").repeat(1 + i % 300);
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(p)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, more.as_bytes()))
                        .unwrap();
                    data.extend_from_slice(more.as_bytes());
                    expect.push((p.clone(), data));
                }
                1 => std::fs::remove_file(p).unwrap(),
                2 => std::fs::rename(p, fresh.join(format!("moved-{i}"))).unwrap(),
                _ => std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(m.len() / 2).unwrap(),
            }
        } else if m.file_type().is_symlink() && i % 3 == 0 {
            std::fs::remove_file(p).unwrap();
        } else if m.file_type().is_symlink() && i % 3 == 1 {
            std::fs::hard_link(p, fresh.join(format!("link-{i}"))).unwrap();
        }
    }
    // An htree's worth of new names, half removed again; a large file; a deep directory.
    for n in 0..600 {
        std::fs::write(fresh.join(format!("new-file-with-a-longer-name-{n:04}")), n.to_string()).unwrap();
    }
    for n in (0..600).step_by(2) {
        std::fs::remove_file(fresh.join(format!("new-file-with-a-longer-name-{n:04}"))).unwrap();
    }
    let big: Vec<u8> = (0..(6u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(fresh.join("big"), &big).unwrap();
    expect.push((fresh.join("big"), big));
    let deep = (0..12).fold(fresh.clone(), |p, d| p.join(format!("d{d}")));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), b"leaf").unwrap();
    expect.push((deep.join("leaf"), b"leaf".to_vec()));
    expect
}

#[test]
fn the_kernel_writes_random_tree_images_and_e2fsck_finds_them_clean() {
    tools::require("mount", "mount");
    for seed in [3u64, 7, 12, 20] {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let sys = random_system(seed, &store, TreeSize::Small);
        let img = tmp.path().join("root.img");
        kiln([
            "build".as_ref(),
            "--layout".as_ref(),
            "none".as_ref(),
            "--progress".as_ref(),
            "none".as_ref(),
            "--system".as_ref(),
            sys.toplevel.as_ref(),
            "--store-dir".as_ref(),
            store.as_os_str(),
            "--output".as_ref(),
            img.as_os_str(),
            // Room for the changes: an image sized to fit has little to spare.
            "--extra-space".as_ref(),
            "64M".as_ref(),
        ])
        .ok();
        let dev = Loop::new(&img, 512);
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        tools::run_ok(Command::new("mount").args(["-t", "ext4", "-o", "rw"]).arg(&dev.dev).arg(&mnt));
        let mounted = Unmount(mnt.clone());
        let root = mnt.join(sys.tree.trim_start_matches('/'));
        let expect = change(&root, seed);
        drop(mounted);
        e2fsck_clean(&img, 0).unwrap_or_else(|e| panic!("seed {seed} ({:?}): after the kernel wrote:\n{e}", sys.stats));
        // What was written is there after a fresh mount.
        tools::run_ok(Command::new("mount").args(["-t", "ext4", "-o", "ro"]).arg(&dev.dev).arg(&mnt));
        let _mounted = Unmount(mnt.clone());
        for (p, want) in &expect {
            let have = std::fs::read(p).unwrap_or_else(|e| panic!("seed {seed}: {}: {e}", p.display()));
            assert!(&have == want, "seed {seed}: {} reads back {} bytes, want {}", p.display(), have.len(), want.len());
        }
        assert!(std::fs::metadata(root.join("kiln-rw")).unwrap().nlink() >= 3);
    }
}

/// `scripts/soak`'s program: a short run passes, and a tree changed after its image was built
/// (`KILN_SOAK_BREAK`) stops the run there, with the seed and the command that replays it written down and the
/// tree kept.
#[test]
fn the_soak_passes_and_stops_at_a_broken_tree_naming_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let soak = |extra: &[&str], brk: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_soak"));
        cmd.args(extra).arg("--dir").arg(dir.path()).env("KILN_BIN", kiln_tests::fixtures::kiln_bin());
        if let Some(seed) = brk {
            cmd.env("KILN_SOAK_BREAK", seed);
        }
        crate::util::run(&mut cmd)
    };
    let out = soak(&["20"], None);
    assert!(out.status.success() && out.stdout.contains("20 tree(s) from seed 0: all clean"), "{out:?}");
    let out = soak(&["10", "--from", "100"], Some("104"));
    assert!(!out.status.success(), "a broken tree passed the soak: {out:?}");
    assert!(out.stderr.contains("seed 104 failed after 4 good tree(s)"), "{}", out.stderr);
    assert!(out.stderr.contains("ext4-view read-back differs"), "{}", out.stderr);
    let failed = std::fs::read_to_string(dir.path().join("FAILED")).unwrap();
    assert!(failed.starts_with("seed 104\nreplay: scripts/soak --seed 104\n"), "{failed}");
    assert!(dir.path().join("seed-104/root.img").exists(), "the failing tree's image was not kept");
    // Replayed without the break, the same seed passes, and the record of the failure is gone.
    let out = soak(&["--seed", "104"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(!dir.path().join("FAILED").exists());
}
