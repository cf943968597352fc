//! Sector 0: the DOS (MBR) partition table of an MBR disk (four primary entries; extended partitions are named,
//! not walked), or a GPT disk's protective MBR, which may be hybrid (listing partitions besides the GPT's) or
//! missing.

use anyhow::Result;
use kiln_formats::disk::{ByteRange, Bytes, Lba, LbaRange, SectorSize};

use super::types::{MBR_EXTENDED, MBR_PROTECTIVE};
use super::{Issue, Partition, PartitionType, Table, le32};
use crate::readback::Disk;

/// Offset of the 32-bit disk signature.
const DISK_SIGNATURE: usize = 0x1B8;
/// Offset of the first of four 16-byte entries in sector 0.
const ENTRIES: usize = 0x1BE;

/// Sector 0's first 512 bytes.
struct Sector0([u8; 512]);

impl Sector0 {
    fn read(disk: &Disk) -> Result<Self> {
        let mut s0 = [0u8; 512];
        disk.read("sector 0", Bytes(0), &mut s0)?;
        Ok(Self(s0))
    }

    /// The four 16-byte partition entries.
    fn entries(&self) -> impl Iterator<Item = &[u8]> {
        self.0[ENTRIES..ENTRIES + 64].chunks_exact(16)
    }

    /// Whether it is an MBR: `55 AA` at its end and every entry's status byte 0x00 or 0x80.
    fn is_mbr(&self) -> bool {
        self.0[510..512] == [0x55, 0xAA] && self.entries().all(|e| e[0] == 0 || e[0] == 0x80)
    }
}

/// Reads the DOS partition table in sector 0: `Ok(None)` unless sector 0 is an MBR.
pub(super) fn read(disk: &Disk, issues: &mut Vec<Issue>) -> Result<Option<(Table, Vec<Partition>)>> {
    let s0 = Sector0::read(disk)?;
    if !s0.is_mbr() {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    for (i, e) in s0.entries().enumerate() {
        let kind = e[4];
        if kind == 0 {
            continue;
        }
        let number = i as u32 + 1;
        let (start, count) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if MBR_EXTENDED.contains(&kind) {
            issues.push(Issue::Extended { number });
        }
        if kind == MBR_PROTECTIVE {
            issues.push(Issue::ProtectiveWithoutGpt);
        }
        let extent = LbaRange::new(Lba(start), Lba(start + count));
        // 32-bit sector numbers of 512 bytes cannot reach 2^64 bytes.
        let range =
            ByteRange { start: extent.start.offset(SectorSize::S512), end: extent.end.offset(SectorSize::S512) };
        partitions.push(Partition {
            number,
            name: None,
            kind: PartitionType::Mbr(kind),
            guid: None,
            extent,
            range,
            attributes: None,
            bootable: e[0] == 0x80,
        });
    }
    Ok(Some((Table::Dos { disk_signature: le32(&s0.0, DISK_SIGNATURE) }, partitions)))
}

/// Checks a GPT disk's sector 0: an MBR with a protective (0xEE) partition and nothing else. One that also lists
/// other partitions is hybrid; one without a protective partition leaves firmware and tools free to ignore the
/// GPT.
pub(super) fn check_protective(disk: &Disk, issues: &mut Vec<Issue>) -> Result<()> {
    let s0 = Sector0::read(disk)?;
    if !s0.is_mbr() || !s0.entries().any(|e| e[4] == MBR_PROTECTIVE) {
        issues.push(Issue::NoProtectiveMbr);
        return Ok(());
    }
    let others: Vec<(u32, u8)> = (1..)
        .zip(s0.entries())
        .filter(|(_, e)| e[4] != 0 && e[4] != MBR_PROTECTIVE)
        .map(|(number, e)| (number, e[4]))
        .collect();
    if !others.is_empty() {
        issues.push(Issue::HybridMbr { others });
    }
    Ok(())
}
