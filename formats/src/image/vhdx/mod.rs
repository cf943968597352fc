//! VHDX (Hyper-V), dynamic: only payload blocks holding non-zero bytes are stored, every other block is
//! `PAYLOAD_BLOCK_ZERO`. Microsoft's MS-VHDX specification; the structures are in the `layout` module.
//!
//! Blocks never written are `ZERO` rather than `NOT_PRESENT`: for a dynamic disk the specification leaves the
//! contents of a `NOT_PRESENT` block undefined, and a filesystem image relies on its zeros. A block is stored if
//! its data ranges hold a non-zero byte (the test stops at the first one); its data ranges are then copied in the
//! kernel (`copy_file_range`), so the image's holes stay holes in the output file. The log is empty (the headers'
//! log GUID is zero) and the logical/physical sector sizes are 512/4096 bytes.

mod layout;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use self::layout::{
    BAT_OFFSET, HEADER_OFFSETS, HeaderIds, LOGICAL_SECTOR, Layout, METADATA_OFFSET, PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_ZERO, REGION_TABLE_OFFSETS,
};
use super::copy::{RangeCopier, context, data_within, ensure_empty, has_nonzero};
use super::{Container, Progress, RawImage};
use crate::disk::Guid;

/// How much of a block the zero test reads at a time.
const ZERO_TEST_PIECE: usize = 256 << 10;

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
    /// The payload block size kiln writes: 1 MiB, what Microsoft recommends for Linux guests (Linux filesystems
    /// scatter small writes, each of which makes a whole block present), rather than Hyper-V's 32 MiB default.
    pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;

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

    /// Goes through the payload blocks in order, storing each one that holds a non-zero byte (reading only the
    /// image's data ranges), then writes the BAT, the metadata, the region tables and last the headers.
    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        ensure_empty(out, "VHDX")?;
        let layout = Layout::new(self.virtual_size(image.size()), self.block_size)?;
        let file_len = image.file().metadata()?.len();
        let mut bat = vec![0u64; usize::try_from(layout.bat_entries).unwrap_or(usize::MAX)];
        let mut end = layout.data_offset;
        let mut copier = RangeCopier::default();
        let mut buf = vec![0u8; ZERO_TEST_PIECE];
        for block in 0..layout.payload_blocks {
            let start = block * layout.block_size;
            // The image proper; the last block may reach past it into the sector padding and the block's tail.
            let image_end = (start + layout.block_size).min(image.size());
            let entry = if start < image_end && has_nonzero(image, start..image_end, &mut buf)? {
                for r in data_within(image, start..image_end, file_len) {
                    let to = end + (r.start - start);
                    copier.copy(image.file(), out, (r.start, to), r.end - r.start, &()).map_err(|e| {
                        context(e, || {
                            format!("copying image bytes {}..{} to VHDX block {block} at {to}", r.start, r.end)
                        })
                    })?;
                }
                let entry = layout::bat_entry(PAYLOAD_BLOCK_FULLY_PRESENT, end);
                end += layout.block_size;
                entry
            } else {
                PAYLOAD_BLOCK_ZERO
            };
            bat[layout.bat_index(block)] = entry;
            progress.advance(image_end.saturating_sub(start));
        }
        // The last stored block is whole in the file even where its tail is a hole.
        out.set_len(end)?;
        write_metadata(out, &layout, &bat, self)
    }
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
