//! Property test of the EROFS writer, uncompressed and with LZ4 (alternating by seed): the random trees of the
//! ext4 property test (names of any bytes, all sizes, zero-filled and sparse files, hard links, fast and slow
//! symlinks, odd modes) must pass `fsck.erofs --extract` and read back equal to their source (types, modes,
//! bytes, symlink targets) there and through the kernel (a read-only loop mount: fsck.erofs' extraction
//! changes owners after modes, which clears setuid and setgid), and `dump.erofs` must read the superblock.
//!
//! 40 trees per run by default; `KILN_PROPTEST_TREES=N` (shared with the ext4 property test) for a long run.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_formats::erofs::{self, Options};
use kiln_tests::tools;
use kiln_tests::trees::{TreeSize, random_tree};

use crate::ext4_property::host_tree;

/// Everything under `root`: (type and mode bits, bytes or symlink target).
fn listing(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()
            } else {
                std::fs::read(&p).unwrap()
            };
            // Symlinks' own modes are not kept (as in a Nix store, they read 0777).
            let mode = if m.file_type().is_symlink() { 0o120_000 } else { m.mode() & 0o177_777 };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), (mode, content));
        }
    }
    out
}

fn check_seeds(seeds: std::ops::Range<u64>) {
    let fsck = tools::require("fsck.erofs", "erofs-utils");
    let dump = tools::require("dump.erofs", "erofs-utils");
    for seed in seeds {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        random_tree(seed, &src, TreeSize::Small);
        let tree = host_tree(&src);
        let opts = Options { label: b"prop".to_vec(), uuid: [seed as u8; 16], timestamp: 1_700_000_000 };
        let compress = seed % 2 == 1;
        let packed = if compress { erofs::pack(&tree).unwrap() } else { Vec::new() };
        let plan = erofs::plan_packed(&tree, &opts, packed).unwrap_or_else(|e| panic!("seed {seed}: planning: {e}"));
        let img = tmp.path().join("fs.img");
        let file = std::fs::File::create(&img).unwrap();
        file.set_len(plan.size_bytes()).unwrap();
        plan.write(&tree, &file, 0).unwrap_or_else(|e| panic!("seed {seed}: writing: {e}"));
        drop(file);
        let out = tmp.path().join("out");
        let run = tools::run(Command::new(&fsck).arg(format!("--extract={}", out.display())).arg(&img));
        assert!(
            run.status.success(),
            "seed {seed} (lz4: {compress}): fsck.erofs: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        let want = listing(&src);
        same(&want, &listing(&out.join("data")), 0o6000, &format!("seed {seed} (lz4: {compress}), fsck.erofs"));
        let mounted = Mounted::new(&img, &tmp.path().join("mnt"));
        same(&want, &listing(&mounted.dir.join("data")), 0, &format!("seed {seed} (lz4: {compress}), Linux"));
        drop(mounted);
        let run = tools::run(Command::new(&dump).arg("-s").arg(&img));
        assert!(run.status.success(), "seed {seed}: dump.erofs: {}", String::from_utf8_lossy(&run.stderr));
    }
}

/// A read-only loop mount, unmounted and detached when dropped (also when the test fails).
struct Mounted {
    dev: String,
    dir: PathBuf,
}

impl Mounted {
    fn new(img: &Path, dir: &Path) -> Self {
        let out = tools::run(Command::new(tools::require("losetup", "mount")).args(["-f", "--show", "-r"]).arg(img));
        assert!(out.status.success(), "losetup (the tests run as root): {}", String::from_utf8_lossy(&out.stderr));
        let m = Self { dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(), dir: dir.to_path_buf() };
        std::fs::create_dir_all(dir).unwrap();
        let out = tools::run(Command::new("mount").args(["-t", "erofs", "-o", "ro", &m.dev]).arg(dir));
        assert!(out.status.success(), "mount -t erofs: {}", String::from_utf8_lossy(&out.stderr));
        m
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// `got` holds what `want` does, mode bits in `ignore` aside.
fn same(want: &BTreeMap<PathBuf, (u32, Vec<u8>)>, got: &BTreeMap<PathBuf, (u32, Vec<u8>)>, ignore: u32, who: &str) {
    for (p, w) in want {
        match got.get(p) {
            Some(g) if g.0 & !ignore == w.0 & !ignore && g.1 == w.1 => {}
            Some(g) => panic!(
                "{who}: {} differs: mode {:o} vs {:o}, {} vs {} bytes",
                p.display(),
                g.0,
                w.0,
                g.1.len(),
                w.1.len()
            ),
            None => panic!("{who}: {} missing", p.display()),
        }
    }
    assert_eq!(got.len(), want.len(), "{who}: extra entries");
}

fn trees_per_run() -> u64 {
    std::env::var("KILN_PROPTEST_TREES").ok().and_then(|v| v.parse().ok()).map_or(40, |n: u64| n / 5)
}

#[test]
fn random_trees_part_1_of_2() {
    let n = trees_per_run();
    check_seeds(0..n / 2);
}

#[test]
fn random_trees_part_2_of_2() {
    let n = trees_per_run();
    check_seeds(n / 2..n);
}
