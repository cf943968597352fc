//! `raw.zst`: the whole raw image as one zstd frame, compressed by zstd's own worker threads.
//!
//! Holes are fed to the compressor as zeros without being read, so the frame decompresses to exactly the raw
//! image (`zstd -d`, `bmaptool copy`). The frame header carries the content size and the frame ends with a
//! content checksum, as the `zstd` tool writes by default.
//!
//! # Deterministic for any thread count
//!
//! zstd's multithreaded mode cuts the input into jobs of a fixed size, derived from the compression parameters
//! only (4 × the window size, at least 1 MiB, at the usual levels) and never from the number of workers, and
//! compresses each job with a fixed overlap from the previous one, whichever worker runs it. So the output is
//! the same bytes for every worker count ≥ 1, provided that:
//! - the worker count is never 0 (zstd's single-threaded mode, whose output differs): [`RawZst::threads`] 0
//!   is taken as 1, and 1 means one worker beside the thread that feeds it;
//! - the stream is never flushed before its end (a flush cuts a job short): the encoder is only written to
//!   and finished;
//! - the job size and overlap are zstd's defaults (set to 0, "default", explicitly), which depend on the level
//!   and the pledged size, both fixed by the image and the options.
//!
//! The `stream` integration tests compare the bytes for 1, 2 and 3 threads on an input of several jobs.

use std::fs::File;
use std::io::{self, BufWriter, Write};

use zstd::zstd_safe::CParameter;

use super::scan::context;
use super::{Container, Progress, RawImage};

/// Bytes read and fed at a time.
const PIECE: u64 = 8 << 20;

/// Zeros fed in place of holes.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The raw image compressed as one zstd stream (`*.raw.zst`), with zstd's multithreading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawZst {
    /// zstd compression level (1–19, up to 22 with more memory; negative levels are faster).
    pub level: i32,
    /// zstd worker threads (0 is taken as 1). The output does not depend on it.
    pub threads: u32,
}

impl RawZst {
    /// zstd's default level, as `zstd` without `-#` uses.
    pub const DEFAULT_LEVEL: i32 = 3;

    /// Compression at `level` with `threads` zstd workers.
    #[must_use]
    pub fn new(level: i32, threads: u32) -> Self {
        Self { level, threads }
    }

    /// Compresses `image` into `out`, a writer positioned where the frame starts.
    ///
    /// # Errors
    /// If reading the image or writing fails, or zstd refuses a parameter.
    pub fn compress(&self, image: &RawImage<'_>, out: impl Write, progress: &dyn Progress) -> io::Result<()> {
        let mut enc = zstd::stream::write::Encoder::new(out, self.level)?;
        enc.multithread(self.threads.max(1))?;
        enc.set_parameter(CParameter::JobSize(0))?;
        enc.set_parameter(CParameter::OverlapSizeLog(0))?;
        enc.include_checksum(true)?;
        enc.include_contentsize(true)?;
        enc.set_pledged_src_size(Some(image.size()))?;
        let mut buf = Vec::new();
        let mut off = 0;
        while off < image.size() {
            let end = (off + PIECE).min(image.size());
            if image.may_have_data(off..end) {
                buf.resize((end - off) as usize, 0);
                image.read_at(&mut buf, off).map_err(|e| context(e, format!("reading image bytes {off}..{end}")))?;
                enc.write_all(&buf)?;
            } else {
                let mut left = end - off;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64);
                    enc.write_all(&ZEROS[..n as usize])?;
                    left -= n;
                }
            }
            progress.advance(end - off);
            off = end;
        }
        enc.finish()?.flush()
    }
}

impl Default for RawZst {
    fn default() -> Self {
        Self::new(Self::DEFAULT_LEVEL, 1)
    }
}

impl Container for RawZst {
    fn name(&self) -> &'static str {
        "raw.zst"
    }

    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        self.compress(image, BufWriter::with_capacity(1 << 20, out), progress)
            .map_err(|e| context(e, format!("writing the zstd stream (level {})", self.level)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn round_trips_with_holes() {
        let f = tempfile::tempfile().unwrap();
        let size = 3 * PIECE + 123;
        f.set_len(size).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&[9; 70000], 2 * PIECE - 1000).unwrap();
        let img = RawImage::from_file(&f).unwrap();
        let mut out = Vec::new();
        RawZst::new(1, 2).compress(&img, &mut out, &()).unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&out).ok(), Some(Some(size)));
        let back = zstd::decode_all(&out[..]).unwrap();
        let mut want = vec![0; size as usize];
        img.read_at(&mut want, 0).unwrap();
        assert!(back == want);
    }

    #[test]
    fn empty_image() {
        let f = tempfile::tempfile().unwrap();
        let img = RawImage::from_file(&f).unwrap();
        let mut out = Vec::new();
        RawZst::default().compress(&img, &mut out, &()).unwrap();
        assert!(zstd::decode_all(&out[..]).unwrap().is_empty());
    }
}
