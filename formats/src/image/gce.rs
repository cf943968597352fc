//! `gce`: what Google Compute Engine imports — a gzip'd tar holding one sparse file named `disk.raw`
//! (GNU old format, as `tar --format=oldgnu -Sczf` makes), in a file named `*.raw.tar.gz`.
//!
//! The sparse map is the image's extents refined to their non-zero 4 KiB blocks, so all-zero blocks inside
//! data are holes too. The archive is fully determined by the image and the options: uid/gid 0, owner names
//! `root`, mode 0644, mtime from [`Gce::mtime`]; it ends with two zero blocks and is padded to a 10 KiB record
//! as GNU tar does. It is compressed as one gzip member whose pieces are deflated in parallel on the current
//! rayon pool (the caller's `ThreadPool::install`); the bytes do not depend on the pool's size.

mod gzip;
mod tar;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;

use super::scan::{context, nonzero_ranges};
use super::{Container, Progress, RawImage};

/// The GCE image: the raw disk as the sparse member `disk.raw` of a gzip'd GNU tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gce {
    /// Modification time of `disk.raw` in the archive, seconds since the epoch (SOURCE_DATE_EPOCH, or 0).
    pub mtime: u64,
    /// gzip compression level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

impl Gce {
    /// The name of the archive's one member, which GCE requires.
    pub const MEMBER: &'static str = "disk.raw";

    /// The end of the output file's name GCE expects.
    pub const SUFFIX: &'static str = ".raw.tar.gz";

    /// gzip's default level.
    pub const DEFAULT_LEVEL: u32 = 6;

    /// An archive whose member has modification time `mtime`, compressed at `level`.
    #[must_use]
    pub fn new(mtime: u64, level: u32) -> Self {
        Self { mtime, level }
    }

    /// Writes the archive for `image` into `out`.
    ///
    /// # Errors
    /// If reading the image or writing fails.
    pub fn write<W: Write>(&self, image: &RawImage<'_>, out: W, progress: &dyn Progress) -> io::Result<W> {
        let regions = nonzero_ranges(image, &())?;
        let header = tar::sparse_header(Self::MEMBER, image.size(), &regions, self.mtime)?;
        let archive = Archive::new(header, regions, image.size());
        let mut reported = 0;
        gzip::write_member(
            out,
            archive.len,
            self.level,
            |off, buf| archive.fill(image, off, buf),
            |end| {
                let at = archive.image_offset(end);
                progress.advance(at - reported);
                reported = at;
            },
        )
    }
}

impl Default for Gce {
    fn default() -> Self {
        Self::new(0, Self::DEFAULT_LEVEL)
    }
}

impl Container for Gce {
    fn name(&self) -> &'static str {
        "gce"
    }

    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        self.write(image, BufWriter::with_capacity(1 << 20, out), progress)
            .and_then(|mut w| w.flush())
            .map_err(|e| context(e, "writing the GCE tar.gz".into()))
    }
}

/// The uncompressed tar stream: headers, the regions' data back to back, zeros to the end.
struct Archive {
    header: Vec<u8>,
    regions: Vec<Range<u64>>,
    /// Where each region's data starts in the stream.
    starts: Vec<u64>,
    /// End of the data (before padding).
    data_end: u64,
    /// The image size.
    size: u64,
    /// The stream length: the data padded to a block, two zero blocks, padded to a record.
    len: u64,
}

impl Archive {
    fn new(header: Vec<u8>, regions: Vec<Range<u64>>, size: u64) -> Self {
        let mut at = header.len() as u64;
        let starts = regions
            .iter()
            .map(|r| {
                let s = at;
                at += r.end - r.start;
                s
            })
            .collect();
        let len = (at.next_multiple_of(tar::BLOCK) + 2 * tar::BLOCK).next_multiple_of(tar::RECORD);
        Self { header, regions, starts, data_end: at, size, len }
    }

    /// Fills `buf` with the stream bytes at `off`.
    fn fill(&self, image: &RawImage<'_>, off: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let end = off + buf.len() as u64;
        let hlen = self.header.len() as u64;
        if off < hlen {
            let n = (hlen.min(end) - off) as usize;
            buf[..n].copy_from_slice(&self.header[off as usize..off as usize + n]);
        }
        let first = self.starts.partition_point(|&s| s <= off).saturating_sub(1);
        for (r, &s) in self.regions[first..].iter().zip(&self.starts[first..]) {
            if s >= end {
                break;
            }
            let (from, to) = (s.max(off), (s + r.end - r.start).min(end));
            if from < to {
                let part = &mut buf[(from - off) as usize..(to - off) as usize];
                image.read_at(part, r.start + (from - s))?;
            }
        }
        Ok(())
    }

    /// How far into the image the stream is at `off`: for progress.
    fn image_offset(&self, off: u64) -> u64 {
        if off >= self.data_end {
            return self.size;
        }
        let i = self.starts.partition_point(|&s| s <= off);
        match i.checked_sub(1) {
            Some(i) => self.regions[i].start + (off - self.starts[i]),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn stream_layout() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(100_000).unwrap();
        f.write_all_at(&[1; 4096], 8192).unwrap();
        f.write_all_at(&[2; 10], 99_990).unwrap();
        let img = RawImage::from_file(&f).unwrap();
        let regions = nonzero_ranges(&img, &()).unwrap();
        assert_eq!(regions, vec![8192..12288, 98304..100_000]);
        let header = tar::sparse_header(Gce::MEMBER, img.size(), &regions, 0).unwrap();
        let a = Archive::new(header, regions, img.size());
        assert_eq!(a.data_end, 512 + 4096 + 1696);
        assert_eq!(a.len, tar::RECORD);
        let mut all = vec![9; a.len as usize];
        // In odd pieces, as the compressor asks for them.
        for (s, e) in [(0, 300), (300, 4700), (4700, 6000), (6000, a.len as usize)] {
            a.fill(&img, s as u64, &mut all[s..e]).unwrap();
        }
        assert_eq!(&all[..8], b"disk.raw");
        assert!(all[512..512 + 4096].iter().all(|&b| b == 1));
        assert!(all[4608..4608 + 1686].iter().all(|&b| b == 0));
        assert!(all[6294..6304].iter().all(|&b| b == 2));
        assert!(all[6304..].iter().all(|&b| b == 0));
        assert_eq!(a.image_offset(0), 0);
        assert_eq!(a.image_offset(512 + 100), 8292);
        assert_eq!(a.image_offset(512 + 4096), 98304);
        assert_eq!(a.image_offset(a.len), 100_000);
    }
}
