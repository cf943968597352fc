//! `raw`: the image itself, as a sparse file. Only the data extents are copied; holes stay holes.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use rayon::prelude::*;
use rustix::io::Errno;

use super::scan::context;
use super::{Container, Progress, RawImage};

/// Largest piece copied by one call, so progress moves and workers share big extents.
const PIECE: u64 = 64 << 20;

/// The raw disk image, sparse. Written in place by the pipeline (nothing to finish); a conversion copies only
/// the data extents (`copy_file_range`, so the kernel copies or shares the blocks) and sets the length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raw;

impl Container for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn in_place(&self) -> bool {
        true
    }

    /// Nothing to do: the output already is the raw image, of the right size.
    fn finish_in_place(&self, _out: &File, _size: u64) -> io::Result<()> {
        Ok(())
    }

    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        out.set_len(image.size())
            .map_err(|e| context(e, format!("setting the raw image length to {}", image.size())))?;
        // Data beyond the file's end (a file shorter than its virtual size) reads as zeros: leave it a hole.
        let file_len = image.file().metadata()?.len();
        let pieces: Vec<Range<u64>> = image
            .extents()
            .iter()
            .map(|e| e.start..e.end.min(file_len))
            .filter(|e| e.start < e.end)
            .flat_map(|e| (e.start..e.end).step_by(PIECE as usize).map(move |s| s..(s + PIECE).min(e.end)))
            .collect();
        pieces.par_iter().try_for_each(|p| {
            copy_range(image.file(), out, p.clone())
                .map_err(|e| context(e, format!("copying image bytes {}..{} into the raw output", p.start, p.end)))?;
            progress.advance(p.end - p.start);
            Ok::<_, io::Error>(())
        })?;
        let copied: u64 = pieces.iter().map(|p| p.end - p.start).sum();
        progress.advance(image.size() - copied);
        Ok(())
    }
}

/// Copies bytes `range` of `src` to the same offsets of `dst`: `copy_file_range`, or reads and writes where the
/// kernel cannot (different filesystems, old kernels). Stops early, leaving zeros, if `src` ends first.
fn copy_range(src: &File, dst: &File, range: Range<u64>) -> io::Result<()> {
    let (mut off_in, mut off_out) = (range.start, range.start);
    while off_in < range.end {
        let len = usize::try_from(range.end - off_in).unwrap_or(usize::MAX);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                return copy_by_reading(src, dst, off_in..range.end);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The fallback of [`copy_range`]: positioned reads and writes through a buffer.
fn copy_by_reading(src: &File, dst: &File, range: Range<u64>) -> io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(range.end - range.start) as usize];
    let mut off = range.start;
    while off < range.end {
        let want = buf.len().min((range.end - off) as usize);
        let n = match src.read_at(&mut buf[..want], off) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_extents_and_keeps_size() {
        let src = tempfile::tempfile().unwrap();
        src.set_len(3 << 20).unwrap();
        src.write_all_at(&[5; 10000], 4096).unwrap();
        src.write_all_at(&[6; 3], (3 << 20) - 3).unwrap();
        let img = RawImage::from_file(&src).unwrap();
        let out = tempfile::tempfile().unwrap();
        Raw.convert(&img, &out, &()).unwrap();
        assert_eq!(out.metadata().unwrap().len(), 3 << 20);
        let mut a = vec![0; 3 << 20];
        let mut b = vec![1; 3 << 20];
        src.read_exact_at(&mut a, 0).unwrap();
        out.read_exact_at(&mut b, 0).unwrap();
        assert!(a == b);
    }

    #[test]
    fn virtual_size_beyond_file_is_zeros() {
        let src = tempfile::tempfile().unwrap();
        src.write_all_at(b"abc", 0).unwrap();
        let all = 0..1 << 20;
        let img = RawImage::new(&src, 1 << 20, Vec::from([all])).unwrap();
        let out = tempfile::tempfile().unwrap();
        Raw.convert(&img, &out, &()).unwrap();
        let mut b = vec![1; 1 << 20];
        out.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b[..3], b"abc");
        assert!(b[3..].iter().all(|&x| x == 0));
    }

    #[test]
    fn fallback_copies_the_same() {
        let src = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        src.write_all_at(&data, 0).unwrap();
        let dst = tempfile::tempfile().unwrap();
        copy_by_reading(&src, &dst, 100..2_500_000).unwrap();
        let mut b = vec![0; 2_500_000];
        dst.read_exact_at(&mut b, 0).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0));
        assert!(b[100..] == data[100..2_500_000]);
    }
}
