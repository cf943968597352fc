//! VHDX (Hyper-V), dynamic: only payload blocks holding non-zero bytes are stored, every other block is
//! `PAYLOAD_BLOCK_ZERO`. Microsoft's MS-VHDX specification; the structures are in the `layout` module.
//!
//! Blocks never written are `ZERO` rather than `NOT_PRESENT`: for a dynamic disk the specification leaves the
//! contents of a `NOT_PRESENT` block undefined, and a filesystem image relies on its zeros. Within a stored block
//! all-zero 4 KiB runs are not written, so they stay holes in the output file. The log is empty (the headers' log
//! GUID is zero) and the logical/physical sector sizes are 512/4096 bytes.

mod layout;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use self::layout::{
    BAT_OFFSET, HEADER_OFFSETS, HeaderIds, LOGICAL_SECTOR, Layout, METADATA_OFFSET, PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_ZERO, REGION_TABLE_OFFSETS,
};
use super::copy::{context, ensure_empty, is_zero};
use super::{Container, Progress, RawImage};
use crate::disk::Guid;

/// Within a stored block, runs of zeros this long and aligned are left as holes.
const HOLE_GRANULE: usize = 4096;

/// The creator recorded in the file type identifier.
const CREATOR: &str = "kiln";

/// A dynamic VHDX, with the identifiers and block size the caller chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vhdx {
    /// The virtual disk's id (the page 83 data metadata item), which guests see as the disk's SCSI identity.
    pub disk_id: Guid,
    /// The headers' `FileWriteGuid`.
    pub file_write_id: Guid,
    /// The headers' `DataWriteGuid`.
    pub data_write_id: Guid,
    /// Payload block size in bytes: a power of two from 1 MiB to 256 MiB. Microsoft recommends 1 MiB for Linux
    /// guests (smaller files after the guest writes); Hyper-V's default is 32 MiB.
    pub block_size: u32,
}

impl Vhdx {
    /// Hyper-V's default payload block size: 32 MiB.
    pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;

    /// A VHDX with these ids (derive them from a seed) and [`Vhdx::DEFAULT_BLOCK_SIZE`].
    #[must_use]
    pub const fn new(disk_id: Guid, file_write_id: Guid, data_write_id: Guid) -> Self {
        Self { disk_id, file_write_id, data_write_id, block_size: Self::DEFAULT_BLOCK_SIZE }
    }
}

impl Container for Vhdx {
    fn name(&self) -> &'static str {
        "vhdx"
    }

    /// Rounded up to a whole number of 512-byte logical sectors.
    fn virtual_size(&self, size: u64) -> u64 {
        size.next_multiple_of(u64::from(LOGICAL_SECTOR))
    }

    /// Reads one payload block at a time (only the image's data ranges), stores it if it holds a non-zero byte,
    /// then writes the BAT, the metadata, the region tables and last the headers.
    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        ensure_empty(out, "VHDX")?;
        let layout = Layout::new(self.virtual_size(image.size()), self.block_size)?;
        let mut bat = vec![0u64; usize::try_from(layout.bat_entries).unwrap_or(usize::MAX)];
        let mut end = layout.data_offset;
        let mut buf = vec![0u8; usize::try_from(layout.block_size).unwrap_or(usize::MAX)];
        for block in 0..layout.payload_blocks {
            let start = block * layout.block_size;
            // The image proper; the last block may reach past it into the sector padding and the block's tail.
            let image_end = (start + layout.block_size).min(image.size());
            let stored = if start < image_end && image.may_have_data(start..image_end) {
                let data = &mut buf[..usize::try_from(image_end - start).unwrap_or(usize::MAX)];
                image.read_at(data, start).map_err(|e| context(e, || format!("reading image bytes {start}..")))?;
                write_present(out, data, end).map_err(|e| context(e, || format!("writing VHDX block {block}")))?
            } else {
                false
            };
            bat[layout.bat_index(block)] = if stored {
                let entry = layout::bat_entry(PAYLOAD_BLOCK_FULLY_PRESENT, end);
                end += layout.block_size;
                entry
            } else {
                PAYLOAD_BLOCK_ZERO
            };
            progress.advance(image_end.saturating_sub(start));
        }
        // The last stored block is whole in the file even where its tail is a hole.
        out.set_len(end)?;
        write_metadata(out, &layout, &bat, self)
    }
}

/// Writes the non-zero 4 KiB runs of a block's `data` at `offset`; false (nothing written) if all of it is zero.
fn write_present(out: &File, data: &[u8], offset: u64) -> io::Result<bool> {
    let mut run: Option<usize> = None;
    let mut any = false;
    let granules = data.len().div_ceil(HOLE_GRANULE);
    for g in 0..=granules {
        let zero = g == granules || is_zero(&data[g * HOLE_GRANULE..((g + 1) * HOLE_GRANULE).min(data.len())]);
        match (zero, run) {
            (false, None) => run = Some(g * HOLE_GRANULE),
            (true, Some(from)) => {
                let to = (g * HOLE_GRANULE).min(data.len());
                out.write_all_at(&data[from..to], offset + from as u64)?;
                any = true;
                run = None;
            }
            _ => {}
        }
    }
    Ok(any)
}

/// Writes everything but the payload: BAT, metadata region, both region tables, file identifier, both headers.
fn write_metadata(out: &File, layout: &Layout, bat: &[u64], opts: &Vhdx) -> io::Result<()> {
    let at = |what: &'static str, offset: u64| move |e| context(e, || format!("writing the VHDX {what} at {offset}"));
    out.write_all_at(&layout::bat_bytes(bat), BAT_OFFSET).map_err(at("BAT", BAT_OFFSET))?;
    out.write_all_at(&layout::metadata(layout, opts.disk_id), METADATA_OFFSET)
        .map_err(at("metadata", METADATA_OFFSET))?;
    let table = layout::region_table(layout);
    for offset in REGION_TABLE_OFFSETS {
        out.write_all_at(&table, offset).map_err(at("region table", offset))?;
    }
    out.write_all_at(&layout::file_identifier(CREATOR), 0).map_err(at("file identifier", 0))?;
    // Header 2 has the higher sequence number, so it is the current one; both are valid and alike.
    let ids = HeaderIds { file_write: opts.file_write_id, data_write: opts.data_write_id };
    for (sequence, offset) in HEADER_OFFSETS.into_iter().enumerate() {
        out.write_all_at(&layout::header(sequence as u64, ids), offset).map_err(at("header", offset))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_runs_leave_zero_granules_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("o")).unwrap();
        out.set_len(1 << 20).unwrap();
        out.write_all_at(&[0xEE; 1 << 20], 0).unwrap();
        let mut data = vec![0u8; 5 * HOLE_GRANULE + 100];
        data[HOLE_GRANULE + 5] = 1;
        data[5 * HOLE_GRANULE + 99] = 2;
        assert!(write_present(&out, &data, 1000).unwrap());
        let mut back = vec![0u8; data.len()];
        out.read_exact_at(&mut back, 1000).unwrap();
        // Granules 0, 2, 3 and 4 are zero: not written, so the old bytes remain there.
        assert!(back[..HOLE_GRANULE].iter().all(|&b| b == 0xEE));
        assert_eq!(back[HOLE_GRANULE..2 * HOLE_GRANULE], data[HOLE_GRANULE..2 * HOLE_GRANULE]);
        assert!(back[2 * HOLE_GRANULE..5 * HOLE_GRANULE].iter().all(|&b| b == 0xEE));
        assert_eq!(back[5 * HOLE_GRANULE..], data[5 * HOLE_GRANULE..]);
        assert!(!write_present(&out, &[0; 10_000], 0).unwrap());
    }
}
