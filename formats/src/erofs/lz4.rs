//! LZ4 compression of file data the way EROFS stores it: fixed-size output. Each physical cluster is one 4 KiB
//! block holding as much of the file as LZ4 fits into it (`LZ4_compress_destSize`, liblz4 through `lzzzz`,
//! the function erofs-utils' mkfs calls), right-aligned after zeros (`EROFS_FEATURE_INCOMPAT_ZERO_PADDING`:
//! the kernel skips the leading zeros to find the stream). A cluster that would not hold more than a block of
//! the file stores the next 4 KiB as they are (a plain cluster). Every cluster is compressed on its own, from a
//! window of at most [`WINDOW`] bytes, so the result depends on the file's bytes alone, not on how they were
//! handed over.

use super::BLOCK;

/// The most input one cluster is compressed from (so at most this many bytes are decompressed to read any
/// byte of the file).
pub const WINDOW: usize = 256 << 10;

/// One physical cluster of a compressed file: where its bytes start in the file, and whether they are stored
/// as they are. A file's clusters are in file order and each covers the file up to the next one's start (the
/// last one to the end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the file of the cluster's first byte.
    pub start: u64,
    /// Stored uncompressed (the cluster holds exactly the 4 KiB, or the file's last bytes, from `start`).
    pub plain: bool,
}

/// Compresses a file fed in pieces of any size into 4 KiB clusters appended to an output buffer.
#[derive(Debug, Default)]
pub struct Compressor {
    pending: Vec<u8>,
    /// File offset of `pending[0]`.
    at: u64,
    extents: Vec<Extent>,
}

impl Compressor {
    /// A compressor at the start of a file.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next `bytes` of the file; appends every cluster that is decided to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while !bytes.is_empty() {
            let take = (2 * WINDOW - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let mut used = 0;
            while self.pending.len() - used >= WINDOW {
                used += self.cluster(used, out);
            }
            self.pending.drain(..used);
        }
    }

    /// Compresses what is left; returns the file's clusters (their blocks are in `out`, in this order).
    #[must_use]
    pub fn finish(mut self, out: &mut Vec<u8>) -> Vec<Extent> {
        let mut used = 0;
        while used < self.pending.len() {
            used += self.cluster(used, out);
        }
        self.extents
    }

    /// Makes one cluster from `pending[from..]`; returns how many bytes of the file it holds.
    fn cluster(&mut self, from: usize, out: &mut Vec<u8>) -> usize {
        let block = BLOCK as usize;
        let src = &self.pending[from..self.pending.len().min(from + WINDOW)];
        let start = self.at;
        let at = out.len();
        out.resize(at + block, 0);
        let packed = if src.len() > block {
            let mut buf = [0u8; BLOCK as usize];
            match lzzzz::lz4::compress_fill(src, &mut buf) {
                // Worth it only when the block holds more than a block's worth of the file.
                Ok((read, wrote)) if read > block && wrote <= block => {
                    out[at + block - wrote..at + block].copy_from_slice(&buf[..wrote]);
                    Some(read)
                }
                _ => None,
            }
        } else {
            None
        };
        let (len, plain) = match packed {
            Some(read) => (read, false),
            None => {
                let n = src.len().min(block);
                out[at..at + n].copy_from_slice(&src[..n]);
                (n, true)
            }
        };
        self.extents.push(Extent { start, plain });
        self.at += len as u64;
        len
    }
}

/// Compresses `data` whole: its clusters' blocks and extents.
#[must_use]
pub fn compress(data: &[u8]) -> (Vec<u8>, Vec<Extent>) {
    let mut out = Vec::new();
    let mut c = Compressor::new();
    c.push(data, &mut out);
    let extents = c.finish(&mut out);
    (out, extents)
}

/// Whether a file of `size` bytes compressed into `clusters` blocks is stored compressed: only when that saves
/// a block over storing it as it is (as mkfs.erofs decides; files that do not gain stay uncompressed, with
/// their tails inline).
#[must_use]
pub fn worth_it(size: u64, clusters: usize) -> bool {
    (clusters as u64) < size.div_ceil(BLOCK)
}

/// Decompresses a file's clusters (`blocks`, one per extent) into its `size` bytes: the inverse of
/// [`Compressor`], for read-back.
///
/// # Errors
/// A cluster that does not decompress to exactly the bytes its extent covers.
pub fn decompress(extents: &[Extent], blocks: &[u8], size: u64) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; usize::try_from(size).map_err(|_| "file too large".to_string())?];
    for (i, e) in extents.iter().enumerate() {
        let end = extents.get(i + 1).map_or(size, |n| n.start);
        let (s, t) = (e.start as usize, end as usize);
        let block =
            blocks.get(i * BLOCK as usize..(i + 1) * BLOCK as usize).ok_or_else(|| format!("cluster {i} missing"))?;
        if e.plain {
            out[s..t].copy_from_slice(&block[..t - s]);
        } else {
            let skip = block.iter().position(|&b| b != 0).ok_or_else(|| format!("cluster {i} is all zeros"))?;
            let n = lzzzz::lz4::decompress(&block[skip..], &mut out[s..t])
                .map_err(|e| format!("cluster {i} (file bytes {s}..{t}): {e}"))?;
            if n != t - s {
                return Err(format!("cluster {i} decompressed to {n} bytes, not {}", t - s));
            }
        }
    }
    Ok(out)
}
