//! Planning partitions from sizes: one after another from 1 MiB, each on a MiB boundary, the last one optionally
//! filling the disk.

use super::Error;
use super::gpt::GptGeometry;
use super::guid::{GptAttributes, Guid};
use super::layout::{DiskLayout, Partition, PartitionTable};
use crate::units::{Bytes, Lba, LbaRange, MIB, SectorSize};

/// How big a partition [`DiskLayout::sequential`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSize {
    /// At least this many bytes, rounded up to whole MiB.
    AtLeast(Bytes),
    /// Everything up to the last whole MiB before the end of the usable space (last partition only; needs
    /// [`DiskSize::Exactly`]).
    Fill,
}

/// How big a disk [`DiskLayout::sequential`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSize {
    /// Exactly this many bytes (a whole number of sectors).
    Exactly(Bytes),
    /// The smallest whole number of MiB that holds the partitions (and, for GPT, the backup table in the last
    /// MiB).
    Fit,
}

/// A partition for [`DiskLayout::sequential`]: everything but the place, which is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRequest {
    /// See [`Partition::name`].
    pub name: String,
    /// See [`Partition::type_guid`].
    pub type_guid: Guid,
    /// See [`Partition::guid`].
    pub guid: Guid,
    /// See [`Partition::attributes`].
    pub attributes: GptAttributes,
    /// How big.
    pub size: PartitionSize,
}

impl DiskLayout {
    /// Lays partitions out one after another from 1 MiB, each starting on a MiB boundary, and checks the result
    /// like [`DiskLayout::new`]. The plan's [`DiskLayout::partitions`] then tell where each one landed.
    ///
    /// # Errors
    ///
    /// As [`DiskLayout::new`], and if a [`PartitionSize::Fill`] is not last or has no [`DiskSize::Exactly`] to
    /// fill, or the partitions do not fit the disk.
    pub fn sequential(
        sector_size: SectorSize,
        table: PartitionTable,
        disk: DiskSize,
        requests: Vec<PartitionRequest>,
    ) -> Result<Self, Error> {
        let per_mib = sector_size.per_mib();
        let too_large = |what| Error::TooLarge { what };
        let count = requests.len();
        // Fixed sizes first: each partition starts where the previous one ends, from 1 MiB.
        let mut next = Lba(per_mib);
        let mut extents: Vec<Option<LbaRange>> = Vec::with_capacity(count);
        for (i, req) in requests.iter().enumerate() {
            match req.size {
                PartitionSize::AtLeast(bytes) => {
                    if bytes.get() == 0 {
                        return Err(Error::EmptyPartition { number: i + 1, name: req.name.clone() });
                    }
                    let mib = bytes.align_up(MIB).ok_or(too_large("partition size"))?.get() >> 20;
                    let sectors = mib.checked_mul(per_mib).ok_or(too_large("partition size"))?;
                    let end = next.checked_add(sectors).ok_or(too_large("partition size"))?;
                    extents.push(Some(LbaRange::new(next, end)));
                    next = end;
                }
                PartitionSize::Fill if i + 1 != count => {
                    return Err(Error::FillNotLast { number: i + 1, name: req.name.clone() });
                }
                PartitionSize::Fill => extents.push(None),
            }
        }
        let fill = extents.last().is_some_and(Option::is_none);
        let end = next.checked_offset(sector_size).ok_or(too_large("disk size"))?;
        // The smallest disk that holds it all: the partitions, a MiB more to fill, and the backup GPT.
        let backup = match table {
            PartitionTable::Gpt { .. } => Bytes(GptGeometry::copy_sectors(sector_size) * sector_size.bytes().get()),
            PartitionTable::Mbr { .. } => Bytes(0),
        };
        let minimum = end
            .checked_add(if fill { MIB } else { Bytes(0) })
            .and_then(|b| b.checked_add(backup))
            .ok_or(too_large("disk size"))?;
        let size = match disk {
            DiskSize::Exactly(size) => size,
            DiskSize::Fit if fill => return Err(Error::FillNeedsDiskSize),
            // Whole MiB: the backup GPT gets the last one.
            DiskSize::Fit => minimum.align_up(MIB).ok_or(too_large("disk size"))?,
        };
        let disk_sectors = size.to_lba(sector_size).ok_or(Error::UnalignedDiskSize { size, sector: sector_size })?;
        let too_small = || Error::DiskTooSmall { needed: minimum.get(), given: size.get() };
        let usable_end = match table {
            PartitionTable::Gpt { .. } => {
                GptGeometry::new(sector_size, disk_sectors.get()).ok_or_else(too_small)?.usable.end
            }
            PartitionTable::Mbr { .. } => disk_sectors,
        };
        let fill_end = Lba(usable_end.get() - usable_end.get() % per_mib);
        if next > usable_end || (fill && fill_end <= next) {
            return Err(too_small());
        }

        let partitions = requests
            .into_iter()
            .zip(extents)
            .map(|(req, extent)| Partition {
                name: req.name,
                type_guid: req.type_guid,
                guid: req.guid,
                attributes: req.attributes,
                extent: extent.unwrap_or(LbaRange::new(next, fill_end)),
            })
            .collect();
        Self::new(sector_size, size, table, partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::partition_type;

    use crate::disk::testing::{GPT, req};

    #[test]
    fn sequential_layouts() {
        use PartitionSize::{AtLeast, Fill};
        struct Case {
            name: &'static str,
            sector: SectorSize,
            disk: DiskSize,
            sizes: Vec<PartitionSize>,
            /// (start, end) in MiB.
            want: Vec<(u64, u64)>,
            want_size: u64,
        }
        let cases = [
            Case {
                name: "fit",
                sector: SectorSize::S512,
                disk: DiskSize::Fit,
                sizes: vec![AtLeast(MIB), AtLeast(Bytes::mib(10))],
                want: vec![(1, 2), (2, 12)],
                want_size: 13,
            },
            Case {
                name: "sizes round up to MiB",
                sector: SectorSize::S4096,
                disk: DiskSize::Fit,
                sizes: vec![AtLeast(Bytes(1)), AtLeast(Bytes(MIB.get() + 1))],
                want: vec![(1, 2), (2, 4)],
                want_size: 5,
            },
            Case {
                name: "fill stops at the last whole MiB before the backup GPT",
                sector: SectorSize::S512,
                disk: DiskSize::Exactly(Bytes::mib(64)),
                sizes: vec![AtLeast(Bytes::mib(8)), Fill],
                want: vec![(1, 9), (9, 63)],
                want_size: 64,
            },
            Case {
                name: "fill with an odd disk size: the backup GPT (5 sectors of 4096) fits after 64 MiB",
                sector: SectorSize::S4096,
                disk: DiskSize::Exactly(Bytes(Bytes::mib(64).get() + 5 * 4096)),
                sizes: vec![Fill],
                want: vec![(1, 64)],
                want_size: 0,
            },
        ];
        for c in cases {
            let n = c.sizes.len();
            let requests = c
                .sizes
                .into_iter()
                .enumerate()
                .map(|(i, s)| req("p", partition_type::LINUX_DATA, i as u8 + 1, s))
                .collect();
            let layout =
                DiskLayout::sequential(c.sector, GPT, c.disk, requests).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(layout.partitions().len(), n);
            let got: Vec<(u64, u64)> = (1..=n)
                .map(|i| {
                    let r = layout.byte_range(i).unwrap();
                    (r.start.get() >> 20, r.end.get() >> 20)
                })
                .collect();
            assert_eq!(got, c.want, "{}", c.name);
            if c.want_size != 0 {
                assert_eq!(layout.size(), Bytes::mib(c.want_size), "{}", c.name);
            }
        }
    }

    #[test]
    fn sequential_mbr_fits_exactly() {
        let mut r = req("", partition_type::LINUX_DATA, 0, PartitionSize::AtLeast(Bytes::mib(3)));
        r.guid = Guid::NIL;
        r.attributes = GptAttributes::LEGACY_BIOS_BOOTABLE;
        let layout =
            DiskLayout::sequential(SectorSize::S512, PartitionTable::Mbr { disk_signature: 7 }, DiskSize::Fit, vec![r])
                .unwrap();
        assert_eq!(layout.size(), Bytes::mib(4));
        assert_eq!(layout.partitions()[0].extent, LbaRange::new(Lba(2048), Lba(8192)));
    }

    #[test]
    fn errors() {
        use PartitionSize::{AtLeast, Fill};
        let ok = |n| req("ok", partition_type::LINUX_DATA, n, AtLeast(MIB));
        let mbr = PartitionTable::Mbr { disk_signature: 1 };
        type Check = fn(&Error) -> bool;
        struct Case {
            name: &'static str,
            table: PartitionTable,
            disk: DiskSize,
            requests: Vec<PartitionRequest>,
            want: Check,
        }
        let cases = [
            Case {
                name: "fill not last",
                table: GPT,
                disk: DiskSize::Exactly(Bytes::mib(8)),
                requests: vec![req("a", partition_type::ESP, 1, Fill), ok(2)],
                want: |e| matches!(e, Error::FillNotLast { number: 1, .. }),
            },
            Case {
                name: "fill without a disk size",
                table: GPT,
                disk: DiskSize::Fit,
                requests: vec![req("a", partition_type::ESP, 1, Fill)],
                want: |e| matches!(e, Error::FillNeedsDiskSize),
            },
            Case {
                name: "too small",
                table: GPT,
                disk: DiskSize::Exactly(Bytes::mib(2)),
                requests: vec![ok(1)],
                want: |e| matches!(e, Error::DiskTooSmall { needed, given } if *needed == (2 << 20) + 33 * 512 && *given == 2 << 20),
            },
            Case {
                name: "nothing left to fill",
                table: GPT,
                disk: DiskSize::Exactly(Bytes::mib(3)),
                requests: vec![ok(1), req("f", partition_type::LINUX_DATA, 2, Fill)],
                want: |e| matches!(e, Error::DiskTooSmall { .. }),
            },
            Case {
                name: "unaligned disk",
                table: GPT,
                disk: DiskSize::Exactly(Bytes(Bytes::mib(8).get() + 100)),
                requests: vec![ok(1)],
                want: |e| matches!(e, Error::UnalignedDiskSize { .. }),
            },
            Case {
                name: "duplicate GUID",
                table: GPT,
                disk: DiskSize::Fit,
                requests: vec![ok(1), ok(1)],
                want: |e| matches!(e, Error::DuplicateGuid { first: 1, second: 2, .. }),
            },
            Case {
                name: "nil partition GUID",
                table: GPT,
                disk: DiskSize::Fit,
                requests: vec![PartitionRequest { guid: Guid::NIL, ..ok(1) }],
                want: |e| matches!(e, Error::NilGuid { .. }),
            },
            Case {
                name: "nil disk GUID",
                table: PartitionTable::Gpt { disk_guid: Guid::NIL },
                disk: DiskSize::Fit,
                requests: vec![ok(1)],
                want: |e| matches!(e, Error::NilGuid { .. }),
            },
            Case {
                name: "long name",
                table: GPT,
                disk: DiskSize::Fit,
                requests: vec![PartitionRequest { name: "x".repeat(37), ..ok(1) }],
                want: |e| matches!(e, Error::BadName { number: 1, .. }),
            },
            Case {
                name: "empty",
                table: GPT,
                disk: DiskSize::Fit,
                requests: vec![req("e", partition_type::ESP, 1, AtLeast(Bytes(0)))],
                want: |e| matches!(e, Error::EmptyPartition { number: 1, .. }),
            },
            Case {
                name: "MBR with a name",
                table: mbr,
                disk: DiskSize::Fit,
                requests: vec![PartitionRequest { guid: Guid::NIL, ..ok(1) }],
                want: |e| matches!(e, Error::NotMbr { number: 1, .. }),
            },
            Case {
                name: "MBR with a BIOS boot partition",
                table: mbr,
                disk: DiskSize::Fit,
                requests: vec![PartitionRequest {
                    name: String::new(),
                    guid: Guid::NIL,
                    ..req("", partition_type::BIOS_BOOT, 0, AtLeast(MIB))
                }],
                want: |e| matches!(e, Error::NotMbr { why, .. } if why.contains("type")),
            },
            Case {
                name: "five MBR partitions",
                table: mbr,
                disk: DiskSize::Fit,
                requests: (0..5).map(|_| PartitionRequest { name: String::new(), guid: Guid::NIL, ..ok(0) }).collect(),
                want: |e| matches!(e, Error::TooManyPartitions { count: 5, max: 4, .. }),
            },
        ];
        for c in cases {
            match DiskLayout::sequential(SectorSize::S512, c.table, c.disk, c.requests) {
                Ok(l) => panic!("{}: planned\n{l}", c.name),
                Err(e) => assert!((c.want)(&e), "{}: wrong error {e:?}", c.name),
            }
        }
    }
}
