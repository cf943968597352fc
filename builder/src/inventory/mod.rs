//! The inventory: every file of the closure with its size, mode, symlink target and the group of identical
//! files it belongs to. Entries come from metadata (parallel `lstat` across store paths; symlinks are recorded,
//! never followed); identical files are found by contents (see [`Inventory::from_paths`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{LOGICAL_STORE, StoreDir, StoreFiles, StorePath, entry_path};

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
pub const MAX_LINKS: usize = kiln_formats::ext4::MAX_LINKS as usize;

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
        let at = At { physical: &root, parent: None };
        visit(&at, PathBuf::new(), 0, Lstat::of_metadata(&meta), path, &mut entries, &mut host_inodes)?;
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

/// What the walk takes from an entry's `lstat`.
#[derive(Debug, Clone, Copy)]
struct Lstat {
    /// `st_mode`: type and permissions.
    mode: u32,
    nlink: u64,
    dev: u64,
    ino: u64,
    size: u64,
    /// 512-byte blocks allocated.
    blocks: u64,
}

impl Lstat {
    fn of_metadata(m: &std::fs::Metadata) -> Self {
        Self { mode: m.mode(), nlink: m.nlink(), dev: m.dev(), ino: m.ino(), size: m.len(), blocks: m.blocks() }
    }

    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // stat's field types differ between targets
    fn of_stat(st: &rustix::fs::Stat) -> Self {
        Self {
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        }
    }
}

/// Where an entry is: its physical path (for messages, and for the store path's own root) and, below the
/// root, its parent directory's descriptor and its name there, which every system call uses (no path walk
/// from `/` per entry, and nothing under the store path followed).
struct At<'a> {
    physical: &'a Path,
    parent: Option<(std::os::fd::BorrowedFd<'a>, &'a std::ffi::OsStr)>,
}

fn visit(
    at: &At<'_>,
    rel: PathBuf,
    depth: usize,
    meta: Lstat,
    sp: &StorePath,
    out: &mut Vec<Entry>,
    host_inodes: &mut Vec<(u32, u64, u64)>,
) -> Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    check_depth(sp, &rel, depth)?;
    let physical = at.physical;
    let ft = FileType::from_raw_mode(meta.mode);
    if meta.nlink > 1 && ft == FileType::RegularFile {
        let index = u32::try_from(out.len()).context("more than 2^32 entries in one store path")?;
        host_inodes.push((index, meta.dev, meta.ino));
    }
    let mode = meta.mode & 0o7777;
    let kind = match ft {
        FileType::RegularFile => {
            // Proves the file can be read now, before anything is written (cheaper than opening it).
            match at.parent {
                Some((dir, name)) => rustix::fs::accessat(dir, name, rustix::fs::Access::READ_OK, AtFlags::empty()),
                None => rustix::fs::access(physical, rustix::fs::Access::READ_OK),
            }
            .map_err(std::io::Error::from)
            .with_context(|| format!("{}: cannot read", physical.display()))?;
            Kind::File { size: meta.size, executable: mode & 0o100 != 0, sparse: meta.blocks * 512 < meta.size }
        }
        FileType::Symlink => {
            let target = match at.parent {
                Some((dir, name)) => rustix::fs::readlinkat(dir, name, Vec::new())
                    .map(|t| PathBuf::from(std::ffi::OsStr::from_bytes(t.as_bytes())))
                    .map_err(std::io::Error::from),
                None => std::fs::read_link(physical),
            }
            .with_context(|| format!("{}: cannot read symlink", physical.display()))?;
            Kind::Symlink { target }
        }
        FileType::Directory => Kind::Dir,
        other => {
            let what = match other {
                FileType::Fifo => "fifo",
                FileType::Socket => "socket",
                FileType::BlockDevice => "block device",
                FileType::CharacterDevice => "character device",
                _ => "unknown",
            };
            bail!(
                "{}: unsupported file type {what} in store path {sp} (a store holds only regular files, \
                 directories and symlinks)",
                physical.display()
            );
        }
    };
    let is_dir = kind == Kind::Dir;
    out.push(Entry { rel: rel.clone(), kind, mode, link_group: None });
    if is_dir {
        let cannot = || format!("{}: cannot read directory", physical.display());
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match at.parent {
            Some((dir, name)) => rustix::fs::openat(dir, name, flags, Mode::empty()),
            None => rustix::fs::open(physical, flags, Mode::empty()),
        }
        .map_err(std::io::Error::from)
        .with_context(cannot)?;
        let mut names: Vec<OsString> = Vec::new();
        for e in rustix::fs::Dir::read_from(&fd).map_err(std::io::Error::from).with_context(cannot)? {
            let e = e.map_err(std::io::Error::from).with_context(cannot)?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from(std::ffi::OsStr::from_bytes(name)));
            }
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = physical.join(&name);
            let st = rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(std::io::Error::from)
                .with_context(|| format!("{}: cannot stat", child.display()))?;
            let child_at = At { physical: &child, parent: Some((std::os::fd::AsFd::as_fd(&fd), &name)) };
            visit(&child_at, rel.join(&name), depth + 1, Lstat::of_stat(&st), sp, out, host_inodes)?;
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
/// the contents (or, marked `true`, of its first [`PREFIX`] bytes when no other file of its size begins with
/// them).
type ContentKey = (u64, bool, bool, [u8; 32]);

/// Bytes of each candidate file hashed first: only files that share them with another are hashed whole.
const PREFIX: u64 = 4096;

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
    let mut reads: Vec<(usize, usize, u64)> = Vec::new();
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
            reads.push((pi, ei, size));
        }
        read_of.push(Some(r));
    }
    // Each store path's files are opened beneath its directory, never through a symlink (as the copy reads them).
    let mut opened: HashMap<usize, StoreFiles> = HashMap::new();
    for &(pi, _, _) in &reads {
        if let std::collections::hash_map::Entry::Vacant(v) = opened.entry(pi) {
            v.insert(StoreFiles::new(&store.physical(&paths[pi].path))?);
        }
    }
    // Hashed in two rounds: the first PREFIX bytes of every file (all of a small one), then all of those whose
    // size and first bytes another shares. Files of the same size mostly differ early (an ELF file's headers
    // and build ID come first), so most of the bytes of a large closure are never read here.
    let hash = |(pi, ei, size): (usize, usize, u64), limit: u64| {
        let rel = &paths[pi].entries[ei].rel;
        sha256_of(&opened[&pi], rel, size, limit).with_context(|| {
            format!(
                "{}: reading its contents to find identical files",
                entry_path(&store.physical(&paths[pi].path), rel).display()
            )
        })
    };
    let mut digests: Vec<[u8; 32]> = reads.par_iter().map(|&r| hash(r, PREFIX)).collect::<Result<_>>()?;
    let mut shared: HashMap<(u64, [u8; 32]), u32> = HashMap::new();
    for (&(_, _, size), d) in reads.iter().zip(&digests) {
        if size > PREFIX {
            *shared.entry((size, *d)).or_default() += 1;
        }
    }
    // A large file whose first bytes no other file of its size shares is identical to no other: its prefix
    // digest, marked as one, keeps it apart from every whole-file digest. The other large ones are read whole.
    let partial: Vec<bool> =
        (0..reads.len()).map(|r| reads[r].2 > PREFIX && shared[&(reads[r].2, digests[r])] == 1).collect();
    let again: Vec<usize> = (0..reads.len()).filter(|&r| reads[r].2 > PREFIX && !partial[r]).collect();
    let whole: Vec<[u8; 32]> = again.par_iter().map(|&r| hash(reads[r], u64::MAX)).collect::<Result<_>>()?;
    for (&r, d) in again.iter().zip(whole) {
        digests[r] = d;
    }
    let empty: [u8; 32] = Sha256::digest([]).into();

    // Group by contents; numbers in order of first appearance, runs of at most `cap` names.
    let keys: Vec<ContentKey> = files
        .iter()
        .zip(&read_of)
        .map(|(&(_, _, size, executable), r)| {
            (size, executable, r.is_some_and(|r| partial[r]), r.map_or(empty, |r| digests[r]))
        })
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

/// The sha256 of the regular file `rel` of a store path, which the inventory found `size` bytes long, or of its
/// first `limit` bytes if it has more. Errors say what is wrong without the path, which the caller adds.
fn sha256_of(files: &StoreFiles, rel: &Path, size: u64, limit: u64) -> Result<[u8; 32]> {
    const CHUNK: u64 = 256 << 10;
    let mut file = files.open(rel)?;
    let mut hasher = Sha256::new();
    // Reading all of it: one byte more than the size, so that a file that grew shows in the reads.
    let want = if size > limit { limit } else { size + 1 };
    let mut buf = vec![0u8; usize::try_from(want.min(CHUNK)).expect("chunk fits usize")];
    let mut total = 0u64;
    while total < want {
        let room = usize::try_from((want - total).min(buf.len() as u64)).expect("fits the buffer");
        let n = match file.read(&mut buf[..room]) {
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
    if total != want.min(size) {
        bail!("changed since the inventory: {size} bytes then, {total} now");
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests;
