//! A planned, parallel, deterministic ext4 writer.
//!
//! Describe the contents as a [`Tree`], choose [`Options`], [`plan`] it (pure: every inode number, block,
//! extent and directory block is resolved, and the size is exact), then [`Plan::write`] it into any
//! [`WriteAt`](crate::sink::WriteAt) sink. File data is copied by rayon workers at planned offsets.
//!
//! The filesystem has 4 KiB blocks, 256-byte inodes, extents, 64bit, flex_bg, sparse_super, large_file,
//! huge_file, dir_nlink, extra_isize, filetype, dir_index (htree for every directory over one block),
//! metadata_csum, a journal, lost+found and reserved descriptor blocks for online growth.

mod csum;
mod dir;
mod hash;
mod inode;
mod journal;
mod layout;
mod plan;
mod resize;
mod superblock;
mod tree;
mod write;

pub use layout::{BLOCK, Geometry};
pub use plan::{DataJob, GroupPlan, Plan, plan};
pub(crate) use tree::Node;
pub use tree::{MAX_NAME, MAX_SYMLINK, Meta, NodeId, NodeKind, Source, Tree};
pub use write::FileWriter;

/// The most names (hard links) a file may have: ext4's `EXT4_LINK_MAX`.
pub const MAX_LINKS: u32 = 65_000;

/// How big the filesystem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// The smallest size (a whole number of MiB) that holds the tree with at least this much free space.
    Auto {
        /// Free space to leave, in bytes.
        extra_bytes: u64,
    },
    /// Exactly this many bytes (rounded down to whole blocks); planning fails if the tree does not fit.
    Fixed {
        /// Size in bytes.
        bytes: u64,
    },
}

/// Filesystem options. Everything that would otherwise be random or the current time is given here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Volume label, at most 16 bytes.
    pub label: Vec<u8>,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Seed of the directory hash.
    pub hash_seed: [u8; 16],
    /// Creation, write and check time of the filesystem, and the time of the inodes it creates itself.
    pub timestamp: u32,
    /// Size.
    pub size: Size,
    /// Bytes of filesystem per inode (at least the tree's inodes plus a margin are always provided).
    pub inode_ratio: u64,
    /// Percentage of blocks reserved for root.
    pub reserved_percent: u8,
    /// Whether to create a journal.
    pub journal: bool,
    /// Whether to reserve descriptor blocks for growing the filesystem 1024-fold online.
    pub resize_room: bool,
}

impl Options {
    /// Options with the given identity and defaults for the rest: auto size, one inode per 16 KiB, no
    /// reserved blocks, a journal, room to grow.
    #[must_use]
    pub fn new(label: &[u8], uuid: [u8; 16], hash_seed: [u8; 16], timestamp: u32) -> Self {
        Self {
            label: label.to_vec(),
            uuid,
            hash_seed,
            timestamp,
            size: Size::Auto { extra_bytes: 0 },
            inode_ratio: 16384,
            reserved_percent: 0,
            journal: true,
            resize_room: true,
        }
    }

    pub(crate) fn hash_seed_words(&self) -> [u32; 4] {
        std::array::from_fn(|i| u32::from_le_bytes(self.hash_seed[4 * i..4 * i + 4].try_into().expect("4 bytes")))
    }
}

/// What can go wrong planning or writing a filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name that ext4 cannot store.
    #[error("name \"{}\": {why}", .name.escape_ascii())]
    BadName {
        /// The name.
        name: Vec<u8>,
        /// What is wrong.
        why: &'static str,
    },
    /// Two entries of one directory with the same name.
    #[error("duplicate name \"{}\" in one directory", .name.escape_ascii())]
    DuplicateName {
        /// The name.
        name: Vec<u8>,
    },
    /// Adding an entry under a node that is not a directory.
    #[error("node {node} is not a directory")]
    NotADirectory {
        /// The node.
        node: NodeId,
    },
    /// Hard-linking a directory.
    #[error("node {node} is a directory and cannot have a second name")]
    LinkToDirectory {
        /// The node.
        node: NodeId,
    },
    /// A symlink target that is empty, too long or has a NUL.
    #[error("symlink \"{}\": target of {len} bytes (must be 1 to 4095 bytes without NUL)", .name.escape_ascii())]
    BadSymlink {
        /// The link's name.
        name: Vec<u8>,
        /// Target length.
        len: usize,
    },
    /// In-memory contents whose length is not the declared size.
    #[error("file \"{}\": declared {size} bytes but {bytes} given", .name.escape_ascii())]
    SizeMismatch {
        /// The file's name.
        name: Vec<u8>,
        /// Declared size.
        size: u64,
        /// Bytes given.
        bytes: u64,
    },
    /// A file or symlink with more names than ext4's link count holds.
    #[error("node {node} has {links} names; ext4 allows at most {MAX_LINKS} for a file")]
    TooManyLinks {
        /// The node.
        node: NodeId,
        /// Its names.
        links: u32,
    },
    /// More than 2^32 nodes.
    #[error("too many files for one filesystem")]
    TooManyNodes,
    /// The inodes needed do not fit in the groups (at most 32768 per group).
    #[error("{inodes} inodes do not fit in {groups} block groups")]
    TooManyInodes {
        /// Inodes wanted.
        inodes: u64,
        /// Groups available.
        groups: u64,
    },
    /// A fixed size smaller than the contents need.
    #[error("filesystem too small: the contents need {needed} bytes, the size given is {given} bytes")]
    TooSmall {
        /// Bytes needed (the auto size with no extra space).
        needed: u64,
        /// Bytes given.
        given: u64,
    },
    /// Allocation ran out of blocks (internal to sizing).
    #[error("out of space")]
    OutOfSpace,
    /// A block group too short for its metadata (internal to sizing).
    #[error("last block group too small for its metadata")]
    GroupTooSmall,
    /// A file too large or fragmented for a two-level extent tree.
    #[error("file too large for its extent tree")]
    FileTooLarge,
    /// A label longer than 16 bytes.
    #[error("label of {0} bytes (at most 16)")]
    LabelTooLong(usize),
    /// Copying a file's bytes into the image failed: reading its source, a source whose size changed, or
    /// writing the bytes.
    #[error(transparent)]
    Copy(#[from] crate::copy::Error),
    /// A file whose data the caller was to write ([`Source::Caller`]) left to the writer.
    #[error("node {node}: its data is written by the caller, not from the tree")]
    NotWritten {
        /// The file.
        node: NodeId,
    },
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
