//! How an image is laid out, read back: a GPT (`gpt`: the primary header at LBA 1 with 512- or 4096-byte
//! sectors, checksums checked, the backup header and the protective MBR looked at), else a filesystem at byte
//! 0, else a DOS table in sector 0 (`mbr`). Every partition keeps its byte range, which may run past the end
//! of a truncated image ([`Layout::past_end`] says what does); what is odd but readable is an [`Issue`]. Types
//! get the names people know them by ([`PartitionType`]).

mod gpt;
mod mbr;
mod types;

use std::fmt;

use anyhow::Result;
use kiln_formats::disk::{ByteRange, Bytes, GptAttributes, Guid, Lba, LbaRange, SectorSize};
use serde::Serialize;

pub use types::{PartitionType, Role};

use super::fs::{Magic, identify};
use super::{Disk, le16, le32, le64, ser};

/// The partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Table {
    /// A GUID partition table.
    Gpt {
        /// The disk GUID.
        #[serde(serialize_with = "ser::display")]
        disk_guid: Guid,
        /// The first sector partitions may use.
        #[serde(serialize_with = "ser::lba")]
        first_usable_lba: Lba,
        /// The last sector partitions may use.
        #[serde(serialize_with = "ser::lba")]
        last_usable_lba: Lba,
        /// Where the backup header is.
        #[serde(serialize_with = "ser::lba")]
        backup_header_lba: Lba,
        /// Entries in the partition entry array (used or not).
        entries: u32,
        /// Bytes per entry.
        entry_size: u32,
    },
    /// A DOS (MBR) partition table.
    Dos {
        /// The 32-bit disk signature at 0x1B8 (Linux: `PTUUID`).
        #[serde(serialize_with = "ser::signature")]
        disk_signature: u32,
    },
    /// No partition table: the image is one filesystem.
    None,
}

/// One partition as its table describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Number, from 1 (the entry's index in the table).
    pub number: u32,
    /// GPT partition name (Linux: `PARTLABEL`); `None` on DOS.
    pub name: Option<String>,
    /// Its type.
    pub kind: PartitionType,
    /// Unique partition GUID (Linux: `PARTUUID`); `None` on DOS.
    pub guid: Option<Guid>,
    /// Its sectors.
    pub extent: LbaRange,
    /// Its bytes (which may run past the end of a truncated image).
    pub range: ByteRange,
    /// GPT attributes; `None` on DOS.
    pub attributes: Option<GptAttributes>,
    /// DOS: the active flag; GPT: the legacy-BIOS-bootable attribute.
    pub bootable: bool,
}

impl Partition {
    /// What it is for.
    #[must_use]
    pub fn role(&self) -> Role {
        self.kind.role()
    }
}

/// `partition 2 (Linux root (x86-64))`.
impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} ({})", self.number, self.kind.label())
    }
}

/// Something odd about a partition table that still leaves it readable. Its text does not name the image.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Issue {
    /// The GPT's backup header is there, but is not a good copy of the primary.
    BackupHeader {
        /// Where it is.
        at: Bytes,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The GPT's backup header is not in the image's last sector (the image was resized after partitioning).
    BackupNotLast {
        /// Where it is.
        lba: Lba,
        /// The image's last sector.
        last: Lba,
    },
    /// A partition lies (partly) outside the sectors the GPT leaves for partitions.
    OutsideUsable {
        /// The partition.
        number: u32,
        /// Its sectors.
        extent: LbaRange,
        /// The first usable sector.
        first: Lba,
        /// The last usable sector.
        last: Lba,
    },
    /// Two partitions share sectors (a table tools would refuse).
    Overlap {
        /// The first partition's number and sectors.
        first: (u32, LbaRange),
        /// The second's.
        second: (u32, LbaRange),
    },
    /// A DOS extended partition, whose logical partitions are not read.
    Extended {
        /// The partition.
        number: u32,
    },
    /// A DOS table holding a GPT's protective partition, without a GPT.
    ProtectiveWithoutGpt,
    /// A GPT disk whose sector 0 is no protective MBR (no `55 AA`, or no partition of type 0xEE).
    NoProtectiveMbr,
    /// A GPT disk whose protective MBR also lists other partitions (a hybrid MBR).
    HybridMbr {
        /// Their numbers and MBR types.
        others: Vec<(u32, u8)>,
    },
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BackupHeader { at, why } => write!(f, "backup GPT header at byte {at}: {why}"),
            Self::BackupNotLast { lba, last } => write!(
                f,
                "the GPT's backup header is at LBA {lba}, not the image's last sector {last} (the image was resized \
                 after partitioning)"
            ),
            Self::OutsideUsable { number, extent, first, last } => write!(
                f,
                "partition {number} ({extent}) lies outside the sectors the GPT leaves for partitions (LBA {first} to \
                 {last})"
            ),
            Self::Overlap { first, second } => {
                write!(f, "partitions {} ({}) and {} ({}) overlap", first.0, first.1, second.0, second.1)
            }
            Self::Extended { number } => {
                write!(f, "partition {number} is an extended partition: the logical partitions in it are not listed")
            }
            Self::ProtectiveWithoutGpt => {
                f.write_str("sector 0 is a GPT protective MBR, but there is no GPT header at byte 512 or 4096")
            }
            Self::NoProtectiveMbr => f.write_str(
                "sector 0 is no protective MBR (no 55 AA, or no partition of type 0xee): firmware and tools may \
                 ignore the GPT",
            ),
            Self::HybridMbr { others } => {
                let list: Vec<String> = others.iter().map(|(n, t)| format!("{n} (type {t:#04x})")).collect();
                write!(
                    f,
                    "sector 0 is a hybrid MBR: besides the GPT's protective partition it lists partitions {}, which \
                     BIOS firmware and MBR tools see instead of the GPT",
                    list.join(", ")
                )
            }
        }
    }
}

/// Something a layout places past the end of the image: the image is truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastEnd<'a> {
    /// The GPT's backup header.
    BackupHeader {
        /// Its sector.
        lba: Lba,
        /// Its byte offset.
        at: Bytes,
    },
    /// A partition that ends past the end of the image.
    Partition(&'a Partition),
}

/// `the GPT's backup header belongs at byte …`, `partition 2 ends at byte …`.
impl fmt::Display for PastEnd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BackupHeader { lba, at } => write!(f, "the GPT's backup header belongs at byte {at} (LBA {lba})"),
            Self::Partition(p) => write!(f, "partition {} ends at byte {}", p.number, p.range.end),
        }
    }
}

/// How an image is laid out: its partition table and partitions, or the filesystem it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The partition table.
    pub table: Table,
    /// The table's logical sector size; `None` without a table.
    pub sector: Option<SectorSize>,
    /// The partitions, in table order.
    pub partitions: Vec<Partition>,
    /// Without a partition table: what the image's magic numbers say it is (never [`Magic::Unknown`]).
    pub bare: Option<Magic>,
    /// What is odd about the table but leaves it readable, in the order found.
    pub issues: Vec<Issue>,
}

impl Layout {
    /// Reads how `disk` is laid out: a GPT (512-byte sectors, then 4096), else a filesystem at byte 0 (a FAT boot
    /// sector also ends in `55 AA`), else a DOS table. `Ok(None)` when it is none of these, or shorter than a
    /// sector; then [`not_a_disk_image`](super::not_a_disk_image) says what it is.
    ///
    /// # Errors
    ///
    /// When the image cannot be read, or holds a corrupt GPT (each error names the image and the byte offset).
    pub fn read(disk: &Disk) -> Result<Option<Self>> {
        if disk.len().get() < 512 {
            return Ok(None);
        }
        let mut issues = Vec::new();
        for sector in [SectorSize::S512, SectorSize::S4096] {
            if let Some((table, partitions)) = gpt::read(disk, sector, &mut issues)? {
                overlaps(&partitions, &mut issues);
                mbr::check_protective(disk, &mut issues)?;
                return Ok(Some(Self { table, sector: Some(sector), partitions, bare: None, issues }));
            }
        }
        match identify(&disk.whole())? {
            Magic::Unknown => {}
            magic => {
                let table = Table::None;
                return Ok(Some(Self { table, sector: None, partitions: Vec::new(), bare: Some(magic), issues }));
            }
        }
        let Some((table, partitions)) = mbr::read(disk, &mut issues)? else { return Ok(None) };
        overlaps(&partitions, &mut issues);
        Ok(Some(Self { table, sector: Some(SectorSize::S512), partitions, bare: None, issues }))
    }

    /// The partitions with `role`, in table order.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Partition> {
        self.partitions.iter().filter(move |p| p.role() == role)
    }

    /// Where the GPT's backup header is: its sector and byte offset; `None` without a GPT.
    #[must_use]
    pub fn backup_header(&self) -> Option<(Lba, Bytes)> {
        match (&self.table, self.sector) {
            (Table::Gpt { backup_header_lba: lba, .. }, Some(sector)) => {
                Some((*lba, lba.checked_offset(sector).unwrap_or(Bytes(u64::MAX))))
            }
            _ => None,
        }
    }

    /// What lies past the end of an image `len` bytes long: the GPT's backup header first, then the partitions
    /// in table order. Empty unless the image is truncated.
    #[must_use]
    pub fn past_end(&self, len: Bytes) -> Vec<PastEnd<'_>> {
        let mut out = Vec::new();
        if let (Some((lba, at)), Some(sector)) = (self.backup_header(), self.sector)
            && at.get().saturating_add(sector.bytes().get()) > len.get()
        {
            out.push(PastEnd::BackupHeader { lba, at });
        }
        out.extend(self.partitions.iter().filter(|p| p.range.end > len).map(PastEnd::Partition));
        out
    }
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    Guid::from_gpt_bytes(b[at..at + 16].try_into().expect("16 bytes"))
}

/// Partitions that share sectors.
fn overlaps(partitions: &[Partition], issues: &mut Vec<Issue>) {
    for (i, a) in partitions.iter().enumerate() {
        for b in &partitions[i + 1..] {
            if a.extent.overlaps(b.extent) {
                issues.push(Issue::Overlap { first: (a.number, a.extent), second: (b.number, b.extent) });
            }
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses for its header and entry array. The reader computes it itself
/// rather than with `kiln_formats`' writer, so a checksum bug there cannot hide here.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests;
