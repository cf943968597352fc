//! Turning a [`DiskLayout`] into bytes at offsets, and writing them.

use super::Error;
use super::gpt;
use super::layout::DiskLayout;
use super::mbr::{self, MBR_SIZE};
use crate::sink::WriteAt;
use crate::units::{Bytes, Lba};

/// Bytes to write at one place of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// What it is, for messages.
    pub what: &'static str,
    /// Byte offset on the disk.
    pub offset: Bytes,
    /// The bytes: whole sectors.
    pub bytes: Vec<u8>,
}

impl DiskLayout {
    /// The first 512 bytes of sector 0: the protective MBR (GPT) or the partition table (MBR), no boot code.
    /// Boot loaders that put code in sector 0 merge it with these bytes.
    #[must_use]
    pub fn mbr(&self) -> [u8; MBR_SIZE] {
        mbr::sector0(self)
    }

    /// Everything the partition table consists of, in the order [`DiskLayout::write`] writes it: for GPT the
    /// backup entries and header, the primary entries and header, then sector 0; for MBR sector 0 alone. Every
    /// region is whole sectors; nothing else of the disk is touched.
    #[must_use]
    pub fn regions(&self) -> Vec<Region> {
        let ss = self.sector_size();
        let sector_bytes = ss.bytes().get() as usize;
        let mut sector0 = vec![0u8; sector_bytes];
        sector0[..MBR_SIZE].copy_from_slice(&self.mbr());
        let mut out = Vec::with_capacity(5);
        if let (Some(geometry), Some(disk_guid)) = (self.gpt_geometry(), gpt::disk_guid(self)) {
            let entries = gpt::entry_array(self);
            let crc = gpt::crc32(&entries);
            let primary = gpt::header(self, &geometry, disk_guid, crc, true);
            let backup = gpt::header(self, &geometry, disk_guid, crc, false);
            out.push(Region {
                what: "backup GPT partition entries",
                offset: geometry.backup_entries.start.offset(ss),
                bytes: entries.clone(),
            });
            out.push(Region { what: "backup GPT header", offset: geometry.backup_header.offset(ss), bytes: backup });
            out.push(Region {
                what: "primary GPT partition entries",
                offset: geometry.entries.start.offset(ss),
                bytes: entries,
            });
            out.push(Region { what: "primary GPT header", offset: Lba(1).offset(ss), bytes: primary });
            out.push(Region { what: "protective MBR", offset: Bytes(0), bytes: sector0 });
        } else {
            out.push(Region { what: "MBR partition table", offset: Bytes(0), bytes: sector0 });
        }
        out
    }

    /// Writes the partition table into `sink`, an image of at least [`DiskLayout::size`] bytes. Sector 0 goes
    /// last, so an interrupted write leaves no table that points at a half-written one.
    ///
    /// # Errors
    ///
    /// [`Error::Write`] naming the structure and offset if the sink fails.
    pub fn write(&self, sink: &dyn WriteAt) -> Result<(), Error> {
        for r in self.regions() {
            sink.write_all_at(&r.bytes, r.offset.get()).map_err(|source| Error::Write {
                what: r.what,
                offset: r.offset.get(),
                source,
            })?;
        }
        Ok(())
    }
}
