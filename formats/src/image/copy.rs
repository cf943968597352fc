//! What the container writers share: copying byte ranges between files (in the kernel where it can), telling
//! zero buffers apart, and errors that say which structure at which offset failed.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;

use super::{Progress, RawImage};
use crate::sparse::read_full;

/// How much one `copy_file_range` call or one buffered copy step moves, so progress is reported regularly.
const STEP: u64 = 64 << 20;

/// The buffer of the read/write fallback; runs of zeros this long are left as holes.
const FALLBACK_BUF: usize = 1 << 20;

/// Whether every byte of `buf` is zero.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    // OR-ing a whole chunk at once lets the compiler vectorise the test.
    let body = chunks.by_ref().all(|c| c.iter().fold(0, |acc, &b| acc | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

/// The parts of `image`'s data ranges within `range` that the file holds (before `file_len`, its length):
/// the only bytes a writer needs to copy there, everything else being zeros.
pub(crate) fn data_within<'a>(
    image: &'a RawImage<'_>,
    range: Range<u64>,
    file_len: u64,
) -> impl Iterator<Item = Range<u64>> + 'a {
    let first = image.extents().partition_point(|e| e.end <= range.start);
    let end = range.end.min(file_len);
    image.extents()[first..]
        .iter()
        .take_while(move |e| e.start < end)
        .map(move |e| e.start.max(range.start)..e.end.min(end))
        .filter(|r| !r.is_empty())
}

/// Whether `image` has a non-zero byte in `range`: reads its data ranges there in pieces of `buf`'s size, and
/// stops at the first piece holding one.
pub(crate) fn has_nonzero(image: &RawImage<'_>, range: Range<u64>, buf: &mut [u8]) -> io::Result<bool> {
    let end = range.end.min(image.size());
    let first = image.extents().partition_point(|e| e.end <= range.start);
    for e in image.extents()[first..].iter().take_while(|e| e.start < end) {
        let mut pos = e.start.max(range.start);
        let stop = e.end.min(end);
        while pos < stop {
            let n = (stop - pos).min(buf.len() as u64);
            let piece = &mut buf[..n as usize];
            image.read_at(piece, pos).map_err(|err| context(err, || format!("reading image bytes {pos}..")))?;
            if !is_zero(piece) {
                return Ok(true);
            }
            pos += n;
        }
    }
    Ok(false)
}

/// `err` with `what` (the structure and offset being read or written) in front of its message; the kind is kept.
pub(crate) fn context(err: io::Error, what: impl FnOnce() -> String) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", what()))
}

/// Fails unless `out` is empty: the writers lay their structures out from offset 0.
pub(crate) fn ensure_empty(out: &File, format: &str) -> io::Result<()> {
    let len = out.metadata()?.len();
    if len != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{format} output must start empty, it holds {len} bytes"),
        ));
    }
    Ok(())
}

/// Copies byte ranges from one file to another with `copy_file_range` (the kernel copies, clones or reflinks
/// without passing the bytes through user space), falling back to reads and writes where the kernel cannot
/// (another filesystem on old kernels, special files). The fallback leaves all-zero runs as holes.
#[derive(Debug, Default)]
pub(crate) struct RangeCopier {
    fallback: bool,
    buf: Vec<u8>,
}

impl RangeCopier {
    /// Copies `len` bytes at `src_off` of `src` to `dst_off` of `dst`, reporting each step to `progress`.
    ///
    /// # Errors
    /// If reading or writing fails, or `src` ends before `src_off + len`.
    pub(crate) fn copy(
        &mut self,
        src: &File,
        dst: &File,
        (src_off, dst_off): (u64, u64),
        len: u64,
        progress: &dyn Progress,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < len && !self.fallback {
            let (mut off_in, mut off_out) = (src_off + done, dst_off + done);
            let want = usize::try_from((len - done).min(STEP)).unwrap_or(usize::MAX);
            match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
                Ok(0) => self.fallback = true,
                Ok(n) => {
                    done += n as u64;
                    progress.advance(n as u64);
                }
                Err(Errno::INTR) => {}
                Err(Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS | Errno::BADF | Errno::PERM) => {
                    self.fallback = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        while done < len {
            self.buf.resize(FALLBACK_BUF, 0);
            let n = (len - done).min(FALLBACK_BUF as u64);
            let buf = &mut self.buf[..n as usize];
            if !read_full(src, buf, src_off + done)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the image file ends before {}", src_off + len),
                ));
            }
            if !is_zero(buf) {
                dst.write_all_at(buf, dst_off + done)?;
            }
            done += n;
            progress.advance(n);
        }
        Ok(())
    }

    /// Forces the read/write path, so tests cover it on filesystems where the kernel copy works.
    #[cfg(test)]
    fn without_kernel_copy() -> Self {
        Self { fallback: true, buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Count(AtomicU64);

    impl Progress for Count {
        fn advance(&self, bytes: u64) {
            self.0.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    #[test]
    fn zero_test() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 1000]));
        for i in [0, 63, 64, 999] {
            let mut b = vec![0; 1000];
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
        }
    }

    #[test]
    fn data_within_a_range() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[0; 100], 0).unwrap();
        f.write_all_at(&[7], 150).unwrap();
        let image = RawImage::new(&f, 400, vec![0..10, 20..30, 140..160, 300..400]).unwrap();
        let within = |r: Range<u64>, len| data_within(&image, r, len).collect::<Vec<_>>();
        assert_eq!(within(0..400, 400), [0..10, 20..30, 140..160, 300..400]);
        assert_eq!(within(5..25, 400), [5..10, 20..25]);
        assert_eq!(within(10..20, 400), []);
        assert_eq!(within(0..400, 151), [0..10, 20..30, 140..151]);
        let mut buf = [0; 4];
        assert!(!has_nonzero(&image, 0..100, &mut buf).unwrap());
        assert!(has_nonzero(&image, 0..400, &mut buf).unwrap());
        assert!(has_nonzero(&image, 150..151, &mut buf).unwrap());
        assert!(!has_nonzero(&image, 151..400, &mut buf).unwrap());
    }

    #[test]
    fn copies_ranges_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let src =
            File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("s")).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        src.write_all_at(&data, 0).unwrap();
        for mut copier in [RangeCopier::default(), RangeCopier::without_kernel_copy()] {
            let dst =
                File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("d")).unwrap();
            let count = Count::default();
            copier.copy(&src, &dst, (1000, 5000), 2_000_000, &count).unwrap();
            assert_eq!(count.0.load(Ordering::Relaxed), 2_000_000);
            let mut back = vec![0; 2_000_000];
            assert!(read_full(&dst, &mut back, 5000).unwrap());
            assert_eq!(back, data[1000..2_001_000]);
            assert!(copier.copy(&src, &dst, (2_999_000, 0), 2000, &()).is_err());
        }
    }
}
