//! Writing a plan: file data copied by rayon workers with positioned writes at planned offsets, inodes,
//! directories and symlinks serialised a run of nodes at a time in parallel. Nothing is locked and nothing is
//! decided here.

use rayon::prelude::*;

use super::dir::{self, FT_DIR, FT_REG, FT_SYMLINK};
use super::plan::{DataJob, Inode, META_BLKADDR, Plan};
use super::{BLOCK, Error, MAGIC, SUPER_OFFSET};
use crate::copy;
use crate::ext4::{Meta, Node, NodeId, Source, Tree};
use crate::sink::WriteAt;

const S_IFDIR: u16 = 0o040_000;
const S_IFREG: u16 = 0o100_000;
const S_IFLNK: u16 = 0o120_000;
/// `i_format` data layouts.
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
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
            || self.data.par_iter().try_for_each(|job| copy_file(tree, job, sink, base)),
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
            .try_for_each(|(_, job)| copy_file(tree, job, sink, base))
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
            put_inode(&mut buf[at..inline_at], inode, mode, node.meta(), id + 1);
            let inline = inode.inline as usize;
            match node {
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

/// Serialises `inode` into `out` (32 or 64 bytes).
fn put_inode(out: &mut [u8], inode: &Inode, mode: u16, meta: &Meta, ino: u32) {
    let layout = if inode.inline > 0 { FLAT_INLINE } else { FLAT_PLAIN };
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, &((layout << 1) | u16::from(inode.extended)).to_le_bytes());
    put(0x04, &mode.to_le_bytes());
    put(0x10, &inode.blkaddr.to_le_bytes());
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
        assert!(offset + bytes.len() as u64 <= self.job.size, "write beyond the planned size of the file");
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

/// Copies one file's bytes to its planned places, skipping holes in the source and all-zero chunks.
fn copy_file(tree: &Tree, job: &DataJob, sink: &dyn WriteAt, base: u64) -> Result<(), Error> {
    let Node::File { source, .. } = &tree.nodes[job.node as usize] else {
        unreachable!("data jobs are files");
    };
    let data = match source {
        Source::Bytes(bytes) => copy::Data::Bytes(bytes),
        Source::Host(path) => copy::Data::Host(path),
        Source::Caller => return Err(Error::NotWritten { node: job.node }),
    };
    let pieces = job.pieces().map(|(at, len)| copy::Piece { at: base + at, len });
    Ok(copy::copy_file(data, job.size, pieces, sink)?)
}
