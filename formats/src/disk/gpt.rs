//! GPT bytes: the header (primary and backup), the partition entry array and their CRC32s.
//!
//! Written here rather than with the `gpt` crate (DESIGN.md §5 found 4.1 usable): that crate works on a
//! `Read + Write + Seek` device it reads back while writing, draws a random partition GUID in `add_partition`
//! (pulling `uuid`'s v4 generator into a crate whose output must not depend on randomness), and knows nothing of
//! the MBR-only layout or of the sector-0 bytes GRUB's boot sector must be merged with. The format is small: a
//! 92-byte header and 128-byte entries (UEFI 2.10 §5.3), and the plan is then plain data that writes into any
//! positioned sink, byte-identical every time.

use super::guid::Guid;
use super::layout::{DiskLayout, PartitionTable};
use crate::units::{Lba, LbaRange, SectorSize};

/// Entries in a GPT partition array (the UEFI minimum and what every tool writes).
pub const GPT_ENTRIES: u32 = 128;
/// Bytes per GPT partition entry.
pub const GPT_ENTRY_SIZE: u32 = 128;

/// "EFI PART".
pub const SIGNATURE: [u8; 8] = *b"EFI PART";
/// Revision 1.0.
const REVISION: u32 = 0x0001_0000;
/// Bytes of the header covered by its CRC.
pub const HEADER_SIZE: u32 = 92;

/// Where the GPT structures lie on a disk of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptGeometry {
    /// The primary partition entry array (from LBA 2).
    pub entries: LbaRange,
    /// The sectors partitions may use.
    pub usable: LbaRange,
    /// The backup partition entry array, just before the backup header.
    pub backup_entries: LbaRange,
    /// The backup header: the last sector of the disk.
    pub backup_header: Lba,
}

impl GptGeometry {
    /// Sectors of one copy of the table: a header and the entry array (33 with 512-byte sectors, 5 with 4096).
    #[must_use]
    pub const fn copy_sectors(sector: SectorSize) -> u64 {
        1 + (GPT_ENTRIES as u64 * GPT_ENTRY_SIZE as u64) / sector.bytes().get()
    }

    /// The geometry of a disk of `disk_sectors` sectors; `None` if the disk cannot hold two headers, two entry
    /// arrays, the protective MBR and one usable sector.
    #[must_use]
    pub fn new(sector: SectorSize, disk_sectors: u64) -> Option<Self> {
        let entry_sectors = Self::copy_sectors(sector) - 1;
        let first_usable = 2 + entry_sectors;
        let backup_header = disk_sectors.checked_sub(1)?;
        let backup_entries_start = backup_header.checked_sub(entry_sectors)?;
        if backup_entries_start <= first_usable {
            return None;
        }
        Some(Self {
            entries: LbaRange::new(Lba(2), Lba(first_usable)),
            usable: LbaRange::new(Lba(first_usable), Lba(backup_entries_start)),
            backup_entries: LbaRange::new(Lba(backup_entries_start), Lba(backup_header)),
            backup_header: Lba(backup_header),
        })
    }
}

/// The partition entry array, 128 entries of 128 bytes, unused entries zero.
#[must_use]
pub fn entry_array(layout: &DiskLayout) -> Vec<u8> {
    let mut out = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_SIZE) as usize];
    for (p, e) in layout.partitions().iter().zip(out.chunks_exact_mut(GPT_ENTRY_SIZE as usize)) {
        e[0..16].copy_from_slice(&p.type_guid.to_gpt_bytes());
        e[16..32].copy_from_slice(&p.guid.to_gpt_bytes());
        e[32..40].copy_from_slice(&p.extent.start.get().to_le_bytes());
        // The last sector, inclusive; a checked layout has no empty partition.
        let last = p.extent.last().unwrap_or(p.extent.start);
        e[40..48].copy_from_slice(&last.get().to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.0.to_le_bytes());
        for (unit, slot) in p.name.encode_utf16().zip(e[56..128].chunks_exact_mut(2)) {
            slot.copy_from_slice(&unit.to_le_bytes());
        }
    }
    out
}

/// One header sector (the header, then zeros to the end of the sector). `primary` chooses which copy: the
/// primary at LBA 1 points at the entries from LBA 2, the backup in the last sector at those before it.
#[must_use]
pub fn header(
    layout: &DiskLayout,
    geometry: &GptGeometry,
    disk_guid: Guid,
    entries_crc: u32,
    primary: bool,
) -> Vec<u8> {
    let (this, other, entries) = if primary {
        (Lba(1), geometry.backup_header, geometry.entries.start)
    } else {
        (geometry.backup_header, Lba(1), geometry.backup_entries.start)
    };
    let mut h = vec![0u8; layout.sector_size().bytes().get() as usize];
    h[0..8].copy_from_slice(&SIGNATURE);
    h[8..12].copy_from_slice(&REVISION.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    // 16..20: header CRC, computed last with the field zero; 20..24 reserved.
    h[24..32].copy_from_slice(&this.get().to_le_bytes());
    h[32..40].copy_from_slice(&other.get().to_le_bytes());
    h[40..48].copy_from_slice(&geometry.usable.start.get().to_le_bytes());
    let last_usable = geometry.usable.last().unwrap_or(geometry.usable.start);
    h[48..56].copy_from_slice(&last_usable.get().to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_gpt_bytes());
    h[72..80].copy_from_slice(&entries.get().to_le_bytes());
    h[80..84].copy_from_slice(&GPT_ENTRIES.to_le_bytes());
    h[84..88].copy_from_slice(&GPT_ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The disk GUID of a GPT layout.
pub(super) fn disk_guid(layout: &DiskLayout) -> Option<Guid> {
    match layout.table() {
        PartitionTable::Gpt { disk_guid } => Some(disk_guid),
        PartitionTable::Mbr { .. } => None,
    }
}

/// CRC-32 as GPT uses it (IEEE 802.3: reflected polynomial 0xEDB88320, initial and final XOR all ones). The
/// crate's `crc32c` dependency is the Castagnoli polynomial, which is not this one.
#[must_use]
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(&[0u8; 32]), 0x190A_55AD);
    }
}
