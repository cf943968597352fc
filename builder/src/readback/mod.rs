//! Reading images back, read-only: the one reader of disk images that `kiln inspect`, `kiln verify` (and the
//! coming `kiln flash`) share. It says what an image is and where things are in it; what to report and what to
//! check is theirs.
//!
//! - [`disk`]: the image, opened read-only (a regular file or a block device, non-blocking, so a FIFO cannot
//!   hang the open), every read bounded and naming the image, the byte offset and what was being read;
//!   [`ReadAt`] is the one positioned-read trait, so tests read memory.
//! - [`window`]: a byte range of the image read as a device of its own (a partition, or the whole image).
//! - [`table`]: the layout ([`Layout`]): a GPT (512- or 4096-byte sectors, header and entry-array checksums,
//!   the backup header, the protective or hybrid MBR), a filesystem at byte 0, or a DOS table; partitions with
//!   their byte ranges and types by name; what is odd ([`Issue`]) and what lies past the end of a truncated
//!   image ([`PastEnd`]) as values, so inspect can warn and verify can collect problems.
//! - [`container`]: what a file that is no raw disk is (qcow2, VHDX, VMDK, VHD, VDI, zstd, gzip, xz, tar), and
//!   the error for a file that is no disk image ([`not_a_disk_image`]).
//! - [`fs`]: filesystems by magic number, and the fields of the ext4 superblock and the FAT boot sector.
//! - [`erofs`]: an EROFS reader for the store partition of `efi-verity` images.
//! - [`root`]: where the root filesystem is ([`RootFs`]); [`Layout::with_role`] finds the ESP and XBOOTLDR.
//! - [`mount`]: the `ext4-view` and fatfs adapters: [`open_ext4`], [`open_fat`] (through [`FatIo`], whose
//!   writes always fail).
//!
//! The partition-table reader shares the unit and GUID types with `kiln_formats`, but none of its parsing or
//! checksum code, so a bug in kiln's writer cannot hide from it.

pub mod container;
pub mod disk;
pub mod erofs;
pub mod fs;
pub mod mount;
pub mod root;
pub(crate) mod ser;
pub mod table;
pub mod window;

pub use container::{Container, not_a_disk_image};
pub use disk::{Disk, ReadAt};
pub use fs::{Ext4Superblock, FatBootSector, Magic, identify};
pub use mount::{FatIo, ext4_error, open_ext4, open_fat};
pub use root::{Location, RootFs};
pub use table::{Issue, Layout, Partition, PartitionType, PastEnd, Role, Table};
pub use window::Window;

/// The little-endian `u16` at `at` of `b`.
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The little-endian `u32` at `at` of `b`.
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian `u64` at `at` of `b`.
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
