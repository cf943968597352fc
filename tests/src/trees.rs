//! Random host trees for property tests: deterministic from a seed, and full of what breaks filesystem
//! writers — names of 1 to 255 arbitrary bytes (not UTF-8, with spaces, quotes, backslashes, newlines),
//! nesting up to 8 levels, empty, block-edge, zero-filled and sparse files, fast and slow symlinks
//! (dangling or not), hard links within and across directories, directories big enough for an htree,
//! varied modes (setuid, setgid, sticky), mtimes and, when run as root, owners.
//!
//! The same seed gives the same names, bytes, modes and mtimes on every run; owners vary only when the
//! process may `chown` (root), else everything belongs to the caller.
//!
//! Limits, set by the checkers rather than by ext4: mtimes are whole seconds from 0 to 2^31 - 1
//! (`mkfs.ext4 -d` writes neither nanoseconds nor epoch bits, so 2038+ wraps; ext4-view 1.0 rejects
//! inodes with times before 1970 as corrupt, and debugfs rdump restores them as after 2106); no symlink
//! target has a component over 255 bytes (ext4-view 1.0 rejects those); paths stay under 3,000 bytes
//! (ext4-view and the host both stop at 4,096).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

/// How big a tree [`random_tree`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeSize {
    /// 20–200 entries (170–200 for the third of trees with a wide top level) and at most ~2 MiB of data:
    /// hundreds of trees per minute.
    Small,
    /// 2,000–30,000 entries, directories of thousands, files of a few MiB, up to ~256 MiB of data.
    Large,
}

/// What [`random_tree`] made (the root directory not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Every name: directories, files, hard-link names, symlinks.
    pub entries: u64,
    pub dirs: u64,
    /// Distinct regular files (inodes).
    pub files: u64,
    /// Extra names of regular files.
    pub hardlinks: u64,
    pub symlinks: u64,
    /// Sum of the distinct files' sizes.
    pub bytes: u64,
    /// Bytes actually written (sizes minus holes).
    pub stored_bytes: u64,
    /// Deepest directory level (1 = a directory directly under the root).
    pub max_depth: u32,
}

impl TreeStats {
    /// A filesystem size (bytes) that comfortably holds the tree with 4 KiB blocks and 256-byte inodes:
    /// data rounded up per file, a block per directory and slow symlink, inodes, journal and slack.
    pub fn fs_size_hint(&self) -> u64 {
        let blocks = self.stored_bytes * 5 / 4 + (self.files + self.dirs + self.symlinks) * 4096;
        // mke2fs makes one inode per 16 KiB (per 4 KiB below 512 MiB); leave room for twice the entries.
        let inodes = self.entries * 32 * 1024;
        (64 << 20) + blocks + inodes
    }
}

/// Deepest directory nesting.
const MAX_DEPTH: u32 = 8;
/// Longest relative path made, in bytes.
const MAX_PATH: usize = 3000;

/// A random tree made a store path of a NixOS-shaped system, by [`random_system`].
#[derive(Debug, Clone)]
pub struct RandomSystem {
    /// The toplevel's logical path (`/nix/store/<hash>-nixos-system-soak-<seed>`): a bootspec whose kernel,
    /// initrd and init are stand-ins inside it, and a symlink to the tree, so a reference scan finds both.
    pub toplevel: String,
    /// The tree's logical path (`/nix/store/<hash>-soak-<seed>`).
    pub tree: String,
    /// Where the tree lies on the host.
    pub src: PathBuf,
    /// What the tree holds.
    pub stats: TreeStats,
}

/// Makes the random tree of `seed` a store path in `store`, with a toplevel that refers to it. Store hashes are
/// derived from the seed (in Nix's base-32 alphabet), so names are stable.
pub fn random_system(seed: u64, store: &Path, size: TreeSize) -> RandomSystem {
    use sha2::Digest;
    let name = |what: &str| {
        const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let digest = sha2::Sha256::digest(format!("kiln-soak-{what}-{seed}").as_bytes());
        let hash: String = (0..32).map(|i| ALPHABET[(digest[i] & 31) as usize] as char).collect();
        format!("{hash}-{what}-{seed}")
    };
    let (tree_name, top_name) = (name("soak"), name("nixos-system-soak"));
    let src = store.join(&tree_name);
    let stats = random_tree(seed, &src, size);
    let (tree, toplevel) = (format!("/nix/store/{tree_name}"), format!("/nix/store/{top_name}"));
    let top = store.join(&top_name);
    let io = |r: std::io::Result<()>| r.unwrap_or_else(|e| panic!("making {}: {e}", top.display()));
    io(std::fs::create_dir_all(&top));
    io(std::os::unix::fs::symlink(&tree, top.join("tree")));
    io(std::fs::write(top.join("bzImage"), b"not a real kernel\n"));
    io(std::fs::write(top.join("initrd"), b"not a real initrd\n"));
    io(std::fs::write(top.join("init"), b"#!/bin/sh\n"));
    let bootspec = format!(
        r#"{{"org.nixos.bootspec.v1":{{"init":"{toplevel}/init","initrd":"{toplevel}/initrd","kernel":"{toplevel}/bzImage","kernelParams":["console=ttyS0"],"label":"soak {seed}","system":"x86_64-linux","toplevel":"{toplevel}"}},"org.nixos.specialisation.v1":{{}}}}"#
    );
    io(std::fs::write(top.join("boot.json"), bootspec));
    RandomSystem { toplevel, tree, src, stats }
}

/// Creates a random tree under `dir` (created if missing; should be empty), deterministically from `seed`.
/// Panics on any I/O error.
pub fn random_tree(seed: u64, dir: &Path, size: TreeSize) -> TreeStats {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut rng = Rng(seed ^ 0x6b69_6c6e_7472_6565);
    let (mut entries, byte_budget) = match size {
        TreeSize::Small => (rng.range(20, 200), 2 << 20),
        TreeSize::Large => (rng.range(2_000, 30_000), 256 << 20),
    };
    // One tree in three starts with a wide top level: more than a block of entries, so an htree.
    let mut wide = rng.one_in(3);
    if wide {
        entries = entries.max(wide_range(size).1 + 20);
    }
    let mut g = Gen {
        rng,
        size,
        entries_left: entries,
        bytes_left: byte_budget,
        files: Vec::new(),
        all: Vec::new(),
        dirs: Vec::new(),
        may_chown: true,
        stats: TreeStats::default(),
    };
    // Fill the top level until the budget is spent, so small budgets still nest.
    let mut names = HashSet::new();
    while g.entries_left > 0 {
        g.fill_dir(dir, &mut names, 0, 0, std::mem::take(&mut wide));
    }
    // Directories last, deepest first: adding entries changes a directory's mtime, and 0555 would stop a
    // non-root caller from adding them.
    g.dirs.sort_by_key(|(_, depth, _, _)| std::cmp::Reverse(*depth));
    for (path, _, mode, mtime) in std::mem::take(&mut g.dirs) {
        g.chown(&path);
        std::fs::set_permissions(&path, Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        set_mtime(&path, mtime);
    }
    g.stats
}

/// How many entries a wide directory gets.
fn wide_range(size: TreeSize) -> (u64, u64) {
    match size {
        TreeSize::Small => (60, 150),
        TreeSize::Large => (300, 4_000),
    }
}

struct Gen {
    rng: Rng,
    size: TreeSize,
    entries_left: u64,
    bytes_left: u64,
    /// Regular files made so far, for hard links.
    files: Vec<PathBuf>,
    /// Relative paths of everything made, for symlink targets that resolve.
    all: Vec<Vec<u8>>,
    /// (path, depth, mode, mtime) of every directory, applied at the end.
    dirs: Vec<(PathBuf, u32, u32, i64)>,
    may_chown: bool,
    stats: TreeStats,
}

impl Gen {
    /// Adds a batch of entries to `dir` (at `depth`, `rel_len` bytes of relative path; `wide`: a batch of
    /// hundreds), then fills the new subdirectories.
    fn fill_dir(&mut self, dir: &Path, names: &mut HashSet<Vec<u8>>, depth: u32, rel_len: usize, wide: bool) {
        let (lo, hi) = wide_range(self.size);
        let count = if wide || self.rng.one_in(8) { self.rng.range(lo, hi) } else { self.rng.range(0, 10) };
        // This directory's entries first, then its subdirectories': depth first, each subtree would take
        // the whole budget and leave every directory small.
        let mut subdirs = Vec::new();
        for _ in 0..count {
            if self.entries_left == 0 {
                break;
            }
            self.entries_left -= 1;
            self.stats.entries += 1;
            let room = MAX_PATH.saturating_sub(rel_len + 1).clamp(1, 255);
            let name = loop {
                let n = self.name(room);
                if names.insert(n.clone()) {
                    break n;
                }
            };
            let path = dir.join(OsStr::from_bytes(&name));
            let rel_len = rel_len + 1 + name.len();
            let roll = self.rng.below(100);
            if roll < 14 && depth < MAX_DEPTH && rel_len + 64 < MAX_PATH {
                self.make_dir(&path, depth + 1);
                subdirs.push((path.clone(), rel_len));
            } else if roll < 30 {
                self.make_symlink(&path, depth);
            } else if roll < 40 && !self.files.is_empty() {
                let target = self.files[self.rng.below(self.files.len() as u64) as usize].clone();
                std::fs::hard_link(&target, &path)
                    .unwrap_or_else(|e| panic!("ln {} {}: {e}", target.display(), path.display()));
                self.stats.hardlinks += 1;
            } else {
                self.make_file(&path);
            }
            self.all.push(rel_bytes(&path, depth));
        }
        for (path, rel_len) in subdirs {
            self.fill_dir(&path, &mut HashSet::new(), depth + 1, rel_len, false);
        }
    }

    fn make_dir(&mut self, path: &Path, depth: u32) {
        std::fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        self.stats.dirs += 1;
        self.stats.max_depth = self.stats.max_depth.max(depth);
        let mode = self.rng.weighted(&[(0o755, 60), (0o700, 10), (0o555, 15), (0o750, 5), (0o1777, 5), (0o2755, 5)]);
        let mtime = self.mtime();
        self.dirs.push((path.to_path_buf(), depth, mode, mtime));
    }

    fn make_file(&mut self, path: &Path) {
        let size = self.file_size();
        let mut file = File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let style = self.rng.below(100);
        let written = if size == 0 {
            0
        } else if style < 15 {
            // All zeros, written out (not a hole).
            write_chunks(&mut file, size, |buf| buf.fill(0));
            size
        } else if style < 30 && size >= 8192 {
            // Sparse: data islands with holes before, between or after them.
            file.set_len(size).unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
            let mut written = 0;
            for _ in 0..self.rng.range(1, 3) {
                let at = self.rng.below(size);
                let len = self.rng.range(1, (size - at).min(20_000));
                let mut data = vec![0u8; len as usize];
                self.rng.fill(&mut data);
                file.write_all_at(&data, at).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                written += len;
            }
            written
        } else if style < 40 {
            // Text-like: a repeated line.
            let line = format!("line {} of something\n", self.rng.below(1000));
            write_chunks(&mut file, size, |buf| {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = line.as_bytes()[i % line.len()];
                }
            });
            size
        } else {
            let rng = &mut self.rng;
            write_chunks(&mut file, size, |buf| rng.fill(buf));
            size
        };
        drop(file);
        self.stats.files += 1;
        self.stats.bytes += size;
        self.stats.stored_bytes += written;
        self.bytes_left = self.bytes_left.saturating_sub(written);
        self.files.push(path.to_path_buf());
        let mode = self.rng.weighted(&[
            (0o644, 40),
            (0o755, 20),
            (0o600, 10),
            (0o444, 10),
            (0o555, 8),
            (0o700, 5),
            (0o640, 2),
            (0o4755, 3),
            (0o2755, 2),
        ]);
        // chown before chmod: chown clears setuid and setgid.
        self.chown(path);
        std::fs::set_permissions(path, Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        let mtime = self.mtime();
        set_mtime(path, mtime);
    }

    fn file_size(&mut self) -> u64 {
        let r = self.rng.below(1000);
        let size = if r < 900 {
            let edges = [0, 0, 1, 2, 59, 60, 61, 100, 4095, 4096, 4097, 8191, 8192, 8193, 65_537, 12_345];
            edges[self.rng.below(edges.len() as u64) as usize]
        } else if r < 985 {
            self.rng.range(100_000, 500_000)
        } else {
            match self.size {
                TreeSize::Small => self.rng.range(500_000, 1_500_000),
                TreeSize::Large => self.rng.range(1 << 20, 6 << 20),
            }
        };
        if size > self.bytes_left { self.rng.below(4097) } else { size }
    }

    fn make_symlink(&mut self, path: &Path, depth: u32) {
        let r = self.rng.below(100);
        let target: Vec<u8> = if r < 35 && !self.all.is_empty() {
            // Resolves, relative to the link's directory: `../` up to the root, then a path made earlier.
            let to = self.all[self.rng.below(self.all.len() as u64) as usize].clone();
            let mut t = b"../".repeat(depth as usize);
            t.extend_from_slice(&to);
            if t.len() > 4095 { b"..".to_vec() } else { t }
        } else if r < 45 {
            format!("/nix/store/{:032x}-dangling", self.rng.next() as u128).into_bytes()
        } else {
            // Random bytes (no NUL), lengths around the 60-byte fast/slow boundary and up to PATH_MAX - 1.
            let len = match self.rng.below(100) {
                0..40 => self.rng.range(1, 58),
                40..55 => self.rng.range(59, 61),
                55..80 => self.rng.range(62, 300),
                80..95 => self.rng.range(301, 4094),
                _ => 4095,
            };
            let mut t: Vec<u8> = (0..len).map(|_| self.rng.range(1, 255) as u8).collect();
            // No component over 255 bytes: Linux would take it, but ext4-view 1.0 calls it corrupt.
            let mut run = 0;
            for b in &mut t {
                run = if *b == b'/' || run == 255 { 0 } else { run + 1 };
                if run == 0 {
                    *b = b'/';
                }
            }
            t
        };
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), path)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
        self.stats.symlinks += 1;
        self.chown(path);
        let mtime = self.mtime();
        set_mtime(path, mtime);
    }

    /// A name of 1–255 bytes (at most `max`), never `.` or `..`, without `/` or NUL.
    fn name(&mut self, max: usize) -> Vec<u8> {
        let len = match self.rng.below(100) {
            0..50 => self.rng.range(1, 12),
            50..80 => self.rng.range(13, 40),
            80..95 => self.rng.range(41, 200),
            95..98 => self.rng.range(201, 254),
            _ => 255,
        } as usize;
        let len = len.min(max);
        let style = self.rng.below(4);
        loop {
            let name: Vec<u8> = (0..len)
                .map(|_| match style {
                    // Store-path-like.
                    0 => b"0123456789abcdfghijklmnpqrsvwxyz-._+"[self.rng.below(36) as usize],
                    // Printable ASCII, including space, quotes and backslash.
                    1 => self.byte_but_slash(0x20, 0x7e),
                    // Any byte but NUL and `/`: mostly not UTF-8.
                    2 => self.byte_but_slash(1, 255),
                    // High bytes and controls (newline, tab, escape).
                    _ => *[b'\n', b'\t', 0x1b, 0x80, 0xc3, 0xa9, 0xff, 0xfe, b'a', b'\\', b'"', b' ']
                        .get(self.rng.below(12) as usize)
                        .expect("in range"),
                })
                .collect();
            if name != b"." && name != b".." {
                return name;
            }
        }
    }

    fn byte_but_slash(&mut self, lo: u64, hi: u64) -> u8 {
        loop {
            let b = self.rng.range(lo, hi) as u8;
            if b != b'/' {
                return b;
            }
        }
    }

    /// Seconds since 1970, from 0 to 2^31 - 1; a few special values.
    fn mtime(&mut self) -> i64 {
        match self.rng.below(20) {
            0 => 1,
            1 => 0,
            2 => i64::from(i32::MAX),
            _ => self.rng.range(1, i32::MAX as u64) as i64,
        }
    }

    /// Gives `path` a random owner, if the process may (root). Drawn even when not, to keep the sequence.
    fn chown(&mut self, path: &Path) {
        let owners = [(0, 0), (0, 0), (0, 0), (1000, 100), (30_001, 30_000), (65_534, 65_534), (4_000_000_000, 70_000)];
        let (uid, gid) = owners[self.rng.below(owners.len() as u64) as usize];
        if self.may_chown && std::os::unix::fs::lchown(path, Some(uid), Some(gid)).is_err() {
            self.may_chown = false;
        }
    }
}

/// The path of `path` relative to the tree root: its last `depth + 1` components.
fn rel_bytes(path: &Path, depth: u32) -> Vec<u8> {
    let parts: Vec<&[u8]> = path.iter().map(OsStr::as_bytes).collect();
    parts[parts.len() - 1 - depth as usize..].join(&b'/')
}

fn write_chunks(file: &mut File, size: u64, mut fill: impl FnMut(&mut [u8])) {
    let mut buf = vec![0u8; 64 << 10];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n]);
        file.write_all(&buf[..n]).expect("writing a tree file");
        left -= n as u64;
    }
}

/// Sets atime and mtime (whole seconds) without following a symlink.
pub fn set_mtime(path: &Path, secs: i64) {
    let t = Timespec { tv_sec: secs, tv_nsec: 0 };
    rustix::fs::utimensat(CWD, path, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("setting times of {}: {e}", path.display()));
}

/// splitmix64: small, fast, and good enough to pick test cases.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), ignoring the negligible modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn weighted(&mut self, choices: &[(u32, u64)]) -> u32 {
        let total: u64 = choices.iter().map(|c| c.1).sum();
        let mut r = self.below(total);
        for &(value, weight) in choices {
            if r < weight {
                return value;
            }
            r -= weight;
        }
        unreachable!("r < total")
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_tree() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let sa = random_tree(7, a.path(), TreeSize::Small);
        let sb = random_tree(7, b.path(), TreeSize::Small);
        assert_eq!(sa, sb);
        assert!((20..=200).contains(&sa.entries), "{sa:?}");
        let find = crate::tools::require("find", "findutils");
        let list = |d: &Path| {
            let mut cmd = std::process::Command::new(&find);
            cmd.current_dir(d).args([".", "-mindepth", "1", "-printf", "%P %y %m %s %T@ %U:%G %l\\0"]);
            let out = crate::tools::run_ok(&mut cmd);
            let mut lines: Vec<Vec<u8>> = out.stdout.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
            lines.sort();
            lines
        };
        assert_eq!(list(a.path()), list(b.path()));
    }
}
