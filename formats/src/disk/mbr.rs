//! Sector 0: the protective MBR of a GPT disk, or the DOS partition table of an MBR disk. Both are 512 bytes
//! whatever the sector size (on a 4Kn disk the rest of sector 0 is zero).

use super::guid::GptAttributes;
use super::layout::{DiskLayout, PartitionTable, mbr_type};
use crate::units::Lba;

/// Bytes of an MBR.
pub const MBR_SIZE: usize = 512;
/// Offset of the 32-bit disk signature.
pub const DISK_SIGNATURE: usize = 0x1B8;
/// Offset of the first of four 16-byte partition entries.
pub const PARTITION_TABLE: usize = 0x1BE;
/// Offset of the `55 AA` boot signature.
pub const BOOT_SIGNATURE: usize = 0x1FE;
/// The protective MBR partition type.
pub const PROTECTIVE_TYPE: u8 = 0xEE;

/// The 512 bytes of sector 0 for `layout`: no boot code, the disk signature (0 on GPT), the partition entries
/// and `55 AA`.
#[must_use]
pub fn sector0(layout: &DiskLayout) -> [u8; MBR_SIZE] {
    let mut m = [0u8; MBR_SIZE];
    match layout.table() {
        PartitionTable::Gpt { .. } => {
            // UEFI 2.10 §5.2.3: one partition of type 0xEE from LBA 1 over the whole disk (size clamped to
            // 32 bits), start CHS 0/0/2, end CHS of the last sector or FF FF FF.
            let last = Lba(layout.sectors() - 1);
            let end_chs = chs(last).unwrap_or([0xFF, 0xFF, 0xFF]);
            let size = u32::try_from(layout.sectors() - 1).unwrap_or(u32::MAX);
            entry(
                &mut m[PARTITION_TABLE..PARTITION_TABLE + 16],
                0,
                [0x00, 0x02, 0x00],
                PROTECTIVE_TYPE,
                end_chs,
                1,
                size,
            );
        }
        PartitionTable::Mbr { disk_signature } => {
            m[DISK_SIGNATURE..DISK_SIGNATURE + 4].copy_from_slice(&disk_signature.to_le_bytes());
            for (i, p) in layout.partitions().iter().enumerate() {
                let status = if p.attributes.contains(GptAttributes::LEGACY_BIOS_BOOTABLE) { 0x80 } else { 0 };
                // A checked MBR layout has only mappable types and 32-bit extents.
                let kind = mbr_type(p.type_guid).unwrap_or(0);
                let start = u32::try_from(p.extent.start.get()).unwrap_or(u32::MAX);
                let size = u32::try_from(p.extent.sectors()).unwrap_or(u32::MAX);
                let last = p.extent.last().unwrap_or(p.extent.start);
                // Past cylinder 1023 CHS cannot say where; tools write 1023/254/63 then.
                let overflow = [0xFE, 0xFF, 0xFF];
                let at = PARTITION_TABLE + 16 * i;
                entry(
                    &mut m[at..at + 16],
                    status,
                    chs(p.extent.start).unwrap_or(overflow),
                    kind,
                    chs(last).unwrap_or(overflow),
                    start,
                    size,
                );
            }
        }
    }
    m[BOOT_SIGNATURE] = 0x55;
    m[BOOT_SIGNATURE + 1] = 0xAA;
    m
}

fn entry(e: &mut [u8], status: u8, start_chs: [u8; 3], kind: u8, end_chs: [u8; 3], start: u32, size: u32) {
    e[0] = status;
    e[1..4].copy_from_slice(&start_chs);
    e[4] = kind;
    e[5..8].copy_from_slice(&end_chs);
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&size.to_le_bytes());
}

/// The CHS bytes (head, sector | cylinder high bits, cylinder low bits) of a sector in the customary 255-head,
/// 63-sector geometry; `None` beyond cylinder 1023.
fn chs(lba: Lba) -> Option<[u8; 3]> {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let lba = lba.get();
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return None;
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    // Each value is bounded above, so the casts keep every bit.
    Some([head as u8, (sector as u8) | (((cylinder >> 8) as u8) << 6), cylinder as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_values() {
        struct Case {
            lba: u64,
            want: Option<[u8; 3]>,
        }
        let cases = [
            Case { lba: 0, want: Some([0, 1, 0]) },
            Case { lba: 1, want: Some([0, 2, 0]) },
            Case { lba: 2048, want: Some([32, 33, 0]) },
            Case { lba: 255 * 63, want: Some([0, 1, 1]) },
            Case { lba: 1024 * 255 * 63 - 1, want: Some([254, 63 | 0xC0, 0xFF]) },
            Case { lba: 1024 * 255 * 63, want: None },
        ];
        for c in cases {
            assert_eq!(chs(Lba(c.lba)), c.want, "LBA {}", c.lba);
        }
    }
}
