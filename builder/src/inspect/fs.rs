//! Filesystems by their magic numbers: ext4 (the superblock read directly: label, UUID, sizes, features named as
//! `dumpe2fs` names them), FAT (the boot sector read directly, free space through the `fatfs` crate), a few others
//! by name only, or unknown.

use anyhow::{Context, Result, anyhow};
use kiln_formats::disk::{Bytes, Guid};
use serde::Serialize;

use super::disk::{FatIo, Window};
use super::ser;

/// What a partition (or a bare image) holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Filesystem {
    /// ext2/3/4 (one superblock format; kiln writes ext4).
    Ext4(Ext4),
    /// FAT12/16/32.
    Fat(Fat),
    /// Recognised by its magic number, not read further.
    Other {
        /// What it is: `swap`, `xfs`, `btrfs`, `squashfs`, `erofs`, `luks`, `ntfs`, `exfat`, `iso9660`.
        name: &'static str,
    },
    /// No magic number this reader knows (GRUB's core.img in a BIOS boot partition looks like this).
    Unknown,
}

/// An ext4 superblock's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ext4 {
    /// Volume label (`s_volume_name`).
    pub label: String,
    /// Filesystem UUID, lower case as `dumpe2fs` and `blkid` print it.
    pub uuid: String,
    /// Bytes per block.
    #[serde(serialize_with = "ser::bytes")]
    pub block_size: Bytes,
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Free blocks, as the superblock counts them.
    pub free_blocks: u64,
    /// Size in bytes (blocks × block size).
    #[serde(serialize_with = "ser::bytes")]
    pub size: Bytes,
    /// Free space in bytes (free blocks × block size).
    #[serde(serialize_with = "ser::bytes")]
    pub free: Bytes,
    /// Inodes.
    pub inodes: u32,
    /// Free inodes.
    pub free_inodes: u32,
    /// `clean`, `not clean` or `with errors` (`s_state`).
    pub state: &'static str,
    /// Feature flags by `dumpe2fs`'s names, compat then incompat then ro_compat; unknown bits as
    /// `FEATURE_C<n>`/`FEATURE_I<n>`/`FEATURE_R<n>`.
    pub features: Vec<String>,
}

/// A FAT boot sector's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fat {
    /// `FAT12`, `FAT16` or `FAT32`, by cluster count as the specification decides.
    pub fat_type: &'static str,
    /// Volume label: the root directory's label entry (what Linux shows), else the boot sector's.
    pub label: String,
    /// Volume id (serial number) as `XXXX-XXXX`, as Linux shows it for `/dev/disk/by-uuid`.
    pub volume_id: String,
    /// Bytes per cluster.
    #[serde(serialize_with = "ser::bytes")]
    pub cluster_size: Bytes,
    /// Size in bytes (total sectors × sector size).
    #[serde(serialize_with = "ser::bytes")]
    pub size: Bytes,
    /// Free space in bytes, from the FAT (`None` when fatfs cannot read the volume: then it is not read
    /// further).
    #[serde(serialize_with = "ser::opt_bytes")]
    pub free: Option<Bytes>,
}

/// Where the ext4 superblock starts, and its magic number.
const EXT4_SUPERBLOCK: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;

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

/// Identifies what `window` holds. Reading errors are errors; a FAT volume fatfs cannot read is a warning.
pub(crate) fn probe(window: &Window, warnings: &mut Vec<String>) -> Result<Filesystem> {
    let mut sb = [0u8; 1024];
    if window.probe(Bytes(EXT4_SUPERBLOCK), &mut sb)? && u16::from_le_bytes([sb[0x38], sb[0x39]]) == EXT4_MAGIC {
        return Ok(Filesystem::Ext4(ext4(&sb)));
    }
    let mut boot = [0u8; 512];
    if window.probe(Bytes(0), &mut boot)?
        && let Some(bpb) = Bpb::parse(&boot)
    {
        return Ok(Filesystem::Fat(fat(window, &bpb, warnings)));
    }
    for &(name, at, magic) in OTHER_MAGIC {
        let mut buf = vec![0u8; magic.len()];
        if window.probe(Bytes(at), &mut buf)? && buf == magic {
            return Ok(Filesystem::Other { name });
        }
    }
    Ok(Filesystem::Unknown)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Text up to the first NUL (lossy UTF-8).
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Feature names by bit, as e2fsprogs' `lib/e2p/feature.c` has them.
const COMPAT: &[(u32, &str)] = &[
    (0x0001, "dir_prealloc"),
    (0x0002, "imagic_inodes"),
    (0x0004, "has_journal"),
    (0x0008, "ext_attr"),
    (0x0010, "resize_inode"),
    (0x0020, "dir_index"),
    (0x0040, "lazy_bg"),
    (0x0100, "snapshot_bitmap"),
    (0x0200, "sparse_super2"),
    (0x0400, "fast_commit"),
    (0x0800, "stable_inodes"),
    (0x1000, "orphan_file"),
];
const INCOMPAT: &[(u32, &str)] = &[
    (0x0001, "compression"),
    (0x0002, "filetype"),
    (0x0004, "needs_recovery"),
    (0x0008, "journal_dev"),
    (0x0010, "meta_bg"),
    (0x0040, "extent"),
    (0x0080, "64bit"),
    (0x0100, "mmp"),
    (0x0200, "flex_bg"),
    (0x0400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const RO_COMPAT: &[(u32, &str)] = &[
    (0x0001, "sparse_super"),
    (0x0002, "large_file"),
    (0x0008, "huge_file"),
    (0x0010, "uninit_bg"),
    (0x0020, "dir_nlink"),
    (0x0040, "extra_isize"),
    (0x0080, "snapshot"),
    (0x0100, "quota"),
    (0x0200, "bigalloc"),
    (0x0400, "metadata_csum"),
    (0x0800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];
/// `s_feature_incompat`'s 64-bit flag, which makes the block counts 64 bits wide.
const INCOMPAT_64BIT: u32 = 0x0080;

fn feature_names(flags: u32, known: &[(u32, &str)], letter: char, out: &mut Vec<String>) {
    for bit in 0..32 {
        let mask = 1u32 << bit;
        if flags & mask != 0 {
            match known.iter().find(|(m, _)| *m == mask) {
                Some((_, name)) => out.push((*name).to_owned()),
                None => out.push(format!("FEATURE_{letter}{bit}")),
            }
        }
    }
}

/// The facts of a superblock (the 1024 bytes at byte 1024 of the filesystem).
fn ext4(sb: &[u8; 1024]) -> Ext4 {
    let (compat, incompat, ro_compat) = (le32(sb, 0x5C), le32(sb, 0x60), le32(sb, 0x64));
    let wide = incompat & INCOMPAT_64BIT != 0;
    let count = |lo: usize, hi: usize| u64::from(le32(sb, lo)) | if wide { u64::from(le32(sb, hi)) << 32 } else { 0 };
    let blocks = count(0x04, 0x150);
    let free_blocks = count(0x0C, 0x158);
    // s_log_block_size is 0..=6 on any filesystem the kernel mounts; clamp so a corrupt value cannot overflow.
    let block_size = 1024u64 << le32(sb, 0x18).min(16);
    let mut features = Vec::new();
    feature_names(compat, COMPAT, 'C', &mut features);
    feature_names(incompat, INCOMPAT, 'I', &mut features);
    feature_names(ro_compat, RO_COMPAT, 'R', &mut features);
    let state = le16(sb, 0x3A);
    let uuid: [u8; 16] = sb[0x68..0x78].try_into().expect("16 bytes");
    Ext4 {
        label: c_string(&sb[0x78..0x88]),
        uuid: Guid::from_bytes(uuid).to_string().to_ascii_lowercase(),
        block_size: Bytes(block_size),
        blocks,
        free_blocks,
        size: Bytes(blocks.saturating_mul(block_size)),
        free: Bytes(free_blocks.saturating_mul(block_size)),
        inodes: le32(sb, 0x00),
        free_inodes: le32(sb, 0x10),
        state: if state & 2 != 0 {
            "with errors"
        } else if state & 1 != 0 {
            "clean"
        } else {
            "not clean"
        },
        features,
    }
}

/// The BIOS parameter block of a FAT boot sector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bpb {
    sector_size: u64,
    cluster_size: u64,
    total_sectors: u64,
    clusters: u64,
    label: String,
    volume_id: u32,
}

impl Bpb {
    /// The BPB, if `boot` is a FAT boot sector: `55 AA`, a jump, sane geometry and a `FAT` type string.
    fn parse(boot: &[u8; 512]) -> Option<Self> {
        let sector_size = u64::from(le16(boot, 0x0B));
        let per_cluster = u64::from(boot[0x0D]);
        let reserved = u64::from(le16(boot, 0x0E));
        let fats = u64::from(boot[0x10]);
        let sane = boot[510..512] == [0x55, 0xAA]
            && matches!(boot[0], 0xEB | 0xE9)
            && matches!(sector_size, 512 | 1024 | 2048 | 4096)
            && per_cluster.is_power_of_two()
            && reserved > 0
            && fats > 0;
        let fat32 = &boot[0x52..0x5A] == b"FAT32   ";
        if !sane || !(fat32 || boot[0x36..0x39] == *b"FAT") {
            return None;
        }
        let total = match le16(boot, 0x13) {
            0 => u64::from(le32(boot, 0x20)),
            n => u64::from(n),
        };
        let fat_size = match le16(boot, 0x16) {
            0 => u64::from(le32(boot, 0x24)),
            n => u64::from(n),
        };
        let root_dir_sectors = (u64::from(le16(boot, 0x11)) * 32).div_ceil(sector_size);
        let data = total.checked_sub(reserved + fats * fat_size + root_dir_sectors)?;
        // FAT32 keeps the label and id after its longer BPB.
        let (id_at, label_at) = if fat32 { (0x43, 0x47) } else { (0x27, 0x2B) };
        Some(Self {
            sector_size,
            cluster_size: sector_size * per_cluster,
            total_sectors: total,
            clusters: data / per_cluster,
            label: String::from_utf8_lossy(&boot[label_at..label_at + 11]).trim_end().to_owned(),
            volume_id: le32(boot, id_at),
        })
    }

    /// By cluster count, as the FAT specification decides (not by the type string).
    fn fat_type(&self) -> &'static str {
        match self.clusters {
            ..4085 => "FAT12",
            4085..65525 => "FAT16",
            _ => "FAT32",
        }
    }
}

/// Opens the FAT volume in `window` with fatfs, read-only.
pub(crate) fn open_fat(window: &Window) -> Result<fatfs::FileSystem<FatIo>> {
    fatfs::FileSystem::new(FatIo::new(window.clone()), fatfs::FsOptions::new()).map_err(|e| {
        anyhow!("{}: the FAT filesystem at byte {} cannot be read: {e}", window.disk().name(), window.range().start)
    })
}

fn fat(window: &Window, bpb: &Bpb, warnings: &mut Vec<String>) -> Fat {
    let read = |fs: fatfs::FileSystem<FatIo>| -> std::io::Result<(u64, Option<String>)> {
        let stats = fs.stats()?;
        let free = u64::from(stats.free_clusters()) * u64::from(stats.cluster_size());
        Ok((free, fs.read_volume_label_from_root_dir()?))
    };
    let (free, root_label) = match open_fat(window).and_then(|fs| {
        read(fs)
            .with_context(|| format!("{}: the FAT filesystem at byte {}", window.disk().name(), window.range().start))
    }) {
        Ok((free, label)) => (Some(Bytes(free)), label),
        Err(e) => {
            warnings.push(format!("{e:#}"));
            (None, None)
        }
    };
    Fat {
        fat_type: bpb.fat_type(),
        label: root_label.unwrap_or_else(|| bpb.label.clone()),
        volume_id: format!("{:04X}-{:04X}", bpb.volume_id >> 16, bpb.volume_id & 0xFFFF),
        cluster_size: Bytes(bpb.cluster_size),
        size: Bytes(bpb.total_sectors * bpb.sector_size),
        free,
    }
}

/// Opens the ext4 filesystem in `window` with `ext4-view`.
pub(crate) fn open_ext4(window: &Window) -> Result<ext4_view::Ext4> {
    ext4_view::Ext4::load(Box::new(window.clone())).map_err(|e| {
        anyhow!("{}: the ext4 filesystem at byte {} cannot be read: {e}", window.disk().name(), window.range().start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_facts() {
        let mut sb = [0u8; 1024];
        sb[0x00..0x04].copy_from_slice(&100u32.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&1000u32.to_le_bytes());
        sb[0x0C..0x10].copy_from_slice(&250u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        sb[0x18] = 2;
        sb[0x3A] = 1;
        sb[0x5C..0x60].copy_from_slice(&0x0004u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&(0x0080u32 | 0x0040 | 1 << 30).to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&0x0400u32.to_le_bytes());
        sb[0x68..0x78].copy_from_slice(&[
            0xAB, 0x6F, 0xA9, 0x53, 0xD4, 0xB6, 0x47, 0x6F, 0x91, 0x23, 0x58, 0x9E, 0xFE, 0xDF, 0x05, 0xEF,
        ]);
        sb[0x78..0x7D].copy_from_slice(b"nixos");
        let fs = ext4(&sb);
        assert_eq!(fs.label, "nixos");
        assert_eq!(fs.uuid, "ab6fa953-d4b6-476f-9123-589efedf05ef");
        assert_eq!(fs.block_size, Bytes(4096));
        assert_eq!(fs.blocks, (1 << 32) + 1000, "64bit: the high half counts");
        assert_eq!(fs.free, Bytes(250 * 4096));
        assert_eq!(fs.features, ["has_journal", "extent", "64bit", "FEATURE_I30", "metadata_csum"]);
        assert_eq!(fs.state, "clean");
    }

    #[test]
    fn fat_boot_sectors() {
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
        let bpb = Bpb::parse(&boot).expect("a FAT32 boot sector");
        assert_eq!((bpb.fat_type(), bpb.label.as_str(), bpb.cluster_size), ("FAT32", "ESP", 4096));
        assert_eq!(bpb.clusters, (1_048_576 - 32 - 2 * 1024) / 8);
        let mut grub = boot;
        grub[0x52..0x5A].copy_from_slice(b"\0\0\0\0\0\0\0\0");
        assert_eq!(Bpb::parse(&grub), None, "no FAT type string: GRUB's boot.img or an MBR, not a FAT volume");
        let mut zero_cluster = boot;
        zero_cluster[0x0D] = 0;
        assert_eq!(Bpb::parse(&zero_cluster), None);
    }
}
