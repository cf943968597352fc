//! The image, open read-only, and the views of it the readers need: reads that name the image, the byte offset
//! and what was being read when they fail; a [`Window`] over one partition (or the whole image), which is also
//! `ext4-view`'s reader; and [`FatIo`], the `Read + Write + Seek` fatfs wants, whose writes always fail.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kiln_formats::disk::{ByteRange, Bytes};

/// Whatever an image can be read from at byte offsets: the image file, or memory in tests.
pub(crate) trait ReadAt: Send + Sync {
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
pub(crate) struct Disk {
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
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut file = open_image(path, &name)?;
        // Seeking to the end measures block devices too, whose metadata says 0 bytes.
        let len = file.seek(SeekFrom::End(0)).with_context(|| format!("{name}: cannot find the image's size"))?;
        Ok(Self::new(Arc::new(file), Bytes(len), name))
    }

    /// An image read from `src`, `len` bytes long.
    pub(crate) fn new(src: Arc<dyn ReadAt>, len: Bytes, name: String) -> Self {
        Self { src, len, name: name.into() }
    }

    /// What errors call the image.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The image's size.
    pub(crate) fn len(&self) -> Bytes {
        self.len
    }

    /// Fills `buf` from byte `at`; `what` names the structure in errors, which say whether the image is too
    /// short (truncated) or could not be read.
    pub(crate) fn read(&self, what: &str, at: Bytes, buf: &mut [u8]) -> Result<()> {
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
    pub(crate) fn contains(&self, at: Bytes, n: usize) -> bool {
        at.get().checked_add(n as u64).is_some_and(|end| end <= self.len.get())
    }

    /// A view of `range`, which must lie inside the image.
    pub(crate) fn window(&self, range: ByteRange) -> Window {
        Window { disk: self.clone(), range }
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

/// A byte range of the image read as if it were the whole device: a partition, or the whole image when it is a
/// bare filesystem.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    disk: Disk,
    range: ByteRange,
}

impl Window {
    /// The image this is a part of.
    pub(crate) fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Where the window lies in the image.
    pub(crate) fn range(&self) -> ByteRange {
        self.range
    }

    /// The window's size.
    pub(crate) fn len(&self) -> Bytes {
        self.range.len()
    }

    /// Fills `buf` from byte `at` of the window; an error (naming the image offset) past its end.
    pub(crate) fn read(&self, what: &str, at: Bytes, buf: &mut [u8]) -> Result<()> {
        let abs = self.range.start.checked_add(at).context("offset overflows 64 bits")?;
        if !self.has(at, buf.len()) {
            bail!(
                "{}: {what} ({} bytes at byte {abs}) lies past the end of its partition ({} at byte {})",
                self.disk.name(),
                buf.len(),
                self.range.len(),
                self.range.start
            );
        }
        self.disk.read(what, abs, buf)
    }

    /// Fills `buf` from byte `at` of the window if those bytes are there: `Ok(false)` past the window's end, for
    /// probing magic numbers of filesystems larger than the window.
    pub(crate) fn probe(&self, at: Bytes, buf: &mut [u8]) -> Result<bool> {
        if !self.has(at, buf.len()) {
            return Ok(false);
        }
        self.read("filesystem magic", at, buf)?;
        Ok(true)
    }

    fn has(&self, at: Bytes, n: usize) -> bool {
        at.get().checked_add(n as u64).is_some_and(|end| end <= self.range.len().get())
    }
}

impl ext4_view::Ext4Read for Window {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Window::read(self, "ext4 block", Bytes(start_byte), dst).map_err(|e| format!("{e:#}").into())
    }
}

/// A [`Window`] as a stream for fatfs: reads and seeks stay inside the window; every write fails, so nothing
/// fatfs does (it marks volumes dirty on write, and clean on unmount) can change the image.
#[derive(Debug)]
pub(crate) struct FatIo {
    window: Window,
    pos: u64,
}

impl FatIo {
    /// A stream at the window's first byte.
    pub(crate) fn new(window: Window) -> Self {
        Self { window, pos: 0 }
    }
}

impl Read for FatIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.window.len().get().saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.window.read("FAT data", Bytes(self.pos), &mut buf[..n]).map_err(|e| io::Error::other(format!("{e:#}")))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FatIo {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.window.len().get();
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => len.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("seek {to:?} outside the {len}-byte FAT volume"),
            )),
        }
    }
}

impl Write for FatIo {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "kiln inspect reads images; it never writes them"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(len: usize) -> Disk {
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
        let w = d.window(ByteRange { start: Bytes(512), end: Bytes(1024) });
        assert!(!w.probe(Bytes(510), &mut buf).unwrap());
        assert!(w.probe(Bytes(0), &mut buf).unwrap());
        assert_eq!(buf, [0, 1, 2, 3]);
        let err = w.read("superblock", Bytes(600), &mut buf).unwrap_err().to_string();
        assert!(err.contains("byte 1112") && err.contains("past the end of its partition"), "{err}");
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

    #[test]
    fn fat_io_reads_seeks_and_never_writes() {
        let d = disk(2048);
        let mut io = FatIo::new(d.window(ByteRange { start: Bytes(1024), end: Bytes(2048) }));
        assert_eq!(io.seek(SeekFrom::End(-2)).unwrap(), 1022);
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], &[(2046 % 256) as u8, (2047 % 256) as u8]);
        assert_eq!(io.read(&mut buf).unwrap(), 0);
        assert!(io.seek(SeekFrom::Start(1025)).is_err());
        assert_eq!(io.write(b"x").unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }
}
