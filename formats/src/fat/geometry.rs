//! FAT32 geometry: sector and cluster sizes, FAT length, where each region starts, and the choice of cluster
//! size for a partition. All byte offsets are relative to the start of the partition.

use super::Error;
use crate::units::SectorSize;

/// Reserved sectors before the first FAT (boot sector, FSInfo, their backups at 6 and 7).
pub const RESERVED_SECTORS: u32 = 32;
/// Copies of the FAT.
pub const FATS: u32 = 2;
/// Fewest clusters of a FAT32 volume: with fewer, every reader following Microsoft's specification takes the
/// volume for FAT16.
pub const MIN_CLUSTERS: u32 = 65_525;
/// Most clusters of a FAT32 volume (the top 4 bits of an entry are reserved; mkfs.fat's limit).
pub const MAX_CLUSTERS: u32 = (1 << 28) - 16;
/// Largest cluster this writer uses (the largest every implementation accepts).
pub const MAX_CLUSTER_BYTES: u32 = 32 * 1024;
/// The first data cluster (the root directory's).
pub const FIRST_CLUSTER: u32 = 2;

/// A cluster number (data clusters start at 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cluster(pub u32);

/// The layout of one FAT32 volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Logical sector size.
    pub sector_size: SectorSize,
    /// Sectors in the volume (the whole partition).
    pub total_sectors: u32,
    /// Sectors per cluster (a power of two).
    pub sectors_per_cluster: u32,
    /// Sectors of each FAT.
    pub fat_sectors: u32,
    /// Data clusters (numbered 2 to `clusters + 1`).
    pub clusters: u32,
}

impl Geometry {
    /// The layout of `total_sectors` sectors with clusters of `sectors_per_cluster`: each FAT as short as can
    /// hold an entry for every cluster, lengthened so the data area starts on a cluster boundary. The cluster
    /// count may be anything, even too few for FAT32: see [`Geometry::is_fat32`].
    #[must_use]
    pub(crate) fn new(sector_size: SectorSize, total_sectors: u32, sectors_per_cluster: u32) -> Self {
        let bps = u64::from(u32::from(sector_size));
        let spc = u64::from(sectors_per_cluster);
        let total = u64::from(total_sectors);
        let entries_per_sector = bps / 4;
        let data = |fat: u64| total.saturating_sub(u64::from(RESERVED_SECTORS) + u64::from(FATS) * fat) / spc;
        let fits = |fat: u64| data(fat) + u64::from(FIRST_CLUSTER) <= fat * entries_per_sector;
        // f·E ≥ (T − R − 2f)/spc + 2 holds for f ≥ (T − R + 2·spc)/(E·spc + 2); walk down to the shortest.
        let mut fat =
            (total.saturating_sub(u64::from(RESERVED_SECTORS)) + 2 * spc).div_ceil(entries_per_sector * spc + 2);
        fat = fat.max(1);
        while fat > 1 && fits(fat - 1) {
            fat -= 1;
        }
        debug_assert!(fits(fat));
        let fat = align_fat(fat, spc);
        Self {
            sector_size,
            total_sectors,
            sectors_per_cluster,
            fat_sectors: u32::try_from(fat).expect("a FAT is shorter than the volume"),
            clusters: u32::try_from(data(fat)).expect("fewer clusters than sectors"),
        }
    }

    /// Whether the cluster count makes this a valid FAT32 volume.
    #[must_use]
    pub fn is_fat32(&self) -> bool {
        (MIN_CLUSTERS..=MAX_CLUSTERS).contains(&self.clusters)
    }

    /// Bytes per sector.
    #[must_use]
    pub fn sector_bytes(&self) -> u32 {
        u32::from(self.sector_size)
    }

    /// Bytes per cluster.
    #[must_use]
    pub fn cluster_bytes(&self) -> u32 {
        self.sector_bytes() * self.sectors_per_cluster
    }

    /// Size of the volume in bytes.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        u64::from(self.total_sectors) * u64::from(self.sector_bytes())
    }

    /// Byte offset of a sector.
    #[must_use]
    pub fn sector_offset(&self, sector: u32) -> u64 {
        u64::from(sector) * u64::from(self.sector_bytes())
    }

    /// Byte offset of FAT copy `copy` (0 or 1).
    #[must_use]
    pub fn fat_offset(&self, copy: u32) -> u64 {
        self.sector_offset(RESERVED_SECTORS + copy * self.fat_sectors)
    }

    /// First sector of the data area (cluster 2).
    #[must_use]
    pub fn data_sector(&self) -> u32 {
        RESERVED_SECTORS + FATS * self.fat_sectors
    }

    /// Byte offset of a data cluster.
    #[must_use]
    pub fn cluster_offset(&self, cluster: Cluster) -> u64 {
        debug_assert!(cluster.0 >= FIRST_CLUSTER);
        self.sector_offset(self.data_sector()) + u64::from(cluster.0 - FIRST_CLUSTER) * u64::from(self.cluster_bytes())
    }
}

/// The shortest FAT of at least `fat` sectors after which the data area starts on a cluster boundary (so
/// clusters are aligned on the disk as well as the partition is).
fn align_fat(fat: u64, spc: u64) -> u64 {
    let mut fat = fat;
    while !(u64::from(RESERVED_SECTORS) + u64::from(FATS) * fat).is_multiple_of(spc) {
        fat += 1;
    }
    fat
}

/// The largest cluster this writer picks for a partition of `size_bytes`, Microsoft's defaults for FAT32: 4 KiB
/// up to 8 GiB, 8 KiB to 16 GiB, 16 KiB to 32 GiB, 32 KiB above. Smaller clusters are used where these would
/// give too few clusters for FAT32 (512 B at 33 MiB, 1 KiB at 100 MiB, 2 KiB at 256 MiB).
#[must_use]
pub(crate) fn preferred_cluster_bytes(size_bytes: u64) -> u32 {
    const GIB: u64 = 1 << 30;
    match size_bytes {
        s if s <= 8 * GIB => 4096,
        s if s <= 16 * GIB => 8192,
        s if s <= 32 * GIB => 16384,
        _ => MAX_CLUSTER_BYTES,
    }
}

/// Smallest partition (bytes) for which [`preferred_cluster_bytes`] allows clusters of `cluster_bytes`.
fn first_size_allowing(cluster_bytes: u32) -> u64 {
    const GIB: u64 = 1 << 30;
    match cluster_bytes {
        ..=4096 => 0,
        8192 => 8 * GIB + 1,
        16384 => 16 * GIB + 1,
        _ => 32 * GIB + 1,
    }
}

/// Cluster sizes in bytes a sector size allows, smallest first.
fn cluster_sizes(sector: SectorSize) -> impl DoubleEndedIterator<Item = u32> {
    (0..8).map(move |shift| u32::from(sector) << shift).filter(|&c| c <= MAX_CLUSTER_BYTES)
}

/// The geometry of a partition of `size_bytes`: the largest allowed cluster size giving a valid FAT32 with at
/// least `needed(cluster_bytes)` clusters. `None` if there is none.
pub(crate) fn choose(
    size_bytes: u64,
    sector: SectorSize,
    needed: &dyn Fn(u32) -> u64,
) -> Result<Option<Geometry>, Error> {
    let bps = u32::from(sector);
    if !size_bytes.is_multiple_of(u64::from(bps)) {
        return Err(Error::UnalignedSize { size: size_bytes, sector });
    }
    let maximum = max_size(sector);
    let total = u32::try_from(size_bytes / u64::from(bps)).ok().filter(|_| size_bytes <= maximum);
    let Some(total) = total else {
        return Err(Error::TooLarge { given: size_bytes, maximum, sector });
    };
    let preferred = preferred_cluster_bytes(size_bytes);
    Ok(cluster_sizes(sector)
        .rev()
        .filter(|&c| c <= preferred)
        .map(|c| Geometry::new(sector, total, c / bps))
        .find(|g| g.is_fat32() && u64::from(g.clusters) >= needed(g.cluster_bytes())))
}

/// The fewest sectors holding at least `clusters` clusters of `spc` sectors.
fn sectors_for_clusters(sector: SectorSize, spc: u32, clusters: u64) -> u64 {
    let bps = u64::from(u32::from(sector));
    let fat = align_fat(((clusters + u64::from(FIRST_CLUSTER)) * 4).div_ceil(bps), u64::from(spc));
    u64::from(RESERVED_SECTORS) + u64::from(FATS) * fat + clusters * u64::from(spc)
}

/// Largest partition FAT32 supports with this writer: 2^32 − 1 sectors, or fewer where even 32 KiB clusters
/// would be too many.
fn max_size(sector: SectorSize) -> u64 {
    let spc = MAX_CLUSTER_BYTES / u32::from(sector);
    let by_clusters = sectors_for_clusters(sector, spc, u64::from(MAX_CLUSTERS) + 1) - 1;
    by_clusters.min(u64::from(u32::MAX)) * u64::from(u32::from(sector))
}

/// The smallest partition size in bytes (a whole number of sectors) that [`choose`] accepts, and every larger
/// one too, for a tree needing `needed(cluster_bytes)` clusters.
///
/// The cluster count of a partition does not grow strictly with its size: one more sector can lengthen both
/// FATs by a sector and cost a cluster. So the answer asks for one cluster more than needed; every larger
/// partition then still has enough.
pub(crate) fn smallest(sector: SectorSize, needed: &dyn Fn(u32) -> u64) -> Result<u64, Error> {
    let bps = u32::from(sector);
    let best = cluster_sizes(sector)
        .filter_map(|c| {
            let target = needed(c).max(u64::from(MIN_CLUSTERS)) + 1;
            if target > u64::from(MAX_CLUSTERS) {
                return None;
            }
            let sectors =
                sectors_for_clusters(sector, c / bps, target).max(first_size_allowing(c).div_ceil(u64::from(bps)));
            Some(sectors * u64::from(bps))
        })
        .min();
    let maximum = max_size(sector);
    match best {
        Some(bytes) if bytes <= maximum => Ok(bytes),
        _ => Err(Error::ContentsTooLarge { maximum, sector }),
    }
}

/// The smallest partition FAT32 allows with this sector size (nothing in it but the root directory).
pub(crate) fn smallest_fat32(sector: SectorSize) -> u64 {
    smallest(sector, &|_| 1).expect("an empty volume fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn geometry(size: u64, sector: SectorSize) -> Geometry {
        choose(size, sector, &|_| 1).unwrap().unwrap()
    }

    #[test]
    fn cluster_size_per_partition_size() {
        struct Case {
            size: u64,
            sector: SectorSize,
            cluster: u32,
        }
        let cases = [
            Case { size: 33 * MIB, sector: SectorSize::S512, cluster: 512 },
            Case { size: 64 * MIB, sector: SectorSize::S512, cluster: 512 },
            Case { size: 100 * MIB, sector: SectorSize::S512, cluster: 1024 },
            Case { size: 256 * MIB, sector: SectorSize::S512, cluster: 2048 },
            Case { size: 300 * MIB, sector: SectorSize::S512, cluster: 4096 },
            Case { size: 512 * MIB, sector: SectorSize::S512, cluster: 4096 },
            Case { size: 1024 * MIB, sector: SectorSize::S512, cluster: 4096 },
            Case { size: 8192 * MIB, sector: SectorSize::S512, cluster: 4096 },
            Case { size: 8193 * MIB, sector: SectorSize::S512, cluster: 8192 },
            Case { size: 40 << 30, sector: SectorSize::S512, cluster: 32768 },
            Case { size: 260 * MIB, sector: SectorSize::S4096, cluster: 4096 },
            Case { size: 512 * MIB, sector: SectorSize::S4096, cluster: 4096 },
            Case { size: 20 << 30, sector: SectorSize::S4096, cluster: 16384 },
        ];
        for case in cases {
            let g = geometry(case.size, case.sector);
            assert_eq!(g.cluster_bytes(), case.cluster, "{} bytes: {g:?}", case.size);
            assert!(g.is_fat32(), "{g:?}");
            assert_eq!(g.size_bytes(), case.size);
        }
    }

    #[test]
    fn fats_hold_every_cluster_and_data_is_cluster_aligned() {
        for sector in [SectorSize::S512, SectorSize::S4096] {
            for total in [70_000u32, 131_072, 500_000, 1 << 21, (1 << 21) + 1, 4_000_037] {
                for spc in [1, 2, 4, 8, 16, 32, 64].into_iter().filter(|s| s * u32::from(sector) <= MAX_CLUSTER_BYTES) {
                    let g = Geometry::new(sector, total, spc);
                    let entries = u64::from(g.fat_sectors) * u64::from(g.sector_bytes()) / 4;
                    assert!(u64::from(g.clusters) + 2 <= entries, "{g:?}");
                    assert_eq!(g.data_sector() % spc, 0, "{g:?}");
                    let used = u64::from(g.data_sector()) + u64::from(g.clusters) * u64::from(spc);
                    assert!(used <= u64::from(total));
                    assert!(u64::from(total) - used < u64::from(spc), "{g:?}: whole clusters left over");
                    // The FAT is at most one alignment step (and one sector of rounding) longer than needed.
                    let shortest = (u64::from(g.clusters) + 2).div_ceil(entries / u64::from(g.fat_sectors));
                    assert!(u64::from(g.fat_sectors) <= shortest + u64::from(spc), "{g:?}");
                }
            }
        }
    }

    #[test]
    fn smallest_partition_is_fat32_and_every_larger_one_too() {
        for sector in [SectorSize::S512, SectorSize::S4096] {
            let min = smallest_fat32(sector);
            assert_eq!(min % u64::from(u32::from(sector)), 0);
            let step = u64::from(u32::from(sector));
            for size in (min..min + 3000 * step).step_by(step as usize) {
                assert!(choose(size, sector, &|_| 1).unwrap().is_some(), "{size}");
            }
            assert!(choose(min - 2 * step, sector, &|_| 1).unwrap().is_none());
        }
        assert!(smallest_fat32(SectorSize::S512) < 33 * MIB);
        assert!(smallest_fat32(SectorSize::S512) > 32 * MIB);
        assert!(smallest_fat32(SectorSize::S4096) > 256 * MIB);
    }

    #[test]
    fn smallest_for_contents_fits_from_there_on() {
        // A tree needing 300,000 clusters of 512 bytes (or the equivalent in larger ones).
        let needed = |c: u32| (150 * MIB).div_ceil(u64::from(c)) + 10;
        let min = smallest(SectorSize::S512, &needed).unwrap();
        for size in (min..min + 5000 * 512).step_by(512) {
            assert!(choose(size, SectorSize::S512, &needed).unwrap().is_some(), "{size}");
        }
        // The answer asks for one spare cluster (of 2 KiB here); four fewer do not fit.
        assert!(choose(min - 8192, SectorSize::S512, &needed).unwrap().is_none());
    }

    #[test]
    fn rejects_unaligned_and_huge() {
        assert!(matches!(choose(33 * MIB + 1, SectorSize::S512, &|_| 1), Err(Error::UnalignedSize { .. })));
        assert!(matches!(choose(3 << 40, SectorSize::S512, &|_| 1), Err(Error::TooLarge { .. })));
        assert!(matches!(choose(12 << 40, SectorSize::S4096, &|_| 1), Err(Error::TooLarge { .. })));
        // 1 TiB of files fits in a volume of 512-byte sectors (at most 2 TiB); 3 TiB do not.
        assert!(smallest(SectorSize::S512, &|c| (1u64 << 40) / u64::from(c)).is_ok());
        assert!(matches!(
            smallest(SectorSize::S512, &|c| (3u64 << 40) / u64::from(c)),
            Err(Error::ContentsTooLarge { .. })
        ));
    }
}
