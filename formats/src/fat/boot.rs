//! The boot sector (BIOS parameter block) and the FSInfo sector.

use super::geometry::{FATS, FIRST_CLUSTER, Geometry, RESERVED_SECTORS};

/// Sector of the FSInfo structure.
pub(crate) const FSINFO_SECTOR: u32 = 1;
/// Sector of the boot sector's backup (FSInfo's backup follows it).
pub(crate) const BACKUP_BOOT_SECTOR: u32 = 6;
/// Media descriptor of a fixed disk.
pub(crate) const MEDIA: u8 = 0xF8;
/// Bytes of the boot sector and FSInfo structures (the rest of a larger sector is zero).
pub(crate) const STRUCT_LEN: usize = 512;

/// Real-mode code run if a BIOS boots the partition: print the message after it and reboot on a key press
/// (the same instructions mkfs.fat writes). It starts at offset 0x5A, where the jump lands; the message
/// follows at 0x77 and is loaded from 0x7C77.
const BOOT_CODE: [u8; 29] = [
    0x0e, // push cs
    0x1f, // pop ds
    0xbe, 0x77, 0x7c, // mov si, 0x7c77
    0xac, // lodsb
    0x22, 0xc0, // and al, al
    0x74, 0x0b, // jz key_press
    0x56, // push si
    0xb4, 0x0e, // mov ah, 0x0e
    0xbb, 0x07, 0x00, // mov bx, 0x0007
    0xcd, 0x10, // int 0x10
    0x5e, // pop si
    0xeb, 0xf0, // jmp lodsb
    0x32, 0xe4, // key_press: xor ah, ah
    0xcd, 0x16, // int 0x16
    0xcd, 0x19, // int 0x19
    0xeb, 0xfe, // jmp $
];
const BOOT_CODE_AT: usize = 0x5A;
const MESSAGE: &[u8] = b"This is an EFI system partition, not a bootable disk.\r\nPress any key to reboot.\r\n\0";

/// Identity of the volume, written into the boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub hidden_sectors: u32,
    pub volume_id: u32,
    /// Space-padded; `NO NAME    ` when the volume has no label.
    pub label: [u8; 11],
}

/// The boot sector (and its backup).
pub(crate) fn boot_sector(g: &Geometry, id: &Identity) -> [u8; STRUCT_LEN] {
    let mut b = [0u8; STRUCT_LEN];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]); // jmp short 0x5A; nop
    b[3..11].copy_from_slice(b"MSWIN4.1"); // the OEM name Microsoft recommends for compatibility
    b[11..13].copy_from_slice(&(g.sector_bytes() as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = FATS as u8;
    // 17..19 root entries, 19..21 16-bit total sectors: 0 on FAT32.
    b[21] = MEDIA;
    // 22..24 16-bit FAT size: 0 on FAT32 (what marks the volume FAT32 to Linux and Windows).
    b[24..26].copy_from_slice(&63u16.to_le_bytes()); // sectors per track
    b[26..28].copy_from_slice(&255u16.to_le_bytes()); // heads
    b[28..32].copy_from_slice(&id.hidden_sectors.to_le_bytes());
    b[32..36].copy_from_slice(&g.total_sectors.to_le_bytes());
    b[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
    // 40..42 flags: 0, the FATs are mirrored; 42..44 version 0.0.
    b[44..48].copy_from_slice(&FIRST_CLUSTER.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&(FSINFO_SECTOR as u16).to_le_bytes());
    b[50..52].copy_from_slice(&(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
    // 52..64 reserved.
    b[64] = 0x80; // drive number: first hard disk
    b[66] = 0x29; // extended boot signature: the next three fields are valid
    b[67..71].copy_from_slice(&id.volume_id.to_le_bytes());
    b[71..82].copy_from_slice(&id.label);
    b[82..90].copy_from_slice(b"FAT32   ");
    b[BOOT_CODE_AT..BOOT_CODE_AT + BOOT_CODE.len()].copy_from_slice(&BOOT_CODE);
    let msg = BOOT_CODE_AT + BOOT_CODE.len();
    b[msg..msg + MESSAGE.len()].copy_from_slice(MESSAGE);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The FSInfo sector (and its backup): free cluster count and where to look for free clusters.
pub(crate) fn fsinfo(free_clusters: u32, free_hint: u32) -> [u8; STRUCT_LEN] {
    let mut b = [0u8; STRUCT_LEN];
    b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes()); // "RRaA"
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes()); // "rrAa"
    b[488..492].copy_from_slice(&free_clusters.to_le_bytes());
    b[492..496].copy_from_slice(&free_hint.to_le_bytes());
    b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::SectorSize;

    #[test]
    fn boot_code_jumps_land_and_message_is_where_it_loads() {
        // The jump at 0 lands on the code; the code loads the message from 0x7C00 + its offset.
        assert_eq!(2 + 0x58, BOOT_CODE_AT);
        assert_eq!(0x7C00 + BOOT_CODE_AT + BOOT_CODE.len(), 0x7C77);
        assert!(BOOT_CODE_AT + BOOT_CODE.len() + MESSAGE.len() <= 510);
    }

    #[test]
    fn fields() {
        let g = Geometry::new(SectorSize::S512, 1 << 20, 8);
        let id = Identity { hidden_sectors: 2048, volume_id: 0x1234_5678, label: *b"ESP        " };
        let b = boot_sector(&g, &id);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u16_at(11), 512);
        assert_eq!(b[13], 8);
        assert_eq!(u16_at(14), 32);
        assert_eq!(u16_at(22), 0);
        assert_eq!(u32_at(28), 2048);
        assert_eq!(u32_at(32), 1 << 20);
        assert_eq!(u32_at(36), g.fat_sectors);
        assert_eq!(u32_at(67), 0x1234_5678);
        assert_eq!(&b[71..90], b"ESP        FAT32   ");
        assert_eq!(&b[510..], &[0x55, 0xAA]);
    }
}
