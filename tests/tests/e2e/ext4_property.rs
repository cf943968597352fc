//! Property test of the ext4 writer: random trees (names of any bytes, all sizes, holes, hard links, fast and
//! slow symlinks, odd modes) written with their own metadata must pass `e2fsck -fn` and read back equal
//! through debugfs and through the ext4-view crate.
//!
//! 200 trees per run by default; `KILN_PROPTEST_TREES=N` (and `KILN_PROPTEST_LARGE=1` for large trees) for a
//! long run.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_formats::ext4::{self, Meta, NodeId, Options, Size, Source, Tree};
use kiln_tests::ext4::{Expect, Links, compare_tree, e2fsck_clean, ext4_view_compare};
use kiln_tests::trees::{TreeSize, random_tree};

/// The host directory `dir` as a tree under `/data`, with the host's metadata.
pub(crate) fn host_tree(dir: &Path) -> Tree {
    let meta =
        |m: &std::fs::Metadata| Meta { perm: (m.mode() & 0o7777) as u16, uid: m.uid(), gid: m.gid(), mtime: m.mtime() };
    let mut tree = Tree::new(Meta { perm: 0o755, uid: 0, gid: 0, mtime: 1 });
    let top = std::fs::symlink_metadata(dir).unwrap();
    let data = tree.mkdir(tree.root(), b"data", meta(&top)).unwrap();
    let mut inodes: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut stack = vec![(dir.to_path_buf(), data)];
    while let Some((path, node)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let child = path.join(&name);
            let m = std::fs::symlink_metadata(&child).unwrap();
            let key = (m.dev(), m.ino());
            if !m.is_dir()
                && let Some(&existing) = inodes.get(&key)
            {
                tree.link(node, name.as_bytes(), existing).unwrap();
                continue;
            }
            let id = if m.is_dir() {
                let id = tree.mkdir(node, name.as_bytes(), meta(&m)).unwrap();
                stack.push((child, id));
                id
            } else if m.file_type().is_symlink() {
                let target = std::fs::read_link(&child).unwrap();
                tree.symlink(node, name.as_bytes(), meta(&m), target.as_os_str().as_bytes()).unwrap()
            } else {
                tree.file(node, name.as_bytes(), meta(&m), m.len(), Source::Host(child.clone())).unwrap()
            };
            inodes.insert(key, id);
        }
    }
    tree
}

fn check_seeds(seeds: std::ops::Range<u64>) {
    let size = if std::env::var_os("KILN_PROPTEST_LARGE").is_some() { TreeSize::Large } else { TreeSize::Small };
    for seed in seeds {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        random_tree(seed, &src, size);
        let tree = host_tree(&src);
        let mut opts = Options::new(b"prop", [seed as u8; 16], [(seed >> 8) as u8 ^ 0x5a; 16], 1_700_000_000);
        // Alternate auto sizes with a little and a lot of room, so group layouts vary.
        opts.size = Size::Auto { extra_bytes: if seed % 2 == 0 { 0 } else { 300 << 20 } };
        let plan = ext4::plan(&tree, &opts).unwrap_or_else(|e| panic!("seed {seed}: planning: {e}"));
        let img = tmp.path().join("fs.img");
        let file = std::fs::File::create(&img).unwrap();
        file.set_len(plan.size_bytes()).unwrap();
        plan.write(&tree, &file, 0).unwrap_or_else(|e| panic!("seed {seed}: writing: {e}"));
        drop(file);
        e2fsck_clean(&img, 0).unwrap_or_else(|e| panic!("seed {seed}: e2fsck:\n{e}"));
        compare_tree(&img, 0, b"/data", &src, Expect::AsSource, Links::AsSource)
            .unwrap_or_else(|d| panic!("seed {seed}: debugfs read-back:\n{}", d.join("\n")));
        ext4_view_compare(&img, 0, b"/data", &src, Expect::AsSource)
            .unwrap_or_else(|d| panic!("seed {seed}: ext4-view read-back:\n{}", d.join("\n")));
    }
}

fn trees_per_run() -> u64 {
    std::env::var("KILN_PROPTEST_TREES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

// Four test functions so the harness spreads the trees over the cores.
#[test]
fn random_trees_part_1_of_4() {
    let n = trees_per_run();
    check_seeds(0..n / 4);
}

#[test]
fn random_trees_part_2_of_4() {
    let n = trees_per_run();
    check_seeds(n / 4..n / 2);
}

#[test]
fn random_trees_part_3_of_4() {
    let n = trees_per_run();
    check_seeds(n / 2..3 * n / 4);
}

#[test]
fn random_trees_part_4_of_4() {
    let n = trees_per_run();
    check_seeds(3 * n / 4..n);
}
