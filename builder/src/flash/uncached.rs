//! Reading what was written back from the target, bypassing the page cache: `O_DIRECT` reads (a block device,
//! or a file on a filesystem that supports them), else the cache dropped first (`fdatasync`, then
//! `POSIX_FADV_DONTNEED`) and plain reads.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{Advice, OFlags, fadvise};
use xxhash_rust::xxh3::xxh3_64;

use super::buf::{ALIGN, AlignedBuf};
use super::written::Span;
use crate::progress::Meter;

/// Bytes read at a time.
const READ: u64 = 4 << 20;

/// The first byte range read back that differs from what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Where the differing piece starts.
    pub offset: u64,
    /// Its length.
    pub len: u32,
}

/// A reader of the target that does not see the page cache.
#[derive(Debug)]
pub struct Uncached {
    file: File,
    direct: bool,
}

impl Uncached {
    /// Opens `path` for uncached reads; `written` is the descriptor the data went through (flushed here).
    ///
    /// # Errors
    /// When flushing or opening fails.
    pub fn open(path: &Path, written: &File) -> Result<Self> {
        written.sync_data().with_context(|| format!("flushing {}", path.display()))?;
        let direct = OpenOptions::new().read(true).custom_flags(OFlags::DIRECT.bits() as i32).open(path);
        // A direct read of the first block proves the filesystem takes them (tmpfs, for one, may not).
        if let Ok(file) = direct {
            let mut buf = AlignedBuf::new(ALIGN as usize);
            if file.read_at(buf.slice(ALIGN as usize), 0).is_ok() {
                return Ok(Self { file, direct: true });
            }
        }
        let file = File::open(path).with_context(|| format!("opening {} to read it back", path.display()))?;
        let _ = fadvise(&file, 0, None, Advice::DontNeed);
        Ok(Self { file, direct: false })
    }

    /// Whether reads bypass the cache with `O_DIRECT`.
    #[must_use]
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Reads `len` bytes at `offset` (widened to aligned reads where direct), into `out`.
    ///
    /// # Errors
    /// When reading fails.
    pub fn read(&self, offset: u64, out: &mut [u8], buf: &mut AlignedBuf) -> std::io::Result<()> {
        let got = self.read_in(offset, out.len(), buf)?;
        out.copy_from_slice(got);
        Ok(())
    }

    /// Reads `len` bytes at `offset` into `buf` (widened to aligned reads where direct); the bytes, in it.
    ///
    /// # Errors
    /// When reading fails.
    pub fn read_in<'b>(&self, offset: u64, len: usize, buf: &'b mut AlignedBuf) -> std::io::Result<&'b [u8]> {
        if !self.direct {
            let out = buf.slice(len);
            self.file.read_exact_at(out, offset)?;
            return Ok(out);
        }
        let start = offset / ALIGN * ALIGN;
        let end = (offset + len as u64).div_ceil(ALIGN) * ALIGN;
        let n = (end - start) as usize;
        let slice = buf.slice(n);
        let mut got = 0;
        while got < n {
            let r = self.file.read_at(&mut slice[got..], start + got as u64)?;
            if r == 0 {
                break;
            }
            got += r;
        }
        let skip = (offset - start) as usize;
        if got < skip + len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(&slice[skip..skip + len])
    }

    /// Compares every span with what is on the target; the first that differs.
    ///
    /// # Errors
    /// When reading fails.
    pub fn compare(&self, spans: &[Span], meter: &Meter<'_>) -> Result<Option<Mismatch>> {
        let mut buf = AlignedBuf::new(READ as usize + 2 * ALIGN as usize);
        let mut i = 0;
        while i < spans.len() {
            // A run of contiguous spans, at most READ bytes.
            let start = spans[i].offset;
            let mut j = i;
            let mut end = start;
            while j < spans.len() && spans[j].offset == end && end - start + u64::from(spans[j].len) <= READ {
                end += u64::from(spans[j].len);
                j += 1;
            }
            let n = (end - start) as usize;
            let data =
                self.read_in(start, n, &mut buf).with_context(|| format!("reading back {n} bytes at byte {start}"))?;
            for s in &spans[i..j] {
                let at = (s.offset - start) as usize;
                if xxh3_64(&data[at..at + s.len as usize]) != s.hash {
                    return Ok(Some(Mismatch { offset: s.offset, len: s.len }));
                }
            }
            meter.add(end - start);
            i = j;
        }
        Ok(None)
    }
}

/// `path` opened for `O_DIRECT` writes, if it can be.
#[must_use]
pub fn direct_writer(path: &Path) -> Option<File> {
    OpenOptions::new().write(true).custom_flags(OFlags::DIRECT.bits() as i32).open(path).ok()
}
