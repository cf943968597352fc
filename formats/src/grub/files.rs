//! GRUB's i386-pc directory (`<grub>/lib/grub/i386-pc`) as data: the files core.img is assembled from, read by
//! name. Nothing in it is ever run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

/// Where the files of GRUB's i386-pc directory come from: `kernel.img`, `lzma_decompress.img`, `diskboot.img`,
/// `boot.img`, `moddep.lst` and `<module>.mod`, by name (never a path: names have no `/`).
///
/// [`ModuleDir`] reads a directory on disk; a `BTreeMap<String, Vec<u8>>` serves files from memory (tests).
pub trait GrubFiles {
    /// The bytes of the file `name`.
    ///
    /// # Errors
    ///
    /// If it cannot be read (`NotFound` when there is none).
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;

    /// Where `name` is, for messages: a path, or what else holds it.
    fn location(&self, name: &str) -> String;
}

/// A module directory on disk. Each file is opened without following a symlink in its last component (a
/// `ext2.mod -> /etc/shadow` would otherwise be built into the image) and must be a regular file; the
/// directory itself is trusted as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDir {
    dir: PathBuf,
}

impl ModuleDir {
    /// The module directory `dir` itself (e.g. `/usr/lib/grub/i386-pc`).
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The i386-pc directory of a GRUB package (or store path) `grub`: `<grub>/lib/grub/i386-pc`.
    #[must_use]
    pub fn of_package(grub: &Path) -> Self {
        Self::new(i386_pc_dir(grub))
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl GrubFiles for ModuleDir {
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"));
        }
        let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let mut file: File = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(i32::try_from(flags.bits()).expect("open flags fit an int"))
            .open(self.dir.join(name))
            .map_err(|e| match e.raw_os_error() {
                Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is a symlink (GRUB's files are read, never followed)",
                ),
                _ => e,
            })?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl GrubFiles for BTreeMap<String, Vec<u8>> {
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.get(name).cloned().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn location(&self, name: &str) -> String {
        format!("{name} (in memory)")
    }
}

/// `<grub>/lib/grub/i386-pc` for a GRUB installation (or store path) `<grub>`.
#[must_use]
pub fn i386_pc_dir(grub: &Path) -> PathBuf {
    grub.join("lib/grub/i386-pc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ext2.mod"), b"module").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("linked.mod")).unwrap();
        std::fs::create_dir(dir.path().join("sub.mod")).unwrap();
        let files = ModuleDir::new(dir.path());
        assert_eq!(files.read("ext2.mod").unwrap(), b"module");
        for (name, want) in [
            ("linked.mod", "symlink"),
            ("sub.mod", "not a regular file"),
            ("gone.mod", "No such file"),
            ("../secret", "not a plain file name"),
        ] {
            let err = files.read(name).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        assert_eq!(files.location("ext2.mod"), dir.path().join("ext2.mod").display().to_string());
    }
}
