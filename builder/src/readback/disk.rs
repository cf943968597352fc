//! The image, open read-only: a regular file or a block device (anything else is refused before a byte is read),
//! whose reads are bounded by its length and name the image, the byte offset and what was being read when they
//! fail. [`ReadAt`] is the one positioned-read trait every reader here goes through, so tests read memory.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kiln_formats::disk::{ByteRange, Bytes};

use super::Window;

/// Whatever an image can be read from at byte offsets: the image file, or memory in tests.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from byte `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let src = start.checked_add(buf.len()).and_then(|end| self.get(start..end));
        buf.copy_from_slice(src.ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }
}

/// The image: its bytes, its length, and the name errors call it by. Cheap to clone.
#[derive(Clone)]
pub struct Disk {
    src: Arc<dyn ReadAt>,
    len: Bytes,
    name: Arc<str>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("name", &self.name).field("len", &self.len).finish_non_exhaustive()
    }
}

impl Disk {
    /// Opens `path` read-only: a regular file or a block device. Anything else (a FIFO, a socket, a character
    /// device, a directory) is refused before a byte is read: it is opened non-blocking, so a FIFO nobody
    /// writes to cannot hang the open, and its type is checked on the open descriptor.
    ///
    /// # Errors
    ///
    /// When the path cannot be opened or measured, or is neither a regular file nor a block device.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut file = open_image(path, &name)?;
        // Seeking to the end measures block devices too, whose metadata says 0 bytes.
        let len = file.seek(SeekFrom::End(0)).with_context(|| format!("{name}: cannot find the image's size"))?;
        Ok(Self::new(Arc::new(file), Bytes(len), name))
    }

    /// An image read from `src`, `len` bytes long; `name` is what errors call it.
    #[must_use]
    pub fn new(src: Arc<dyn ReadAt>, len: Bytes, name: String) -> Self {
        Self { src, len, name: name.into() }
    }

    /// What errors call the image.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image's size.
    #[must_use]
    pub fn len(&self) -> Bytes {
        self.len
    }

    /// Fills `buf` from byte `at`; `what` names the structure in errors.
    ///
    /// # Errors
    ///
    /// When the image is too short for `buf` (`truncated`), or the read fails; both name the image, the offset
    /// and `what`.
    pub fn read(&self, what: &str, at: Bytes, buf: &mut [u8]) -> Result<()> {
        let n = buf.len();
        if !self.contains(at, n) {
            bail!(
                "{}: truncated: {what} ({n} bytes at byte {at}) lies past the end of the image ({} bytes)",
                self.name,
                self.len
            );
        }
        self.src
            .read_exact_at(buf, at.get())
            .with_context(|| format!("{}: reading {what} ({n} bytes at byte {at})", self.name))
    }

    /// Whether `n` bytes from `at` lie inside the image.
    #[must_use]
    pub fn contains(&self, at: Bytes, n: usize) -> bool {
        at.get().checked_add(n as u64).is_some_and(|end| end <= self.len.get())
    }

    /// A view of `range`. Reads from it are bounded by the range and by the image, so a range past the end of a
    /// truncated image still says what is missing when it is read.
    #[must_use]
    pub fn window(&self, range: ByteRange) -> Window {
        Window::new(self.clone(), range)
    }

    /// A view of the whole image.
    #[must_use]
    pub fn whole(&self) -> Window {
        self.window(ByteRange { start: Bytes(0), end: self.len })
    }
}

/// Opens an image read-only, refusing what is neither a regular file nor a block device; `name` is what errors
/// call it.
fn open_image(path: &Path, name: &str) -> Result<File> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::FileTypeExt;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(io::Error::from)
        .with_context(|| format!("{name}: cannot open the image"))?;
    let file = File::from(fd);
    let kind = file.metadata().with_context(|| format!("{name}: cannot stat the image"))?.file_type();
    if kind.is_file() || kind.is_block_device() {
        // Reads of regular files and block devices do not block anyway; clear the flag all the same.
        rustix::fs::fcntl_setfl(&file, OFlags::empty())
            .map_err(io::Error::from)
            .with_context(|| format!("{name}: cannot clear O_NONBLOCK"))?;
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    };
    bail!("{name}: {what}, not a disk image (an image is a regular file or a block device)")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn disk(len: usize) -> Disk {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        Disk::new(Arc::new(bytes), Bytes(len as u64), "mem.img".into())
    }

    #[test]
    fn reads_say_where_they_fail() {
        let d = disk(1024);
        let mut buf = [0u8; 4];
        d.read("thing", Bytes(1020), &mut buf).unwrap();
        assert_eq!(buf, [252, 253, 254, 255]);
        let err = d.read("GPT header", Bytes(1022), &mut buf).unwrap_err().to_string();
        assert_eq!(
            err,
            "mem.img: truncated: GPT header (4 bytes at byte 1022) lies past the end of the image (1024 bytes)"
        );
    }

    /// What is neither a regular file nor a block device is refused before a byte is read; a FIFO nobody
    /// writes to does not block the open.
    #[test]
    fn opens_only_files_and_block_devices() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success();
        assert!(ok, "mkfifo failed");
        for (path, want) in [
            (fifo.as_path(), "a FIFO (named pipe), not a disk image"),
            (dir.path(), "a directory, not a disk image"),
            (Path::new("/dev/null"), "a character device, not a disk image"),
        ] {
            let err = Disk::open(path).unwrap_err().to_string();
            assert_eq!(err, format!("{}: {want} (an image is a regular file or a block device)", path.display()));
        }
        let file = dir.path().join("disk.img");
        std::fs::write(&file, [7u8; 1024]).unwrap();
        let d = Disk::open(&file).unwrap();
        assert_eq!(d.len(), Bytes(1024));
        let mut buf = [0u8; 2];
        d.read("bytes", Bytes(1022), &mut buf).unwrap();
        assert_eq!(buf, [7, 7]);
    }
}
