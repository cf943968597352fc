//! Disk image containers: a finished raw disk image turned into what hypervisors and clouds take.
//!
//! Every container implements [`Container`]. The input is a [`RawImage`]: a raw image file plus the byte
//! ranges that may hold data (from the plan, or from `SEEK_DATA`); everything outside those ranges reads as
//! zeros and is never read. Containers that are the raw bytes plus a trailer (raw, fixed VHD) can instead be
//! finished in place, so the image is never copied.

pub mod bmap;
pub mod checksum;
mod copy;
pub mod gce;
pub mod qcow2;
pub mod raw;
mod scan;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
pub mod zst;

use std::fs::File;
use std::io;
use std::ops::Range;

use crate::sparse::{DataRanges, read_full};

pub use vhd::Vhd;
pub use vhdx::Vhdx;
pub use vmdk::{AdapterType, Vmdk};

/// A raw disk image to convert: its bytes, its virtual size and where data may be.
#[derive(Debug)]
pub struct RawImage<'a> {
    file: &'a File,
    size: u64,
    extents: Vec<Range<u64>>,
}

impl<'a> RawImage<'a> {
    /// A raw image whose data lies only within `extents` (sorted, disjoint, within `size`); the rest is zeros.
    ///
    /// # Errors
    /// If the extents are unsorted, overlapping or beyond `size`.
    pub fn new(file: &'a File, size: u64, extents: Vec<Range<u64>>) -> io::Result<Self> {
        let mut end = 0;
        for r in &extents {
            if r.start < end || r.end < r.start || r.end > size {
                return Err(io::Error::other(format!(
                    "image extent {}..{} is unsorted, overlapping or beyond the {size}-byte image",
                    r.start, r.end
                )));
            }
            end = r.end;
        }
        Ok(Self { file, size, extents })
    }

    /// A raw image file whose data ranges are asked of the filesystem (`SEEK_DATA`/`SEEK_HOLE`).
    ///
    /// # Errors
    /// If the file cannot be inspected.
    pub fn from_file(file: &'a File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        let extents = DataRanges::new(file)?.collect::<io::Result<Vec<_>>>()?;
        Self::new(file, size, extents)
    }

    /// The underlying file.
    #[must_use]
    pub fn file(&self) -> &'a File {
        self.file
    }

    /// The virtual disk size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The ranges that may hold data, sorted and disjoint.
    #[must_use]
    pub fn extents(&self) -> &[Range<u64>] {
        &self.extents
    }

    /// Bytes within the data ranges.
    #[must_use]
    pub fn allocated_bytes(&self) -> u64 {
        self.extents.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether `range` overlaps a data range (if not, it is all zeros).
    #[must_use]
    pub fn may_have_data(&self, range: Range<u64>) -> bool {
        let i = self.extents.partition_point(|e| e.end <= range.start);
        self.extents.get(i).is_some_and(|e| e.start < range.end)
    }

    /// Fills `buf` with the image bytes at `offset`: zeros outside the data ranges and past the file's end,
    /// the file's bytes inside. Only the data ranges are read.
    ///
    /// # Errors
    /// If reading fails or `offset + buf.len()` is beyond the virtual size.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.size {
            return Err(io::Error::other(format!("read {offset}..{end} beyond the {}-byte image", self.size)));
        }
        buf.fill(0);
        let first = self.extents.partition_point(|e| e.end <= offset);
        let mut file_len = None;
        for e in self.extents[first..].iter().take_while(|e| e.start < end) {
            let (s, t) = (e.start.max(offset), e.end.min(end));
            let part = &mut buf[(s - offset) as usize..(t - offset) as usize];
            // A file shorter than its virtual size reads as zeros beyond its end.
            let file_len = match file_len {
                Some(l) => l,
                None => *file_len.insert(self.file.metadata()?.len()),
            };
            if s >= file_len {
                continue;
            }
            let avail = (file_len.min(t) - s) as usize;
            if !read_full(self.file, &mut part[..avail], s)? {
                return Err(io::Error::other(format!("image file shrank while reading {s}..{t}")));
            }
        }
        Ok(())
    }
}

/// Receives progress of a conversion: bytes of the virtual image processed so far, out of its size.
pub trait Progress: Sync {
    /// `bytes` more of the virtual image are done.
    fn advance(&self, bytes: u64);
}

impl Progress for () {
    fn advance(&self, _bytes: u64) {}
}

/// An image container format.
pub trait Container: Sync + std::fmt::Debug {
    /// The format's name, as on the command line (`qcow2`, `vhd`, …).
    fn name(&self) -> &'static str;

    /// The virtual disk size this container needs for a raw image of `size` bytes (a fixed VHD for Azure
    /// rounds up to a whole MiB). The raw image should be planned at this size.
    fn virtual_size(&self, size: u64) -> u64 {
        size
    }

    /// Whether the container is the raw bytes plus a trailer, so the raw image can be written straight into
    /// the output file and finished with [`Container::finish_in_place`].
    fn in_place(&self) -> bool {
        false
    }

    /// Turns an output file holding the raw image (`size` bytes, as returned by
    /// [`Container::virtual_size`]) into this container.
    ///
    /// # Errors
    /// If writing fails, or the container cannot be finished in place.
    fn finish_in_place(&self, out: &File, size: u64) -> io::Result<()> {
        let _ = (out, size);
        Err(io::Error::other(format!("{} cannot be finished in place", self.name())))
    }

    /// Writes the container for `image` into `out`, an empty file.
    ///
    /// # Errors
    /// If reading the image or writing the output fails.
    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn reads_zeros_outside_extents() {
        let dir = tempfile::tempdir().unwrap();
        let mut f =
            File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("r")).unwrap();
        f.write_all(&[1; 100]).unwrap();
        f.seek(SeekFrom::Start(200)).unwrap();
        f.write_all(&[2; 50]).unwrap();
        let img = RawImage::new(&f, 400, vec![10..20, 200..250]).unwrap();
        let mut buf = vec![9; 400];
        img.read_at(&mut buf, 0).unwrap();
        assert!(buf[..10].iter().all(|&b| b == 0));
        assert!(buf[10..20].iter().all(|&b| b == 1));
        assert!(buf[20..200].iter().all(|&b| b == 0));
        assert!(buf[200..250].iter().all(|&b| b == 2));
        assert!(buf[250..].iter().all(|&b| b == 0));
        assert!(img.may_have_data(15..16));
        assert!(!img.may_have_data(20..200));
        assert!(img.may_have_data(199..201));
        assert_eq!(img.allocated_bytes(), 60);
        assert!(img.read_at(&mut buf, 1).is_err());
        assert!(RawImage::new(&f, 400, vec![10..20, 15..30]).is_err());
    }
}
