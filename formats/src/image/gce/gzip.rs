//! One gzip member (RFC 1952) compressed in parallel, the same bytes for any number of threads.
//!
//! The input is cut into fixed-size pieces; each is compressed on its own into raw deflate blocks ending in a
//! sync flush (an empty stored block, so the next piece starts on a byte boundary with no back-references
//! across the cut), the last one in a final block. Back to back they form one valid deflate stream, so the
//! result is a single ordinary member: no reader needs multi-member support. The CRC-32 of the whole input is
//! combined from the pieces' CRCs. Pieces are compressed in ordered batches on the rayon pool, so memory stays
//! bounded and the output does not depend on the pool's size.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rayon::prelude::*;

/// Input bytes compressed as one piece.
const PIECE: u64 = 4 << 20;

/// Compresses `len` bytes into `out` as one gzip member (no name, mtime 0, OS "Unix") at `level` (0–9).
/// `fill(offset, buf)` supplies the input bytes at `offset`, from several threads; `done(offset)` is called, in
/// order, once everything before `offset` is written.
///
/// # Errors
/// If `fill` or writing fails.
pub(super) fn write_member<W, F, D>(mut out: W, len: u64, level: u32, fill: F, mut done: D) -> io::Result<W>
where
    W: Write,
    F: Fn(u64, &mut [u8]) -> io::Result<()> + Sync,
    D: FnMut(u64),
{
    let level = level.min(9);
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3])?;
    let pieces = len.div_ceil(PIECE).max(1);
    // Two pieces per thread keep every thread busy; the cap bounds memory on big machines.
    let batch = (rayon::current_num_threads() as u64 * 2).clamp(2, 64);
    let mut crc = Crc::new();
    for first in (0..pieces).step_by(batch as usize) {
        let last = (first + batch).min(pieces);
        let done_batch = (first..last)
            .into_par_iter()
            .map_init(Vec::new, |buf: &mut Vec<u8>, i| {
                let start = i * PIECE;
                let end = (start + PIECE).min(len);
                buf.resize((end - start) as usize, 0);
                fill(start, buf)?;
                let mut c = Crc::new();
                c.update(buf);
                Ok((deflate(buf, level, i + 1 == pieces)?, c, end))
            })
            .collect::<io::Result<Vec<_>>>()?;
        for (compressed, c, end) in done_batch {
            out.write_all(&compressed)?;
            crc.combine(&c);
            done(end);
        }
    }
    out.write_all(&crc.sum().to_le_bytes())?;
    // ISIZE is the input length modulo 2^32.
    out.write_all(&(len as u32).to_le_bytes())?;
    Ok(out)
}

/// Raw deflate of `input` by a fresh compressor, ending in a final block if `last`, else in a sync flush.
fn deflate(input: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        let finished = if last { status == Status::StreamEnd } else { all_in && out.len() < out.capacity() };
        if finished {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 << 10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn input(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter pattern with a few runs of zeros.
        (0..len).map(|i| if (i / 100_000) % 3 == 0 { 0 } else { (i * 7 / 13 % 251) as u8 }).collect()
    }

    fn gzip(data: &[u8], threads: usize) -> Vec<u8> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            write_member(
                Vec::new(),
                data.len() as u64,
                6,
                |off, buf| {
                    buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
                    Ok(())
                },
                |_| {},
            )
            .unwrap()
        })
    }

    #[test]
    fn one_member_round_trips_and_ignores_threads() {
        let data = input(3 * PIECE as usize + 12345);
        let one = gzip(&data, 1);
        assert!(one == gzip(&data, 3));
        // flate2's GzDecoder reads a single member only: all of the data must be in the first one.
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn empty_input() {
        let gz = gzip(&[], 2);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn reports_progress_in_order() {
        let mut seen = Vec::new();
        let len = 2 * PIECE + 1;
        write_member(
            io::sink(),
            len,
            1,
            |_, b| {
                b.fill(1);
                Ok(())
            },
            |end| seen.push(end),
        )
        .unwrap();
        assert_eq!(seen, vec![PIECE, 2 * PIECE, len]);
    }
}
