//! EROFS: a tree with every shape the writer handles (inline and block tails, multi-block directories, long
//! symlinks, hard links, extended inodes, odd names, files LZ4 compresses and files it does not, clusters that
//! start anywhere in a logical cluster), read back by erofs-utils (`fsck.erofs --extract`, `dump.erofs`) and by
//! the Linux kernel (a read-only loop device mounted as erofs), uncompressed and compressed.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kiln_formats::erofs::{Options, Plan, pack, plan, plan_packed};
use kiln_formats::ext4::{Meta, Source, Tree};

use crate::common::{run, tool, xorshift_bytes};

fn meta(perm: u16) -> Meta {
    Meta { perm, uid: 0, gid: 0, mtime: 1 }
}

/// What a path is, as the tree says and as a reader must find it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(Vec<u8>),
}

struct Sample {
    tree: Tree,
    expect: BTreeMap<PathBuf, Node>,
    /// Paths that must be one inode.
    linked: Vec<(PathBuf, PathBuf)>,
}

fn sample() -> Sample {
    let mut tree = Tree::new(meta(0o755));
    let mut expect = BTreeMap::new();
    let file = |tree: &mut Tree,
                expect: &mut BTreeMap<PathBuf, Node>,
                parent,
                dir: &Path,
                name: &[u8],
                perm: u16,
                data: Vec<u8>| {
        let id =
            tree.file(parent, name, meta(perm), data.len() as u64, Source::Bytes(Arc::from(data.clone()))).unwrap();
        expect.insert(dir.join(std::ffi::OsStr::from_bytes(name)), Node::File(u32::from(perm), data));
        id
    };
    let root = Path::new("");
    let store = tree.mkdir(tree.root(), b"store", meta(0o555)).unwrap();
    let s = Path::new("store");
    // Tails of every kind of length: none, tiny, just under a block, a multiple of the block.
    for (i, len) in [0usize, 1, 31, 100, 3000, 4000, 4064, 4095, 4096, 4097, 8191, 12_288, 300_001].iter().enumerate() {
        let data: Vec<u8> = xorshift_bytes(i as u64 + 1, *len).collect();
        file(
            &mut tree,
            &mut expect,
            store,
            s,
            format!("f{len}").as_bytes(),
            if i % 2 == 0 { 0o444 } else { 0o555 },
            data,
        );
    }
    // Text LZ4 compresses: small (two blocks into one), over many windows, a multiple of the block, and mixed
    // with stretches it cannot compress (plain clusters among compressed ones, starts anywhere).
    for (name, len) in [(&b"text-small"[..], 5000usize), (b"text-big", 3_000_017), (b"text-exact", 65_536)] {
        file(&mut tree, &mut expect, store, s, name, 0o444, words(len as u64, len));
    }
    let mut mixed = Vec::new();
    for i in 0..40u64 {
        mixed.extend(words(i, 20_000 + i as usize * 37));
        mixed.extend(xorshift_bytes(i + 100, 9_000 + i as usize * 101));
    }
    file(&mut tree, &mut expect, store, s, b"mixed", 0o555, mixed);
    // A file of zeros (holes in the image) with a non-zero tail.
    let mut zeros = vec![0u8; 1 << 20];
    zeros.extend_from_slice(b"end");
    file(&mut tree, &mut expect, store, s, b"zeros", 0o444, zeros);
    // A directory over several blocks, names up to 255 bytes and of every byte but '/' and NUL.
    let big = tree.mkdir(store, b"many", meta(0o555)).unwrap();
    let m = s.join("many");
    for i in 0..2000 {
        file(&mut tree, &mut expect, big, &m, format!("entry-{i:05}").as_bytes(), 0o444, format!("{i}").into_bytes());
    }
    file(&mut tree, &mut expect, big, &m, &[b'n'; 255], 0o444, b"long".to_vec());
    let odd: Vec<u8> = (1u8..=255).filter(|&b| b != b'/').take(200).collect();
    file(&mut tree, &mut expect, big, &m, &odd, 0o444, b"odd".to_vec());
    // Symlinks: inline and one too long for an inode's block.
    for (name, target) in [(&b"short"[..], b"f100".to_vec()), (b"long", vec![b'x'; 4090])] {
        tree.symlink(store, name, meta(0o777), &target).unwrap();
        expect.insert(s.join(std::ffi::OsStr::from_bytes(name)), Node::Symlink(target));
    }
    // Hard links across directories.
    let d = tree.mkdir(store, b"deep", meta(0o555)).unwrap();
    let mut parent = d;
    let mut path = s.join("deep");
    for i in 0..30 {
        parent = tree.mkdir(parent, format!("level{i}").as_bytes(), meta(0o555)).unwrap();
        path = path.join(format!("level{i}"));
        expect.insert(path.clone(), Node::Dir(0o555));
    }
    let shared = file(&mut tree, &mut expect, parent, &path, b"shared", 0o555, b"#!/bin/sh\necho shared\n".to_vec());
    tree.link(tree.root(), b"shared-again", shared).unwrap();
    expect.insert(root.join("shared-again"), expect[&path.join("shared")].clone());
    // Not what compact inodes hold: another time, a big owner.
    let dated = Meta { mtime: 1_700_000_000, ..meta(0o644) };
    tree.file(tree.root(), b"dated", dated, 2, Source::Bytes(Arc::from(&b"hi"[..]))).unwrap();
    expect.insert(root.join("dated"), Node::File(0o644, b"hi".to_vec()));
    for (p, perm) in [(s.to_path_buf(), 0o555), (m.clone(), 0o555), (s.join("deep"), 0o555)] {
        expect.insert(p, Node::Dir(perm));
    }
    let linked = vec![(path.join("shared"), root.join("shared-again"))];
    Sample { tree, expect, linked }
}

/// `len` bytes of text from a small vocabulary (compresses about 3:1 with LZ4).
fn words(seed: u64, len: usize) -> Vec<u8> {
    const VOCABULARY: [&str; 16] = [
        "store ",
        "path ",
        "nix ",
        "derivation ",
        "closure\n",
        "kernel ",
        "initrd ",
        "module ",
        "the ",
        "of ",
        "and ",
        "systemd ",
        "boot ",
        "image ",
        "verity ",
        "erofs\n",
    ];
    let picks: Vec<u8> = xorshift_bytes(seed + 7, len).collect();
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(VOCABULARY[usize::from(picks[i % picks.len()] % 16)].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn build(sample: &Sample, dir: &Path, compress: bool) -> (Plan, PathBuf) {
    let opts = Options { label: b"nix-store".to_vec(), uuid: [3; 16], timestamp: 1 };
    let plan = if compress {
        plan_packed(&sample.tree, &opts, pack(&sample.tree).unwrap()).unwrap()
    } else {
        plan(&sample.tree, &opts).unwrap()
    };
    let img = dir.join(if compress { "store-lz4.erofs" } else { "store.erofs" });
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(plan.size_bytes()).unwrap();
    plan.write(&sample.tree, &f, 0).unwrap();
    (plan, img)
}

/// Everything under `root`, as [`Node`]s.
fn read_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let perm = md.permissions().mode() & 0o7777;
            let node = if md.is_dir() {
                stack.push(p.clone());
                Node::Dir(perm)
            } else if md.is_symlink() {
                Node::Symlink(std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
            } else {
                Node::File(perm, std::fs::read(&p).unwrap())
            };
            out.insert(rel, node);
        }
    }
    out
}

fn same(found: &BTreeMap<PathBuf, Node>, expect: &BTreeMap<PathBuf, Node>, who: &str) {
    for (p, want) in expect {
        match found.get(p) {
            Some(got) if got == want => {}
            Some(got) => panic!("{who}: {} differs: {:?} vs {:?}", p.display(), brief(got), brief(want)),
            None => panic!("{who}: {} missing", p.display()),
        }
    }
    let extra: Vec<_> = found.keys().filter(|p| !expect.contains_key(*p)).collect();
    assert!(extra.is_empty(), "{who}: unexpected {extra:?}");
}

fn brief(n: &Node) -> String {
    match n {
        Node::Dir(p) => format!("dir {p:o}"),
        Node::File(p, d) => format!("file {p:o} {} bytes", d.len()),
        Node::Symlink(t) => format!("symlink of {} bytes", t.len()),
    }
}

#[test]
fn erofs_utils_check_and_extract_every_file() {
    check_with_erofs_utils(false);
}

#[test]
fn erofs_utils_check_and_extract_every_file_lz4() {
    check_with_erofs_utils(true);
}

fn check_with_erofs_utils(compress: bool) {
    let sample = sample();
    let dir = tempfile::tempdir().unwrap();
    let (plan, img) = build(&sample, dir.path(), compress);
    assert_eq!(plan.compressed(), compress);
    let out = dir.path().join("out");
    let fsck =
        run(Command::new(tool("fsck.erofs", "erofs-utils")).arg(format!("--extract={}", out.display())).arg(&img));
    assert!(fsck.ok, "fsck.erofs: {}", fsck.text);
    same(&read_tree(&out), &sample.expect, "fsck.erofs --extract");
    let dump = run(Command::new(tool("dump.erofs", "erofs-utils")).args(["-s", "-S"]).arg(&img));
    assert!(dump.ok, "dump.erofs: {}", dump.text);
    let blkid = run(Command::new(tool("blkid", "util-linux")).args(["-p", "-o", "export"]).arg(&img));
    assert!(blkid.text.contains("TYPE=erofs\n") && blkid.text.contains("LABEL=nix-store\n"), "{}", blkid.text);
    let dirs = sample.expect.values().filter(|n| matches!(n, Node::Dir(_))).count() + 1;
    assert!(dump.text.contains(&format!("Filesystem directory count:\t\t{dirs}\n")), "{}", dump.text);
    assert!(dump.text.contains("Filesystem symlink file count:\t\t2\n"), "{}", dump.text);
}

/// Detaches the loop device (unmounting first) when dropped, also when the test fails.
struct Loop {
    dev: String,
    mnt: Option<PathBuf>,
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mnt {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn the_kernel_mounts_it_and_reads_every_file() {
    mount_and_read(false);
}

#[test]
fn the_kernel_mounts_it_and_reads_every_file_lz4() {
    mount_and_read(true);
}

/// Compressed: smaller than the same tree uncompressed, which clusters are compressed and which plain
/// depends on the bytes alone, and the image is the same from run to run.
#[test]
fn lz4_is_smaller_and_deterministic() {
    let sample = sample();
    let dir = tempfile::tempdir().unwrap();
    let (flat, _) = build(&sample, dir.path(), false);
    let (packed, b) = build(&sample, dir.path(), true);
    assert!(packed.size_bytes() * 10 < flat.size_bytes() * 8, "{} vs {}", packed.size_bytes(), flat.size_bytes());
    let first = std::fs::read(&b).unwrap();
    let (_, c) = build(&sample, dir.path(), true);
    assert!(std::fs::read(c).unwrap() == first, "the same tree compresses to the same bytes");
}

fn mount_and_read(compress: bool) {
    let sample = sample();
    let dir = tempfile::tempdir().unwrap();
    let (_, img) = build(&sample, dir.path(), compress);
    let losetup = run(Command::new(tool("losetup", "mount")).args(["-f", "--show", "-r"]).arg(&img));
    assert!(losetup.ok, "losetup (the test runs as root): {}", losetup.text);
    let mut lo = Loop { dev: losetup.text.trim().to_owned(), mnt: None };
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = run(Command::new(tool("mount", "mount")).args(["-t", "erofs", "-o", "ro", &lo.dev]).arg(&mnt));
    assert!(mount.ok, "mount -t erofs: {}", mount.text);
    lo.mnt = Some(mnt.clone());
    same(&read_tree(&mnt), &sample.expect, "Linux");
    for (a, b) in &sample.linked {
        let (a, b) = (std::fs::metadata(mnt.join(a)).unwrap(), std::fs::metadata(mnt.join(b)).unwrap());
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard links are one inode");
    }
    let dated = std::fs::metadata(mnt.join("dated")).unwrap();
    assert_eq!(dated.mtime(), 1_700_000_000);
    assert_eq!(std::fs::metadata(mnt.join("store/f100")).unwrap().mtime(), 1, "compact inodes: the build time");
    let deep = std::fs::metadata(mnt.join("store/deep")).unwrap();
    assert_eq!(deep.nlink(), 3);
}
