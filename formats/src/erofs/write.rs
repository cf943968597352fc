//! Writing a plan: file data copied by rayon workers with positioned writes at planned offsets, inodes,
//! directories and symlinks serialised a run of nodes at a time in parallel. Nothing is locked and nothing is
//! decided here.

use rayon::prelude::*;

use super::dir::{self, FT_DIR, FT_REG, FT_SYMLINK};
use super::lz4::{Compressor, Extent};
use super::plan::{DataJob, Inode, MAP_HEADER, META_BLKADDR, Plan};
use super::{BLOCK, Error, MAGIC, SUPER_OFFSET};
use crate::copy;
use crate::ext4::{Meta, Node, NodeId, Source, Tree};
use crate::sink::WriteAt;

const S_IFDIR: u16 = 0o040_000;
const S_IFREG: u16 = 0o100_000;
const S_IFLNK: u16 = 0o120_000;
/// `i_format` data layouts.
const FLAT_PLAIN: u16 = 0;
const COMPRESSED_FULL: u16 = 1;
const FLAT_INLINE: u16 = 2;
/// `feature_incompat`: compressed clusters are right-aligned after zeros (`ZERO_PADDING`, once `LZ4_0PADDING`).
const INCOMPAT_ZERO_PADDING: u32 = 1;
/// Cluster index types (`di_advise` bits 0–1).
const CLUSTER_PLAIN: u16 = 0;
const CLUSTER_HEAD: u16 = 1;
const CLUSTER_NONHEAD: u16 = 2;
/// `feature_compat`: the superblock carries a crc32c.
const COMPAT_SB_CHKSUM: u32 = 1;

fn write(sink: &dyn WriteAt, buf: &[u8], offset: u64, what: &'static str) -> Result<(), Error> {
    sink.write_all_at(buf, offset).map_err(|source| Error::Write { offset, what, source })
}

impl Plan {
    /// Writes the filesystem into `sink` at byte offset `base`. The sink must read as zeros where nothing is
    /// written (a new sparse file, a zeroed partition): padding and all-zero file blocks are left as they are.
    pub fn write(&self, tree: &Tree, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        let (data, meta) = rayon::join(
            || self.data.par_iter().try_for_each(|job| self.copy_file(tree, job, sink, base)),
            || self.write_metadata(tree, sink, base),
        );
        data?;
        meta
    }

    /// Copies the data of every file whose job index (in [`Plan::data`]) `skip` does not claim, in parallel:
    /// with [`Plan::write_metadata`] and [`Plan::file_writer`], for the files a caller does not copy itself.
    pub fn write_files(
        &self,
        tree: &Tree,
        sink: &dyn WriteAt,
        base: u64,
        skip: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<(), Error> {
        self.data
            .par_iter()
            .enumerate()
            .filter(|(i, _)| !skip(*i))
            .try_for_each(|(_, job)| self.copy_file(tree, job, sink, base))
    }

    /// Writes everything but file data: the superblock, the inodes, directories and symlink targets. File
    /// tails kept inline are the file data's, and left alone.
    pub fn write_metadata(&self, tree: &Tree, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        write(sink, &self.superblock(), base + SUPER_OFFSET, "superblock")?;
        self.chunks.par_iter().try_for_each(|c| self.write_chunk(tree, sink, base, c.clone()))
    }

    /// The superblock and the rest of block 0 (zeros), which its checksum covers.
    fn superblock(&self) -> Vec<u8> {
        let mut sb = vec![0u8; (BLOCK - SUPER_OFFSET) as usize];
        let mut put = |at: usize, bytes: &[u8]| sb[at..at + bytes.len()].copy_from_slice(bytes);
        put(0x00, &MAGIC.to_le_bytes());
        put(0x08, &COMPAT_SB_CHKSUM.to_le_bytes());
        put(0x0C, &[BLOCK.trailing_zeros() as u8, 0]);
        put(0x0E, &(self.inodes[0].nid() as u16).to_le_bytes());
        put(0x10, &(self.inodes.len() as u64).to_le_bytes());
        put(0x18, &self.opts.timestamp.to_le_bytes());
        put(0x24, &(self.blocks as u32).to_le_bytes());
        put(0x28, &(META_BLKADDR as u32).to_le_bytes());
        put(0x30, &self.opts.uuid);
        put(0x40, &self.opts.label);
        if self.compressed() {
            put(0x50, &INCOMPAT_ZERO_PADDING.to_le_bytes());
        }
        // Linux checks crc32c(~0, …) without the final inversion, over the block from the superblock on.
        let crc = !crc32c::crc32c(&sb);
        sb[4..8].copy_from_slice(&crc.to_le_bytes());
        sb
    }

    /// Serialises the inodes of `nodes` with their inline data, and writes their directories' and symlinks'
    /// blocks in the data area.
    fn write_chunk(
        &self,
        tree: &Tree,
        sink: &dyn WriteAt,
        base: u64,
        nodes: std::ops::Range<NodeId>,
    ) -> Result<(), Error> {
        let meta_base = base + META_BLKADDR * BLOCK;
        let start = self.inodes[nodes.start as usize].pos;
        let end = self.inodes[nodes.end as usize - 1].end();
        let mut buf = vec![0u8; (end - start) as usize];
        // File tails inside the buffer: the file data's to write.
        let mut skips = Vec::new();
        for id in nodes {
            let inode = &self.inodes[id as usize];
            let node = &tree.nodes[id as usize];
            let at = (inode.pos - start) as usize;
            let (mode, inline_at) = (mode_of(node), at + inode.isize() as usize);
            let extents = self.extents(id);
            let clusters = (!extents.is_empty()).then_some(extents.len() as u32);
            put_inode(&mut buf[at..inline_at], inode, mode, node.meta(), id + 1, clusters);
            let inline = inode.inline as usize;
            match node {
                Node::File { .. } if inode.map > 0 => {
                    put_map(&mut buf[inline_at..inline_at + inode.map as usize], extents, inode.size, inode.blkaddr);
                }
                Node::File { .. } => {
                    if inline > 0 {
                        skips.push(inline_at..inline_at + inline);
                    }
                }
                Node::Symlink { target, .. } => {
                    if inline > 0 {
                        buf[inline_at..inline_at + inline].copy_from_slice(target);
                    } else {
                        write(sink, target, base + u64::from(inode.blkaddr) * BLOCK, "symlink target")?;
                    }
                }
                Node::Dir { entries, .. } => {
                    let sorted = dir::sorted(entries, id, self.parent[id as usize])?;
                    let ends = dir::split(sorted.iter().map(|e| e.0.len()));
                    let bytes = dir::render(&sorted, &ends, |n| {
                        (self.inodes[n as usize].nid(), ft_of(&tree.nodes[n as usize]))
                    });
                    let (blocks, tail) = bytes.split_at(bytes.len() - inline);
                    if !blocks.is_empty() {
                        write(sink, blocks, base + u64::from(inode.blkaddr) * BLOCK, "directory")?;
                    }
                    buf[inline_at..inline_at + inline].copy_from_slice(tail);
                }
            }
        }
        let mut from = 0;
        for skip in skips.into_iter().chain(std::iter::once(buf.len()..buf.len())) {
            if skip.start > from {
                write(sink, &buf[from..skip.start], meta_base + start + from as u64, "inodes")?;
            }
            from = skip.end;
        }
        Ok(())
    }
}

fn mode_of(node: &Node) -> u16 {
    let kind = match node {
        Node::Dir { .. } => S_IFDIR,
        Node::File { .. } => S_IFREG,
        Node::Symlink { .. } => S_IFLNK,
    };
    kind | (node.meta().perm & 0o7777)
}

fn ft_of(node: &Node) -> u8 {
    match node {
        Node::Dir { .. } => FT_DIR,
        Node::File { .. } => FT_REG,
        Node::Symlink { .. } => FT_SYMLINK,
    }
}

/// Serialises `inode` into `out` (32 or 64 bytes); `clusters`: a compressed file's cluster count.
fn put_inode(out: &mut [u8], inode: &Inode, mode: u16, meta: &Meta, ino: u32, clusters: Option<u32>) {
    let layout = match clusters {
        Some(_) => COMPRESSED_FULL,
        None if inode.inline > 0 => FLAT_INLINE,
        None => FLAT_PLAIN,
    };
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, &((layout << 1) | u16::from(inode.extended)).to_le_bytes());
    put(0x04, &mode.to_le_bytes());
    // i_u: the first block, or a compressed file's block count (each index names its cluster's block).
    put(0x10, &clusters.unwrap_or(inode.blkaddr).to_le_bytes());
    put(0x14, &ino.to_le_bytes());
    if inode.extended {
        put(0x08, &inode.size.to_le_bytes());
        put(0x18, &meta.uid.to_le_bytes());
        put(0x1C, &meta.gid.to_le_bytes());
        put(0x20, &(meta.mtime.max(0) as u64).to_le_bytes());
        put(0x2C, &inode.nlink.to_le_bytes());
    } else {
        put(0x06, &(inode.nlink as u16).to_le_bytes());
        put(0x08, &(inode.size as u32).to_le_bytes());
        put(0x18, &(meta.uid as u16).to_le_bytes());
        put(0x1A, &(meta.gid as u16).to_le_bytes());
    }
}

/// Serialises a compressed file's cluster map (`out`: [`MAP_HEADER`] bytes, then 8 per 4 KiB of the file): a map
/// header of zeros (LZ4 for every cluster, 4 KiB logical clusters, no options), 8 reserved bytes, and for each
/// logical cluster (4 KiB of the file) an index: `HEAD` or `PLAIN` where a cluster's data starts in it
/// (`clusterofs` its offset there, its block address); else `NONHEAD` with the distances back to the logical
/// cluster where the cluster covering it starts and forward to the next start; a logical cluster that holds
/// the end of the file and no start gets a `PLAIN` index at the end's offset (as if a cluster started there).
fn put_map(out: &mut [u8], extents: &[Extent], size: u64, blkaddr: u32) {
    let mut k = 0;
    for (l, index) in out[MAP_HEADER as usize..].chunks_exact_mut(8).enumerate() {
        let (lstart, lend) = (l as u64 * BLOCK, (l as u64 + 1) * BLOCK);
        while k + 1 < extents.len() && extents[k + 1].start < lend {
            k += 1;
        }
        let e = extents[k];
        let (kind, clusterofs, u): (u16, u64, [u8; 4]) = if e.start >= lstart {
            let kind = if e.plain { CLUSTER_PLAIN } else { CLUSTER_HEAD };
            (kind, e.start - lstart, (blkaddr + k as u32).to_le_bytes())
        } else if size < lend {
            (CLUSTER_PLAIN, size - lstart, [0; 4])
        } else {
            let next = extents.get(k + 1).map_or(size, |n| n.start);
            let back = l as u64 - e.start / BLOCK;
            let ahead = next / BLOCK - l as u64;
            let mut u = [0; 4];
            u[..2].copy_from_slice(&(back as u16).to_le_bytes());
            u[2..].copy_from_slice(&(ahead as u16).to_le_bytes());
            (CLUSTER_NONHEAD, e.start % BLOCK, u)
        };
        index[0..2].copy_from_slice(&kind.to_le_bytes());
        index[2..4].copy_from_slice(&(clusterofs as u16).to_le_bytes());
        index[4..8].copy_from_slice(&u);
    }
}

/// Writes one file's bytes at its planned places, given in any order of logical offsets.
pub struct FileWriter<'a> {
    job: &'a DataJob,
    sink: &'a dyn WriteAt,
    base: u64,
}

impl Plan {
    /// A writer for the data of file `node`, or `None` for a node without data (directories, symlinks,
    /// empty files).
    #[must_use]
    pub fn file_writer<'a>(&'a self, node: NodeId, sink: &'a dyn WriteAt, base: u64) -> Option<FileWriter<'a>> {
        self.job_of(node).map(|i| FileWriter { job: &self.data[i], sink, base })
    }

    /// The index in [`Plan::data`] of file `node`'s job, if it has data.
    #[must_use]
    pub fn job_of(&self, node: NodeId) -> Option<usize> {
        self.job_of.get(node as usize).filter(|&&i| i != u32::MAX).map(|&i| i as usize)
    }
}

impl std::fmt::Debug for FileWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter").field("job", self.job).field("base", &self.base).finish_non_exhaustive()
    }
}

impl FileWriter<'_> {
    /// The file's planned size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.job.size
    }

    /// Whether the file is stored compressed: then offsets are into its clusters (one 4 KiB block each, in
    /// order), not the file.
    #[must_use]
    pub fn packed(&self) -> bool {
        self.job.packed
    }

    /// Bytes this writer takes: the file's, or its clusters'.
    fn limit(&self) -> u64 {
        if self.job.packed { (self.job.blocks.end - self.job.blocks.start) * BLOCK } else { self.job.size }
    }

    /// Where byte `offset` of the file lies in the sink (including the `base` given to
    /// [`Plan::file_writer`]), and how many bytes from there on are the file's and contiguous in the sink: to
    /// the end of its blocks (the slack after the file's end in its last block included), or of its inline
    /// tail (which other inodes follow). `None` at or beyond the end of the file's places.
    #[must_use]
    pub fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        let blocks = (self.job.blocks.end - self.job.blocks.start) * BLOCK;
        if offset < blocks {
            return Some((self.base + self.job.blocks.start * BLOCK + offset, blocks - offset));
        }
        let tail = self.job.tail?;
        (offset < self.job.size).then(|| (self.base + tail + (offset - blocks), self.job.size - offset))
    }

    /// Whether the bytes after the file's last one, to the end of its block, are free for the caller to write
    /// zeros into (false when its tail is inline: other inodes follow it).
    #[must_use]
    pub fn owns_block_slack(&self) -> bool {
        self.job.tail.is_none()
    }

    /// Writes `bytes` at byte `offset` of the file (within its planned size).
    pub fn write_at(&self, mut offset: u64, mut bytes: &[u8]) -> Result<(), Error> {
        assert!(offset + bytes.len() as u64 <= self.limit(), "write beyond the planned size of the file");
        while !bytes.is_empty() {
            let (at, room) = self.locate(offset).expect("within the planned size");
            let n = room.min(bytes.len() as u64) as usize;
            write(self.sink, &bytes[..n], at, "file data")?;
            bytes = &bytes[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

impl Plan {
    /// Copies one file's bytes to its planned places, skipping holes in the source and all-zero chunks.
    fn copy_file(&self, tree: &Tree, job: &DataJob, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
        let data = source_of(tree, job.node)?;
        if job.packed {
            let (blocks, extents) = compress_source(data, job.size)?;
            if extents != self.extents(job.node) {
                return Err(Error::BadClusters { node: job.node });
            }
            return write(sink, &blocks, base + job.blocks.start * BLOCK, "compressed file data");
        }
        let pieces = job.pieces().map(|(at, len)| copy::Piece { at: base + at, len });
        Ok(copy::copy_file(data, job.size, pieces, sink)?)
    }
}

fn source_of(tree: &Tree, node: NodeId) -> Result<copy::Data<'_>, Error> {
    let Node::File { source, .. } = &tree.nodes[node as usize] else {
        unreachable!("data jobs are files");
    };
    match source {
        Source::Bytes(bytes) => Ok(copy::Data::Bytes(bytes)),
        Source::Host(path) => Ok(copy::Data::Host(path)),
        Source::Caller => Err(Error::NotWritten { node }),
    }
}

/// Compresses every file of `tree` that gains from it (in parallel), for [`plan_packed`](super::plan_packed):
/// per node, the clusters of a file stored compressed, empty for every other node.
///
/// # Errors
/// A file the tree's caller writes ([`Source::Caller`]), a host file that cannot be read or changed size.
pub fn pack(tree: &Tree) -> Result<Vec<Vec<Extent>>, Error> {
    tree.nodes
        .par_iter()
        .enumerate()
        .map(|(id, node)| match node {
            Node::File { size, .. } if *size > BLOCK => {
                let (_, extents) = compress_source(source_of(tree, id as NodeId)?, *size)?;
                Ok(if super::lz4::worth_it(*size, extents.len()) { extents } else { Vec::new() })
            }
            _ => Ok(Vec::new()),
        })
        .collect()
}

/// Reads a file's `size` bytes and compresses them: its clusters' blocks and extents.
fn compress_source(data: copy::Data<'_>, size: u64) -> Result<(Vec<u8>, Vec<Extent>), Error> {
    let mut out = Vec::new();
    let mut c = Compressor::new();
    match data {
        copy::Data::Bytes(b) => c.push(&b[..size as usize], &mut out),
        copy::Data::Host(path) => {
            use std::io::Read;
            let read_err = |offset: u64, source| copy::Error::Read { path: path.to_path_buf(), offset, source };
            let file = std::fs::File::open(path).map_err(|e| read_err(0, e))?;
            let mut buf = Vec::new();
            file.take(size + 1).read_to_end(&mut buf).map_err(|e| read_err(0, e))?;
            if buf.len() as u64 != size {
                let found = buf.len() as u64;
                return Err(copy::Error::SourceChanged { path: path.to_path_buf(), expected: size, found }.into());
            }
            c.push(&buf, &mut out);
        }
    }
    let extents = c.finish(&mut out);
    Ok((out, extents))
}
