//! Stream-optimized VMDKs: a header, then grains in order, each behind a marker {lba, size} and compressed with
//! zlib, then grain tables, the grain directory and a footer behind metadata markers, then end-of-stream. Read
//! front to back by the markers alone: the tables at the end are not needed.

use std::io::Read;

use anyhow::{Context, Result, bail, ensure};
use flate2::{Decompress, FlushDecompress, Status};

use super::pipe::Decode;
use super::tally::{drain, read_full};

const SECTOR: u64 = 512;
/// Flags: compressed grains (bit 16) and markers (bit 17).
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// The largest grain taken (VMware's limit is far below).
const MAX_GRAIN_SECTORS: u64 = 2048;
/// The most sectors of header, descriptor and padding before the first grain.
const MAX_OVERHEAD: u64 = 1 << 21;

/// What the header says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    /// The image size in bytes.
    pub(super) size: u64,
    grain: u64,
    overhead: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads the sparse extent header at the start of `head`.
///
/// # Errors
/// A header that is not of a stream-optimized VMDK kiln can stream.
pub(super) fn header(head: &[u8], name: &str) -> Result<Header> {
    ensure!(head.len() >= SECTOR as usize && head.starts_with(b"KDMV"), "{name}: truncated VMDK header");
    let (version, flags) = (le32(head, 4), le32(head, 8));
    ensure!((1..=3).contains(&version), "{name}: VMDK sparse extent version {version} is not supported");
    let compression = u16::from_le_bytes([head[77], head[78]]);
    if flags & FLAG_MARKERS == 0 || flags & FLAG_COMPRESSED == 0 || compression != 1 {
        bail!(
            "{name}: a VMDK sparse extent that is not stream-optimized (monolithicSparse?): only stream-optimized \
             VMDKs can be streamed; convert it first (qemu-img convert -f vmdk -O raw {name} disk.raw)"
        );
    }
    let capacity = le64(head, 12);
    let grain = le64(head, 20);
    let overhead = le64(head, 64);
    ensure!(
        grain.is_power_of_two() && grain <= MAX_GRAIN_SECTORS,
        "{name}: VMDK grain size {grain} sectors is not a power of two up to {MAX_GRAIN_SECTORS}"
    );
    ensure!((1..=MAX_OVERHEAD).contains(&overhead), "{name}: VMDK overhead {overhead} sectors is out of range");
    let size = capacity
        .checked_mul(SECTOR)
        .with_context(|| format!("{name}: VMDK capacity {capacity} sectors is too large"))?;
    Ok(Header { size, grain: grain * SECTOR, overhead: overhead * SECTOR })
}

/// Streams the grains of `seq` (positioned at byte 0) into the image, then reads the file to its end.
pub(super) fn decode(mut seq: Box<dyn Read + Send>, h: Header, name: String) -> Decode {
    Box::new(move |emit| {
        let mut at = 0u64;
        let read = |seq: &mut Box<dyn Read + Send>, buf: &mut [u8], at: &mut u64, what: &str| -> Result<()> {
            let n = read_full(seq, buf).with_context(|| format!("{name}: reading {what} at byte {at}"))?;
            ensure!(n == buf.len(), "{name}: the file ends inside {what} at byte {}: it is truncated", *at + n as u64);
            *at += n as u64;
            Ok(())
        };
        let mut skip = vec![0u8; h.overhead as usize];
        read(&mut seq, &mut skip, &mut at, "the header and descriptor")?;
        drop(skip);
        let max_compressed = h.grain as usize * 2 + 4096;
        let mut data = vec![0u8; max_compressed + SECTOR as usize];
        let mut grain = Vec::with_capacity(h.grain as usize);
        let mut z = Decompress::new(true);
        loop {
            let marker_at = at;
            let mut m = [0u8; SECTOR as usize];
            read(&mut seq, &mut m, &mut at, "a marker")?;
            let (value, size) = (le64(&m, 0), le32(&m, 8) as usize);
            if size == 0 {
                match le32(&m, 12) {
                    0 => break,
                    1..=3 => {
                        let len = value.checked_mul(SECTOR).filter(|&l| l <= 1 << 30).with_context(|| {
                            format!("{name}: metadata marker at byte {marker_at} claims {value} sectors")
                        })?;
                        let mut meta = vec![0u8; len as usize];
                        read(&mut seq, &mut meta, &mut at, "metadata (grain table, directory or footer)")?;
                    }
                    t => bail!("{name}: unknown VMDK marker type {t} at byte {marker_at}"),
                }
                continue;
            }
            ensure!(
                size <= max_compressed,
                "{name}: the grain marker at byte {marker_at} claims {size} compressed bytes for a {}-byte grain",
                h.grain
            );
            // The data starts in the marker's sector, after its 12 bytes, and is padded to a sector.
            let total = (12 + size).next_multiple_of(SECTOR as usize);
            data[..SECTOR as usize].copy_from_slice(&m);
            read(&mut seq, &mut data[SECTOR as usize..total], &mut at, "a grain")?;
            let offset = value.checked_mul(SECTOR).filter(|&o| o < h.size).with_context(|| {
                format!("{name}: the grain at byte {marker_at} is for sector {value}, beyond the disk's end")
            })?;
            grain.clear();
            z.reset(true);
            let status =
                z.decompress_vec(&data[12..12 + size], &mut grain, FlushDecompress::Finish).with_context(|| {
                    format!("{name}: decompressing the grain at byte {marker_at} (image byte {offset})")
                })?;
            ensure!(
                status == Status::StreamEnd,
                "{name}: the grain at byte {marker_at} (image byte {offset}) does not decompress to at most {} bytes",
                h.grain
            );
            let len = (grain.len() as u64).min(h.size - offset) as usize;
            emit.put(offset, &grain[..len])?;
        }
        drain(&mut seq).with_context(|| format!("{name}: reading the end of the file"))?;
        Ok(())
    })
}
