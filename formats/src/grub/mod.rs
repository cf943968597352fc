//! GRUB for BIOS (i386-pc) on an image file: what `grub-bios-setup` does, without a device.
//!
//! `grub-bios-setup` cannot work on an image file: it insists on finding the disk that holds its `-d` directory,
//! which for an image means a loop device (see `tests/fixtures/reference-image.gen.sh`). This module does its
//! work from bytes. Build core.img with [`CoreImage`] — what `grub-mkimage -O i386-pc -p '(hd0,gpt2)/boot/grub' …`
//! writes, assembled from GRUB's i386-pc directory read as data ([`GrubFiles`], [`ModuleDir`]), so nothing from
//! the GRUB package is ever run — describe where it goes with an [`EmbedTarget`] (usually [`EmbedTarget::for_layout`]: the BIOS boot partition of
//! a GPT disk, or the gap between the MBR and the first partition), [`Embedding::plan`] the installation — the
//! new sector 0 and core.img with its blocklist — then [`Embedding::write`] it after the partition table and
//! [`Embedding::verify`] it by reading back the way the BIOS code will.
//!
//! Only 512-byte sectors: boot.img and core.img's diskboot sector are 16-bit code that loads 512-byte sectors.
//! No Reed-Solomon codes are added (`grub-bios-setup --no-rs-codes`): they protect core.img in an MBR gap that
//! other software might scribble on; kiln's images are written whole.

mod core_img;
mod embed;
mod files;
mod kernel;
mod lzma;
mod moddep;
mod verify;

pub use core_img::{
    COMPRESSED_SIZE, CORE_END_LIMIT, Core, CoreImage, LINUX_EXT_MODULES, LZMA_DICT_SIZE, LZMA_LC, LZMA_LP,
    LZMA_NICE_LEN, LZMA_PB, MAX_DECOMPRESSOR, MODULE_HEADER, MODULE_INFO, MODULE_MAGIC, OBJ_CONFIG, OBJ_ELF,
    OBJ_PREFIX, UNCOMPRESSED_SIZE, module_section, prefix, unpack,
};
pub use embed::{
    BLOCKLIST_ENTRY, BOOT_DRIVE, BPB_END, BPB_START, DRIVE_CHECK, EmbedTarget, Embedding, FIRST_BLOCKLIST,
    FIRST_SEGMENT, KERNEL_SECTOR, MAX_CORE_SECTORS, NO_RS_LENGTH, SECTOR, TABLE_END, TABLE_START,
};
pub use files::{GrubFiles, ModuleDir, i386_pc_dir};
pub use kernel::{KERNEL_END_LIMIT, LINK_ADDR};
pub use moddep::ModDeps;

use crate::disk::{Bytes, LbaRange, SectorSize};

/// What can go wrong building, planning, writing or verifying a GRUB installation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A disk whose sectors GRUB's BIOS boot code cannot read.
    #[error(
        "GRUB for BIOS needs 512-byte sectors (its i386-pc boot.img and diskboot load 512-byte sectors); \
         this disk has {sector}-byte sectors: use a UEFI layout for 4Kn disks"
    )]
    SectorSize {
        /// The disk's sector size.
        sector: SectorSize,
    },
    /// No place to put core.img.
    #[error("no place to embed GRUB's core.img: {why}")]
    NoEmbeddingArea {
        /// Why.
        why: String,
    },
    /// Sector 0 without the `55 AA` of a partition table.
    #[error("sector 0 has no partition table (no 55 AA at 0x1FE): write the partition table before planning GRUB")]
    NoPartitionTable,
    /// A boot.img that is not GRUB's i386-pc boot sector.
    #[error("not GRUB's i386-pc boot.img: {why}")]
    BadBootImg {
        /// What is wrong.
        why: String,
    },
    /// A core.img too short to be one.
    #[error("core.img has {bytes} bytes: too small to be a GRUB i386-pc core image")]
    CoreTooSmall {
        /// Its size.
        bytes: usize,
    },
    /// A core.img that does not fit.
    #[error(
        "core.img has {bytes} bytes ({sectors} sectors of 512): the embedding area {area} holds {area_sectors} \
         sectors, and GRUB loads at most {limit}"
    )]
    CoreTooLarge {
        /// core.img's size.
        bytes: u64,
        /// Sectors it needs.
        sectors: u64,
        /// The area.
        area: LbaRange,
        /// Sectors in the area.
        area_sectors: u64,
        /// GRUB's own limit ([`MAX_CORE_SECTORS`]).
        limit: u64,
    },
    /// A core.img with 0xFFFF at 0x214 (what `grub-bios-setup` calls a version mismatch).
    #[error("core.img version mismatch: its no-Reed-Solomon length at 0x214 is 0xFFFF (is it from another GRUB?)")]
    CoreVersion,
    /// A core.img whose blocklist has no terminating entry.
    #[error("core.img has no terminator in its blocklist (is it a GRUB i386-pc core image?)")]
    NoTerminator,
    /// A file of GRUB's i386-pc directory could not be read.
    #[error("cannot read GRUB's {location}")]
    ReadFile {
        /// The file's name in the directory (`ext2.mod`).
        name: String,
        /// Where it is.
        location: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `moddep.lst` grub-mkimage cannot read.
    #[error("{file} line {line}: {why}")]
    ModDep {
        /// Where the file is.
        file: String,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A module name that names no module file.
    #[error("GRUB module name {name:?}: {why}")]
    ModuleName {
        /// The name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// Modules that depend on each other in a circle.
    #[error("GRUB modules depend on each other in a circle: {}", .chain.join(" -> "))]
    DependencyCycle {
        /// The circle, its first module repeated at the end.
        chain: Vec<String>,
    },
    /// A kernel.img that is not GRUB's i386-pc kernel.
    #[error("{location} is not GRUB's i386-pc kernel: {why}")]
    BadKernel {
        /// Where it is.
        location: String,
        /// What is wrong.
        why: String,
    },
    /// A `lzma_decompress.img` or `diskboot.img` that is not GRUB's.
    #[error("{location} is not GRUB's i386-pc image: {why}")]
    BadGrubImage {
        /// Where it is.
        location: String,
        /// What is wrong.
        why: String,
    },
    /// A core.img part bigger than GRUB's BIOS boot code has room for (grub-mkimage: "core image is too big").
    #[error("GRUB's {what} is too big: {bytes:#x} bytes, more than the {limit:#x} the i386-pc boot code has room for")]
    ImageTooBig {
        /// Which part.
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// The most there is room for.
        limit: u64,
    },
    /// A prefix grub-mkimage could not store.
    #[error("GRUB prefix {prefix:?} contains a NUL byte")]
    BadPrefix {
        /// The prefix.
        prefix: String,
    },
    /// core.img's LZMA stream does not decode back to the payload (or a core.img's stream does not decode).
    #[error("compressing GRUB's core.img with LZMA: {why}")]
    Lzma {
        /// What went wrong.
        why: String,
    },
    /// Writing the image failed.
    #[error("writing the {what} at image offset {offset}")]
    Write {
        /// What was being written.
        what: &'static str,
        /// Byte offset in the sink.
        offset: Bytes,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the image back failed.
    #[error("reading the {what} at image offset {offset}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// Byte offset.
        offset: Bytes,
        /// Why.
        source: std::io::Error,
    },
    /// What was read back is not what was planned.
    #[error("GRUB installation does not verify: {what} at image offset {offset}: {detail}")]
    Mismatch {
        /// Which structure.
        what: &'static str,
        /// Byte offset on the disk.
        offset: Bytes,
        /// What differs.
        detail: String,
    },
}
