//! The inventory: every file of the closure with its size, mode, symlink target and hard-link identity, read
//! from metadata only (parallel `lstat` across store paths). Symlinks are recorded, never followed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Serialize;

use crate::store::{LOGICAL_STORE, StoreDir, StorePath};

/// The longest logical path (`/nix/store/…`, in bytes) of an entry kiln puts in an image. `kiln verify` reads
/// images back with `ext4-view`, which resolves every file by its absolute path and refuses paths longer than
/// this (Linux's `PATH_MAX`); an image kiln builds must be one its own verify can read.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most components (`nix`, `store`, the store path, then one per directory level) a logical path of an
/// entry may have: `ext4-view` stops resolving a path after 1,000 steps, one per component, so a store path
/// may nest 997 levels deep.
pub const MAX_PATH_COMPONENTS: usize = 1000;

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
    /// Hard-link group: entries of the closure that are one inode on the host share a group number.
    pub link_group: Option<u32>,
}

/// The entries of one store path, in NAR order (depth first, names sorted bytewise); the first is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInventory {
    /// The store path.
    pub path: StorePath,
    /// Its entries.
    pub entries: Vec<Entry>,
    /// (entry index, host device, host inode) of each entry whose inode has other links, until
    /// [`Inventory::from_paths`] turns them into link groups (kept apart: most entries have none).
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
    if meta.nlink() > 1 && !ft.is_dir() {
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
    /// Bytes of file data with each hard-linked inode counted once.
    pub unique_bytes: u64,
    /// Groups of entries that are one inode (hard links within the closure).
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
    /// Walks every store path in parallel (in the current rayon pool).
    pub fn walk<'a>(store: &StoreDir, paths: impl IntoParallelIterator<Item = &'a StorePath>) -> Result<Self> {
        let paths = paths.into_par_iter().map(|p| PathInventory::walk(store, p)).collect::<Result<Vec<_>>>()?;
        Ok(Self::from_paths(paths))
    }

    /// Assembles per-path inventories: sorts them and resolves hard-link groups across the closure.
    #[must_use]
    pub fn from_paths(mut paths: Vec<PathInventory>) -> Self {
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        let mut groups: HashMap<(u64, u64), (u32, u64)> = HashMap::new();
        let mut first_seen = Vec::new();
        for p in &paths {
            for &(_, dev, ino) in &p.host_inodes {
                let id = (dev, ino);
                let n = groups.len() as u32;
                let slot = groups.entry(id).or_insert((n, 0));
                slot.1 += 1;
                if slot.1 == 1 {
                    first_seen.push(id);
                }
            }
        }
        // Number groups in order of first appearance; inodes seen once in the closure are no group at all.
        let mut numbering = HashMap::new();
        for id in first_seen {
            if groups[&id].1 > 1 {
                let next = numbering.len() as u32;
                numbering.insert(id, next);
            }
        }
        let mut totals = Totals { paths: paths.len() as u64, ..Totals::default() };
        let mut counted = std::collections::HashSet::new();
        for p in &mut paths {
            let c = p.counts();
            totals.counts.files += c.files;
            totals.counts.dirs += c.dirs;
            totals.counts.symlinks += c.symlinks;
            totals.counts.bytes += c.bytes;
            for &(ei, dev, ino) in &p.host_inodes {
                p.entries[ei as usize].link_group = numbering.get(&(dev, ino)).copied();
            }
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
        totals.hardlink_groups = numbering.len() as u64;
        Self { paths, totals }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
