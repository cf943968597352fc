//! Raw images (and fixed VHDs, a raw image with a footer): a local file read by its data ranges (`SEEK_DATA`,
//! or the block map's ranges) with positioned reads; a URL read front to back.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kiln_formats::sparse::{DataRanges, read_full as read_full_at};

use super::pipe::{Decode, MAX_CHUNK};
use super::tally::{Tally, read_full};
use super::vhd;

/// The data ranges of a local file, within `size`: `SEEK_DATA` for a regular file, everything for a device.
///
/// # Errors
/// When the filesystem cannot be asked.
pub(super) fn data_ranges(file: &File, size: u64, name: &str) -> Result<Vec<Range<u64>>> {
    let meta = file.metadata().with_context(|| format!("{name}: reading its metadata"))?;
    if !meta.file_type().is_file() {
        return Ok(std::iter::once(0..size).filter(|r| !r.is_empty()).collect());
    }
    let ranges = DataRanges::new(file)
        .and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("{name}: finding its data ranges (SEEK_DATA)"))?;
    Ok(ranges.into_iter().filter(|r| r.start < size).map(|r| r.start..r.end.min(size)).collect())
}

/// Reads `ranges` of the local image file (`size` bytes of image in a `file_len`-byte file), in pieces; when
/// the tally hashes, the holes between are hashed as zeros and the bytes after the image (a VHD footer) read.
pub(super) fn local(
    file: File,
    name: String,
    size: u64,
    file_len: u64,
    ranges: Vec<Range<u64>>,
    tally: Arc<Tally>,
) -> Decode {
    Box::new(move |emit| {
        let mut pos = 0;
        for r in &ranges {
            let mut at = r.start;
            while at < r.end {
                let to_boundary = MAX_CHUNK as u64 - at % MAX_CHUNK as u64;
                let n = (r.end - at).min(to_boundary) as usize;
                tally.zeros(at - pos);
                emit.put_into(at, n, |piece| {
                    let full = read_full_at(&file, piece, at)
                        .with_context(|| format!("{name}: reading image bytes {at}..{}", at + n as u64))?;
                    if !full {
                        bail!("{name}: the file ended before image bytes {at}..{}: it shrank", at + n as u64);
                    }
                    tally.read(piece);
                    Ok(())
                })?;
                pos = at + n as u64;
                at = pos;
            }
        }
        if tally.hashing() {
            tally.zeros(size - pos);
            let mut tail = vec![0u8; (file_len - size) as usize];
            if !read_full_at(&file, &mut tail, size).with_context(|| format!("{name}: reading bytes {size}.."))? {
                bail!("{name}: the file ended before byte {file_len}: it shrank");
            }
            tally.read(&tail);
        }
        Ok(())
    })
}

/// Reads a raw image front to back from `seq`; the last 512 bytes are held back until the end, and left out
/// when they are a fixed VHD's footer giving the size of the bytes before them.
pub(super) fn sequential(mut seq: Box<dyn Read + Send>, name: String) -> Decode {
    Box::new(move |emit| {
        let footer = vhd::FOOTER as usize;
        let mut buf = vec![0u8; MAX_CHUNK + footer];
        let (mut off, mut carry) = (0u64, 0usize);
        loop {
            let n = carry
                + read_full(&mut seq, &mut buf[carry..])
                    .with_context(|| format!("{name}: reading image bytes from {}", off + carry as u64))?;
            if n < buf.len() {
                let data = &buf[..n];
                let image = match n.checked_sub(footer) {
                    Some(body) if vhd::fixed_size(&data[body..], &name)? == Some(off + body as u64) => &data[..body],
                    _ => data,
                };
                return emit.put(off, image);
            }
            let body = n - footer;
            emit.put(off, &buf[..body])?;
            off += body as u64;
            buf.copy_within(body..n, 0);
            carry = footer;
        }
    })
}
