//! qcow2 (versions 2 and 3, QEMU's `docs/interop/qcow2.txt`): the header, the L1 table and the L2 tables give
//! each guest cluster's place in the file; clusters are read in guest order with positioned reads, compressed
//! ones decompressed (zstd, or raw deflate for `compression_type` 0). Needs random access: local files only.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use flate2::{Decompress, FlushDecompress};
use kiln_formats::sparse::read_full as read_full_at;
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use super::pipe::Decode;
use super::tally::Tally;

/// Host offsets in L1 and standard L2 entries: bits 9–55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0 (version 3): the cluster reads as zeros.
const ZERO: u64 = 1;
/// QEMU's largest L1 table.
const MAX_L1_BYTES: u64 = 32 << 20;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// An opened qcow2 file.
pub(super) struct Qcow2 {
    file: File,
    name: String,
    file_len: u64,
    /// The virtual disk size.
    pub(super) size: u64,
    cluster_bits: u32,
    /// 0 deflate, 1 zstd.
    compression: u8,
    /// Where each L2 table lies, by L1 index (0: none).
    l2: Vec<u64>,
}

impl Qcow2 {
    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn read(&self, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
        let end = at.checked_add(buf.len() as u64).filter(|&e| e <= self.file_len);
        ensure!(
            end.is_some(),
            "{}: {what} at byte {at} lies beyond the file's end ({} bytes)",
            self.name,
            self.file_len
        );
        let full =
            read_full_at(&self.file, buf, at).with_context(|| format!("{}: reading {what} at byte {at}", self.name))?;
        ensure!(full, "{}: the file ended inside {what} at byte {at}: it shrank", self.name);
        Ok(())
    }

    /// Reads the header and the L1 table of `file` (`head` its first bytes).
    ///
    /// # Errors
    /// A malformed header or table, or a feature that cannot be streamed (backing file, encryption, external
    /// data file, extended L2 entries, an unknown incompatible feature).
    pub(super) fn open(file: File, name: String, file_len: u64, head: &[u8]) -> Result<Self> {
        ensure!(head.len() >= 72, "{name}: the qcow2 header is truncated ({} bytes)", head.len());
        let version = be32(head, 4);
        ensure!(version == 2 || version == 3, "{name}: qcow2 version {version} is not supported (2 and 3 are)");
        if be64(head, 8) != 0 {
            bail!(
                "{name}: the qcow2 image has a backing file: flash the whole chain flattened (qemu-img convert -O raw \
                 {name} disk.raw)"
            );
        }
        let cluster_bits = be32(head, 20);
        ensure!((9..=21).contains(&cluster_bits), "{name}: qcow2 cluster_bits {cluster_bits} is out of range 9..=21");
        let size = be64(head, 24);
        ensure!(be32(head, 32) == 0, "{name}: the qcow2 image is encrypted: decrypt it first (qemu-img convert)");
        let l1_size = u64::from(be32(head, 36));
        let l1_offset = be64(head, 40);
        let mut compression = 0;
        if version == 3 {
            ensure!(head.len() >= 104, "{name}: the qcow2 v3 header is truncated");
            let incompatible = be64(head, 72);
            ensure!(
                incompatible & 2 == 0,
                "{name}: the qcow2 image is marked corrupt: repair it (qemu-img check -r all)"
            );
            ensure!(incompatible & 4 == 0, "{name}: the qcow2 image keeps its data in an external file: not supported");
            ensure!(
                incompatible & 16 == 0,
                "{name}: the qcow2 image has extended L2 entries (subclusters): not supported"
            );
            let unknown = incompatible & !0b1_1111;
            ensure!(unknown == 0, "{name}: the qcow2 image has unknown incompatible features {unknown:#x}");
            let header_len = be32(head, 100);
            if incompatible & 8 != 0 {
                ensure!(
                    header_len > 104 && head.len() > 104,
                    "{name}: qcow2 compression type bit set in a short header"
                );
                compression = head[104];
            }
            ensure!(compression <= 1, "{name}: qcow2 compression type {compression} is not supported (zlib, zstd are)");
        }
        let cluster = 1u64 << cluster_bits;
        let per_l2 = cluster / 8;
        let needed = size.div_ceil(cluster).div_ceil(per_l2);
        ensure!(
            l1_size >= needed && l1_size * 8 <= MAX_L1_BYTES,
            "{name}: the qcow2 L1 table has {l1_size} entries, a {size}-byte disk needs {needed} (at most {})",
            MAX_L1_BYTES / 8
        );
        let mut q = Self { file, name, file_len, size, cluster_bits, compression, l2: Vec::new() };
        let mut l1 = vec![0u8; (needed * 8) as usize];
        q.read(&mut l1, l1_offset, "the L1 table")?;
        for (i, e) in l1.chunks_exact(8).enumerate() {
            let off = be64(e, 0) & OFFSET_MASK;
            ensure!(
                off.is_multiple_of(cluster) && off.checked_add(cluster).is_some_and(|e| e <= file_len),
                "{}: L1 entry {i} points at byte {off}, not a cluster within the file",
                q.name
            );
            q.l2.push(off);
        }
        Ok(q)
    }

    /// Calls `each(guest offset, L2 entry)` for every cluster that holds data, in guest order.
    fn clusters(&self, mut each: impl FnMut(u64, u64) -> Result<()>) -> Result<()> {
        let cluster = self.cluster();
        let mut table = vec![0u8; cluster as usize];
        for (i, &off) in self.l2.iter().enumerate() {
            if off == 0 {
                continue;
            }
            self.read(&mut table, off, &format!("the L2 table of L1 entry {i}"))?;
            for (j, e) in table.chunks_exact(8).enumerate() {
                let guest = (i as u64 * (cluster / 8) + j as u64) * cluster;
                if guest >= self.size {
                    break;
                }
                let e = be64(e, 0);
                if e & COMPRESSED == 0 && (e & ZERO != 0 || e & OFFSET_MASK == 0) {
                    continue;
                }
                each(guest, e)?;
            }
        }
        Ok(())
    }

    /// The guest ranges that hold data, merged.
    ///
    /// # Errors
    /// When an L2 table cannot be read.
    pub(super) fn map(&self) -> Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        let (cluster, size) = (self.cluster(), self.size);
        self.clusters(|guest, _| {
            let end = (guest + cluster).min(size);
            match out.last_mut() {
                Some(last) if last.end == guest => last.end = end,
                _ => out.push(guest..end),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The cluster at `guest` (its L2 entry `e`) into `out` (one cluster long).
    fn cluster_data(&self, guest: u64, e: u64, out: &mut [u8], zstd: &mut Option<ZstdDecoder<'static>>) -> Result<()> {
        let cluster = self.cluster();
        let name = &self.name;
        if e & COMPRESSED == 0 {
            let off = e & OFFSET_MASK;
            ensure!(
                off.is_multiple_of(cluster),
                "{name}: the cluster at guest byte {guest} is at unaligned host byte {off}"
            );
            return self.read(out, off, &format!("the cluster at guest byte {guest}"));
        }
        let x = 62 - (self.cluster_bits - 8);
        let off = e & ((1 << x) - 1);
        let sectors = ((e >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1;
        ensure!(off < self.file_len, "{name}: the compressed cluster at guest byte {guest} is beyond the file's end");
        let len = (sectors * 512 - (off & 511)).min(self.file_len - off);
        let mut src = vec![0u8; len as usize];
        self.read(&mut src, off, &format!("the compressed cluster at guest byte {guest}"))?;
        let filled = if self.compression == 0 {
            let mut z = Decompress::new(false);
            let mut v = Vec::with_capacity(out.len());
            z.decompress_vec(&src, &mut v, FlushDecompress::Finish)
                .with_context(|| format!("{name}: inflating the cluster at guest byte {guest}"))?;
            let n = v.len();
            out[..n].copy_from_slice(&v);
            n
        } else {
            let d = match zstd {
                Some(d) => {
                    d.reinit().with_context(|| format!("{name}: resetting zstd"))?;
                    d
                }
                None => zstd.insert(ZstdDecoder::new().with_context(|| format!("{name}: starting zstd"))?),
            };
            let mut input = InBuffer::around(&src);
            let mut output = OutBuffer::around(&mut *out);
            while output.pos() < output.capacity() {
                let before = (input.pos(), output.pos());
                d.run(&mut input, &mut output)
                    .with_context(|| format!("{name}: decompressing the zstd cluster at guest byte {guest}"))?;
                if (input.pos(), output.pos()) == before {
                    break;
                }
            }
            output.pos()
        };
        ensure!(
            filled == out.len(),
            "{name}: the compressed cluster at guest byte {guest} decompresses to {filled} bytes, not {}",
            out.len()
        );
        Ok(())
    }

    /// Streams the clusters into the image; with a hashing tally, the whole file is also read front to back
    /// on a thread of its own and hashed.
    pub(super) fn decode(self, tally: Arc<Tally>) -> Decode {
        Box::new(move |emit| {
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                let hasher = tally.hashing().then(|| s.spawn(|| self.hash_file(&tally, &stop)));
                let mut buf = vec![0u8; self.cluster() as usize];
                let mut zstd = None;
                let result = self.clusters(|guest, e| {
                    self.cluster_data(guest, e, &mut buf, &mut zstd)?;
                    if !tally.hashing() {
                        tally.count(buf.len() as u64);
                    }
                    let len = (self.size - guest).min(buf.len() as u64) as usize;
                    emit.put(guest, &buf[..len])
                });
                if result.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                let hashed =
                    hasher.map(|h| h.join().unwrap_or_else(|_| bail!("{}: the hashing thread panicked", self.name)));
                result?;
                hashed.transpose().map(drop)
            })
        })
    }

    fn hash_file(&self, tally: &Tally, stop: &AtomicBool) -> Result<()> {
        let mut buf = vec![0u8; 4 << 20];
        let mut at = 0;
        while at < self.file_len && !stop.load(Ordering::Relaxed) {
            let n = (self.file_len - at).min(buf.len() as u64) as usize;
            self.read(&mut buf[..n], at, "the file (hashing it)")?;
            tally.read(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }
}
