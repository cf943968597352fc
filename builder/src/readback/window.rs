//! A byte range of the image read as if it were the whole device: a partition, or the whole image when it is a
//! bare filesystem. Reads are bounded by the range and by the image, and name both when they fall outside.

use anyhow::{Context, Result, bail};
use kiln_formats::disk::{ByteRange, Bytes};

use super::Disk;

/// A byte range of a [`Disk`], read from its own byte 0. It may reach past the end of a truncated image: reads
/// there fail saying the image is truncated, so a reader can say what is missing of a partition.
#[derive(Debug, Clone)]
pub struct Window {
    disk: Disk,
    range: ByteRange,
}

impl Window {
    /// A view of `range` of `disk` (see [`Disk::window`]).
    pub(super) fn new(disk: Disk, range: ByteRange) -> Self {
        Self { disk, range }
    }

    /// The image this is a part of.
    #[must_use]
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Where the window lies in the image.
    #[must_use]
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// The window's size.
    #[must_use]
    pub fn len(&self) -> Bytes {
        self.range.len()
    }

    /// Whether the window holds no byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Fills `buf` from byte `at` of the window; `what` names the structure in errors.
    ///
    /// # Errors
    ///
    /// When `buf` reaches past the window's end or the image's (truncated), or the read fails; each names the
    /// image, the byte offset in it and `what`.
    pub fn read(&self, what: &str, at: Bytes, buf: &mut [u8]) -> Result<()> {
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

    /// Fills `buf` from byte `at` of the window if those bytes are there: `Ok(false)` past the window's end or
    /// the image's, for probing magic numbers of filesystems larger than the window or cut short with the image.
    ///
    /// # Errors
    ///
    /// When the bytes are there but cannot be read.
    pub fn probe(&self, what: &str, at: Bytes, buf: &mut [u8]) -> Result<bool> {
        let inside = self.range.start.checked_add(at).is_some_and(|abs| self.disk.contains(abs, buf.len()));
        if !self.has(at, buf.len()) || !inside {
            return Ok(false);
        }
        self.read(what, at, buf)?;
        Ok(true)
    }

    fn has(&self, at: Bytes, n: usize) -> bool {
        at.get().checked_add(n as u64).is_some_and(|end| end <= self.range.len().get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readback::disk::tests::disk;

    #[test]
    fn reads_stay_inside_the_window_and_the_image() {
        let d = disk(1024);
        let mut buf = [0u8; 4];
        let w = d.window(ByteRange { start: Bytes(512), end: Bytes(1024) });
        assert!(!w.probe("magic", Bytes(510), &mut buf).unwrap());
        assert!(w.probe("magic", Bytes(0), &mut buf).unwrap());
        assert_eq!(buf, [0, 1, 2, 3]);
        let err = w.read("superblock", Bytes(600), &mut buf).unwrap_err().to_string();
        assert!(err.contains("byte 1112") && err.contains("past the end of its partition"), "{err}");
        // A partition past the end of a truncated image: probes find nothing there, reads say it is truncated.
        let cut = d.window(ByteRange { start: Bytes(512), end: Bytes(4096) });
        assert!(!cut.probe("magic", Bytes(510), &mut buf).unwrap());
        let err = cut.read("ext4 block", Bytes(510), &mut buf).unwrap_err().to_string();
        assert_eq!(
            err,
            "mem.img: truncated: ext4 block (4 bytes at byte 1022) lies past the end of the image (1024 bytes)"
        );
    }
}
