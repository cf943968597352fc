//! The DOS (MBR) partition table in sector 0: four primary entries (extended partitions are named, not walked).

use anyhow::Result;
use kiln_formats::disk::{Bytes, Lba, LbaRange, SectorSize};

use super::{Found, PartitionType, Slot, Table, le32, overlaps};
use crate::inspect::disk::Disk;

/// Offset of the first of four 16-byte entries in sector 0.
const MBR_TABLE: usize = 0x1BE;

/// Reads the DOS partition table in sector 0: `Ok(None)` unless sector 0 ends in `55 AA` and every entry's
/// status byte is 0x00 or 0x80.
pub(crate) fn dos(disk: &Disk, warnings: &mut Vec<String>) -> Result<Option<Found>> {
    let mut s0 = [0u8; 512];
    disk.read("sector 0", Bytes(0), &mut s0)?;
    if s0[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let entries: Vec<&[u8]> = s0[MBR_TABLE..MBR_TABLE + 64].chunks_exact(16).collect();
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    let mut slots = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kind = e[4];
        if kind == 0 {
            continue;
        }
        let number = i as u32 + 1;
        let (start, count) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            warnings.push(format!(
                "{}: partition {number} is an extended partition: the logical partitions in it are not listed",
                disk.name()
            ));
        }
        if kind == 0xEE {
            warnings.push(format!(
                "{}: sector 0 is a GPT protective MBR, but there is no GPT header at byte 512 or 4096",
                disk.name()
            ));
        }
        slots.push(Slot {
            number,
            name: None,
            kind: PartitionType::Mbr(kind),
            guid: None,
            extent: LbaRange::new(Lba(start), Lba(start + count)),
            attributes: None,
            bootable: e[0] == 0x80,
        });
    }
    overlaps(&slots, disk.name(), warnings);
    let table = Table::Dos { disk_signature: le32(&s0, 0x1B8) };
    Ok(Some(Found { table, sector: SectorSize::S512, slots }))
}
