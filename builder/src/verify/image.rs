//! Reading the root filesystem with `ext4-view` (a reader that shares no code with kiln's writer): files by
//! path, and a store path's NAR serialisation re-derived from the image's own directory tree, with Nix's
//! canonical metadata checked on the way.
//!
//! `ext4-view` is not thread-safe (its handle is an `Rc`); each worker thread opens its own [`Image`].

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use ext4_view::{Ext4, Ext4Error, Metadata};

use crate::closure::NarInfo;
use crate::inventory::Kind;
use crate::nar::NarHasher;
use crate::readback::erofs::{Erofs, Inode};
use crate::readback::{Window, ext4_error as why, open_ext4};
use crate::store::LOGICAL_STORE;

/// Nix's canonical modification time.
const CANONICAL_MTIME: i64 = 1;
/// Non-canonical entries listed per store path (the rest are counted).
const LISTED_VIOLATIONS: usize = 3;

/// The root filesystem of an image, open for reading; with a store partition of its own (`efi-verity`), paths
/// under `/nix/store` are read from that (EROFS) instead.
pub(crate) struct Image {
    fs: Ext4,
    store: Option<Erofs>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").finish_non_exhaustive()
    }
}

/// What one store path looks like in the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PathCheck {
    /// narHash and narSize of the image's copy.
    pub nar: Option<NarInfo>,
    /// Entries (files, directories, symlinks) in the store path.
    pub entries: u64,
    /// The first few entries with non-canonical metadata: logical path, what differs.
    pub violations: Vec<(String, String)>,
    /// How many entries have non-canonical metadata in all.
    pub violation_count: u64,
}

pub(crate) fn ext4_path(path: &[u8]) -> Result<ext4_view::PathBuf> {
    ext4_view::PathBuf::try_from(path).map_err(|e| anyhow!("{}: not a valid path: {e}", show(path)))
}

/// A path for messages (lossy UTF-8).
pub(crate) fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Image {
    /// Opens the filesystem in `window` (its partition, or the whole image). Reads past the window's end, or the
    /// image's, fail naming the image, the byte offset and what was being read.
    pub(crate) fn open(window: &Window, store: Option<&Window>) -> Result<Self> {
        let store = store.map(Erofs::open).transpose().context("the store partition")?;
        Ok(Self { fs: open_ext4(window)?, store })
    }

    /// The store filesystem, when `path` is in it.
    fn in_store(&self, path: &str) -> Option<&Erofs> {
        self.store.as_ref().filter(|_| path.strip_prefix(LOGICAL_STORE).is_some_and(|r| r.starts_with('/')))
    }

    /// The whole contents of the regular file at absolute `path`, or `None` if nothing is there.
    pub(crate) fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if let Some(st) = self.in_store(path) {
            return match st.lookup(path.as_bytes(), true).with_context(|| path.to_owned())? {
                Some(i) if i.is_file() => Ok(Some(st.read_all(&i).with_context(|| path.to_owned())?)),
                Some(_) => Err(anyhow!("{path}: not a regular file")),
                None => Ok(None),
            };
        }
        match self.fs.read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Ext4Error::NotFound) => Ok(None),
            Err(e) => Err(anyhow!("{path}: {}", why(&e))),
        }
    }

    /// The target of the symlink at absolute `path`: `Ok(None)` if nothing is there, an error if it is not a
    /// symlink.
    pub(crate) fn read_link(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if let Some(st) = self.in_store(path) {
            return match st.lookup(path.as_bytes(), false).with_context(|| path.to_owned())? {
                Some(i) if i.is_symlink() => Ok(Some(st.read_all(&i).with_context(|| path.to_owned())?)),
                Some(_) => Err(anyhow!("{path}: not a symlink")),
                None => Ok(None),
            };
        }
        match self.fs.symlink_metadata(path) {
            Err(Ext4Error::NotFound) => return Ok(None),
            Err(e) => return Err(anyhow!("{path}: {}", why(&e))),
            Ok(md) if !md.is_symlink() => return Err(anyhow!("{path}: not a symlink ({:?})", md.file_type())),
            Ok(_) => {}
        }
        let target = self.fs.read_link(path).map_err(|e| anyhow!("{path}: {}", why(&e)))?;
        Ok(Some(target.as_ref().to_vec()))
    }

    /// Whether anything (a file, directory or symlink) is at absolute `path`.
    pub(crate) fn exists(&self, path: &str) -> Result<bool> {
        if let Some(st) = self.in_store(path) {
            return Ok(st.lookup(path.as_bytes(), false).with_context(|| path.to_owned())?.is_some());
        }
        match self.fs.symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(Ext4Error::NotFound) => Ok(false),
            Err(e) => Err(anyhow!("{path}: {}", why(&e))),
        }
    }

    /// The names in directory `path` (without `.` and `..`), sorted bytewise, with each entry's metadata.
    pub(crate) fn sorted_dir(&self, path: &ext4_view::PathBuf) -> Result<Vec<(Vec<u8>, Metadata)>> {
        let mut out = Vec::new();
        for entry in
            self.fs.read_dir(path).map_err(|e| anyhow!("{}: cannot read the directory: {}", path.display(), why(&e)))?
        {
            let entry = entry.map_err(|e| anyhow!("{}: cannot read a directory entry: {}", path.display(), why(&e)))?;
            let name = entry.file_name();
            let name = name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            let md = entry
                .metadata()
                .map_err(|e| anyhow!("{}: cannot read the inode: {}", show(entry.path().as_ref()), why(&e)))?;
            out.push((name.to_vec(), md));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The names directly under `/nix/store`, sorted.
    pub(crate) fn store_entries(&self) -> Result<Vec<Vec<u8>>> {
        if let Some(st) = &self.store {
            let dir = st.lookup(LOGICAL_STORE.as_bytes(), false)?.context("the store partition has no /nix/store")?;
            let mut names: Vec<Vec<u8>> = st.read_dir(&dir)?.into_iter().map(|(n, _)| n).collect();
            names.sort_unstable();
            return Ok(names);
        }
        let store = ext4_path(LOGICAL_STORE.as_bytes())?;
        Ok(self.sorted_dir(&store)?.into_iter().map(|(name, _)| name).collect())
    }

    /// Serialises store path `/nix/store/<base>` from the image into a NAR hasher, checking each entry's
    /// metadata against Nix's canonical form (owner 0:0, mtime 1, files 0444 or 0555, directories 0555,
    /// symlinks 0777). `buf` is a reusable read buffer.
    pub(crate) fn check_store_path(&self, base: &str, buf: &mut Vec<u8>) -> Result<PathCheck> {
        let abs = format!("{LOGICAL_STORE}/{base}");
        if let Some(st) = &self.store {
            let inode =
                st.lookup(abs.as_bytes(), false)?.with_context(|| format!("{abs}: not in the store partition"))?;
            if buf.len() < 1 << 16 {
                buf.resize(1 << 16, 0);
            }
            let mut walk = ErofsWalk { fs: st, hasher: NarHasher::new(), check: PathCheck::default(), buf };
            walk.node(&abs, &inode, &mut PathBuf::new())?;
            let ErofsWalk { hasher, mut check, .. } = walk;
            check.nar = Some(hasher.finish().with_context(|| format!("{abs}: NAR serialisation"))?);
            return Ok(check);
        }
        let root = ext4_path(abs.as_bytes())?;
        let md = self.fs.symlink_metadata(&root).map_err(|e| anyhow!("{abs}: {}", why(&e)))?;
        if buf.len() < 1 << 16 {
            buf.resize(1 << 16, 0);
        }
        let mut walk = Walk { image: self, hasher: NarHasher::new(), check: PathCheck::default(), buf };
        walk.node(&root, &mut PathBuf::new(), &md)?;
        let Walk { hasher, mut check, .. } = walk;
        check.nar = Some(hasher.finish().with_context(|| format!("{abs}: NAR serialisation"))?);
        Ok(check)
    }
}

/// One store path's walk in NAR order through the store partition (EROFS).
struct ErofsWalk<'a> {
    fs: &'a Erofs,
    hasher: NarHasher,
    check: PathCheck,
    buf: &'a mut Vec<u8>,
}

impl ErofsWalk<'_> {
    fn node(&mut self, path: &str, inode: &Inode, rel: &mut PathBuf) -> Result<()> {
        self.check.entries += 1;
        let kind = if inode.is_file() {
            Kind::File { size: inode.size, executable: inode.mode & 0o100 != 0, sparse: false }
        } else if inode.is_dir() {
            Kind::Dir
        } else if inode.is_symlink() {
            let target = self.fs.read_all(inode).with_context(|| path.to_owned())?;
            Kind::Symlink { target: PathBuf::from(std::ffi::OsStr::from_bytes(&target)) }
        } else {
            anyhow::bail!("{path}: mode {:o}, which a store path cannot hold", inode.mode);
        };
        let perm = u32::from(inode.mode) & 0o7777;
        let mut what = Vec::new();
        if inode.uid != 0 || inode.gid != 0 {
            what.push(format!("owner {}:{} (want 0:0)", inode.uid, inode.gid));
        }
        let want: &[u32] = match kind {
            Kind::File { .. } => &[0o444, 0o555],
            Kind::Dir => &[0o555],
            Kind::Symlink { .. } => &[0o777],
        };
        if !want.contains(&perm) {
            let want: Vec<String> = want.iter().map(|m| format!("{m:04o}")).collect();
            what.push(format!("mode {perm:04o} (want {})", want.join(" or ")));
        }
        if inode.mtime != CANONICAL_MTIME as u64 {
            what.push(format!("mtime {} (want {CANONICAL_MTIME})", inode.mtime));
        }
        if !what.is_empty() {
            self.check.violation_count += 1;
            if self.check.violations.len() < LISTED_VIOLATIONS {
                self.check.violations.push((path.to_owned(), what.join(", ")));
            }
        }
        self.hasher.entry(rel, &kind).with_context(|| format!("{path}: NAR serialisation"))?;
        match kind {
            Kind::File { size, .. } => {
                let mut at = 0;
                while at < size {
                    let n = (size - at).min(self.buf.len() as u64) as usize;
                    self.fs
                        .read_at(inode, at, &mut self.buf[..n])
                        .with_context(|| format!("{path}: reading byte {at}"))?;
                    self.hasher.file_chunk(&self.buf[..n]).with_context(|| path.to_owned())?;
                    at += n as u64;
                }
                self.hasher.end_file().with_context(|| path.to_owned())?;
            }
            Kind::Dir => {
                let mut entries = self.fs.read_dir(inode).with_context(|| path.to_owned())?;
                entries.sort_unstable();
                for (name, nid) in entries {
                    let child = self.fs.inode(nid).with_context(|| path.to_owned())?;
                    let child_path = format!("{path}/{}", show(&name));
                    rel.push(std::ffi::OsStr::from_bytes(&name));
                    self.node(&child_path, &child, rel)?;
                    rel.pop();
                }
            }
            Kind::Symlink { .. } => {}
        }
        Ok(())
    }
}

/// One store path's walk in NAR order.
struct Walk<'a> {
    image: &'a Image,
    hasher: NarHasher,
    check: PathCheck,
    buf: &'a mut Vec<u8>,
}

impl Walk<'_> {
    fn node(&mut self, path: &ext4_view::PathBuf, rel: &mut PathBuf, md: &Metadata) -> Result<()> {
        self.check.entries += 1;
        let t = md.file_type();
        let mode = md.mode();
        let kind = if t.is_regular_file() {
            Kind::File { size: md.len(), executable: mode & 0o100 != 0, sparse: false }
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            let target = self.image.fs.read_link(path).map_err(|e| anyhow!("{}: {}", path.display(), why(&e)))?;
            Kind::Symlink { target: PathBuf::from(std::ffi::OsStr::from_bytes(target.as_ref())) }
        } else {
            anyhow::bail!("{}: a {t:?}, which a store path cannot hold", path.display());
        };
        self.canonical(path, md, &kind);
        self.hasher.entry(rel, &kind).with_context(|| format!("{}: NAR serialisation", path.display()))?;
        match kind {
            Kind::File { .. } => {
                let mut file =
                    self.image.fs.open(path).map_err(|e| anyhow!("{}: cannot open: {}", path.display(), why(&e)))?;
                loop {
                    let n = file.read_bytes(self.buf).map_err(|e| {
                        anyhow!("{}: cannot read at byte {}: {}", path.display(), file.position(), why(&e))
                    })?;
                    if n == 0 {
                        break;
                    }
                    self.hasher.file_chunk(&self.buf[..n]).with_context(|| format!("{}", path.display()))?;
                }
                self.hasher.end_file().with_context(|| format!("{}", path.display()))?;
            }
            Kind::Dir => {
                for (name, child_md) in self.image.sorted_dir(path)? {
                    let child = path.join(&name);
                    rel.push(std::ffi::OsStr::from_bytes(&name));
                    self.node(&child, rel, &child_md)?;
                    rel.pop();
                }
            }
            Kind::Symlink { .. } => {}
        }
        Ok(())
    }

    /// Records how `md` differs from Nix's canonical metadata for `kind`, if it does.
    fn canonical(&mut self, path: &ext4_view::PathBuf, md: &Metadata, kind: &Kind) {
        let perm = u32::from(md.mode()) & 0o7777;
        let want: &[u32] = match kind {
            Kind::File { .. } => &[0o444, 0o555],
            Kind::Dir => &[0o555],
            Kind::Symlink { .. } => &[0o777],
        };
        let mtime = md.modified();
        let mut what = Vec::new();
        if md.uid() != 0 || md.gid() != 0 {
            what.push(format!("owner {}:{} (want 0:0)", md.uid(), md.gid()));
        }
        if !want.contains(&perm) {
            let want: Vec<String> = want.iter().map(|m| format!("{m:04o}")).collect();
            what.push(format!("mode {perm:04o} (want {})", want.join(" or ")));
        }
        if mtime.seconds() != CANONICAL_MTIME || mtime.nanoseconds() != 0 {
            what.push(format!("mtime {}.{:09} (want {CANONICAL_MTIME})", mtime.seconds(), mtime.nanoseconds()));
        }
        if what.is_empty() {
            return;
        }
        self.check.violation_count += 1;
        if self.check.violations.len() < LISTED_VIOLATIONS {
            self.check.violations.push((path.display().to_string(), what.join(", ")));
        }
    }
}
