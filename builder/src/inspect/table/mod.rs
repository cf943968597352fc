//! Partition tables read back: a GPT ([`gpt`]: the primary header at LBA 1 with 512- or 4096-byte sectors,
//! checksums checked, the backup header looked at) or a DOS table in sector 0 ([`dos`]). Types get the names
//! people know them by.

mod dos;
mod gpt;

use kiln_formats::disk::{ByteRange, Bytes, GptAttributes, Guid, Lba, LbaRange, SectorSize};
use serde::Serialize;

pub(crate) use dos::dos;
pub(crate) use gpt::gpt;

use super::fs::Filesystem;
use super::ser;

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

/// A partition type: a GPT type GUID or an MBR type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    /// A GPT type GUID.
    Gpt(Guid),
    /// An MBR type byte.
    Mbr(u8),
}

/// GPT type GUIDs people meet on Linux disks, named as in the UEFI specification and the Discoverable Partitions
/// Specification (shortened the way `sfdisk` and `systemd-repart` do).
const GPT_TYPES: &[(&str, &str)] = &[
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ESP"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("BC13C2FF-59E6-4262-A352-B275FD6F7172", "XBOOTLDR"),
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)"),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
    ("69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "Linux root (ARM)"),
    ("72EC70A6-CF74-40E6-BD49-4BDA08E8F224", "Linux root (RISC-V 64)"),
    ("8484680C-9521-48C6-9C11-B0720656F69E", "Linux /usr (x86-64)"),
    ("B0E01050-EE5F-4390-949A-9101B17104E9", "Linux /usr (ARM64)"),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem data"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux server data"),
    ("4D21B016-B534-45C2-A9FB-5C16E091FD2D", "Linux variable data"),
    ("7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "Linux temporary data"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery environment"),
];

/// MBR type bytes, named as `sfdisk` names them.
const MBR_TYPES: &[(u8, &str)] = &[
    (0x01, "FAT12"),
    (0x05, "Extended"),
    (0x06, "FAT16"),
    (0x07, "HPFS/NTFS/exFAT"),
    (0x0B, "W95 FAT32"),
    (0x0C, "W95 FAT32 (LBA)"),
    (0x0E, "W95 FAT16 (LBA)"),
    (0x0F, "W95 Ext'd (LBA)"),
    (0x82, "Linux swap"),
    (0x83, "Linux"),
    (0x85, "Linux extended"),
    (0x8E, "Linux LVM"),
    (0xEA, "Linux extended boot"),
    (0xEE, "GPT protective"),
    (0xEF, "EFI (FAT-12/16/32)"),
    (0xFD, "Linux raid autodetect"),
];

impl PartitionType {
    /// What the type is called, or `unknown`.
    #[must_use]
    pub fn name(self) -> &'static str {
        let found = match self {
            Self::Gpt(g) => GPT_TYPES.iter().find(|(text, _)| Guid::parse(text) == Some(g)).map(|t| t.1),
            Self::Mbr(b) => MBR_TYPES.iter().find(|(t, _)| *t == b).map(|t| t.1),
        };
        found.unwrap_or("unknown")
    }

    /// Whether this is the EFI system partition type.
    #[must_use]
    pub fn is_esp(self) -> bool {
        matches!(self, Self::Gpt(g) if g == kiln_formats::disk::partition_type::ESP) || self == Self::Mbr(0xEF)
    }
}

/// GPT: the type GUID as sfdisk prints it; MBR: the type byte in hex without `0x`, as sfdisk prints it.
impl std::fmt::Display for PartitionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gpt(g) => write!(f, "{g}"),
            Self::Mbr(b) => write!(f, "{b:x}"),
        }
    }
}

/// GPT partition attribute bits and their names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attributes {
    /// All 64 bits, as `0x` and 16 hex digits.
    #[serde(serialize_with = "ser::attributes")]
    pub raw: GptAttributes,
    /// The set bits by name: `required`, `no-block-io-protocol`, `legacy-bios-bootable`, and the Discoverable
    /// Partitions Specification's `growfs`, `read-only`, `no-auto`; other bits as `bit-<n>`.
    pub names: Vec<String>,
}

impl Attributes {
    fn of(raw: GptAttributes) -> Self {
        let names = (0..64)
            .filter(|bit| raw.0 & (1 << bit) != 0)
            .map(|bit| match bit {
                0 => "required".to_owned(),
                1 => "no-block-io-protocol".to_owned(),
                2 => "legacy-bios-bootable".to_owned(),
                59 => "growfs".to_owned(),
                60 => "read-only".to_owned(),
                63 => "no-auto".to_owned(),
                n => format!("bit-{n}"),
            })
            .collect();
        Self { raw, names }
    }
}

/// One partition and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Number, from 1 (the entry's index in the table).
    pub number: u32,
    /// GPT partition name (Linux: `PARTLABEL`); `None` on DOS.
    pub name: Option<String>,
    /// Type: the GPT type GUID, or the MBR type byte in hex (both as `sfdisk --json` prints them).
    #[serde(rename = "type", serialize_with = "ser::display")]
    pub kind: PartitionType,
    /// What the type is called (`ESP`, `BIOS boot`, `Linux root (x86-64)`, `Linux`, … or `unknown`).
    pub type_name: &'static str,
    /// Unique partition GUID (Linux: `PARTUUID`); `None` on DOS.
    #[serde(serialize_with = "ser::opt_display")]
    pub guid: Option<Guid>,
    /// Byte offset of its first byte.
    #[serde(serialize_with = "ser::bytes")]
    pub start: Bytes,
    /// Byte offset just past its last byte.
    #[serde(serialize_with = "ser::bytes")]
    pub end: Bytes,
    /// Its size in bytes.
    #[serde(serialize_with = "ser::bytes")]
    pub size: Bytes,
    /// Its first sector.
    #[serde(serialize_with = "ser::lba")]
    pub first_lba: Lba,
    /// Its last sector (inclusive, as GPT and `sgdisk` count).
    #[serde(serialize_with = "ser::lba")]
    pub last_lba: Lba,
    /// GPT attributes; `None` on DOS.
    pub attributes: Option<Attributes>,
    /// DOS: the active flag; GPT: the legacy-BIOS-bootable attribute.
    pub bootable: bool,
    /// What it holds.
    pub filesystem: Filesystem,
}

/// A partition as the table describes it, before its contents are looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub number: u32,
    pub name: Option<String>,
    pub kind: PartitionType,
    pub guid: Option<Guid>,
    pub extent: LbaRange,
    pub attributes: Option<GptAttributes>,
    pub bootable: bool,
}

impl Slot {
    /// Where it lies in bytes; `None` past 2^64 bytes.
    pub(crate) fn bytes(&self, sector: SectorSize) -> Option<ByteRange> {
        Some(ByteRange {
            start: self.extent.start.checked_offset(sector)?,
            end: self.extent.end.checked_offset(sector)?,
        })
    }

    /// The partition, holding `filesystem`.
    pub(crate) fn into_partition(self, sector: SectorSize, filesystem: Filesystem) -> Partition {
        let range = self.bytes(sector).expect("checked against the image size");
        Partition {
            number: self.number,
            name: self.name,
            kind: self.kind,
            type_name: self.kind.name(),
            guid: self.guid,
            start: range.start,
            end: range.end,
            size: range.len(),
            first_lba: self.extent.start,
            last_lba: self.extent.last().unwrap_or(self.extent.start),
            attributes: self.attributes.map(Attributes::of),
            bootable: self.bootable,
            filesystem,
        }
    }
}

/// A table read back: what it is, its sector size, and its partitions in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub table: Table,
    pub sector: SectorSize,
    pub slots: Vec<Slot>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    Guid::from_gpt_bytes(b[at..at + 16].try_into().expect("16 bytes"))
}

/// Partitions that share sectors, as warnings (a table tools would refuse, but the rest is still worth reading).
fn overlaps(slots: &[Slot], name: &str, warnings: &mut Vec<String>) {
    for (i, a) in slots.iter().enumerate() {
        for b in &slots[i + 1..] {
            if a.extent.overlaps(b.extent) {
                warnings.push(format!(
                    "{name}: partitions {} ({}) and {} ({}) overlap",
                    a.number, a.extent, b.number, b.extent
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_formats::disk::{DiskLayout, DiskSize, PartitionRequest, PartitionSize, PartitionTable, partition_type};
    use kiln_formats::sink::MemSink;

    use super::*;
    use crate::inspect::disk::Disk;

    pub(super) fn request(
        name: &str,
        type_guid: Guid,
        guid: u128,
        attributes: GptAttributes,
        mib: u64,
    ) -> PartitionRequest {
        PartitionRequest {
            name: name.to_owned(),
            type_guid,
            guid: Guid::from_u128(guid),
            attributes,
            size: PartitionSize::AtLeast(Bytes::mib(mib)),
        }
    }

    pub(super) fn written(
        sector: SectorSize,
        table: PartitionTable,
        requests: Vec<PartitionRequest>,
    ) -> (DiskLayout, Disk) {
        let layout = DiskLayout::sequential(sector, table, DiskSize::Fit, requests).unwrap();
        let sink = MemSink::new(layout.size().get() as usize);
        layout.write(&sink).unwrap();
        let bytes = sink.into_inner();
        let len = Bytes(bytes.len() as u64);
        (layout, Disk::new(Arc::new(bytes), len, "mem.img".into()))
    }

    #[test]
    fn reads_a_dos_table() {
        let root = request("", partition_type::LINUX_DATA, 0, GptAttributes::LEGACY_BIOS_BOOTABLE, 2);
        let (layout, disk) = written(SectorSize::S512, PartitionTable::Mbr { disk_signature: 0x2FD0_9407 }, vec![root]);
        let mut warnings = Vec::new();
        assert_eq!(gpt(&disk, SectorSize::S512, &mut warnings).unwrap(), None);
        let found = dos(&disk, &mut warnings).unwrap().expect("a DOS table");
        assert_eq!(found.table, Table::Dos { disk_signature: 0x2FD0_9407 });
        assert_eq!(found.slots.len(), 1);
        let s = &found.slots[0];
        assert_eq!((s.number, s.kind, s.bootable), (1, PartitionType::Mbr(0x83), true));
        assert_eq!(s.extent, layout.partitions()[0].extent);
        assert_eq!((s.kind.to_string(), s.kind.name()), ("83".to_owned(), "Linux"));
        assert_eq!(
            serde_json::to_value(Table::Dos { disk_signature: 0x2FD0_9407 }).unwrap()["disk_signature"],
            "0x2fd09407"
        );
    }

    /// Entries that share sectors are reported, and the table is still read.
    #[test]
    fn overlapping_dos_entries_are_a_warning() {
        let mut b = vec![0u8; 4 << 20];
        b[510] = 0x55;
        b[511] = 0xAA;
        for (i, (start, count)) in [(2048u32, 4096u32), (4096, 2048)].into_iter().enumerate() {
            let e = &mut b[0x1BE + 16 * i..0x1BE + 16 * (i + 1)];
            e[4] = 0x83;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&count.to_le_bytes());
        }
        let len = Bytes(b.len() as u64);
        let disk = Disk::new(Arc::new(b), len, "mem.img".into());
        let mut warnings = Vec::new();
        let found = dos(&disk, &mut warnings).unwrap().expect("a DOS table");
        assert_eq!(found.slots.len(), 2);
        assert_eq!(warnings, ["mem.img: partitions 1 (LBA 2048..6144) and 2 (LBA 4096..6144) overlap"]);
    }
}
