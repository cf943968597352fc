//! The qcow2 v3 header (cluster 0) and the bit layout of table entries.

use super::ClusterSize;

/// QEMU's sector: compressed sizes are counted in these, and virtual sizes are whole numbers of them.
pub(super) const SECTOR: u64 = 512;

/// Header length written: the v3 fields (104 bytes) plus `compression_type` padded to a multiple of 8.
pub(super) const HEADER_LEN: usize = 112;

/// Incompatible feature bit 3: `compression_type` is not zlib.
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;

/// 16-bit refcounts (QEMU's default).
pub(super) const REFCOUNT_ORDER: u32 = 4;

/// Bytes per refcount entry.
pub(super) const REFCOUNT_BYTES: u64 = (1 << REFCOUNT_ORDER) / 8;

/// L1/L2 entry bit 63: the cluster's refcount is exactly one (set for standard clusters and L2 tables).
pub(super) const COPIED: u64 = 1 << 63;

/// L2 entry bit 62: a compressed cluster.
pub(super) const COMPRESSED: u64 = 1 << 62;

/// Host offsets of L2 tables and standard clusters must lie below 2^56 (bits 9–55 of their entries).
pub(super) const MAX_HOST_OFFSET: u64 = 1 << 56;

/// QEMU's largest L1 table, 32 MiB.
pub(super) const MAX_L1_BYTES: u64 = 32 << 20;

/// The compressed cluster descriptor for a cluster size: where its fields lie.
#[derive(Debug, Clone, Copy)]
pub(super) struct CompressedDescriptor {
    /// Width of the host offset field, `62 - (cluster_bits - 8)`.
    offset_bits: u32,
}

impl CompressedDescriptor {
    pub(super) const fn new(cluster_size: ClusterSize) -> Self {
        Self { offset_bits: 62 - (cluster_size.bits() - 8) }
    }

    /// The first host offset the descriptor cannot hold.
    pub(super) const fn offset_limit(self) -> u64 {
        let bits = if self.offset_bits < 56 { self.offset_bits } else { 56 };
        1 << bits
    }

    /// The L2 entry of compressed data at host bytes `start..end` (`end > start`), if the descriptor can hold it:
    /// the offset, and the number of 512-byte sectors after the one holding `start` that the data reaches into.
    pub(super) const fn entry(self, start: u64, end: u64) -> Option<u64> {
        let extra_sectors = (end - 1) / SECTOR - start / SECTOR;
        if start >= self.offset_limit() || extra_sectors >= 1 << (62 - self.offset_bits) {
            return None;
        }
        Some(COMPRESSED | extra_sectors << self.offset_bits | start)
    }
}

/// What the header records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// The cluster size.
    pub(super) cluster_size: ClusterSize,
    /// Virtual disk size in bytes.
    pub(super) size: u64,
    /// Entries of the L1 table.
    pub(super) l1_size: u32,
    /// Where the L1 table starts.
    pub(super) l1_table_offset: u64,
    /// Where the refcount table starts.
    pub(super) refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub(super) refcount_table_clusters: u32,
    /// 0 zlib, 1 zstd.
    pub(super) compression_type: u8,
}

impl Header {
    /// The header's bytes followed by an empty header extension area (one end-of-extensions marker); everything
    /// after them in cluster 0 reads as zeros.
    pub(super) fn encode(&self) -> [u8; HEADER_LEN + 8] {
        let mut b = [0; HEADER_LEN + 8];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, b"QFI\xfb");
        put(4, &3u32.to_be_bytes()); // version
        // 8..16 backing_file_offset, 16..20 backing_file_size: no backing file.
        put(20, &self.cluster_size.bits().to_be_bytes());
        put(24, &self.size.to_be_bytes());
        // 32..36 crypt_method: none.
        put(36, &self.l1_size.to_be_bytes());
        put(40, &self.l1_table_offset.to_be_bytes());
        put(48, &self.refcount_table_offset.to_be_bytes());
        put(56, &self.refcount_table_clusters.to_be_bytes());
        // 60..64 nb_snapshots, 64..72 snapshots_offset: none.
        let incompatible = if self.compression_type == 0 { 0 } else { INCOMPAT_COMPRESSION_TYPE };
        put(72, &incompatible.to_be_bytes());
        // 80..88 compatible, 88..96 autoclear features: none.
        put(96, &REFCOUNT_ORDER.to_be_bytes());
        put(100, &(HEADER_LEN as u32).to_be_bytes());
        put(104, &[self.compression_type]);
        // 105..112 padding; 112..120 header extension type 0 (end), length 0.
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_at_their_offsets() {
        let h = Header {
            cluster_size: ClusterSize::DEFAULT,
            size: 0x1_2345_6000,
            l1_size: 10,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x50000,
            refcount_table_clusters: 1,
            compression_type: 1,
        };
        let b = h.encode();
        assert_eq!(&b[..8], b"QFI\xfb\0\0\0\x03");
        assert_eq!(b[20..24], 16u32.to_be_bytes());
        assert_eq!(b[24..32], 0x1_2345_6000u64.to_be_bytes());
        assert_eq!(b[36..40], 10u32.to_be_bytes());
        assert_eq!(b[40..48], 0x30000u64.to_be_bytes());
        assert_eq!(b[48..56], 0x50000u64.to_be_bytes());
        assert_eq!(b[56..60], 1u32.to_be_bytes());
        assert_eq!(b[72..80], 8u64.to_be_bytes());
        assert_eq!(b[96..100], 4u32.to_be_bytes());
        assert_eq!(b[100..104], 112u32.to_be_bytes());
        assert_eq!(b[104], 1);
        assert!(b[105..].iter().all(|&x| x == 0));
        let zlib = Header { compression_type: 0, ..h }.encode();
        assert_eq!(zlib[72..80], [0; 8]);
        assert_eq!(zlib[104], 0);
    }

    #[test]
    fn compressed_descriptors() {
        struct Case {
            bits: u32,
            start: u64,
            end: u64,
            want: Option<u64>,
        }
        let cases = [
            // 64 KiB clusters: offset in bits 0..54, extra sectors in 54..62.
            Case { bits: 16, start: 0x10000, end: 0x10001, want: Some(COMPRESSED | 0x10000) },
            Case { bits: 16, start: 0x101ff, end: 0x10201, want: Some(COMPRESSED | 1 << 54 | 0x101ff) },
            Case { bits: 16, start: 0x10000, end: 0x20000, want: Some(COMPRESSED | 127 << 54 | 0x10000) },
            Case { bits: 16, start: 1 << 54, end: (1 << 54) + 1, want: None },
            // 512-byte clusters: one bit of extra sectors.
            Case { bits: 9, start: 0x400, end: 0x5ff, want: Some(COMPRESSED | 0x400) },
            Case { bits: 9, start: 0x401, end: 0x600, want: Some(COMPRESSED | 0x401) },
            Case { bits: 9, start: 0x401, end: 0x601, want: Some(COMPRESSED | 1 << 61 | 0x401) },
            Case { bits: 9, start: 0x5ff, end: 0x801, want: None },
            // 2 MiB clusters: the offset field has 49 bits.
            Case { bits: 21, start: (1 << 49) - 1, end: 1 << 49, want: Some(COMPRESSED | ((1 << 49) - 1)) },
            Case { bits: 21, start: 1 << 49, end: (1 << 49) + 1, want: None },
        ];
        for c in cases {
            let d = CompressedDescriptor::new(ClusterSize::new(1 << c.bits).unwrap());
            assert_eq!(d.entry(c.start, c.end), c.want, "bits {} {:#x}..{:#x}", c.bits, c.start, c.end);
        }
    }
}
