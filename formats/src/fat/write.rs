//! Writing a plan: file data copied by rayon workers with positioned writes at planned offsets, the boot
//! sectors, FSInfo, both FATs and the directories beside them. Nothing is decided here.

use rayon::prelude::*;

use super::Error;
use super::boot::{BACKUP_BOOT_SECTOR, FSINFO_SECTOR, MEDIA, boot_sector, fsinfo};
use super::geometry::FATS;
use super::plan::{FileExtent, Plan};
use super::tree::{Kind, Source, Tree};
use crate::copy::{self, CHUNK};
use crate::sink::WriteAt;

/// End of a cluster chain.
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;

fn write(sink: &dyn WriteAt, buf: &[u8], offset: u64, what: &'static str) -> Result<(), Error> {
    sink.write_all_at(buf, offset).map_err(|source| Error::Write { offset, what, source })
}

impl Plan {
    /// Writes the volume into `sink` at byte offset `base` (where the partition starts in the sink). The sink
    /// must be at least `base + size_bytes()` long and read as zeros where nothing is written (a new sparse
    /// file, a zeroed partition): only [`Plan::used_ranges`] are written.
    pub fn write(&self, tree: &Tree, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        let (data, meta) = rayon::join(
            || self.files.par_iter().try_for_each(|f| self.copy_file(tree, f, sink, base)),
            || self.write_metadata(sink, base),
        );
        data?;
        meta
    }

    /// The used start of a FAT: the two reserved entries, then each chain pointing cluster to cluster.
    pub(crate) fn fat_bytes(&self) -> Vec<u8> {
        let mut fat = Vec::with_capacity(self.fat_used_bytes() as usize);
        fat.extend_from_slice(&(0x0FFF_FF00 | u32::from(MEDIA)).to_le_bytes());
        fat.extend_from_slice(&END_OF_CHAIN.to_le_bytes()); // also: clean unmount, no I/O errors
        for (first, len) in self.chains() {
            debug_assert_eq!(fat.len(), first as usize * 4);
            for c in first + 1..first + len {
                fat.extend_from_slice(&c.to_le_bytes());
            }
            fat.extend_from_slice(&END_OF_CHAIN.to_le_bytes());
        }
        debug_assert_eq!(fat.len() as u64, self.fat_used_bytes());
        fat
    }

    fn write_metadata(&self, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        let g = &self.geometry;
        let boot = boot_sector(g, &self.identity);
        let info = fsinfo(self.free_clusters(), self.free_hint());
        for (sector, bytes, what) in [
            (0, &boot, "boot sector"),
            (FSINFO_SECTOR, &info, "FSInfo sector"),
            (BACKUP_BOOT_SECTOR, &boot, "backup boot sector"),
            (BACKUP_BOOT_SECTOR + 1, &info, "backup FSInfo sector"),
        ] {
            write(sink, bytes, base + g.sector_offset(sector), what)?;
        }
        let fat = self.fat_bytes();
        for copy in 0..FATS {
            for (i, chunk) in fat.chunks(CHUNK).enumerate() {
                write(sink, chunk, base + g.fat_offset(copy) + (i * CHUNK) as u64, "FAT")?;
            }
        }
        self.dirs
            .par_iter()
            .try_for_each(|(cluster, bytes)| write(sink, bytes, base + g.cluster_offset(*cluster), "directory"))
    }

    /// Copies one file's bytes to its clusters, skipping holes in the source and all-zero chunks.
    fn copy_file(&self, tree: &Tree, f: &FileExtent, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        let size = u64::from(f.size);
        let data = match tree.nodes.get(f.node as usize).map(|n| &n.kind) {
            Some(Kind::File { size: s, source: Source::Bytes(bytes) }) if *s == size => copy::Data::Bytes(bytes),
            Some(Kind::File { size: s, source: Source::Host(path) }) if *s == size => copy::Data::Host(path),
            _ => return Err(Error::TreeMismatch { node: f.node, path: tree.path(f.node) }),
        };
        let at = base + self.geometry.cluster_offset(f.first);
        Ok(copy::copy_file(data, size, [copy::Piece { at, len: size }], sink)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::geometry::Cluster;
    use super::super::{Options, plan};
    use super::*;
    use crate::sink::MemSink;
    use crate::units::SectorSize;

    const MIB: u64 = 1 << 20;

    fn image(t: &Tree, opts: &Options) -> (Plan, Vec<u8>) {
        let plan = plan(t, opts).unwrap();
        let sink = MemSink::new(plan.size_bytes() as usize);
        plan.write(t, &sink, 0).unwrap();
        (plan, sink.into_inner())
    }

    fn u32_at(img: &[u8], at: u64) -> u32 {
        u32::from_le_bytes(img[at as usize..at as usize + 4].try_into().unwrap())
    }

    #[test]
    fn fats_are_identical_and_chain_each_extent() {
        let mut t = Tree::new();
        t.add_file("a", Source::Bytes(Arc::from(vec![7u8; 3000]))).unwrap();
        t.add_file("b", Source::Bytes(Arc::from(vec![0u8; 0]))).unwrap();
        let opts = Options::new(40 * MIB, 2048, 1, 0);
        let (plan, img) = image(&t, &opts);
        let g = plan.geometry;
        let fat_len = u64::from(g.fat_sectors) * u64::from(g.sector_bytes());
        let (f0, f1) = (g.fat_offset(0) as usize, g.fat_offset(1) as usize);
        assert_eq!(img[f0..f0 + fat_len as usize], img[f1..f1 + fat_len as usize]);
        assert_eq!(u32_at(&img, g.fat_offset(0)), 0x0FFF_FFF8);
        assert_eq!(u32_at(&img, g.fat_offset(0) + 4), 0x0FFF_FFFF);
        // Root at 2 (one cluster), then "a" at 3..9.
        assert_eq!(u32_at(&img, g.fat_offset(0) + 8), END_OF_CHAIN);
        let a = plan.files[0];
        assert_eq!((a.first, a.clusters), (Cluster(3), 6));
        for c in 3..8 {
            assert_eq!(u32_at(&img, g.fat_offset(0) + 4 * c), c as u32 + 1);
        }
        assert_eq!(u32_at(&img, g.fat_offset(0) + 4 * 8), END_OF_CHAIN);
        assert_eq!(u32_at(&img, g.fat_offset(0) + 4 * 9), 0);
        // FSInfo: exact free count and hint; backups equal the primaries.
        assert_eq!(u32_at(&img, 512 + 488), g.clusters - 7);
        assert_eq!(u32_at(&img, 512 + 492), 8);
        assert_eq!(img[..1024], img[6 * 512..8 * 512]);
        let data = g.cluster_offset(Cluster(3)) as usize;
        assert_eq!(&img[data..data + 3000], &[7u8; 3000][..]);
        assert!(img[data + 3000..data + 3072].iter().all(|&b| b == 0));
    }

    #[test]
    fn nothing_is_written_outside_the_used_ranges() {
        let mut t = Tree::new();
        t.add_file("EFI/BOOT/BOOTX64.EFI", Source::Bytes(Arc::from(vec![0xAB; 10_000]))).unwrap();
        t.add_file("loader/loader.conf", Source::Bytes(Arc::from(&b"timeout 3\n"[..]))).unwrap();
        for sector in [SectorSize::S512, SectorSize::S4096] {
            let mut opts = Options::new(if sector == SectorSize::S512 { 40 * MIB } else { 260 * MIB }, 0, 1, 0);
            opts.sector_size = sector;
            let (plan, mut img) = image(&t, &opts);
            let ranges = plan.used_ranges();
            assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start), "{ranges:?}");
            for r in ranges {
                img[r.start as usize..r.end as usize].fill(0);
            }
            assert!(img.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn host_files_are_copied_and_checked() {
        let dir = std::env::temp_dir().join(format!("kiln-fat-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kernel");
        let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut t = Tree::new();
        t.add_file("EFI/nixos/kernel.efi", Source::Host(path.clone())).unwrap();
        let opts = Options::new(64 * MIB, 0, 1, 0);
        let (plan, img) = image(&t, &opts);
        let at = plan.geometry.cluster_offset(plan.files[0].first) as usize;
        assert_eq!(&img[at..at + bytes.len()], &bytes[..]);
        // Changed after planning: refused, naming the file.
        std::fs::write(&path, b"short").unwrap();
        let sink = MemSink::new(plan.size_bytes() as usize);
        let err = plan.write(&t, &sink, 0).unwrap_err();
        assert!(matches!(err, Error::Copy(copy::Error::SourceChanged { found: 5, .. })), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
