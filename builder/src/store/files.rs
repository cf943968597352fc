//! Opening a store path's regular files for reading without ever following a symlink.
//!
//! The inventory lists every entry with `lstat`, so a symlink is recorded as a symlink and never read through.
//! Between that listing and the reads, though, the store directory may change: a file replaced by a symlink to
//! `/etc/shadow`, or a directory by a symlink to `/`. A plain `open(root/rel)` would then read outside the
//! store. [`StoreFiles`] opens `rel` beneath the store path's directory with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so a symlink anywhere on the way is an error naming the file; on kernels without
//! `openat2` (before 5.6) only the last component is checked (`O_NOFOLLOW`). A FIFO or device put there is
//! refused as well, without blocking on it.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How every file is opened: read-only, never through a final symlink, never blocking on a FIFO.
const READ: OFlags = OFlags::RDONLY.union(OFlags::NOFOLLOW).union(OFlags::NONBLOCK).union(OFlags::CLOEXEC);

/// The regular files of one store path, opened relative to its directory.
#[derive(Debug)]
pub struct StoreFiles {
    root: PathBuf,
    /// The store path's directory (`O_PATH`), or `None` when the store path is a single file or a symlink.
    dir: Option<OwnedFd>,
}

impl StoreFiles {
    /// Prepares to open the files under `root`, a store path's physical location.
    ///
    /// # Errors
    /// If `root` cannot be opened (other than by being a file or a symlink).
    pub fn new(root: &Path) -> Result<Self> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = match rustix::fs::open(root, flags, Mode::empty()) {
            Ok(fd) => Some(fd),
            // A single-file store path, or a symlink store path (which has no files to open).
            Err(Errno::NOTDIR | Errno::LOOP) => None,
            Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("{}: cannot open", root.display())),
        };
        Ok(Self { root: root.to_path_buf(), dir })
    }

    /// Opens the regular file at `rel` (relative to the store path; empty for a single-file store path). Errors
    /// say what is wrong without the path, which callers add.
    ///
    /// # Errors
    /// If the file cannot be opened, a symlink is on the way to it, or it is no longer a regular file.
    pub fn open(&self, rel: &Path) -> Result<File> {
        let symlink = || {
            anyhow!(
                "a symlink is in the way (it was a regular file when the store path was listed); kiln never \
                 follows symlinks in the store"
            )
        };
        let opened = match (&self.dir, rel.as_os_str().is_empty()) {
            (_, true) => rustix::fs::open(&self.root, READ, Mode::empty()),
            (Some(dir), false) => {
                match rustix::fs::openat2(
                    dir,
                    rel,
                    READ,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                ) {
                    Err(Errno::NOSYS) => rustix::fs::openat(dir, rel, READ, Mode::empty()),
                    other => other,
                }
            }
            (None, false) => bail!("{} is not a directory any more", self.root.display()),
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::XDEV) => return Err(symlink()),
            Err(e) => return Err(std::io::Error::from(e)).context("cannot open"),
        };
        let file = File::from(fd);
        let meta = file.metadata().context("cannot stat")?;
        if !meta.is_file() {
            bail!("no longer a regular file (it was one when the store path was listed)");
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn opens_files_but_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "data").unwrap();
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        symlink("d", root.join("inner")).unwrap();
        let files = StoreFiles::new(&root).unwrap();
        assert_eq!(std::io::read_to_string(files.open(Path::new("d/f")).unwrap()).unwrap(), "data");
        for (rel, want) in [
            ("passwd", "a symlink is in the way"),
            ("etc/passwd", "a symlink is in the way"),
            ("inner/f", "a symlink is in the way"),
            ("d", "no longer a regular file"),
            ("gone", "cannot open"),
        ] {
            let err = format!("{:#}", files.open(Path::new(rel)).unwrap_err());
            assert!(err.contains(want), "{rel}: {err}");
        }
        // A single-file store path, and one that is a symlink.
        let single = StoreFiles::new(&root.join("d/f")).unwrap();
        assert!(single.open(Path::new("")).is_ok());
        let link = StoreFiles::new(&root.join("passwd")).unwrap();
        assert!(format!("{:#}", link.open(Path::new("")).unwrap_err()).contains("a symlink is in the way"));
    }
}
