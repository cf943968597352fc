//! Reading a raw image in aligned chunks on the rayon pool, results in image order; finding its non-zero
//! blocks. Shared by the containers that refine the image's extents (gce, bmap).

use std::io;
use std::ops::Range;

use rayon::prelude::*;

use super::{Progress, RawImage};

/// Size of the pieces the image is read in: each is read and processed by one worker.
pub(crate) const CHUNK: u64 = 8 << 20;

/// Granularity of zero detection: a block of this many bytes that is all zeros is treated as a hole.
pub(crate) const ZERO_BLOCK: u64 = 4096;

/// Runs `f(offset, bytes)` on every `CHUNK`-aligned piece of `image` that may hold data, in parallel on the
/// current rayon pool, and returns the results in image order. Pieces without data are neither read nor
/// passed to `f`. The last piece is shorter when the image size is not a multiple of `CHUNK`. `progress`
/// advances by every piece done, and by the pieces skipped at the end, so it reaches the image size.
pub(crate) fn map_chunks<T, F>(image: &RawImage<'_>, progress: &dyn Progress, f: F) -> io::Result<Vec<T>>
where
    T: Send,
    F: Fn(u64, &[u8]) -> io::Result<T> + Sync,
{
    let starts = chunk_starts(image);
    let results = starts
        .par_iter()
        .map_init(Vec::new, |buf: &mut Vec<u8>, &start| {
            let len = CHUNK.min(image.size() - start);
            buf.resize(len as usize, 0);
            image
                .read_at(buf, start)
                .map_err(|e| context(e, format!("reading image bytes {start}..{}", start + len)))?;
            let out = f(start, buf)?;
            progress.advance(len);
            Ok(out)
        })
        .collect::<io::Result<Vec<T>>>()?;
    let read: u64 = starts.iter().map(|&s| CHUNK.min(image.size() - s)).sum();
    progress.advance(image.size() - read);
    Ok(results)
}

/// Offsets of the `CHUNK`-aligned pieces of `image` that overlap a data extent, ascending.
fn chunk_starts(image: &RawImage<'_>) -> Vec<u64> {
    let mut starts: Vec<u64> = Vec::new();
    for e in image.extents().iter().filter(|e| e.start < e.end) {
        let first = e.start / CHUNK;
        let last = (e.end - 1) / CHUNK;
        let from = match starts.last() {
            Some(&s) if s / CHUNK >= first => s / CHUNK + 1,
            _ => first,
        };
        starts.extend((from..=last).map(|c| c * CHUNK));
    }
    starts
}

/// Appends to `runs` the byte ranges of the non-zero `ZERO_BLOCK`s of `data`, which starts at image offset
/// `base` (a multiple of `ZERO_BLOCK`); adjacent blocks are merged. A short last block is a block.
pub(crate) fn nonzero_runs(data: &[u8], base: u64, runs: &mut Vec<Range<u64>>) {
    static ZEROS: [u8; ZERO_BLOCK as usize] = [0; ZERO_BLOCK as usize];
    for (i, block) in data.chunks(ZERO_BLOCK as usize).enumerate() {
        if block == &ZEROS[..block.len()] {
            continue;
        }
        let start = base + i as u64 * ZERO_BLOCK;
        let end = start + block.len() as u64;
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
}

/// The byte ranges of the non-zero `ZERO_BLOCK`s of `image`, merged where adjacent, ascending.
pub(crate) fn nonzero_ranges(image: &RawImage<'_>, progress: &dyn Progress) -> io::Result<Vec<Range<u64>>> {
    let pieces = map_chunks(image, progress, |base, data| {
        let mut runs = Vec::new();
        nonzero_runs(data, base, &mut runs);
        Ok(runs)
    })?;
    let mut all: Vec<Range<u64>> = Vec::new();
    for r in pieces.into_iter().flatten() {
        match all.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => all.push(r),
        }
    }
    Ok(all)
}

/// `e` with `what` in front of its message, keeping its kind.
pub(crate) fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    fn image_file(size: u64, writes: &[(u64, &[u8])]) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        for (off, data) in writes {
            f.write_all_at(data, *off).unwrap();
        }
        f
    }

    #[test]
    fn runs_skip_zero_blocks_and_merge() {
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[10] = 1; // block 0
        data[4096 + 4095] = 1; // block 1
        data[3 * 4096] = 1; // block 3
        data[5 * 4096 + 99] = 1; // short last block
        let mut runs = Vec::new();
        nonzero_runs(&data, 1 << 20, &mut runs);
        let b = 1 << 20;
        assert_eq!(runs, vec![b..b + 8192, b + 3 * 4096..b + 4 * 4096, b + 5 * 4096..b + 5 * 4096 + 100]);
    }

    #[test]
    fn ranges_cross_chunks_and_skip_holes() {
        let size = 3 * CHUNK + 5000;
        let f = image_file(size, &[(CHUNK - 4096, &[7; 8192]), (2 * CHUNK + 4096 * 3, &[1]), (size - 1, &[2])]);
        let img = RawImage::from_file(&f).unwrap();
        let ranges = nonzero_ranges(&img, &()).unwrap();
        assert_eq!(
            ranges,
            vec![CHUNK - 4096..CHUNK + 4096, 2 * CHUNK + 3 * 4096..2 * CHUNK + 4 * 4096, 3 * CHUNK + 4096..size]
        );
    }

    #[test]
    fn chunk_starts_dedupe_and_cover() {
        let f = tempfile::tempfile().unwrap();
        let size = 10 * CHUNK;
        let img =
            RawImage::new(&f, size, vec![10..20, 30..CHUNK + 1, 3 * CHUNK..3 * CHUNK, 5 * CHUNK - 1..size]).unwrap();
        assert_eq!(
            chunk_starts(&img),
            vec![0, CHUNK, 4 * CHUNK, 5 * CHUNK, 6 * CHUNK, 7 * CHUNK, 8 * CHUNK, 9 * CHUNK]
        );
    }

    #[test]
    fn progress_reaches_size() {
        use std::sync::atomic::{AtomicU64, Ordering};
        struct Count(AtomicU64);
        impl Progress for Count {
            fn advance(&self, bytes: u64) {
                self.0.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        let size = 2 * CHUNK + 3;
        let f = image_file(size, &[(CHUNK + 5, b"x")]);
        let img = RawImage::from_file(&f).unwrap();
        let count = Count(AtomicU64::new(0));
        nonzero_ranges(&img, &count).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), size);
    }
}
