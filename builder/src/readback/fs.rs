//! Filesystems by their magic numbers, and the fields of their first sectors every reader here needs: the ext4
//! superblock ([`Ext4Superblock`]), the FAT boot sector ([`FatBootSector`]), a few others by name only.

use anyhow::Result;
use kiln_formats::disk::Bytes;

use super::{Window, le16, le32};

/// What a window's magic numbers say it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Magic {
    /// ext2/3/4 (one superblock format; kiln writes ext4).
    Ext4(Ext4Superblock),
    /// FAT12/16/32.
    Fat(FatBootSector),
    /// Recognised by its magic number, not read further: `swap`, `xfs`, `btrfs`, `squashfs`, `erofs`, `luks`,
    /// `ntfs`, `exfat`, `iso9660`.
    Other(&'static str),
    /// No magic number this reader knows (GRUB's core.img in a BIOS boot partition looks like this).
    Unknown,
}

/// Magic numbers of filesystems named but not read: name, byte offset, bytes.
const OTHER_MAGIC: &[(&str, u64, &[u8])] = &[
    ("swap", 4086, b"SWAPSPACE2"),
    ("xfs", 0, b"XFSB"),
    ("btrfs", 0x10040, b"_BHRfS_M"),
    ("squashfs", 0, b"hsqs"),
    ("erofs", 1024, &[0xE2, 0xE1, 0xF5, 0xE0]),
    ("luks", 0, b"LUKS\xba\xbe"),
    ("ntfs", 3, b"NTFS    "),
    ("exfat", 3, b"EXFAT   "),
    ("iso9660", 0x8001, b"CD001"),
];

/// Identifies what `window` holds: ext4 by its superblock's magic, FAT by a boot sector that names itself FAT,
/// a few others by name. What lies past the window's end (or the image's) is not there.
///
/// # Errors
///
/// When bytes inside the window and the image cannot be read.
pub fn identify(window: &Window) -> Result<Magic> {
    if let Some(sb) = Ext4Superblock::read(window)?
        && sb.is_ext4()
    {
        return Ok(Magic::Ext4(sb));
    }
    if let Some(boot) = FatBootSector::read(window)?
        && boot.is_fat()
    {
        return Ok(Magic::Fat(boot));
    }
    for &(name, at, magic) in OTHER_MAGIC {
        let mut buf = vec![0u8; magic.len()];
        if window.probe("a filesystem's magic number", Bytes(at), &mut buf)? && buf == magic {
            return Ok(Magic::Other(name));
        }
    }
    Ok(Magic::Unknown)
}

/// The fields of an ext4 superblock (the 1024 bytes at byte 1024 of the filesystem) kiln's readers use, as they
/// are on disk: whether they make sense is for [`Ext4Superblock::is_ext4`] and the reader to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Superblock {
    /// `s_magic`: 0xEF53 on ext2/3/4.
    pub magic: u16,
    /// `s_inodes_count`.
    pub inodes: u32,
    /// `s_free_inodes_count`.
    pub free_inodes: u32,
    /// `s_blocks_count` (the high half only with the `64bit` feature).
    pub blocks: u64,
    /// `s_free_blocks_count` (likewise).
    pub free_blocks: u64,
    /// `s_log_block_size`: blocks are 1024 << this bytes.
    pub log_block_size: u32,
    /// `s_state`: bit 0 clean, bit 1 errors.
    pub state: u16,
    /// `s_feature_compat`, `s_feature_incompat` and `s_feature_ro_compat`.
    pub features: [u32; 3],
    /// `s_uuid`.
    pub uuid: [u8; 16],
    /// `s_volume_name`, NUL-padded.
    pub volume_name: [u8; 16],
    /// `s_mkfs_time` (kiln writes the build time there).
    pub mkfs_time: u32,
}

impl Ext4Superblock {
    /// Where the superblock starts in its filesystem.
    pub const OFFSET: Bytes = Bytes(1024);
    /// `s_magic`'s value.
    pub const MAGIC: u16 = 0xEF53;
    /// `s_feature_incompat`'s 64-bit flag, which makes the block counts 64 bits wide.
    pub const INCOMPAT_64BIT: u32 = 0x0080;

    /// The superblock of the filesystem in `window`: `Ok(None)` when its 1024 bytes lie past the window's end
    /// or the image's.
    ///
    /// # Errors
    ///
    /// When the bytes are there but cannot be read.
    pub fn read(window: &Window) -> Result<Option<Self>> {
        let mut raw = [0u8; 1024];
        Ok(window.probe("the ext4 superblock", Self::OFFSET, &mut raw)?.then(|| Self::parse(&raw)))
    }

    /// The fields of a superblock's 1024 bytes.
    #[must_use]
    pub fn parse(sb: &[u8; 1024]) -> Self {
        let incompat = le32(sb, 0x60);
        let wide = incompat & Self::INCOMPAT_64BIT != 0;
        let count =
            |lo: usize, hi: usize| u64::from(le32(sb, lo)) | if wide { u64::from(le32(sb, hi)) << 32 } else { 0 };
        Self {
            magic: le16(sb, 0x38),
            inodes: le32(sb, 0x00),
            free_inodes: le32(sb, 0x10),
            blocks: count(0x04, 0x150),
            free_blocks: count(0x0C, 0x158),
            log_block_size: le32(sb, 0x18),
            state: le16(sb, 0x3A),
            features: [le32(sb, 0x5C), incompat, le32(sb, 0x64)],
            uuid: sb[0x68..0x78].try_into().expect("16 bytes"),
            volume_name: sb[0x78..0x88].try_into().expect("16 bytes"),
            mkfs_time: le32(sb, 0x108),
        }
    }

    /// Whether the magic number says ext2/3/4.
    #[must_use]
    pub fn is_ext4(&self) -> bool {
        self.magic == Self::MAGIC
    }

    /// The volume label: `s_volume_name` up to its first NUL.
    #[must_use]
    pub fn label(&self) -> &[u8] {
        let end = self.volume_name.iter().position(|&b| b == 0).unwrap_or(self.volume_name.len());
        &self.volume_name[..end]
    }

    /// Bytes per block, with `s_log_block_size` clamped so that a corrupt value cannot overflow (it is 0..=6 on
    /// any filesystem the kernel mounts).
    #[must_use]
    pub fn block_size(&self) -> Bytes {
        Bytes(1024 << self.log_block_size.min(16))
    }

    /// The filesystem's size (blocks × block size); `None` when the block size is one Linux does not mount
    /// (`ext4-view` refuses those too).
    #[must_use]
    pub fn size(&self) -> Option<Bytes> {
        (self.log_block_size <= 6).then(|| Bytes(self.blocks.saturating_mul(1024 << self.log_block_size)))
    }
}

/// The BIOS parameter block of a FAT boot sector: what [`FatBootSector::read`] found there, whether or not the
/// sector names itself FAT ([`FatBootSector::is_fat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatBootSector {
    /// Bytes per sector: 512, 1024, 2048 or 4096.
    pub sector_size: u64,
    /// Sectors per cluster.
    pub sectors_per_cluster: u64,
    /// Reserved sectors before the first FAT.
    pub reserved_sectors: u64,
    /// Number of FATs.
    pub fats: u64,
    /// Sectors in the volume.
    pub total_sectors: u64,
    /// Sectors per FAT.
    pub fat_sectors: u64,
    /// Sectors of the FAT12/16 root directory (0 on FAT32).
    pub root_dir_sectors: u64,
    /// The boot sector's volume label, trimmed.
    pub label: String,
    /// The volume id (serial number).
    pub volume_id: u32,
    /// Whether it starts with a jump and names its type (`FAT12   `, `FAT16   `, `FAT     ` or `FAT32   `).
    named_fat: bool,
}

impl FatBootSector {
    /// The boot sector at the start of `window`: `Ok(None)` when it lies past the window's end or the image's,
    /// does not end in `55 AA`, or does not give a sector size of 512 to 4096 bytes.
    ///
    /// # Errors
    ///
    /// When the bytes are there but cannot be read.
    pub fn read(window: &Window) -> Result<Option<Self>> {
        let mut boot = [0u8; 512];
        Ok(if window.probe("the FAT boot sector", Bytes(0), &mut boot)? { Self::parse(&boot) } else { None })
    }

    /// The fields of a boot sector, under the same conditions as [`FatBootSector::read`].
    #[must_use]
    pub fn parse(boot: &[u8; 512]) -> Option<Self> {
        let sector_size = u64::from(le16(boot, 0x0B));
        if boot[510..512] != [0x55, 0xAA] || !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
            return None;
        }
        let fat32 = &boot[0x52..0x5A] == b"FAT32   ";
        let wide = |short: usize, long: usize| match le16(boot, short) {
            0 => u64::from(le32(boot, long)),
            n => u64::from(n),
        };
        // FAT32 keeps the label and id after its longer BPB.
        let (id_at, label_at) = if fat32 { (0x43, 0x47) } else { (0x27, 0x2B) };
        Some(Self {
            sector_size,
            sectors_per_cluster: u64::from(boot[0x0D]),
            reserved_sectors: u64::from(le16(boot, 0x0E)),
            fats: u64::from(boot[0x10]),
            total_sectors: wide(0x13, 0x20),
            fat_sectors: wide(0x16, 0x24),
            root_dir_sectors: (u64::from(le16(boot, 0x11)) * 32).div_ceil(sector_size),
            label: String::from_utf8_lossy(&boot[label_at..label_at + 11]).trim_end().to_owned(),
            volume_id: le32(boot, id_at),
            named_fat: matches!(boot[0], 0xEB | 0xE9) && (fat32 || boot[0x36..0x39] == *b"FAT"),
        })
    }

    /// Whether this is a FAT volume: a jump, a type string, sane geometry and room for data. An MBR or GRUB's
    /// boot.img also end in `55 AA`, and are not.
    #[must_use]
    pub fn is_fat(&self) -> bool {
        self.named_fat
            && self.sectors_per_cluster.is_power_of_two()
            && self.reserved_sectors > 0
            && self.fats > 0
            && self.clusters().is_some()
    }

    /// The volume's size (total sectors × sector size).
    #[must_use]
    pub fn size(&self) -> Bytes {
        Bytes(self.total_sectors.saturating_mul(self.sector_size))
    }

    /// Bytes per cluster.
    #[must_use]
    pub fn cluster_size(&self) -> Bytes {
        Bytes(self.sector_size * self.sectors_per_cluster)
    }

    /// Data clusters; `None` when the FATs and the root directory leave no room for data, or a cluster has no
    /// sectors.
    #[must_use]
    pub fn clusters(&self) -> Option<u64> {
        let meta =
            self.fats.checked_mul(self.fat_sectors)?.checked_add(self.reserved_sectors + self.root_dir_sectors)?;
        self.total_sectors.checked_sub(meta)?.checked_div(self.sectors_per_cluster)
    }

    /// `FAT12`, `FAT16` or `FAT32`, by cluster count as the FAT specification decides (not by the type string).
    #[must_use]
    pub fn fat_type(&self) -> &'static str {
        match self.clusters().unwrap_or(0) {
            ..4085 => "FAT12",
            4085..65525 => "FAT16",
            _ => "FAT32",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_formats::disk::ByteRange;

    use super::*;
    use crate::readback::Disk;

    fn fat32_boot_sector() -> [u8; 512] {
        let mut boot = [0u8; 512];
        boot[0] = 0xEB;
        boot[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        boot[0x0D] = 8;
        boot[0x0E] = 32;
        boot[0x10] = 2;
        boot[0x20..0x24].copy_from_slice(&1_048_576u32.to_le_bytes());
        boot[0x24..0x28].copy_from_slice(&1024u32.to_le_bytes());
        boot[0x43..0x47].copy_from_slice(&0x05AB_A562u32.to_le_bytes());
        boot[0x47..0x52].copy_from_slice(b"ESP        ");
        boot[0x52..0x5A].copy_from_slice(b"FAT32   ");
        boot[510] = 0x55;
        boot[511] = 0xAA;
        boot
    }

    #[test]
    fn fat_boot_sectors() {
        let boot = fat32_boot_sector();
        let bpb = FatBootSector::parse(&boot).filter(FatBootSector::is_fat).expect("a FAT32 boot sector");
        assert_eq!((bpb.fat_type(), bpb.label.as_str(), bpb.cluster_size()), ("FAT32", "ESP", Bytes(4096)));
        assert_eq!(bpb.clusters(), Some((1_048_576 - 32 - 2 * 1024) / 8));
        assert_eq!(bpb.size(), Bytes(1_048_576 * 512));
        let mut grub = boot;
        grub[0x52..0x5A].copy_from_slice(b"\0\0\0\0\0\0\0\0");
        let grub = FatBootSector::parse(&grub).expect("55 AA and a sector size");
        assert!(!grub.is_fat(), "no FAT type string: GRUB's boot.img or an MBR, not a FAT volume");
        let mut zero_cluster = boot;
        zero_cluster[0x0D] = 0;
        assert!(!FatBootSector::parse(&zero_cluster).unwrap().is_fat());
        let mut no_signature = boot;
        no_signature[511] = 0;
        assert_eq!(FatBootSector::parse(&no_signature), None);
    }

    #[test]
    fn superblock_fields() {
        let mut sb = [0u8; 1024];
        sb[0x04..0x08].copy_from_slice(&1000u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        sb[0x18] = 2;
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&0x0080u32.to_le_bytes());
        sb[0x78..0x7D].copy_from_slice(b"nixos");
        let s = Ext4Superblock::parse(&sb);
        assert!(s.is_ext4());
        assert_eq!(s.label(), b"nixos");
        assert_eq!(s.blocks, (1 << 32) + 1000, "64bit: the high half counts");
        assert_eq!((s.block_size(), s.size()), (Bytes(4096), Some(Bytes(((1 << 32) + 1000) * 4096))));
        sb[0x18] = 7;
        assert_eq!(Ext4Superblock::parse(&sb).size(), None, "a block size Linux does not mount");
    }

    /// Magic numbers are found where they are, and not past the window's end or the image's.
    #[test]
    fn identifies_filesystems_by_magic() {
        let mut b = vec![0u8; 8192];
        b[..512].copy_from_slice(&fat32_boot_sector());
        b[4096..4100].copy_from_slice(b"XFSB");
        let len = Bytes(b.len() as u64);
        let disk = Disk::new(Arc::new(b), len, "mem.img".into());
        let at = |start, end| identify(&disk.window(ByteRange { start: Bytes(start), end: Bytes(end) })).unwrap();
        assert!(matches!(at(0, 4096), Magic::Fat(_)));
        assert_eq!(at(4096, 8192), Magic::Other("xfs"));
        assert_eq!(at(2048, 4096), Magic::Unknown);
        assert_eq!(at(4096, 1 << 20), Magic::Other("xfs"), "a window past the end of a truncated image");
    }
}
