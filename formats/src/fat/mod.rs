//! A planned, deterministic FAT32 writer for EFI system partitions.
//!
//! Describe the contents as a [`Tree`], choose [`Options`] (partition size, start sector, volume id, label,
//! timestamp, sector size), [`plan`] it (pure: geometry, short names, long-name entries, every cluster and every
//! directory's bytes are resolved), then [`Plan::write`] it into any [`WriteAt`](crate::sink::WriteAt) sink.
//! [`min_size`] tells before planning how big a partition the tree needs.
//!
//! The filesystem is always FAT32 (at least 65,525 clusters, whatever the size), with 32 reserved sectors, two
//! identical FATs, the root directory at cluster 2, FSInfo at sector 1 with an exact free count, and backups of
//! the boot sector and FSInfo at sectors 6 and 7. Names that are not 8.3 names in upper case get VFAT long-name
//! entries, always after a directory's `.` and `..`. Every directory and file occupies one contiguous run of
//! clusters: the directories first, then the files, each depth first in name order. Nothing depends on the clock
//! or on the order the tree was built in.

mod boot;
mod dir;
mod geometry;
mod name;
mod plan;
mod time;
mod tree;
mod write;

use crate::units::SectorSize;

pub use geometry::{Cluster, Geometry, MAX_CLUSTER_BYTES, MAX_CLUSTERS, MIN_CLUSTERS, RESERVED_SECTORS};
pub use plan::{FileExtent, Plan, min_size, plan};
pub use tree::{MAX_NAME_UNITS, NodeId, Source, Tree};

/// Filesystem options. Everything that would otherwise be random or the current time is given here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Size of the partition in bytes, a multiple of the sector size; the filesystem fills it exactly.
    pub size_bytes: u64,
    /// Logical sector size.
    pub sector_size: SectorSize,
    /// Sectors (of `sector_size`) before the partition on its disk: the partition's start LBA. Boot code and
    /// some firmware use it to find the filesystem.
    pub hidden_sectors: u32,
    /// Volume serial number.
    pub volume_id: u32,
    /// Volume label: at most 11 bytes of ASCII, no lower case, none of `"*+,./:;<=>?[\]|`, not starting with a
    /// space. Empty for none (`NO NAME` in the boot sector, no label entry).
    pub label: String,
    /// Seconds since the Unix epoch (UTC) written as creation, modification and access time of every directory
    /// entry; clamped to the DOS range 1980..=2107.
    pub timestamp: i64,
}

impl Options {
    /// Options for a partition of `size_bytes` starting at sector `hidden_sectors` of a 512-byte-sector disk,
    /// labelled `ESP`.
    #[must_use]
    pub fn new(size_bytes: u64, hidden_sectors: u32, volume_id: u32, timestamp: i64) -> Self {
        Self {
            size_bytes,
            sector_size: SectorSize::S512,
            hidden_sectors,
            volume_id,
            label: "ESP".to_owned(),
            timestamp,
        }
    }
}

/// What can go wrong planning or writing a filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name that FAT cannot store.
    #[error("name \"{name}\" under \"{parent}\": {why}")]
    BadName {
        /// The directory it was added to.
        parent: String,
        /// The name.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Two entries of one directory whose names are equal ignoring case (FAT compares names that way).
    #[error("\"{path}\" already exists (as \"{existing}\"; FAT names are case-insensitive)")]
    DuplicateName {
        /// The path added.
        path: String,
        /// The name already in the directory.
        existing: String,
    },
    /// Adding an entry under a node that is not a directory.
    #[error("\"{path}\" is not a directory")]
    NotADirectory {
        /// The node's path.
        path: String,
    },
    /// A node id not in the tree.
    #[error("node {node} is not in the tree")]
    NoSuchNode {
        /// The node.
        node: NodeId,
    },
    /// Writing a plan with a tree other than the one planned.
    #[error("node {node} (\"{path}\") is not the file the plan was made for")]
    TreeMismatch {
        /// The node.
        node: NodeId,
        /// Its path in the tree given.
        path: String,
    },
    /// More nodes than a tree can hold.
    #[error("too many files for one filesystem")]
    TooManyNodes,
    /// In-memory contents whose length is not the declared size.
    #[error("file \"{path}\": declared {size} bytes but {bytes} given")]
    SizeMismatch {
        /// The file's path.
        path: String,
        /// Declared size.
        size: u64,
        /// Bytes given.
        bytes: u64,
    },
    /// A file of 4 GiB or more.
    #[error("file \"{path}\" has {size} bytes; FAT32 files hold at most 4294967295")]
    FileTooLarge {
        /// The file's path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A directory with more than 65,536 entries of 32 bytes (long-name entries included).
    #[error("directory \"{path}\" needs {entries} entries; FAT allows at most 65536")]
    DirectoryTooLarge {
        /// The directory's path.
        path: String,
        /// Entries needed.
        entries: usize,
    },
    /// A volume label FAT cannot store.
    #[error("volume label \"{label}\": {why}")]
    BadLabel {
        /// The label.
        label: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A partition size that is not a whole number of sectors.
    #[error("partition size {size} bytes is not a multiple of the {sector}-byte sector size")]
    UnalignedSize {
        /// Size given.
        size: u64,
        /// Sector size.
        sector: SectorSize,
    },
    /// A partition too small to be FAT32 at all (fewer than 65,525 clusters even with one-sector clusters).
    #[error(
        "partition of {given} bytes is too small for FAT32: with {sector}-byte sectors it needs at least {minimum} \
         bytes (65525 clusters)"
    )]
    TooSmallForFat32 {
        /// Bytes given.
        given: u64,
        /// Smallest FAT32 partition with this sector size.
        minimum: u64,
        /// Sector size.
        sector: SectorSize,
    },
    /// A partition too small for the tree.
    #[error("partition too small: the files need {needed} bytes, the partition has {given} bytes")]
    TooSmall {
        /// Smallest partition that holds the tree ([`min_size`]).
        needed: u64,
        /// Bytes given.
        given: u64,
    },
    /// A partition larger than FAT32 can address with this sector size.
    #[error("partition of {given} bytes is too large for FAT32 with {sector}-byte sectors (at most {maximum})")]
    TooLarge {
        /// Bytes given.
        given: u64,
        /// Largest size supported.
        maximum: u64,
        /// Sector size.
        sector: SectorSize,
    },
    /// A tree larger than any FAT32 volume with this sector size.
    #[error("the files need more than the {maximum} bytes FAT32 can hold with {sector}-byte sectors")]
    ContentsTooLarge {
        /// Largest volume supported.
        maximum: u64,
        /// Sector size.
        sector: SectorSize,
    },
    /// Copying a file's bytes into the image failed: reading its source, a source whose size changed, or
    /// writing the bytes.
    #[error(transparent)]
    Copy(#[from] crate::copy::Error),
    /// Writing the image failed.
    #[error("writing {what} at image offset {offset}")]
    Write {
        /// Byte offset in the sink.
        offset: u64,
        /// What was being written.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}
