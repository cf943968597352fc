//! Whether everything verify relies on lies inside the image file: every partition the table lists, the GPT's
//! backup header, the root filesystem's blocks (the ext4 superblock's block count) and each FAT volume's
//! sectors (its boot sector's count). A truncated image (`truncate -s`, an interrupted copy) fails here, naming
//! the partition and the byte range that is missing, even when nothing else verify reads lies in that range.

use kiln_formats::disk::ByteRange;

use super::{Problem, ProblemKind};
use crate::readback::{Disk, Ext4Superblock, FatBootSector, Layout, PastEnd, Role, RootFs};

/// Records what of `layout` and the root filesystem lies past the end of the image (or past the end of its
/// partition).
pub(crate) fn check(disk: &Disk, layout: &Layout, root: &RootFs, problems: &mut Vec<Problem>) {
    check_partitions(disk, layout, problems);
    let len = disk.len().get();
    let mut problem = |subject: String, detail: String| {
        problems.push(Problem { kind: ProblemKind::Truncated, subject, detail });
    };
    let root_window = disk.window(ByteRange { start: root.offset, end: root.end });
    if let Some(size) = Ext4Superblock::read(&root_window).ok().flatten().and_then(|sb| sb.size()) {
        let (start, end) = (root.offset.get(), root.offset.get().saturating_add(size.get()));
        match layout.partitions.iter().find(|p| p.range.start == root.offset) {
            Some(p) => {
                fs_within(&p.to_string(), "ext4 filesystem", (start, end), Some(p.range.end.get()), len, &mut problem)
            }
            None => fs_within("the root filesystem", "ext4 filesystem", (start, end), None, len, &mut problem),
        }
    }
    for p in layout.partitions.iter().filter(|p| matches!(p.role(), Role::Esp | Role::Xbootldr)) {
        // No FAT boot sector there: the boot check says so.
        if let Some(boot) = FatBootSector::read(&disk.window(p.range)).ok().flatten() {
            let (start, end) = (p.range.start.get(), p.range.start.get().saturating_add(boot.size().get()));
            fs_within(&p.to_string(), "FAT filesystem", (start, end), Some(p.range.end.get()), len, &mut problem);
        }
    }
}

/// Records the partitions of `layout` that run past the end of the image, and a GPT backup header that does.
pub(crate) fn check_partitions(disk: &Disk, layout: &Layout, problems: &mut Vec<Problem>) {
    let len = disk.len();
    let past_end = layout.past_end(len);
    let mut problem = |subject: String, detail: String| {
        problems.push(Problem { kind: ProblemKind::Truncated, subject, detail });
    };
    for p in past_end.iter().filter_map(|x| if let PastEnd::Partition(p) = x { Some(p) } else { None }) {
        let ByteRange { start, end } = p.range;
        problem(
            p.to_string(),
            format!(
                "lies at bytes {start}..{end}, but the image ends at byte {len}: bytes {}..{end} are missing \
                 (truncated)",
                start.max(len)
            ),
        );
    }
    for at in past_end.iter().filter_map(|x| if let PastEnd::BackupHeader { at, .. } = x { Some(at) } else { None }) {
        problem(
            "the GPT's backup header".into(),
            format!("belongs at byte {at}, but the image ends at byte {len} (truncated)"),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_formats::disk::{Bytes, Guid, Lba, LbaRange, SectorSize, partition_type};

    use super::*;
    use crate::readback::{Location, Partition, PartitionType, Table};

    const MIB: u64 = 1 << 20;

    fn part(number: u32, kind: Guid, start: u64, end: u64) -> Partition {
        Partition {
            number,
            name: None,
            kind: PartitionType::Gpt(kind),
            guid: None,
            extent: LbaRange::new(Lba(start / 512), Lba(end / 512)),
            range: ByteRange { start: Bytes(start), end: Bytes(end) },
            attributes: None,
            bootable: false,
        }
    }

    /// An image of `len` bytes with an ext4 superblock saying `blocks` 4 KiB blocks at `root`, and a FAT boot
    /// sector saying `fat_sectors` 512-byte sectors at `esp`.
    fn image(len: u64, root: u64, blocks: u32, esp: u64, fat_sectors: u32) -> Disk {
        let mut b = vec![0u8; len as usize];
        let sb = (root + Ext4Superblock::OFFSET.get()) as usize;
        b[sb + 0x04..sb + 0x08].copy_from_slice(&blocks.to_le_bytes());
        b[sb + 0x18] = 2;
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
            offset: root.range.start,
            end: root.range.end,
            location: Location::Gpt { number: root.number, kind: root.kind.label(), sector: SectorSize::S512 },
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
                table: Table::Gpt {
                    disk_guid: Guid::NIL,
                    first_usable_lba: Lba(34),
                    last_usable_lba: Lba(c.len / 512 - 34),
                    backup_header_lba: Lba(c.backup / 512),
                    entries: 128,
                    entry_size: 128,
                },
                sector: Some(SectorSize::S512),
                partitions: vec![
                    part(1, partition_type::ESP, MIB, 3 * MIB),
                    part(2, partition_type::ROOT_X86_64, 4 * MIB, c.root_end),
                ],
                bare: None,
                issues: Vec::new(),
            };
            assert_eq!(problems(&disk, &layout), c.want, "{}", c.name);
        }
    }
}
