//! Filesystems as the report shows them, as [`readback`](crate::readback) identifies them by magic number: ext4
//! (the superblock's label, UUID, sizes, features named as `dumpe2fs` names them), FAT (the boot sector's
//! facts, free space through the `fatfs` crate), a few others by name only, or unknown.

use anyhow::{Context, Result};
use kiln_formats::disk::{Bytes, Guid};
use serde::Serialize;

use crate::readback::{Ext4Superblock, FatBootSector, FatIo, Magic, Window, identify, open_fat, ser};

/// What a partition (or a bare image) holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Filesystem {
    /// ext2/3/4 (one superblock format; kiln writes ext4).
    Ext4(Ext4),
    /// FAT12/16/32.
    Fat(Fat),
    /// EROFS (kiln's verified store).
    Erofs(Erofs),
    /// A dm-verity hash device (cryptsetup's superblock).
    Verity(VerityHashes),
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

/// An EROFS superblock's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Erofs {
    /// Volume name.
    pub label: String,
    /// UUID.
    pub uuid: String,
    /// Size in bytes (blocks × 4096).
    #[serde(serialize_with = "ser::bytes")]
    pub size: Bytes,
    /// Inodes.
    pub inodes: u64,
}

/// A dm-verity hash device's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerityHashes {
    /// Hash algorithm.
    pub algorithm: &'static str,
    /// Data blocks (4096 bytes) covered.
    pub data_blocks: u64,
    /// The salt, hex.
    pub salt: String,
    /// The UUID in the superblock.
    pub uuid: String,
    /// The root hash the tree leads to, hex (what `usrhash=`/`roothash=` must say).
    pub root_hash: Option<String>,
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

/// Identifies what `window` holds and reports it. Reading errors are errors; a FAT volume fatfs cannot read is a
/// warning.
pub(crate) fn probe(window: &Window, warnings: &mut Vec<String>) -> Result<Filesystem> {
    Ok(report(window, &identify(window)?, warnings))
}

/// The report of `magic`, what `window` holds.
pub(crate) fn report(window: &Window, magic: &Magic, warnings: &mut Vec<String>) -> Filesystem {
    match magic {
        Magic::Ext4(sb) => Filesystem::Ext4(ext4(sb)),
        Magic::Fat(boot) => Filesystem::Fat(fat(window, boot, warnings)),
        Magic::Other("erofs") => erofs(window).map_or(Filesystem::Other { name: "erofs" }, Filesystem::Erofs),
        Magic::Other(name) => Filesystem::Other { name },
        Magic::Unknown => verity(window).map_or(Filesystem::Unknown, Filesystem::Verity),
    }
}

fn erofs(window: &Window) -> Option<Erofs> {
    let mut sb = [0u8; 128];
    window.read("the EROFS superblock", Bytes(1024), &mut sb).ok()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned();
    Some(Erofs {
        label: text(&sb[0x40..0x50]),
        uuid: crate::seed::format_uuid(&sb[0x30..0x40].try_into().expect("16 bytes")),
        size: Bytes(u64::from(u32::from_le_bytes(sb[0x24..0x28].try_into().expect("4 bytes"))) << 12),
        inodes: u64::from_le_bytes(sb[0x10..0x18].try_into().expect("8 bytes")),
    })
}

fn verity(window: &Window) -> Option<VerityHashes> {
    use kiln_formats::verity::{SUPERBLOCK, Verity, hex};
    let mut sb = [0u8; SUPERBLOCK];
    window.read("a verity superblock", Bytes(0), &mut sb).ok()?;
    let v = Verity::from_superblock(&sb).ok()?;
    let read =
        |buf: &mut [u8], at: u64| window.read("the verity hash tree", Bytes(at), buf).map_err(std::io::Error::other);
    Some(VerityHashes {
        algorithm: "sha256",
        data_blocks: v.data_blocks,
        salt: hex(&v.salt),
        uuid: crate::seed::format_uuid(&v.uuid),
        root_hash: v.root_of(&read).ok().flatten().map(|h| hex(&h)),
    })
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

/// The facts of a superblock.
fn ext4(sb: &Ext4Superblock) -> Ext4 {
    let [compat, incompat, ro_compat] = sb.features;
    let block_size = sb.block_size();
    let mut features = Vec::new();
    feature_names(compat, COMPAT, 'C', &mut features);
    feature_names(incompat, INCOMPAT, 'I', &mut features);
    feature_names(ro_compat, RO_COMPAT, 'R', &mut features);
    Ext4 {
        label: String::from_utf8_lossy(sb.label()).into_owned(),
        uuid: Guid::from_bytes(sb.uuid).to_string().to_ascii_lowercase(),
        block_size,
        blocks: sb.blocks,
        free_blocks: sb.free_blocks,
        size: Bytes(sb.blocks.saturating_mul(block_size.get())),
        free: Bytes(sb.free_blocks.saturating_mul(block_size.get())),
        inodes: sb.inodes,
        free_inodes: sb.free_inodes,
        state: if sb.state & 2 != 0 {
            "with errors"
        } else if sb.state & 1 != 0 {
            "clean"
        } else {
            "not clean"
        },
        features,
    }
}

fn fat(window: &Window, boot: &FatBootSector, warnings: &mut Vec<String>) -> Fat {
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
        fat_type: boot.fat_type(),
        label: root_label.unwrap_or_else(|| boot.label.clone()),
        volume_id: format!("{:04X}-{:04X}", boot.volume_id >> 16, boot.volume_id & 0xFFFF),
        cluster_size: boot.cluster_size(),
        size: boot.size(),
        free,
    }
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
        let fs = ext4(&Ext4Superblock::parse(&sb));
        assert_eq!(fs.label, "nixos");
        assert_eq!(fs.uuid, "ab6fa953-d4b6-476f-9123-589efedf05ef");
        assert_eq!(fs.block_size, Bytes(4096));
        assert_eq!(fs.blocks, (1 << 32) + 1000, "64bit: the high half counts");
        assert_eq!(fs.free, Bytes(250 * 4096));
        assert_eq!(fs.features, ["has_journal", "extent", "64bit", "FEATURE_I30", "metadata_csum"]);
        assert_eq!(fs.state, "clean");
    }
}
