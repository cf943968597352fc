//! Independent checkers for an ext4 filesystem inside an image file.
//!
//! Every function takes the image file and the byte offset of the filesystem inside it (0 for a bare
//! filesystem, the partition start for a disk) and reads it without mounting or copying:
//!
//! - [`e2fsck_clean`]: `e2fsck -fn`, read-only, plus a check that the filesystem fits in the file.
//! - [`superblock`], [`features`], [`superblock_field`]: `dumpe2fs -h`.
//! - [`inode_info`], [`tree_inodes`], [`extract`]: `debugfs`, addressing inodes by number (`<N>`) wherever
//!   possible so names never pass through its command parser.
//! - [`compare_tree`]: the filesystem subtree against a host directory, read through `debugfs` (names,
//!   types, modes, owners, mtimes, bytes, symlink targets and hard-link identity, by [`Links`]).
//! - [`ext4_view_compare`]: the same comparison through the pure-Rust `ext4-view` reader, a second
//!   implementation that shares no code with e2fsprogs.
//!
//! e2fsprogs reads a filesystem at an offset through the `image?offset=N` device syntax of its unix I/O
//! manager (e2fsck, dumpe2fs and debugfs all accept it). Image paths therefore must not contain `?`.

mod compare;
mod debugfs;
mod host;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::Command;

use crate::tools;

pub use compare::compare_tree;
pub use debugfs::{extract, inode_info, tree_inodes};
pub use view::ext4_view_compare;

/// What metadata the image must carry, relative to the host tree it was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Permission bits (including setuid/setgid/sticky), uid, gid and mtime equal the host's. Only whole
    /// seconds of the mtime are compared: `mkfs.ext4 -d` (the reference) stores no nanoseconds.
    AsSource,
    /// Nix's canonical form: regular files 0444, or 0555 when the source file has the owner-execute bit;
    /// directories 0555; symlinks 0777; every owner `uid:gid`; every mtime exactly `mtime` seconds and
    /// 0 nanoseconds. NixOS images use `Canonical { uid: 0, gid: 0, mtime: 1 }` ([`Expect::NIX`]).
    Canonical { uid: u32, gid: u32, mtime: i64 },
}

impl Expect {
    /// The canonical form of the Nix store: owner 0:0, mtime 1.
    pub const NIX: Expect = Expect::Canonical { uid: 0, gid: 0, mtime: 1 };
}

/// Which names of the host tree must be one inode (a hard link) in the image, and which must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Exactly the names that are one inode (st_dev, st_ino) on the host: a filesystem writer given a tree
    /// with hard links keeps them, and makes no others.
    AsSource,
    /// Exactly the regular files with the same contents and executable bit (one NAR serialisation, as
    /// `nix-store --optimise` links them), at most 65,000 names per inode; symlinks are never linked. What
    /// `kiln build` makes of a store, whatever its hard links on the host.
    SameContents,
}

/// One inode as `debugfs stat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeInfo {
    /// Inode number.
    pub ino: u32,
    /// Link count (`i_links_count`).
    pub links: u32,
    /// Full `i_mode`: file type bits (`0o170000`) and permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `i_size` (64-bit for files and directories).
    pub size: u64,
    /// Modification time in seconds, with the epoch bits of `i_mtime_extra` applied.
    pub mtime: i64,
    /// Nanoseconds of the modification time (0 for 128-byte inodes).
    pub mtime_nsec: u32,
    /// `i_flags` (e.g. `0x80000` extents, `0x1000` hashed directory).
    pub flags: u32,
}

impl InodeInfo {
    /// File type bits of a regular file, directory and symlink (as in `st_mode`).
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFLNK: u32 = 0o120000;

    /// The file type bits of `mode`.
    pub fn file_type(&self) -> u32 {
        self.mode & 0o170000
    }

    /// The permission bits of `mode`, including setuid, setgid and sticky.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// The device argument e2fsprogs tools take for a filesystem at `offset` bytes inside `image`.
fn device_spec(image: &Path, offset: u64) -> OsString {
    let bytes = image.as_os_str().as_bytes();
    assert!(
        !bytes.contains(&b'?'),
        "image path {} contains `?`, which e2fsprogs takes as the start of I/O options",
        image.display()
    );
    let mut spec = bytes.to_vec();
    if offset != 0 {
        spec.extend_from_slice(format!("?offset={offset}").as_bytes());
    }
    OsString::from_vec(spec)
}

/// Runs `e2fsck -fn` on the filesystem: Ok only if it exits 0 and answered no question (every question
/// `-n` answers "no" is a problem left in place), and the filesystem's blocks all lie inside the file.
///
/// The last check is needed because e2fsck measures the "device" as the whole file, ignoring `?offset=`:
/// a filesystem truncated by up to `offset` bytes passes, and a larger truncation only prints
/// "Abort? no" and still exits 0. Err carries e2fsck's whole output.
pub fn e2fsck_clean(image: &Path, offset: u64) -> Result<(), String> {
    let e2fsck = tools::require("e2fsck", "e2fsprogs");
    let out = tools::run(Command::new(e2fsck).arg("-fn").arg(device_spec(image, offset)));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("e2fsck -fn on {} at offset {offset} exited {}:\n{text}", image.display(), out.status));
    }
    if let Some(line) = text.lines().find(|l| l.trim_end().ends_with("? no") || l.contains("journal recovery")) {
        return Err(format!("e2fsck -fn exited 0 but reported a problem ({line:?}):\n{text}"));
    }
    let sb = try_superblock(image, offset)?;
    let field = |name: &str| -> Result<u64, String> {
        sb.get(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("dumpe2fs -h gives no numeric {name:?}: {sb:?}"))
    };
    let fs_bytes = field("Block count")? * field("Block size")?;
    let file_len = std::fs::metadata(image).map_err(|e| format!("stat {}: {e}", image.display()))?.len();
    if offset + fs_bytes > file_len {
        return Err(format!(
            "filesystem of {fs_bytes} bytes at offset {offset} extends past the end of {} ({file_len} bytes); \
             e2fsck said:\n{text}",
            image.display()
        ));
    }
    Ok(())
}

fn try_superblock(image: &Path, offset: u64) -> Result<BTreeMap<String, String>, String> {
    let dumpe2fs = tools::require("dumpe2fs", "e2fsprogs");
    let out = tools::run(Command::new(dumpe2fs).arg("-h").arg(device_spec(image, offset)));
    if !out.status.success() {
        return Err(format!(
            "dumpe2fs -h on {} at offset {offset} exited {}:\n{}{}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// Every `Name: value` line of `dumpe2fs -h` (superblock and journal superblock), keyed by the name as
/// printed ("Block size", "Inode size", "Reserved GDT blocks", "Filesystem UUID", "Filesystem volume
/// name", "Journal size", …). Panics with dumpe2fs's output if it cannot read the filesystem.
pub fn superblock(image: &Path, offset: u64) -> BTreeMap<String, String> {
    try_superblock(image, offset).unwrap_or_else(|e| panic!("{e}"))
}

/// One field of [`superblock`], e.g. `superblock_field(img, 0, "Inode size") == Some("256".into())`.
pub fn superblock_field(image: &Path, offset: u64, name: &str) -> Option<String> {
    superblock(image, offset).remove(name)
}

/// The words of dumpe2fs's "Filesystem features:" line (`has_journal`, `metadata_csum`, `64bit`, …).
pub fn features(image: &Path, offset: u64) -> BTreeSet<String> {
    let sb = superblock(image, offset);
    let line = sb.get("Filesystem features").unwrap_or_else(|| panic!("dumpe2fs -h lists no features: {sb:?}"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// A path in messages: the filesystem path with bytes outside printable ASCII escaped as `\xNN`.
fn show(path: &[u8]) -> String {
    path.escape_ascii().to_string()
}
