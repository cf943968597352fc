//! The adapters the filesystem readers want: `ext4-view` reads a [`Window`] through [`Ext4Read`], and fatfs
//! reads one through [`FatIo`], a `Read + Write + Seek` stream whose writes always fail. [`open_ext4`] and
//! [`open_fat`] open a window's filesystem with errors naming the image and the byte offset.

use std::io::{self, Read, Seek, SeekFrom, Write};

use anyhow::{Result, anyhow};
use ext4_view::{Ext4, Ext4Error, Ext4Read};
use kiln_formats::disk::Bytes;

use super::Window;

impl Ext4Read for Window {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Window::read(self, "ext4 block", Bytes(start_byte), dst).map_err(|e| format!("{e:#}").into())
    }
}

/// Opens the ext4 filesystem in `window` (its partition, or the whole image) with `ext4-view`. Reads past the
/// window's end, or the image's, fail naming the image, the byte offset and what was being read.
///
/// # Errors
///
/// When `ext4-view` cannot load the filesystem: the error names the image and where the filesystem starts.
pub fn open_ext4(window: &Window) -> Result<Ext4> {
    Ext4::load(Box::new(window.clone())).map_err(|e| {
        anyhow!(
            "{}: the ext4 filesystem at byte {} cannot be read: {}",
            window.disk().name(),
            window.range().start,
            ext4_error(&e)
        )
    })
}

/// What an `ext4-view` error says. A read error is the [`Window`]'s own message, which names the image, the byte
/// offset and what was being read; a path too long for `ext4-view` says what its limits are.
#[must_use]
pub fn ext4_error(e: &Ext4Error) -> String {
    match e {
        Ext4Error::Io(io) => io.to_string(),
        Ext4Error::PathTooLong => format!(
            "{e}: ext4-view resolves paths of at most {} bytes and {} components, and kiln build refuses deeper trees",
            crate::inventory::MAX_PATH_BYTES,
            crate::inventory::MAX_PATH_COMPONENTS
        ),
        _ => e.to_string(),
    }
}

/// Opens the FAT volume in `window` with fatfs, read-only (through [`FatIo`]).
///
/// # Errors
///
/// When fatfs cannot read the volume: the error names the image and where the volume starts.
pub fn open_fat(window: &Window) -> Result<fatfs::FileSystem<FatIo>> {
    fatfs::FileSystem::new(FatIo::new(window.clone()), fatfs::FsOptions::new()).map_err(|e| {
        anyhow!("{}: the FAT filesystem at byte {} cannot be read: {e}", window.disk().name(), window.range().start)
    })
}

/// A [`Window`] as a stream for fatfs: reads and seeks stay inside the window; every write fails, so nothing
/// fatfs does (it marks volumes dirty on write, and clean on unmount) can change the image.
#[derive(Debug)]
pub struct FatIo {
    window: Window,
    pos: u64,
}

impl FatIo {
    /// A stream at the window's first byte.
    #[must_use]
    pub fn new(window: Window) -> Self {
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
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "kiln reads images back; it never writes them"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kiln_formats::disk::ByteRange;

    use super::*;
    use crate::readback::disk::tests::disk;

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
