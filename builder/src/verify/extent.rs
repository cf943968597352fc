//! Whether everything verify relies on lies inside the image file: every partition the table lists, the GPT's
//! backup header, the root filesystem's blocks (the ext4 superblock's block count) and each FAT volume's
//! sectors (its boot sector's count). A truncated image (`truncate -s`, an interrupted copy) fails here, naming
//! the partition and the byte range that is missing, even when nothing else verify reads lies in that range.

use kiln_formats::disk::Bytes;

use super::locate::{Layout, Partition, Role, RootFs, SUPERBLOCK, Table};
use super::{Problem, ProblemKind};
use crate::inspect::disk::Disk;

/// `s_blocks_count_lo`, `s_log_block_size`, `s_feature_incompat` and `s_blocks_count_hi` in the superblock.
const BLOCKS_LO: usize = 0x04;
const LOG_BLOCK_SIZE: usize = 0x18;
const INCOMPAT: usize = 0x60;
const BLOCKS_HI: usize = 0x150;
/// `s_feature_incompat`'s 64-bit flag, which makes the block count 64 bits wide.
const INCOMPAT_64BIT: u32 = 0x80;

/// Records what of `layout` and the root filesystem lies past the end of the image (or past the end of its
/// partition).
pub(crate) fn check(disk: &Disk, layout: &Layout, root: &RootFs, problems: &mut Vec<Problem>) {
    check_partitions(disk, layout, problems);
    let len = disk.len().get();
    let mut problem = |subject: String, detail: String| {
        problems.push(Problem { kind: ProblemKind::Truncated, subject, detail });
    };
    if let Some(size) = ext4_size(disk, root.offset) {
        let end = root.offset.saturating_add(size);
        match layout.partitions.iter().find(|p| p.start == root.offset) {
            Some(p) => fs_within(&p.to_string(), "ext4 filesystem", (root.offset, end), Some(p.end), len, &mut problem),
            None => fs_within("the root filesystem", "ext4 filesystem", (root.offset, end), None, len, &mut problem),
        }
    }
    for p in layout.partitions.iter().filter(|p| matches!(p.role, Role::Esp | Role::Xbootldr)) {
        if let Some(size) = fat_size(disk, p) {
            let end = p.start.saturating_add(size);
            fs_within(&p.to_string(), "FAT filesystem", (p.start, end), Some(p.end), len, &mut problem);
        }
    }
}

/// Records the partitions of `layout` that run past the end of the image, and a GPT backup header that does.
pub(crate) fn check_partitions(disk: &Disk, layout: &Layout, problems: &mut Vec<Problem>) {
    let len = disk.len().get();
    let mut problem = |subject: String, detail: String| {
        problems.push(Problem { kind: ProblemKind::Truncated, subject, detail });
    };
    for p in &layout.partitions {
        if p.end > len {
            problem(
                p.to_string(),
                format!(
                    "lies at bytes {}..{}, but the image ends at byte {len}: bytes {}..{} are missing (truncated)",
                    p.start,
                    p.end,
                    p.start.max(len),
                    p.end
                ),
            );
        }
    }
    if let Table::Gpt { sector, backup_header } = layout.table
        && backup_header.saturating_add(sector.bytes()) > len
    {
        problem(
            "the GPT's backup header".into(),
            format!("belongs at byte {backup_header}, but the image ends at byte {len} (truncated)"),
        );
    }
}

/// Records a filesystem at bytes `start..end` of the image that runs past its partition's end (`partition_end`;
/// `None` for a bare filesystem) or the image's (`len`).
fn fs_within(
    subject: &str,
    what: &str,
    (start, end): (u64, u64),
    partition_end: Option<u64>,
    len: u64,
    problem: &mut impl FnMut(String, String),
) {
    let size = end - start;
    match partition_end {
        Some(limit) if end > limit => problem(
            subject.to_owned(),
            format!(
                "its {what} is {size} bytes (bytes {start}..{end} of the image), larger than the partition, which \
                 ends at byte {limit}: bytes {limit}..{end} lie outside it"
            ),
        ),
        _ if end > len => problem(
            subject.to_owned(),
            format!(
                "its {what} is {size} bytes (bytes {start}..{end} of the image), but the image ends at byte {len}: \
                 bytes {len}..{end} of it are missing (truncated)"
            ),
        ),
        _ => {}
    }
}

/// The size in bytes the ext4 superblock at `fs_offset` gives its filesystem (block count × block size); `None`
/// when the superblock cannot be read (then the filesystem is not opened either, and that is the error).
fn ext4_size(disk: &Disk, fs_offset: u64) -> Option<u64> {
    let mut sb = [0u8; 1024];
    let at = Bytes(fs_offset.checked_add(SUPERBLOCK)?);
    if !disk.contains(at, sb.len()) {
        return None;
    }
    disk.read("the ext4 superblock", at, &mut sb).ok()?;
    let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    let mut blocks = u64::from(le32(BLOCKS_LO));
    if le32(INCOMPAT) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(BLOCKS_HI)) << 32;
    }
    // s_log_block_size is 0..=6 on any filesystem Linux mounts; ext4-view refuses others.
    let log = le32(LOG_BLOCK_SIZE);
    (log <= 6).then(|| blocks.saturating_mul(1024 << log))
}

/// The size in bytes a FAT boot sector at the start of `p` gives its volume (total sectors × sector size); `None`
/// when there is no FAT boot sector there (the boot check says so).
fn fat_size(disk: &Disk, p: &Partition) -> Option<u64> {
    let mut boot = [0u8; 512];
    if !disk.contains(Bytes(p.start), boot.len()) {
        return None;
    }
    disk.read("the FAT boot sector", Bytes(p.start), &mut boot).ok()?;
    let le16 = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
    let sector = le16(0x0B);
    if boot[510..] != [0x55, 0xAA] || !matches!(sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    let total = match le16(0x13) {
        0 => u64::from(u32::from_le_bytes(boot[0x20..0x24].try_into().expect("4 bytes"))),
        n => n,
    };
    Some(total * sector)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::locate::{Location, SectorSize};
    use super::*;

    const MIB: u64 = 1 << 20;

    fn part(number: u32, kind: &str, role: Role, start: u64, end: u64) -> Partition {
        Partition { number, kind: kind.to_owned(), role, start, end }
    }

    /// An image of `len` bytes with an ext4 superblock saying `blocks` 4 KiB blocks at `root`, and a FAT boot
    /// sector saying `fat_sectors` 512-byte sectors at `esp`.
    fn image(len: u64, root: u64, blocks: u32, esp: u64, fat_sectors: u32) -> Disk {
        let mut b = vec![0u8; len as usize];
        let sb = (root + SUPERBLOCK) as usize;
        b[sb + BLOCKS_LO..sb + BLOCKS_LO + 4].copy_from_slice(&blocks.to_le_bytes());
        b[sb + LOG_BLOCK_SIZE] = 2;
        let e = esp as usize;
        b[e + 0x0B..e + 0x0D].copy_from_slice(&512u16.to_le_bytes());
        b[e + 0x20..e + 0x24].copy_from_slice(&fat_sectors.to_le_bytes());
        b[e + 510] = 0x55;
        b[e + 511] = 0xAA;
        Disk::new(Arc::new(b), Bytes(len), "test.img".into())
    }

    fn problems(disk: &Disk, layout: &Layout) -> Vec<String> {
        let root = layout.partitions.last().expect("a root partition");
        let fs = RootFs {
            offset: root.start,
            end: root.end,
            location: Location::Gpt { number: root.number, kind: root.kind.clone(), sector: SectorSize::S512 },
        };
        let mut out = Vec::new();
        check(disk, layout, &fs, &mut out);
        assert!(out.iter().all(|p| p.kind == ProblemKind::Truncated));
        out.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn what_lies_past_the_end_is_named_with_its_range() {
        struct Case {
            name: &'static str,
            len: u64,
            root_end: u64,
            blocks: u32,
            fat_sectors: u32,
            backup: u64,
            want: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "whole",
                len: 8 * MIB,
                root_end: 8 * MIB,
                blocks: 1024,
                fat_sectors: 2048,
                backup: 8 * MIB - 512,
                want: &[],
            },
            Case {
                name: "truncated inside the root partition",
                len: 6 * MIB,
                root_end: 8 * MIB,
                blocks: 1024,
                fat_sectors: 2048,
                backup: 8 * MIB - 512,
                want: &[
                    "partition 2 (Linux root (x86-64)): lies at bytes 4194304..8388608, but the image ends at byte 6291456: bytes 6291456..8388608 are missing (truncated)",
                    "the GPT's backup header: belongs at byte 8388096, but the image ends at byte 6291456 (truncated)",
                    "partition 2 (Linux root (x86-64)): its ext4 filesystem is 4194304 bytes (bytes 4194304..8388608 of the image), but the image ends at byte 6291456: bytes 6291456..8388608 of it are missing (truncated)",
                ],
            },
            Case {
                name: "filesystems larger than their partitions",
                len: 8 * MIB,
                root_end: 8 * MIB,
                blocks: 1025,
                fat_sectors: 4097,
                backup: 8 * MIB - 512,
                want: &[
                    "partition 2 (Linux root (x86-64)): its ext4 filesystem is 4198400 bytes (bytes 4194304..8392704 of the image), larger than the partition, which ends at byte 8388608: bytes 8388608..8392704 lie outside it",
                    "partition 1 (ESP): its FAT filesystem is 2097664 bytes (bytes 1048576..3146240 of the image), larger than the partition, which ends at byte 3145728: bytes 3145728..3146240 lie outside it",
                ],
            },
        ];
        for c in cases {
            let disk = image(c.len, 4 * MIB, c.blocks, MIB, c.fat_sectors);
            let layout = Layout {
                table: Table::Gpt { sector: SectorSize::S512, backup_header: c.backup },
                partitions: vec![
                    part(1, "ESP", Role::Esp, MIB, 3 * MIB),
                    part(2, "Linux root (x86-64)", Role::Other, 4 * MIB, c.root_end),
                ],
            };
            assert_eq!(problems(&disk, &layout), c.want, "{}", c.name);
        }
    }
}
