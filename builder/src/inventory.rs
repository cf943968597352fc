//! The inventory: every file of the closure with its size, mode, symlink target and the group of identical
//! files it belongs to. Entries come from metadata (parallel `lstat` across store paths; symlinks are recorded,
//! never followed); identical files are found by contents (see [`Inventory::from_paths`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{LOGICAL_STORE, StoreDir, StorePath};

/// The longest logical path (`/nix/store/…`, in bytes) of an entry kiln puts in an image. `kiln verify` reads
/// images back with `ext4-view`, which resolves every file by its absolute path and refuses paths longer than
/// this (Linux's `PATH_MAX`); an image kiln builds must be one its own verify can read.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most components (`nix`, `store`, the store path, then one per directory level) a logical path of an
/// entry may have: `ext4-view` stops resolving a path after 1,000 steps, one per component, so a store path
/// may nest 997 levels deep.
pub const MAX_PATH_COMPONENTS: usize = 1000;
/// The most names one inode of the image gets. ext4's link count (`i_links_count`) is 16 bits and the kernel
/// refuses to link a file past `EXT4_LINK_MAX`, 65,000; identical files beyond that start another inode.
pub const MAX_LINKS: usize = 65_000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// Whether the owner may execute it (Nix's `executable` flag).
        executable: bool,
        /// Whether it may have holes (fewer blocks allocated than its size).
        sparse: bool,
    },
    /// A directory.
    Dir,
    /// A symbolic link, with its target as stored (bytes, not followed).
    Symlink {
        /// The link target.
        target: PathBuf,
    },
}

/// One file, directory or symlink inside a store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the store path; empty for the store path itself.
    pub rel: PathBuf,
    /// What it is.
    pub kind: Kind,
    /// Permission bits on the build host (the image uses canonical ones).
    pub mode: u32,
    /// Hard-link group: regular files of the closure that are one inode in the image share a group number.
    /// They are the files `nix-store --optimise` would link (the same NAR serialisation: the same contents and
    /// executable bit), whatever they are on the host; symlinks and directories are never in a group.
    pub link_group: Option<u32>,
}

/// The entries of one store path, in NAR order (depth first, names sorted bytewise); the first is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInventory {
    /// The store path.
    pub path: StorePath,
    /// Its entries.
    pub entries: Vec<Entry>,
    /// (entry index, host device, host inode) of each regular file whose host inode has other names, in entry
    /// order, so that [`Inventory::from_paths`] reads such an inode once however many names it has (a speed-up
    /// only: which files are linked in the image does not depend on it). Kept apart: most entries have none.
    host_inodes: Vec<(u32, u64, u64)>,
}

impl PathInventory {
    /// Walks one store path in the store directory.
    pub fn walk(store: &StoreDir, path: &StorePath) -> Result<Self> {
        let root = store.physical(path);
        let mut entries = Vec::new();
        let mut host_inodes = Vec::new();
        let meta = std::fs::symlink_metadata(&root)
            .with_context(|| format!("{}: missing from store directory {}", path, store.root().display()))?;
        visit(&root, PathBuf::new(), 0, meta, path, &mut entries, &mut host_inodes)?;
        Ok(Self { path: path.clone(), entries, host_inodes })
    }

    /// Counts of this path's entries.
    #[must_use]
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in &self.entries {
            match &e.kind {
                Kind::File { size, .. } => {
                    c.files += 1;
                    c.bytes += size;
                }
                Kind::Dir => c.dirs += 1,
                Kind::Symlink { .. } => c.symlinks += 1,
            }
        }
        c
    }
}

/// Refuses an entry whose logical path `kiln verify` could not resolve: longer than [`MAX_PATH_BYTES`] or of
/// more than [`MAX_PATH_COMPONENTS`] components. `depth` is the number of components of `rel`.
fn check_depth(sp: &StorePath, rel: &Path, depth: usize) -> Result<()> {
    let base = sp.base_name();
    let rel_len = rel.as_os_str().len();
    let bytes = LOGICAL_STORE.len() + 1 + base.len() + if rel_len == 0 { 0 } else { 1 + rel_len };
    let components = 3 + depth;
    if bytes <= MAX_PATH_BYTES && components <= MAX_PATH_COMPONENTS {
        return Ok(());
    }
    let logical = sp.logical().join(rel);
    let shown = logical.as_os_str().as_bytes();
    let shown = if shown.len() > 160 {
        format!(
            "{}…{} ({} levels below its store path)",
            String::from_utf8_lossy(&shown[..80]),
            String::from_utf8_lossy(&shown[shown.len() - 60..]),
            depth
        )
    } else {
        logical.display().to_string()
    };
    bail!(
        "store path {sp}: {shown} is {bytes} bytes and {components} path components long; kiln refuses paths of          more than {MAX_PATH_BYTES} bytes or {MAX_PATH_COMPONENTS} components (a store path nested at most {}          levels deep), because `kiln verify` reads images back by path with ext4-view, which resolves no longer          paths",
        MAX_PATH_COMPONENTS - 3
    )
}

fn visit(
    physical: &Path,
    rel: PathBuf,
    depth: usize,
    meta: std::fs::Metadata,
    sp: &StorePath,
    out: &mut Vec<Entry>,
    host_inodes: &mut Vec<(u32, u64, u64)>,
) -> Result<()> {
    check_depth(sp, &rel, depth)?;
    let ft = meta.file_type();
    if meta.nlink() > 1 && ft.is_file() {
        let index = u32::try_from(out.len()).context("more than 2^32 entries in one store path")?;
        host_inodes.push((index, meta.dev(), meta.ino()));
    }
    let mode = meta.mode() & 0o7777;
    let kind = if ft.is_file() {
        // Proves the file can be read now, before anything is written (cheaper than opening it).
        rustix::fs::access(physical, rustix::fs::Access::READ_OK)
            .map_err(std::io::Error::from)
            .with_context(|| format!("{}: cannot read", physical.display()))?;
        Kind::File { size: meta.len(), executable: mode & 0o100 != 0, sparse: meta.blocks() * 512 < meta.len() }
    } else if ft.is_symlink() {
        let target =
            std::fs::read_link(physical).with_context(|| format!("{}: cannot read symlink", physical.display()))?;
        Kind::Symlink { target }
    } else if ft.is_dir() {
        Kind::Dir
    } else {
        let what = if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_char_device() {
            "character device"
        } else {
            "unknown"
        };
        bail!(
            "{}: unsupported file type {what} in store path {sp} (a store holds only regular files, directories \
             and symlinks)",
            physical.display()
        );
    };
    let is_dir = kind == Kind::Dir;
    out.push(Entry { rel: rel.clone(), kind, mode, link_group: None });
    if is_dir {
        let mut names: Vec<OsString> = std::fs::read_dir(physical)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
            .with_context(|| format!("{}: cannot read directory", physical.display()))?;
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = physical.join(&name);
            let meta =
                std::fs::symlink_metadata(&child).with_context(|| format!("{}: cannot stat", child.display()))?;
            visit(&child, rel.join(&name), depth + 1, meta, sp, out, host_inodes)?;
        }
    }
    Ok(())
}

/// Entry counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Regular files (each hard link counted).
    pub files: u64,
    /// Directories, including store paths that are directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Sum of regular file sizes (each hard link counted).
    pub bytes: u64,
}

/// Totals over the whole closure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Store paths.
    pub paths: u64,
    /// Entry counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Bytes of file data the image holds: each group of identical files (one inode) counted once.
    pub unique_bytes: u64,
    /// Groups of identical files that are one inode in the image (hard links).
    pub hardlink_groups: u64,
    /// Entries that are an extra name of an inode already counted.
    pub hardlink_extra: u64,
}

/// The whole closure's entries, store paths sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Per store path.
    pub paths: Vec<PathInventory>,
    /// Totals.
    pub totals: Totals,
}

impl Inventory {
    /// Walks every store path in parallel (in the current rayon pool), then finds identical files.
    pub fn walk<'a>(store: &StoreDir, paths: impl IntoParallelIterator<Item = &'a StorePath>) -> Result<Self> {
        let paths = paths.into_par_iter().map(|p| PathInventory::walk(store, p)).collect::<Result<Vec<_>>>()?;
        Self::from_paths(store, paths)
    }

    /// Assembles per-path inventories: sorts them and puts identical regular files into hard-link groups, so
    /// each group becomes one inode in the image.
    ///
    /// Identical means what `nix-store --optimise` means: the same NAR serialisation, i.e. the same contents and
    /// the same executable bit. Only that decides: the same closure gives the same groups, hence the same image
    /// bytes, from an optimised store, an unoptimised one or any mix (`nix-build --check`, remote builders and
    /// binary caches need exactly that). Host hard links only save reading an inode twice.
    ///
    /// Files are bucketed by (size, executable) and only buckets of two or more are read and hashed (sha256, in
    /// parallel in the current rayon pool), then grouped by (size, executable, sha256). A group holds at most
    /// [`MAX_LINKS`] names; beyond that, consecutive runs of that many form further groups. Groups are numbered
    /// in closure order (store paths sorted, entries in NAR order), so they are the same with any thread count.
    pub fn from_paths(store: &StoreDir, paths: Vec<PathInventory>) -> Result<Self> {
        Self::from_paths_capped(store, paths, MAX_LINKS)
    }

    /// [`Self::from_paths`] with at most `cap` names per group.
    fn from_paths_capped(store: &StoreDir, mut paths: Vec<PathInventory>, cap: usize) -> Result<Self> {
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        for (pi, ei, group) in content_groups(store, &paths, cap)? {
            paths[pi].entries[ei].link_group = Some(group);
        }
        let mut totals = Totals { paths: paths.len() as u64, ..Totals::default() };
        let mut counted = std::collections::HashSet::new();
        for p in &mut paths {
            let c = p.counts();
            totals.counts.files += c.files;
            totals.counts.dirs += c.dirs;
            totals.counts.symlinks += c.symlinks;
            totals.counts.bytes += c.bytes;
            p.host_inodes = Vec::new();
            for e in &p.entries {
                let size = match e.kind {
                    Kind::File { size, .. } => size,
                    _ => 0,
                };
                match e.link_group {
                    Some(g) if !counted.insert(g) => totals.hardlink_extra += 1,
                    _ => totals.unique_bytes += size,
                }
            }
        }
        totals.hardlink_groups = counted.len() as u64;
        Ok(Self { paths, totals })
    }
}

/// What makes two regular files identical for `nix-store --optimise`: size, executable bit and the sha256 of
/// the contents.
type ContentKey = (u64, bool, [u8; 32]);

/// The hard-link groups of the closure `paths` (sorted): (path index, entry index, group) for every regular
/// file that shares its inode with others, in closure order; groups numbered by first appearance, each of at
/// most `cap` names.
fn content_groups(store: &StoreDir, paths: &[PathInventory], cap: usize) -> Result<Vec<(usize, usize, u32)>> {
    // Every regular file in closure order, and how many share its (size, executable).
    let mut files: Vec<(usize, usize, u64, bool)> = Vec::new();
    let mut buckets: HashMap<(u64, bool), u32> = HashMap::new();
    for (pi, p) in paths.iter().enumerate() {
        for (ei, e) in p.entries.iter().enumerate() {
            if let Kind::File { size, executable, .. } = e.kind {
                files.push((pi, ei, size, executable));
                *buckets.entry((size, executable)).or_default() += 1;
            }
        }
    }
    files.retain(|&(_, _, size, executable)| buckets[&(size, executable)] > 1);

    // What to read: each file of a shared bucket once, or once per host inode.
    //
    // Empty files are linked too, without reading them: they all have the same (empty) NAR contents, so
    // `nix-store --optimise` links them, and in the image they have no data blocks to share but each would
    // cost an inode (256 bytes of inode table) — a Python closure has thousands of empty `__init__.py`.
    let mut reads: Vec<(PathBuf, u64)> = Vec::new();
    let mut read_of_inode: HashMap<(u64, u64), usize> = HashMap::new();
    let mut read_of: Vec<Option<usize>> = Vec::with_capacity(files.len());
    for &(pi, ei, size, _) in &files {
        if size == 0 {
            read_of.push(None);
            continue;
        }
        let p = &paths[pi];
        let host = p.host_inodes.binary_search_by_key(&(ei as u32), |&(i, _, _)| i).ok();
        let fresh = reads.len();
        let r = match host.map(|h| (p.host_inodes[h].1, p.host_inodes[h].2)) {
            Some(inode) => *read_of_inode.entry(inode).or_insert(fresh),
            None => fresh,
        };
        if r == fresh {
            let (root, rel) = (store.physical(&p.path), &p.entries[ei].rel);
            // A store path that is one file is its own root (`join("")` would add a `/`).
            reads.push((if rel.as_os_str().is_empty() { root } else { root.join(rel) }, size));
        }
        read_of.push(Some(r));
    }
    let digests: Vec<[u8; 32]> = reads.par_iter().map(|(path, size)| sha256_of(path, *size)).collect::<Result<_>>()?;
    let empty: [u8; 32] = Sha256::digest([]).into();

    // Group by contents; numbers in order of first appearance, runs of at most `cap` names.
    let keys: Vec<ContentKey> = files
        .iter()
        .zip(&read_of)
        .map(|(&(_, _, size, executable), r)| (size, executable, r.map_or(empty, |r| digests[r])))
        .collect();
    let mut members: HashMap<ContentKey, usize> = HashMap::new();
    for key in &keys {
        *members.entry(*key).or_default() += 1;
    }
    let mut seen: HashMap<ContentKey, usize> = HashMap::new();
    let mut numbers: HashMap<(ContentKey, usize), u32> = HashMap::new();
    let mut groups = Vec::new();
    for (&(pi, ei, _, _), key) in files.iter().zip(&keys) {
        let index = seen.entry(*key).or_default();
        let run = *index / cap;
        *index += 1;
        // A run of one (the last of a group past the cap, or a file alone in its contents) is no group.
        if members[key] - run * cap < 2 {
            continue;
        }
        let next = u32::try_from(numbers.len()).context("more than 2^32 hard-link groups")?;
        groups.push((pi, ei, *numbers.entry((*key, run)).or_insert(next)));
    }
    Ok(groups)
}

/// The sha256 of the regular file at `path`, which the inventory found `size` bytes long.
fn sha256_of(path: &Path, size: u64) -> Result<[u8; 32]> {
    const CHUNK: u64 = 256 << 10;
    let read = || -> Result<[u8; 32]> {
        let mut file = std::fs::File::open(path).context("cannot open")?;
        let mut hasher = Sha256::new();
        // One byte more than the size, so that a file that grew shows in the reads.
        let mut buf = vec![0u8; usize::try_from((size + 1).min(CHUNK)).expect("chunk fits usize")];
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("cannot read"),
            };
            hasher.update(&buf[..n]);
            total += n as u64;
            if total > size {
                bail!("changed since the inventory: {size} bytes then, more now");
            }
        }
        if total != size {
            bail!("changed since the inventory: {size} bytes then, {total} now");
        }
        Ok(hasher.finalize().into())
    };
    read().with_context(|| format!("{}: reading its contents to find identical files", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz-a";
    const B: &str = "1123456789abcdfghijklmnpqrsvwxyz-b";
    const C: &str = "2123456789abcdfghijklmnpqrsvwxyz-c";

    /// Writes `files` (`<store path base name>/<rel>`, contents, executable) under `dir`, a store directory.
    fn write_files(dir: &Path, files: &[(&str, &[u8], bool)]) {
        use std::os::unix::fs::PermissionsExt;
        for &(name, contents, executable) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            let mode = if executable { 0o555 } else { 0o444 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    /// Walks every store path in `dir`.
    fn inventory(dir: &Path) -> Inventory {
        let store = StoreDir::new(dir).unwrap();
        let paths: Vec<StorePath> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| StorePath::from_base_name(e.unwrap().file_name().to_str().unwrap()).unwrap())
            .collect();
        Inventory::walk(&store, &paths).unwrap()
    }

    /// (store path base name / rel, link group) of every entry, in closure order.
    fn groups(inv: &Inventory) -> Vec<(String, Option<u32>)> {
        inv.paths
            .iter()
            .flat_map(|p| {
                p.entries.iter().map(|e| (p.path.base_name().to_owned() + "/" + e.rel.to_str().unwrap(), e.link_group))
            })
            .collect()
    }

    fn group_of(inv: &Inventory, name: &str) -> Option<u32> {
        let all = groups(inv);
        all.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not in {all:?}")).1
    }

    /// Host hard links are linked in the image: one inode on the host is trivially the same contents.
    #[test]
    fn walks_in_nar_order_with_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let a = "0123456789abcdfghijklmnpqrsvwxyz-a";
        let b = "1123456789abcdfghijklmnpqrsvwxyz-b";
        let pa = dir.path().join(a);
        std::fs::create_dir_all(pa.join("dir")).unwrap();
        std::fs::write(pa.join("Z"), "zz").unwrap();
        std::fs::write(pa.join("dir/x"), "xxx").unwrap();
        std::fs::hard_link(pa.join("dir/x"), pa.join("y")).unwrap();
        std::os::unix::fs::symlink("dir/x", pa.join("link")).unwrap();
        std::fs::hard_link(pa.join("Z"), dir.path().join(b)).unwrap();
        let store = StoreDir::new(dir.path()).unwrap();
        let sp = |s: &str| StorePath::from_base_name(s).unwrap();
        let paths = [sp(a), sp(b)];
        let inv = Inventory::walk(&store, &paths).unwrap();
        let rels: Vec<_> = inv.paths[0].entries.iter().map(|e| e.rel.to_str().unwrap().to_owned()).collect();
        assert_eq!(rels, ["", "Z", "dir", "dir/x", "link", "y"]);
        let t = inv.totals;
        assert_eq!((t.paths, t.counts.files, t.counts.dirs, t.counts.symlinks), (2, 4, 2, 1));
        assert_eq!(t.counts.bytes, 2 + 3 + 3 + 2);
        assert_eq!((t.hardlink_groups, t.hardlink_extra, t.unique_bytes), (2, 2, 5));
        let groups: Vec<_> = inv.paths.iter().flat_map(|p| p.entries.iter().map(|e| e.link_group)).collect();
        assert_eq!(groups, [None, Some(0), None, Some(1), None, Some(1), Some(0)]);
    }

    /// Identical files in different store paths (and in one) are one group whatever the host has; a file of the
    /// same size with other bytes, symlinks with the same target and directories are never linked.
    #[test]
    fn identical_contents_are_one_group_across_store_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (format!("{A}/x"), format!("{B}/sub/x-again"), format!("{C}/y"));
        let (other, third) = (format!("{C}/other"), format!("{A}/z"));
        write_files(dir.path(), &[(&a, b"same bytes", false), (&b, b"same bytes", false), (&c, b"same bytes", false)]);
        write_files(dir.path(), &[(&other, b"same_bytes", false), (&third, b"same bytes", false)]);
        for p in [A, B] {
            std::os::unix::fs::symlink("target", dir.path().join(p).join("link")).unwrap();
        }
        std::fs::create_dir(dir.path().join(C).join("empty-dir")).unwrap();
        std::fs::create_dir(dir.path().join(A).join("empty-dir")).unwrap();
        let inv = inventory(dir.path());
        let g = group_of(&inv, &a);
        assert!(g.is_some());
        for name in [&b, &c, &third] {
            assert_eq!(group_of(&inv, name), g, "{name}");
        }
        assert_eq!(group_of(&inv, &other), None);
        for name in [format!("{A}/link"), format!("{B}/link"), format!("{A}/empty-dir"), format!("{C}/empty-dir")] {
            assert_eq!(group_of(&inv, &name), None, "{name}");
        }
        let t = inv.totals;
        assert_eq!((t.hardlink_groups, t.hardlink_extra), (1, 3));
        assert_eq!(t.unique_bytes, 20, "one copy of `same bytes` and `same_bytes`");
    }

    /// The same bytes with another executable bit are another NAR serialisation: not linked. Empty files are
    /// linked (per executable bit) like any others.
    #[test]
    fn the_executable_bit_separates_groups_and_empty_files_are_linked() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(String, &[u8], bool)> = vec![
            (format!("{A}/plain"), b"#!/bin/sh\n", false),
            (format!("{A}/run"), b"#!/bin/sh\n", true),
            (format!("{B}/plain"), b"#!/bin/sh\n", false),
            (format!("{B}/run"), b"#!/bin/sh\n", true),
            (format!("{A}/empty"), b"", false),
            (format!("{B}/__init__.py"), b"", false),
            (format!("{C}/empty-x"), b"", true),
            (format!("{C}/only-x"), b"only", true),
            (format!("{C}/only"), b"only", false),
        ];
        let refs: Vec<(&str, &[u8], bool)> = files.iter().map(|(n, c, x)| (n.as_str(), *c, *x)).collect();
        write_files(dir.path(), &refs);
        let inv = inventory(dir.path());
        let g = |n: &str| group_of(&inv, n);
        let (plain, run, empty) = (g(&files[0].0), g(&files[1].0), g(&files[4].0));
        assert!(plain.is_some() && run.is_some() && empty.is_some());
        assert_ne!(plain, run);
        assert_eq!(g(&files[2].0), plain);
        assert_eq!(g(&files[3].0), run);
        assert_eq!(g(&files[5].0), empty);
        for lone in [&files[6].0, &files[7].0, &files[8].0] {
            assert_eq!(g(lone), None, "{lone}");
        }
        assert_eq!((inv.totals.hardlink_groups, inv.totals.hardlink_extra), (3, 3));
    }

    /// A store with host hard links between identical files and a copy without any give the same inventory.
    #[test]
    fn host_hard_links_do_not_change_the_groups() {
        let (linked, copied) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = [
            (format!("{A}/one"), &b"one"[..]),
            (format!("{A}/d/one-again"), b"one"),
            (format!("{B}/one"), b"one"),
            (format!("{B}/two"), b"two"),
            (format!("{C}/two"), b"two"),
        ];
        for (name, contents) in &files {
            write_files(copied.path(), &[(name, contents, false)]);
        }
        write_files(linked.path(), &[(&files[0].0, b"one", false), (&files[3].0, b"two", false)]);
        for (from, to) in [(0, 1), (0, 2), (3, 4)] {
            let to = linked.path().join(&files[to].0);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::hard_link(linked.path().join(&files[from].0), to).unwrap();
        }
        let (a, b) = (inventory(linked.path()), inventory(copied.path()));
        assert_eq!(groups(&a), groups(&b));
        assert_eq!(a.totals, b.totals);
        assert_eq!((a.totals.hardlink_groups, a.totals.hardlink_extra, a.totals.unique_bytes), (2, 3, 6));
    }

    /// A group holds at most `cap` names: more identical files form consecutive groups, and a last run of one
    /// is no group. With ext4's own cap: 65,001 empty files are one group of 65,000 and one file on its own.
    #[test]
    fn groups_are_split_at_the_link_cap() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..7).map(|i| format!("{A}/f{i}")).collect();
        for n in &names {
            write_files(dir.path(), &[(n, b"x", false)]);
        }
        write_files(dir.path(), &[(&format!("{B}/g0"), b"y", false), (&format!("{B}/g1"), b"y", false)]);
        let store = StoreDir::new(dir.path()).unwrap();
        let paths =
            [A, B].map(|p| PathInventory::walk(&store, &StorePath::from_base_name(p).unwrap()).unwrap()).to_vec();
        let inv = Inventory::from_paths_capped(&store, paths, 3).unwrap();
        let got: Vec<Option<u32>> = groups(&inv).into_iter().map(|(_, g)| g).collect();
        // The store path itself, f0..f6 (runs of 3, 3, 1), then B, g0, g1.
        assert_eq!(got, [None, Some(0), Some(0), Some(0), Some(1), Some(1), Some(1), None, None, Some(2), Some(2)]);
        assert_eq!((inv.totals.hardlink_groups, inv.totals.hardlink_extra), (3, 5));

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(C);
        std::fs::create_dir(&root).unwrap();
        for i in 0..=MAX_LINKS {
            std::fs::File::create(root.join(format!("{i:05}"))).unwrap();
        }
        let inv = inventory(dir.path());
        let got: Vec<Option<u32>> = inv.paths[0].entries.iter().map(|e| e.link_group).collect();
        assert_eq!(got[0], None);
        assert!(got[1..=MAX_LINKS].iter().all(|&g| g == Some(0)));
        assert_eq!(got[MAX_LINKS + 1], None);
        assert_eq!((inv.totals.hardlink_groups, inv.totals.hardlink_extra), (1, MAX_LINKS as u64 - 1));
    }

    /// Groups are numbered in closure order, whatever the thread count.
    #[test]
    fn numbering_is_the_same_with_one_thread_or_four() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (pi, p) in [C, A, B].iter().enumerate() {
            for i in 0..60 {
                // Contents repeat across paths with a period that differs per path.
                let contents = format!("contents {}", (i * (pi + 1)) % 17).into_bytes();
                files.push((format!("{p}/d{}/f{i}", i % 5), contents, i % 7 == 0));
            }
        }
        let refs: Vec<(&str, &[u8], bool)> = files.iter().map(|(n, c, x)| (n.as_str(), c.as_slice(), *x)).collect();
        write_files(dir.path(), &refs);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| inventory(dir.path()))
        };
        let one = run(1);
        assert!(one.totals.hardlink_groups > 10, "{:?}", one.totals);
        for _ in 0..3 {
            assert_eq!(run(4), one);
        }
        // First appearance in closure order numbers the groups 0, 1, 2, …
        let mut next = 0;
        for (_, g) in groups(&one) {
            if let Some(g) = g {
                assert!(g <= next, "group {g} before group {next}");
                next = next.max(g + 1);
            }
        }
    }

    /// A file that cannot be read as the inventory listed it is named with its physical path.
    #[test]
    fn a_file_that_changed_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (format!("{A}/x"), format!("{B}/y"));
        write_files(dir.path(), &[(&x, b"abc", false), (&y, b"abd", false)]);
        let store = StoreDir::new(dir.path()).unwrap();
        let paths =
            [A, B].map(|p| PathInventory::walk(&store, &StorePath::from_base_name(p).unwrap()).unwrap()).to_vec();
        let victim = dir.path().join(&y);
        std::fs::write(&victim, "longer").unwrap();
        let err = format!("{:#}", Inventory::from_paths(&store, paths).unwrap_err());
        let want = format!(
            "{}: reading its contents to find identical files: changed since the inventory: 3 bytes then",
            victim.display()
        );
        assert!(err.starts_with(&want), "{err}");
    }

    /// The deepest and longest paths `kiln verify` can read back are accepted; one component or byte more is
    /// refused, naming the store path and the limit.
    #[test]
    fn refuses_paths_verify_could_not_resolve() {
        let sp = StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-deep").unwrap();
        let prefix = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-deep".len();
        let levels = |n: usize| PathBuf::from(vec!["d"; n].join("/"));
        check_depth(&sp, &levels(997), 997).unwrap();
        let err = check_depth(&sp, &levels(998), 998).unwrap_err().to_string();
        assert!(err.starts_with(&format!("store path {sp}: /nix/store/")), "{err}");
        assert!(err.contains("(998 levels below its store path) is 2044 bytes and 1001 path components long"), "{err}");
        assert!(err.contains("more than 4096 bytes or 1000 components (a store path nested at most 997"), "{err}");
        // 4096 bytes in all: the store path, then names of 255 bytes and one shorter one.
        let name = "n".repeat(255);
        let mut rel = PathBuf::new();
        let mut depth = 0;
        while prefix + rel.as_os_str().len() + 1 + 256 <= MAX_PATH_BYTES {
            rel.push(&name);
            depth += 1;
        }
        let last = MAX_PATH_BYTES - prefix - rel.as_os_str().len() - 2;
        rel.push("x".repeat(last));
        check_depth(&sp, &rel, depth + 1).unwrap();
        rel.set_file_name("x".repeat(last + 1));
        let err = check_depth(&sp, &rel, depth + 1).unwrap_err().to_string();
        assert!(err.contains("is 4097 bytes"), "{err}");
    }

    #[test]
    fn rejects_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let a = "0123456789abcdfghijklmnpqrsvwxyz-a";
        std::fs::create_dir(dir.path().join(a)).unwrap();
        let fifo = dir.path().join(a).join("pipe");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success();
        assert!(ok, "mkfifo failed");
        let store = StoreDir::new(dir.path()).unwrap();
        let err = PathInventory::walk(&store, &StorePath::from_base_name(a).unwrap()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("pipe: unsupported file type fifo"), "{msg}");
    }
}
