//! The plan of a partitioned disk: its size, sector size, table kind and every partition's place, type and
//! identity. [`DiskLayout::new`] checks a plan given in full; [`DiskLayout::sequential`] (in `sequential.rs`)
//! makes one from requested sizes. Either way a `DiskLayout` that exists is valid: 1 MiB aligned, inside the
//! usable sectors, no overlaps.

use std::collections::BTreeMap;
use std::fmt;

use super::Error;
use super::gpt::{GPT_ENTRIES, GptGeometry};
use super::guid::{GptAttributes, Guid, partition_type};
use crate::units::{ByteRange, Bytes, Lba, LbaRange, SectorSize};

/// Most UTF-16 code units in a GPT partition name.
pub const GPT_NAME_UNITS: usize = 36;
/// Primary partitions in an MBR.
pub const MBR_PARTITIONS: usize = 4;

/// Which partition table the disk carries, with the identity of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionTable {
    /// GUID partition table with a protective MBR.
    Gpt {
        /// The disk GUID.
        disk_guid: Guid,
    },
    /// A DOS (MBR) partition table, primary partitions only.
    Mbr {
        /// The disk signature at byte 0x1B8 (Linux shows it as the `PTUUID`; `PARTUUID`s are
        /// `<signature>-<number>`).
        disk_signature: u32,
    },
}

impl PartitionTable {
    /// `gpt` or `dos`, as sfdisk names them.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Gpt { .. } => "gpt",
            Self::Mbr { .. } => "dos",
        }
    }
}

/// One partition of a [`DiskLayout`]. On an MBR disk only the type and the bootable flag exist: `name` must be
/// empty, `guid` [`Guid::NIL`], and `attributes` at most [`GptAttributes::LEGACY_BIOS_BOOTABLE`] (written as the
/// active flag); the type GUID must be one with an MBR type byte (see [`mbr_type`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Partition {
    /// GPT partition name (Linux: `PARTLABEL`), at most 36 UTF-16 code units.
    pub name: String,
    /// Partition type, e.g. [`partition_type::ESP`].
    pub type_guid: Guid,
    /// Unique partition GUID (Linux: `PARTUUID`).
    pub guid: Guid,
    /// Attribute bits.
    pub attributes: GptAttributes,
    /// The sectors it occupies; start and end on 1 MiB boundaries.
    pub extent: LbaRange,
}

/// The MBR partition type byte for a partition type GUID: Linux filesystems (data and the root types) 0x83, ESP
/// 0xEF, XBOOTLDR 0xEA. `None` for types an MBR cannot express here.
#[must_use]
pub fn mbr_type(type_guid: Guid) -> Option<u8> {
    match type_guid {
        partition_type::LINUX_DATA | partition_type::ROOT_X86_64 | partition_type::ROOT_ARM64 => Some(0x83),
        partition_type::ESP => Some(0xEF),
        partition_type::XBOOTLDR => Some(0xEA),
        _ => None,
    }
}

/// A complete, checked partition plan of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    sector_size: SectorSize,
    size: Bytes,
    table: PartitionTable,
    partitions: Vec<Partition>,
}

impl DiskLayout {
    /// Checks a plan given in full.
    ///
    /// # Errors
    ///
    /// If the disk size is not a whole number of sectors or too small for the table, a GUID is nil or repeated,
    /// a name is too long, a partition is not 1 MiB aligned, outside the usable sectors, empty, out of order or
    /// overlapping another, there are too many partitions, or something cannot be expressed in an MBR.
    pub fn new(
        sector_size: SectorSize,
        size: Bytes,
        table: PartitionTable,
        partitions: Vec<Partition>,
    ) -> Result<Self, Error> {
        let layout = Self { sector_size, size, table, partitions };
        layout.check()?;
        Ok(layout)
    }

    /// The logical sector size.
    #[must_use]
    pub fn sector_size(&self) -> SectorSize {
        self.sector_size
    }

    /// The size of the whole disk.
    #[must_use]
    pub fn size(&self) -> Bytes {
        self.size
    }

    /// The number of sectors of the whole disk.
    #[must_use]
    pub fn sectors(&self) -> u64 {
        self.size.get() / self.sector_size.bytes().get()
    }

    /// The table kind and disk identity.
    #[must_use]
    pub fn table(&self) -> PartitionTable {
        self.table
    }

    /// The partitions, numbered from 1 in this order.
    #[must_use]
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// Where partition `number` (from 1) lies in bytes.
    #[must_use]
    pub fn byte_range(&self, number: usize) -> Option<ByteRange> {
        let p = self.partitions.get(number.checked_sub(1)?)?;
        Some(p.extent.bytes(self.sector_size))
    }

    /// The first partition of a type, with its number (from 1).
    #[must_use]
    pub fn find(&self, type_guid: Guid) -> Option<(usize, &Partition)> {
        self.partitions.iter().enumerate().find(|(_, p)| p.type_guid == type_guid).map(|(i, p)| (i + 1, p))
    }

    /// Where the GPT structures lie (`None` on an MBR disk).
    #[must_use]
    pub fn gpt_geometry(&self) -> Option<GptGeometry> {
        match self.table {
            PartitionTable::Gpt { .. } => GptGeometry::new(self.sector_size, self.sectors()),
            PartitionTable::Mbr { .. } => None,
        }
    }

    /// The sectors partitions may occupy.
    #[must_use]
    pub fn usable(&self) -> LbaRange {
        match self.gpt_geometry() {
            Some(g) => g.usable,
            None => LbaRange::new(Lba(1), Lba(self.sectors())),
        }
    }

    fn check(&self) -> Result<(), Error> {
        let ss = self.sector_size;
        let disk_sectors = self.size.to_lba(ss).ok_or(Error::UnalignedDiskSize { size: self.size, sector: ss })?.get();
        let usable = match self.table {
            PartitionTable::Gpt { disk_guid } => {
                if disk_guid.is_nil() {
                    return Err(Error::NilGuid { what: "disk GUID".to_owned() });
                }
                if self.partitions.len() > GPT_ENTRIES as usize {
                    return Err(Error::TooManyPartitions {
                        count: self.partitions.len(),
                        max: GPT_ENTRIES as usize,
                        table: "gpt",
                    });
                }
                GptGeometry::new(ss, disk_sectors)
                    // At least sector 0, two copies of the table and one sector for partitions.
                    .ok_or(Error::DiskTooSmall {
                        needed: (2 * GptGeometry::copy_sectors(ss) + 2) * ss.bytes().get(),
                        given: self.size.get(),
                    })?
                    .usable
            }
            PartitionTable::Mbr { .. } => {
                if self.partitions.len() > MBR_PARTITIONS {
                    return Err(Error::TooManyPartitions {
                        count: self.partitions.len(),
                        max: MBR_PARTITIONS,
                        table: "dos",
                    });
                }
                LbaRange::new(Lba(1), Lba(disk_sectors))
            }
        };

        let mut guids: BTreeMap<Guid, usize> = BTreeMap::new();
        if let PartitionTable::Gpt { disk_guid } = self.table {
            guids.insert(disk_guid, 0);
        }
        let mut previous: Option<(usize, &Partition)> = None;
        for (i, p) in self.partitions.iter().enumerate() {
            let number = i + 1;
            let at = |what: &str| format!("partition {number} (\"{}\") {what}", p.name);
            match self.table {
                PartitionTable::Gpt { .. } => {
                    check_name(number, &p.name)?;
                    if p.type_guid.is_nil() {
                        return Err(Error::NilGuid { what: at("type GUID") });
                    }
                    if p.guid.is_nil() {
                        return Err(Error::NilGuid { what: at("GUID") });
                    }
                    if let Some(first) = guids.insert(p.guid, number) {
                        return Err(Error::DuplicateGuid { guid: p.guid, first, second: number });
                    }
                }
                PartitionTable::Mbr { .. } => check_mbr(number, p)?,
            }
            let e = p.extent;
            if e.is_empty() {
                return Err(Error::EmptyPartition { number, name: p.name.clone() });
            }
            for (lba, edge) in [(e.start, "start"), (e.end, "end")] {
                if !lba.is_mib_aligned(ss) {
                    return Err(Error::Unaligned {
                        number,
                        name: p.name.clone(),
                        edge,
                        lba,
                        offset: lba.checked_offset(ss).unwrap_or(Bytes(u64::MAX)),
                    });
                }
            }
            if e.start < usable.start || e.end > usable.end {
                return Err(Error::OutsideUsable { number, name: p.name.clone(), extent: e, usable });
            }
            if let Some((prev_number, prev)) = previous
                && e.start < prev.extent.end
            {
                return Err(Error::Overlap {
                    first: prev_number,
                    first_extent: prev.extent,
                    second: number,
                    second_extent: e,
                });
            }
            previous = Some((number, p));
        }
        Ok(())
    }
}

fn check_name(number: usize, name: &str) -> Result<(), Error> {
    let why = if name.encode_utf16().count() > GPT_NAME_UNITS {
        "longer than 36 UTF-16 code units"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(Error::BadName { number, name: name.to_owned(), why })
}

fn check_mbr(number: usize, p: &Partition) -> Result<(), Error> {
    let why = if !p.name.is_empty() {
        "MBR partitions have no names"
    } else if !p.guid.is_nil() {
        "MBR partitions have no GUIDs (Linux derives PARTUUID from the disk signature)"
    } else if !GptAttributes::LEGACY_BIOS_BOOTABLE.contains(p.attributes) {
        "MBR partitions have no attributes but the bootable flag (LEGACY_BIOS_BOOTABLE)"
    } else if mbr_type(p.type_guid).is_none() {
        "the type has no MBR type byte"
    } else if p.extent.start.get() > u64::from(u32::MAX) || p.extent.sectors() > u64::from(u32::MAX) {
        "beyond what 32-bit MBR sector fields address"
    } else {
        return Ok(());
    };
    Err(Error::NotMbr { number, type_guid: p.type_guid, why })
}

/// One line for the disk and one per partition, like `sfdisk --dump`.
impl fmt::Display for DiskLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ss = self.sector_size;
        match self.table {
            PartitionTable::Gpt { disk_guid } => write!(f, "label: gpt, id: {disk_guid}")?,
            PartitionTable::Mbr { disk_signature } => write!(f, "label: dos, id: 0x{disk_signature:08x}")?,
        }
        writeln!(f, ", sector-size: {ss}, size: {} bytes ({} sectors)", self.size, self.sectors())?;
        for (i, p) in self.partitions.iter().enumerate() {
            write!(
                f,
                "{}: start={}, size={}, {}, type={}",
                i + 1,
                p.extent.start,
                p.extent.sectors(),
                p.extent.bytes(ss),
                p.type_guid
            )?;
            if let PartitionTable::Gpt { .. } = self.table {
                write!(f, ", uuid={}, name=\"{}\"", p.guid, p.name)?;
            }
            if p.attributes != GptAttributes::NONE {
                write!(f, ", attrs=0x{:x}", p.attributes.0)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{DiskSize, MIB, PartitionRequest, PartitionSize};

    use crate::disk::testing::{GPT, guid, req};

    #[test]
    fn new_checks_extents() {
        let p = |start: u64, end: u64, n: u8| Partition {
            name: format!("p{n}"),
            type_guid: partition_type::LINUX_DATA,
            guid: guid(n),
            attributes: GptAttributes::NONE,
            extent: LbaRange::new(Lba(start), Lba(end)),
        };
        let disk = Bytes::mib(16);
        let new = |parts| DiskLayout::new(SectorSize::S512, disk, GPT, parts);
        assert!(new(vec![p(2048, 4096, 1), p(4096, 8192, 2)]).is_ok());
        assert!(matches!(new(vec![p(2048, 4100, 1)]), Err(Error::Unaligned { edge: "end", .. })));
        assert!(matches!(new(vec![p(2048 + 8, 4096, 1)]), Err(Error::Unaligned { edge: "start", .. })));
        assert!(matches!(
            new(vec![p(2048, 8192, 1), p(4096, 10240, 2)]),
            Err(Error::Overlap { first: 1, second: 2, .. })
        ));
        assert!(matches!(new(vec![p(4096, 8192, 1), p(2048, 4096, 2)]), Err(Error::Overlap { .. })));
        // The last MiB holds the backup GPT: a partition ending at the disk's end is outside the usable sectors.
        assert!(matches!(new(vec![p(2048, 32768, 1)]), Err(Error::OutsideUsable { number: 1, .. })));
        assert!(new(vec![p(2048, 30720, 1)]).is_ok());
    }

    #[test]
    fn display() {
        let layout = DiskLayout::sequential(
            SectorSize::S512,
            GPT,
            DiskSize::Fit,
            vec![PartitionRequest {
                attributes: GptAttributes::LEGACY_BIOS_BOOTABLE,
                ..req("BIOS", partition_type::BIOS_BOOT, 1, PartitionSize::AtLeast(MIB))
            }],
        )
        .unwrap();
        assert_eq!(
            layout.to_string(),
            "label: gpt, id: 12345678-9ABC-4DEF-8123-456789ABCDEF, sector-size: 512, size: 3145728 bytes (6144 sectors)\n\
             1: start=2048, size=2048, bytes 1048576..2097152, type=21686148-6449-6E6F-744E-656564454649, \
             uuid=01010101-0101-4101-8101-010101010101, name=\"BIOS\", attrs=0x4\n"
        );
    }
}
