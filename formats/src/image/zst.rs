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
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

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

    /// Compresses `image` into `out`, a writer positioned where the frame starts, and returns `out`. Like the
    /// `zstd` tool, reading the image and writing `out` run on their own threads beside zstd's workers.
    ///
    /// # Errors
    /// If reading the image or writing fails, or zstd refuses a parameter.
    pub fn compress<W: Write + Send>(&self, image: &RawImage<'_>, out: W, progress: &dyn Progress) -> io::Result<W> {
        std::thread::scope(|s| {
            let (piece_tx, piece_rx) = mpsc::sync_channel(2);
            let (spare_tx, spare_rx) = mpsc::channel();
            s.spawn(move || read_pieces(image, &piece_tx, &spare_rx));
            let (out_tx, out_rx) = mpsc::sync_channel::<Vec<u8>>(4);
            let writer = s.spawn(move || {
                let mut out = out;
                for block in out_rx {
                    out.write_all(&block)?;
                }
                out.flush().map(|()| out)
            });
            let fed =
                self.feed(image.size(), &piece_rx, &spare_tx, ChannelWriter { tx: out_tx, buf: Vec::new() }, progress);
            // Stops the reader if the compressor stopped early.
            drop(piece_rx);
            let written = writer.join().map_err(|_| io::Error::other("the zstd output thread panicked"))?;
            // A failed write shows in the feeder as a closed channel: report the write's own error.
            let out = written?;
            fed.map(|()| out)
        })
    }

    /// Feeds the pieces into a zstd encoder writing into `out`, and finishes the frame.
    fn feed(
        &self,
        size: u64,
        pieces: &Receiver<io::Result<Piece>>,
        spare: &Sender<Vec<u8>>,
        out: ChannelWriter,
        progress: &dyn Progress,
    ) -> io::Result<()> {
        let mut enc = zstd::stream::write::Encoder::new(out, self.level)?;
        enc.multithread(self.threads.max(1))?;
        enc.set_parameter(CParameter::JobSize(0))?;
        enc.set_parameter(CParameter::OverlapSizeLog(0))?;
        enc.include_checksum(true)?;
        enc.include_contentsize(true)?;
        enc.set_pledged_src_size(Some(size))?;
        let mut fed = 0;
        while fed < size {
            let piece = pieces.recv().map_err(|_| io::Error::other("the image reader stopped"))??;
            let len = match piece {
                Piece::Data(buf) => {
                    enc.write_all(&buf)?;
                    let len = buf.len() as u64;
                    // The reader may be done already; then it needs no buffer.
                    let _ = spare.send(buf);
                    len
                }
                Piece::Zeros(len) => {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(ZEROS.len() as u64);
                        enc.write_all(&ZEROS[..n as usize])?;
                        left -= n;
                    }
                    len
                }
            };
            progress.advance(len);
            fed += len;
        }
        enc.finish()?.flush()
    }
}

/// A piece of the image, in order: bytes read, or a stretch without data.
enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

/// Reads `image` in `PIECE`s ahead of the compressor, reusing the buffers it gets back. Stops at the end, at an
/// error (which it sends), or when the compressor stops listening.
fn read_pieces(image: &RawImage<'_>, pieces: &SyncSender<io::Result<Piece>>, spare: &Receiver<Vec<u8>>) {
    let mut off = 0;
    while off < image.size() {
        let end = (off + PIECE).min(image.size());
        let piece = if image.may_have_data(off..end) {
            let mut buf = spare.try_recv().unwrap_or_default();
            buf.resize((end - off) as usize, 0);
            image
                .read_at(&mut buf, off)
                .map(|()| Piece::Data(buf))
                .map_err(|e| context(e, format!("reading image bytes {off}..{end}")))
        } else {
            Ok(Piece::Zeros(end - off))
        };
        let failed = piece.is_err();
        if pieces.send(piece).is_err() || failed {
            return;
        }
        off = end;
    }
}

/// The compressed stream, handed to the output thread in blocks of `OUT_BLOCK` bytes.
struct ChannelWriter {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

/// Compressed bytes handed to the output thread at a time.
const OUT_BLOCK: usize = 1 << 20;

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(OUT_BLOCK));
        self.tx.send(block).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the zstd output thread stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= OUT_BLOCK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
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
        self.compress(image, out, progress)
            .map(drop)
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
