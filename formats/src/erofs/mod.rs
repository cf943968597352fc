//! A planned, parallel, deterministic EROFS writer, uncompressed or with LZ4 ([`lz4`]).
//!
//! The same [`Tree`](crate::ext4::Tree) the ext4 writer takes is [`plan`]ned (pure: every inode's place,
//! every data block and the exact size are resolved), then [`Plan::write`] puts it into any
//! [`WriteAt`](crate::sink::WriteAt) sink, file data copied by rayon workers at planned offsets.
//!
//! Layout (the kernel's `Documentation/filesystems/erofs.rst` and erofs-utils' `erofs_fs.h` are the spec):
//! 4 KiB blocks; block 0 holds the superblock at byte 1024 (with its crc32c); the metadata area starts at
//! block 1 and holds every inode in node order, each followed by its inline data (the tail of a file or a
//! directory that does not fill a block, a symlink's target), an inode and its inline data never crossing a
//! block; then the data area: each file's and large directory's whole blocks, contiguous, in node order.
//! Inodes are compact (32 bytes) unless a size, link count, owner or modification time needs the extended
//! (64-byte) form; compact inodes take their modification time from the superblock's build time, so a tree
//! whose nodes all have the options' timestamp (a Nix store's mtime 1) is all compact. No xattrs, no holes: a
//! file's blocks are all allocated (all-zero blocks are left unwritten in the sink, which reads as zeros there).
//!
//! Compression ([`pack`], then [`plan_packed`]): a file LZ4 shrinks by at least a block is stored as 4 KiB
//! clusters ([`lz4`]) with a full cluster map after its inode (`EROFS_INODE_COMPRESSED_FULL`: an 8-byte index
//! per 4 KiB of the file); every other file is stored as it is, with its tail inline. Which files and clusters
//! are compressed depends on their bytes alone, so the image is as deterministic as an uncompressed one.

mod dir;
pub mod lz4;
mod plan;
mod write;

#[cfg(test)]
mod tests;

pub use plan::{DataJob, Plan, plan, plan_packed};
pub use write::{FileWriter, pack};

use crate::ext4::NodeId;

/// Block size (the only one Linux mounts on 4 KiB-page machines before 6.x's large-block support).
pub const BLOCK: u64 = 4096;
/// The superblock's magic number.
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// Byte offset of the superblock.
pub const SUPER_OFFSET: u64 = 1024;

/// Filesystem options. Everything that would otherwise be random or the current time is given here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Volume name, at most 16 bytes.
    pub label: Vec<u8>,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// The superblock's build time, which compact inodes use as their modification time.
    pub timestamp: u64,
}

/// What can go wrong planning or writing a filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two entries of one directory with the same name.
    #[error("duplicate name \"{}\" in one directory", .name.escape_ascii())]
    DuplicateName {
        /// The name.
        name: Vec<u8>,
    },
    /// A node with more names than an inode counts.
    #[error("node {node} has {links} names (at most {} for one inode)", u32::MAX)]
    TooManyLinks {
        /// The node.
        node: NodeId,
        /// Its names.
        links: u64,
    },
    /// More blocks than the superblock's 32-bit block count addresses.
    #[error("the filesystem needs {blocks} blocks of 4 KiB; EROFS addresses at most 2^32")]
    TooLarge {
        /// Blocks needed.
        blocks: u64,
    },
    /// Clusters given for a node that is not a file, or that do not start at byte 0 and advance within it.
    #[error("node {node}: its compressed clusters do not cover it in order")]
    BadClusters {
        /// The node.
        node: NodeId,
    },
    /// A label longer than 16 bytes.
    #[error("label of {0} bytes (at most 16)")]
    LabelTooLong(usize),
    /// Copying a file's bytes into the image failed: reading its source, a source whose size changed, or
    /// writing the bytes.
    #[error(transparent)]
    Copy(#[from] crate::copy::Error),
    /// A file whose data the caller was to write ([`Source::Caller`](crate::ext4::Source::Caller)) left to the
    /// writer.
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
