//! Partition tables, planned: a [`DiskLayout`] says where every partition lies (in [`Lba`]s of a [`SectorSize`],
//! 1 MiB aligned) and what it is (type GUID, unique GUID, name, attributes); writing it produces a GPT (primary
//! header and entries from LBA 1, backup at the end, protective MBR) or a DOS partition table.
//!
//! GUIDs are the caller's: derive them from a seed ([`Guid::v4_from_bytes`]) and the same layout gives the same
//! bytes. Build a layout in full with [`DiskLayout::new`], or from sizes with [`DiskLayout::sequential`], print it
//! (`Display`, like `sfdisk --dump`), and [`DiskLayout::write`] it into any [`WriteAt`](crate::sink::WriteAt) sink
//! before or after the partitions' contents: it touches only the table's own sectors.
//!
//! The layouts kiln names (nixpkgs' `make-disk-image`) map onto partitions as: `efi` = ESP + root, `legacy+gpt` =
//! BIOS boot + root, `hybrid` = BIOS boot + ESP + root, `efixbootldr` = ESP + XBOOTLDR + root (all GPT), and
//! `legacy` = one bootable Linux partition in a DOS table.

mod gpt;
mod guid;
mod layout;
mod mbr;
mod sequential;
#[cfg(test)]
mod testing;
mod write;

pub use crate::units::{ByteRange, Bytes, Lba, LbaRange, MIB, SectorSize};
pub use gpt::{GPT_ENTRIES, GPT_ENTRY_SIZE, GptGeometry, crc32};
pub use guid::{GptAttributes, Guid, partition_type};
pub use layout::{DiskLayout, GPT_NAME_UNITS, MBR_PARTITIONS, Partition, PartitionTable, mbr_type};
pub use mbr::MBR_SIZE;
pub use sequential::{DiskSize, PartitionRequest, PartitionSize};
pub use write::Region;

/// What can go wrong planning or writing a partition table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Text that is not a GUID.
    #[error("\"{text}\" is not a GUID (want XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)")]
    BadGuid {
        /// The text.
        text: String,
    },
    /// A disk size that is not a whole number of sectors.
    #[error("disk size {size} bytes is not a multiple of the {sector}-byte sector size")]
    UnalignedDiskSize {
        /// Size given.
        size: Bytes,
        /// Sector size.
        sector: SectorSize,
    },
    /// A disk too small for its partitions and table.
    #[error("disk too small: the partitions and partition table need {needed} bytes, the disk has {given}")]
    DiskTooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes given.
        given: u64,
    },
    /// A size beyond 2^64 bytes.
    #[error("{what} overflows 64 bits")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
    },
    /// More partitions than the table holds.
    #[error("{count} partitions, a {table} partition table holds at most {max}")]
    TooManyPartitions {
        /// Partitions given.
        count: usize,
        /// The most the table holds.
        max: usize,
        /// `gpt` or `dos`.
        table: &'static str,
    },
    /// A GUID that must not be nil.
    #[error("{what} is the nil GUID")]
    NilGuid {
        /// Which GUID.
        what: String,
    },
    /// Two uses of one GUID (partition 0 is the disk GUID).
    #[error("GUID {guid} used twice: by partition {first} and partition {second} (0 is the disk GUID)")]
    DuplicateGuid {
        /// The GUID.
        guid: Guid,
        /// First user (0: the disk).
        first: usize,
        /// Second user.
        second: usize,
    },
    /// A GPT partition name GPT cannot hold.
    #[error("partition {number} name \"{name}\": {why}")]
    BadName {
        /// Partition number, from 1.
        number: usize,
        /// The name.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A partition of no sectors.
    #[error("partition {number} (\"{name}\") is empty")]
    EmptyPartition {
        /// Partition number, from 1.
        number: usize,
        /// Its name.
        name: String,
    },
    /// A partition start or end off the 1 MiB grid.
    #[error("partition {number} (\"{name}\") {edge} at LBA {lba} (byte {offset}) is not on a 1 MiB boundary")]
    Unaligned {
        /// Partition number, from 1.
        number: usize,
        /// Its name.
        name: String,
        /// `start` or `end`.
        edge: &'static str,
        /// The sector.
        lba: Lba,
        /// Its byte offset.
        offset: Bytes,
    },
    /// A partition outside the sectors the table leaves for partitions.
    #[error("partition {number} (\"{name}\") at {extent} lies outside the usable {usable}")]
    OutsideUsable {
        /// Partition number, from 1.
        number: usize,
        /// Its name.
        name: String,
        /// Where it lies.
        extent: LbaRange,
        /// Where partitions may lie.
        usable: LbaRange,
    },
    /// Partitions out of disk order or overlapping.
    #[error(
        "partition {second} at {second_extent} overlaps or precedes partition {first} at {first_extent} \
         (partitions must be in disk order)"
    )]
    Overlap {
        /// The earlier partition's number.
        first: usize,
        /// Its extent.
        first_extent: LbaRange,
        /// The later partition's number.
        second: usize,
        /// Its extent.
        second_extent: LbaRange,
    },
    /// [`PartitionSize::Fill`] before the last partition.
    #[error("partition {number} (\"{name}\") fills the disk but is not the last partition")]
    FillNotLast {
        /// Partition number, from 1.
        number: usize,
        /// Its name.
        name: String,
    },
    /// [`PartitionSize::Fill`] with [`DiskSize::Fit`]: nothing to fill.
    #[error("the last partition fills the disk, so the disk size must be given")]
    FillNeedsDiskSize,
    /// Something an MBR cannot express.
    #[error("partition {number} (type {type_guid}) on an MBR disk: {why}")]
    NotMbr {
        /// Partition number, from 1.
        number: usize,
        /// Its type.
        type_guid: Guid,
        /// What is wrong.
        why: &'static str,
    },
    /// Writing the image failed.
    #[error("writing the {what} at image offset {offset}")]
    Write {
        /// What was being written.
        what: &'static str,
        /// Byte offset in the sink.
        offset: u64,
        /// Why.
        source: std::io::Error,
    },
}
