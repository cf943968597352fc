//! Reading sparse files by their data ranges (`SEEK_DATA`/`SEEK_HOLE`), so holes are never read.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// The byte ranges of a file that may hold data, in order; everything outside them reads as zeros.
///
/// On filesystems without hole reporting the kernel reports the whole file as one data range, so the result
/// is always correct, only sometimes not minimal. The file's length is taken when the iterator is created.
#[derive(Debug)]
pub struct DataRanges<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
}

impl<'a> DataRanges<'a> {
    /// Data ranges of `file`, which must be open for reading.
    pub fn new(file: &'a File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self { file, pos: 0, len })
    }
}

impl Iterator for DataRanges<'_> {
    type Item = io::Result<std::ops::Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.len {
            return None;
        }
        let start = match rustix::fs::seek(self.file, SeekFrom::Data(self.pos)) {
            Ok(start) => start,
            // No data after pos: the rest is a hole.
            Err(Errno::NXIO) => {
                self.pos = self.len;
                return None;
            }
            Err(e) => return Some(Err(e.into())),
        };
        let end = match rustix::fs::seek(self.file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(self.len),
            Err(e) => return Some(Err(e.into())),
        };
        if start >= end {
            self.pos = self.len;
            return None;
        }
        self.pos = end;
        Some(Ok(start..end))
    }
}

/// Fills `buf` from `offset` of `file` (retrying short and interrupted reads); false if the file ended first.
pub fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn skips_holes_and_covers_data() {
        let mut f = tempfile_in_target();
        f.write_all(b"head").unwrap();
        f.seek(io::SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(128 << 20).unwrap();
        let ranges: Vec<_> = DataRanges::new(&f).unwrap().collect::<io::Result<_>>().unwrap();
        assert!(!ranges.is_empty());
        assert_eq!(ranges[0].start, 0);
        assert!(ranges.iter().any(|r| r.contains(&(64 << 20))), "{ranges:?}");
        let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        // On a filesystem with hole reporting the 128 MiB file is mostly skipped.
        assert!(covered <= 128 << 20);
        assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn empty_file_has_no_ranges() {
        let f = tempfile_in_target();
        assert_eq!(DataRanges::new(&f).unwrap().count(), 0);
    }

    fn tempfile_in_target() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("kiln-sparse-{}-{:?}", std::process::id(), std::thread::current().id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
