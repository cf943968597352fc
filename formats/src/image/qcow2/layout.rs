//! Where everything goes in the qcow2 file: host clusters are handed out in order, data first, metadata last.
//!
//! Compressed clusters are packed byte by byte into a run of contiguous host clusters (a compressed cluster may
//! start in one host cluster and end in the next). Standard (uncompressed) clusters need whole host clusters;
//! placing each one where it comes would cut the compressed run and waste the rest of its last host cluster
//! every time, so they are held back and placed together once [`RAW_BATCH_BYTES`] of them have gathered. The
//! placement depends only on the sequence of clusters pushed, never on how they were batched or on threads.

use std::collections::BTreeMap;

use super::header::{COPIED, CompressedDescriptor, Header, MAX_HOST_OFFSET, MAX_L1_BYTES, REFCOUNT_BYTES};
use super::{ClusterSize, Error};
use crate::sink::WriteAt;

/// Standard clusters held back before they are placed together (4 MiB, or one cluster if larger).
const RAW_BATCH_BYTES: usize = 4 << 20;

/// A guest (virtual disk) cluster number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct GuestCluster(pub(super) u64);

/// A host (qcow2 file) cluster number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HostCluster(u64);

/// What one guest cluster holds.
#[derive(Debug)]
pub(super) enum Cluster {
    /// Only zeros: left unallocated.
    Zero,
    /// Compressed data (less than a cluster), decompressing to exactly one cluster.
    Compressed(Vec<u8>),
    /// The cluster's bytes (exactly one cluster), stored as they are.
    Raw(Vec<u8>),
}

/// Bytes to write at an offset of the qcow2 file.
#[derive(Debug)]
pub(super) struct Run {
    /// Offset in the file.
    pub(super) offset: u64,
    /// The bytes.
    pub(super) data: Vec<u8>,
}

/// The host cluster allocator and the tables it fills.
#[derive(Debug)]
pub(super) struct Layout {
    cluster_size: ClusterSize,
    descriptor: CompressedDescriptor,
    /// The first host cluster not handed out yet.
    next_free: HostCluster,
    /// Where the next compressed byte goes, and the end of the host clusters handed out to compressed data so far
    /// (it may continue past `end` only if `end` is still the end of everything handed out).
    packed: std::ops::Range<u64>,
    /// Refcount of every host cluster handed out.
    refcounts: Vec<u16>,
    /// L2 tables that have an allocated entry, by L1 index.
    l2: BTreeMap<u64, Box<[u64]>>,
    /// Standard clusters not placed yet, and their bytes.
    held: Vec<(GuestCluster, Vec<u8>)>,
    held_bytes: usize,
    /// Data placed and not yet taken for writing.
    writes: Vec<Run>,
}

impl Layout {
    /// An empty file: the header in host cluster 0, nothing else.
    pub(super) fn new(cluster_size: ClusterSize) -> Self {
        let start = cluster_size.bytes();
        Self {
            cluster_size,
            descriptor: CompressedDescriptor::new(cluster_size),
            next_free: HostCluster(1),
            packed: start..start,
            refcounts: vec![1],
            l2: BTreeMap::new(),
            held: Vec::new(),
            held_bytes: 0,
            writes: Vec::new(),
        }
    }

    fn offset(&self, c: HostCluster) -> u64 {
        c.0 << self.cluster_size.bits()
    }

    /// Hands out the next `n` host clusters with refcount 0; the first one is returned.
    fn allocate(&mut self, n: u64) -> HostCluster {
        let first = self.next_free;
        self.next_free.0 += n;
        self.refcounts.resize(self.next_free.0 as usize, 0);
        first
    }

    fn set_l2(&mut self, guest: GuestCluster, entry: u64) {
        let per_table = self.cluster_size.bytes() / 8;
        let table = self.l2.entry(guest.0 / per_table).or_insert_with(|| vec![0; per_table as usize].into());
        table[(guest.0 % per_table) as usize] = entry;
    }

    /// Records what guest cluster `guest` holds. Guest clusters must come in increasing order.
    pub(super) fn push(&mut self, guest: GuestCluster, cluster: Cluster) -> Result<(), Error> {
        match cluster {
            Cluster::Zero => Ok(()),
            Cluster::Compressed(data) => self.place_compressed(guest, &data),
            Cluster::Raw(data) => {
                self.held_bytes += data.len();
                self.held.push((guest, data));
                if self.held_bytes >= RAW_BATCH_BYTES { self.place_held() } else { Ok(()) }
            }
        }
    }

    fn place_compressed(&mut self, guest: GuestCluster, data: &[u8]) -> Result<(), Error> {
        let cs = self.cluster_size.bytes();
        let len = data.len() as u64;
        debug_assert!(len > 0 && len < cs);
        let contiguous = self.packed.end == self.offset(self.next_free);
        // A refcount at its maximum cannot count one more user of that host cluster.
        let full = self.packed.start < self.packed.end && self.refcounts[(self.packed.start / cs) as usize] == u16::MAX;
        if full || (!contiguous && self.packed.start + len > self.packed.end) {
            let fresh = self.offset(self.next_free);
            self.packed = fresh..fresh;
        }
        let start = self.packed.start;
        let end = start + len;
        if end > self.packed.end {
            let n = (end - self.packed.end).div_ceil(cs);
            self.allocate(n);
            self.packed.end += n * cs;
        }
        let entry = self.descriptor.entry(start, end).ok_or(Error::TooLarge {
            what: "the host offset of a compressed cluster",
            value: start,
            limit: self.descriptor.offset_limit(),
            cluster_size: self.cluster_size,
        })?;
        // Every host cluster the compressed data's sectors touch counts this user (sectors never cross clusters).
        for c in start / cs..=(end - 1) / cs {
            self.refcounts[c as usize] += 1;
        }
        self.set_l2(guest, entry);
        match self.writes.last_mut() {
            Some(run) if run.offset + run.data.len() as u64 == start => run.data.extend_from_slice(data),
            _ => self.writes.push(Run { offset: start, data: data.to_vec() }),
        }
        self.packed.start = end;
        Ok(())
    }

    /// Places the held standard clusters in host clusters of their own, one after another.
    fn place_held(&mut self) -> Result<(), Error> {
        for (guest, data) in std::mem::take(&mut self.held) {
            debug_assert_eq!(data.len() as u64, self.cluster_size.bytes());
            let host = self.allocate(1);
            let offset = self.offset(host);
            if offset >= MAX_HOST_OFFSET {
                return Err(Error::TooLarge {
                    what: "the host offset of a data cluster",
                    value: offset,
                    limit: MAX_HOST_OFFSET,
                    cluster_size: self.cluster_size,
                });
            }
            self.refcounts[host.0 as usize] = 1;
            self.set_l2(guest, COPIED | offset);
            self.writes.push(Run { offset, data });
        }
        self.held_bytes = 0;
        Ok(())
    }

    /// The data placed since the last call, to be written before [`Layout::finish`].
    pub(super) fn take_writes(&mut self) -> Vec<Run> {
        std::mem::take(&mut self.writes)
    }

    /// Places what is still held, writes it, then writes the metadata after the data (L2 tables, L1 table,
    /// refcount blocks, refcount table) and the header last, for a virtual disk of `size` bytes.
    pub(super) fn finish(mut self, size: u64, compression_type: u8, out: &dyn WriteAt) -> Result<(), Error> {
        self.place_held()?;
        for run in self.take_writes() {
            write(out, "data", run.offset, &run.data)?;
        }
        let cs = self.cluster_size.bytes();
        let cluster_size = self.cluster_size;
        let too_large = |what, value, limit| Error::TooLarge { what, value, limit, cluster_size };

        let guest_clusters = size.div_ceil(cs);
        let l1_size = guest_clusters.div_ceil(cs / 8);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(too_large("the L1 table's size in bytes", l1_size * 8, MAX_L1_BYTES));
        }
        // An empty disk has no L1 table (QEMU counts no reference to one, so a cluster for it would leak).
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let l2_first = self.next_free;
        let l1_first = HostCluster(l2_first.0 + self.l2.len() as u64);
        let metadata_end = l1_first.0 + l1_clusters;

        // The refcount blocks and table count every host cluster, themselves included: grow them until they
        // cover everything.
        let per_block = cs / REFCOUNT_BYTES;
        let (mut blocks, mut table_clusters) = (0, 0);
        loop {
            let total = metadata_end + blocks + table_clusters;
            let (b, t) = (total.div_ceil(per_block), (total.div_ceil(per_block) * 8).div_ceil(cs));
            if (b, t) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (b, t);
        }
        let metadata = self.allocate(metadata_end + blocks + table_clusters - l2_first.0);
        debug_assert_eq!(metadata, l2_first);
        let end = self.offset(self.next_free);
        if end > MAX_HOST_OFFSET {
            return Err(too_large("the qcow2 file's size", end, MAX_HOST_OFFSET));
        }
        self.refcounts[l2_first.0 as usize..].fill(1);
        let blocks_first = HostCluster(metadata_end);
        let table_first = HostCluster(metadata_end + blocks);

        let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
        for (i, (&index, table)) in self.l2.iter().enumerate() {
            let offset = self.offset(HostCluster(l2_first.0 + i as u64));
            write(out, "L2 table", offset, &be_u64s(table))?;
            l1[index as usize * 8..][..8].copy_from_slice(&(COPIED | offset).to_be_bytes());
        }
        if l1_size > 0 {
            write(out, "L1 table", self.offset(l1_first), &l1)?;
        }
        for (i, counts) in self.refcounts.chunks(per_block as usize).enumerate() {
            let mut block = vec![0u8; cs as usize];
            for (b, &n) in block.chunks_exact_mut(2).zip(counts) {
                b.copy_from_slice(&n.to_be_bytes());
            }
            write(out, "refcount block", self.offset(HostCluster(blocks_first.0 + i as u64)), &block)?;
        }
        let block_offsets: Vec<u64> = (0..blocks).map(|i| self.offset(HostCluster(blocks_first.0 + i))).collect();
        let mut table = be_u64s(&block_offsets);
        table.resize((table_clusters * cs) as usize, 0);
        write(out, "refcount table", self.offset(table_first), &table)?;

        let header = Header {
            cluster_size: self.cluster_size,
            size,
            l1_size: u32::try_from(l1_size).map_err(|_| too_large("the L1 table's size", l1_size, MAX_L1_BYTES / 8))?,
            l1_table_offset: if l1_size > 0 { self.offset(l1_first) } else { 0 },
            refcount_table_offset: self.offset(table_first),
            refcount_table_clusters: u32::try_from(table_clusters)
                .map_err(|_| too_large("the refcount table's size in clusters", table_clusters, u32::MAX.into()))?,
            compression_type,
        };
        write(out, "header", 0, &header.encode())
    }
}

fn be_u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn write(out: &dyn WriteAt, what: &'static str, offset: u64, data: &[u8]) -> Result<(), Error> {
    out.write_all_at(data, offset).map_err(|source| Error::Write { what, offset, len: data.len() as u64, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::qcow2::header::COMPRESSED;
    use crate::sink::MemSink;

    fn be64(b: &[u8], at: u64) -> u64 {
        u64::from_be_bytes(b[at as usize..][..8].try_into().unwrap())
    }

    /// Compressed clusters share host clusters byte by byte, each host cluster counting every compressed cluster
    /// whose sectors touch it; a held standard cluster goes after them; metadata follows and counts itself.
    #[test]
    fn packs_and_counts() {
        let cs = ClusterSize::new(512).unwrap();
        let mut layout = Layout::new(cs);
        layout.push(GuestCluster(0), Cluster::Compressed(vec![1; 300])).unwrap(); // 512..812
        layout.push(GuestCluster(1), Cluster::Compressed(vec![2; 300])).unwrap(); // 812..1112
        layout.push(GuestCluster(2), Cluster::Raw(vec![3; 512])).unwrap(); // held
        layout.push(GuestCluster(3), Cluster::Zero).unwrap();
        layout.push(GuestCluster(4), Cluster::Compressed(vec![4; 100])).unwrap(); // 1112..1212
        let writes: Vec<(u64, usize)> = layout.take_writes().iter().map(|r| (r.offset, r.data.len())).collect();
        assert_eq!(writes, [(512, 700)]);

        let sink = MemSink::new(16 << 10);
        layout.finish(5 * 512, 1, &sink).unwrap();
        let file = sink.into_inner();
        assert_eq!(&file[..4], b"QFI\xfb");
        assert_eq!(file[1536..2048], [3; 512], "the standard cluster after the compressed ones");
        // Host clusters: 0 header, 1–2 compressed, 3 standard, 4 L2 table, 5 L1 table, 6 refcount block,
        // 7 refcount table.
        let (l1, l1_size) = (be64(&file, 40), u32::from_be_bytes(file[36..40].try_into().unwrap()));
        assert_eq!((l1, l1_size), (5 * 512, 1));
        assert_eq!(be64(&file, l1), COPIED | 2048);
        let l2: Vec<u64> = (0..5).map(|i| be64(&file, 4 * 512 + i * 8)).collect();
        let x = 62 - (9 - 8);
        assert_eq!(l2, [COMPRESSED | 512, COMPRESSED | 1 << x | 812, COPIED | 1536, 0, COMPRESSED | 1112], "{l2:x?}");
        assert_eq!(be64(&file, 48), 7 * 512, "refcount table offset");
        assert_eq!(be64(&file, 7 * 512), 6 * 512, "refcount block offset");
        let refcounts: Vec<u16> =
            (0..9).map(|i| u16::from_be_bytes(file[6 * 512 + i * 2..][..2].try_into().unwrap())).collect();
        assert_eq!(refcounts, [1, 2, 2, 1, 1, 1, 1, 1, 0]);
    }
}
