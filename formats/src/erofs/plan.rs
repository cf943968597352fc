//! Planning: where every inode, its inline data and its blocks go, from the tree alone.

use std::ops::Range;

use super::lz4::Extent;
use super::{BLOCK, Error, Options, dir};
use crate::ext4::{Node, NodeId, Tree};

/// Inodes are found at `32 × nid` bytes into the metadata area.
pub(crate) const SLOT: u64 = 32;
/// The metadata area's first block (block 0 holds the superblock).
pub(crate) const META_BLKADDR: u64 = 1;
const COMPACT: u64 = 32;
const EXTENDED: u64 = 64;
/// Nodes whose inodes one worker serialises at a time.
const CHUNK_NODES: usize = 4096;

/// One node's inode, as planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inode {
    /// Byte offset of the inode in the metadata area (a multiple of [`SLOT`]).
    pub(crate) pos: u64,
    /// Whether it is the 64-byte extended form.
    pub(crate) extended: bool,
    /// Bytes of data right after the inode (`EROFS_INODE_FLAT_INLINE` when not zero).
    pub(crate) inline: u32,
    /// First of its blocks in the data area (0 when it has none); for a compressed file, its first cluster's.
    pub(crate) blkaddr: u32,
    /// Bytes of the compressed file's cluster map after the inode (`EROFS_INODE_COMPRESSED_FULL` when not
    /// zero): the map header, 8 reserved bytes and one 8-byte index per 4 KiB of the file.
    pub(crate) map: u32,
    /// `i_size`.
    pub(crate) size: u64,
    /// `i_nlink`.
    pub(crate) nlink: u32,
}

impl Inode {
    pub(crate) fn isize(&self) -> u64 {
        if self.extended { EXTENDED } else { COMPACT }
    }

    /// The node number directory entries give.
    pub(crate) fn nid(&self) -> u64 {
        self.pos / SLOT
    }

    /// Bytes up to where its inline data ends, from the start of the metadata area.
    pub(crate) fn end(&self) -> u64 {
        self.pos + self.isize() + u64::from(self.inline) + u64::from(self.map)
    }
}

/// One file's data: its whole blocks in the data area, and its tail when that is kept inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataJob {
    /// The file.
    pub node: NodeId,
    /// Its size in bytes.
    pub size: u64,
    /// Its blocks in the data area: the whole file rounded up to blocks, or, with an inline tail, its whole
    /// blocks only.
    pub blocks: Range<u64>,
    /// Byte offset in the filesystem of its inline tail (the last `size % 4096` bytes), if it has one.
    pub tail: Option<u64>,
    /// Stored compressed: `blocks` are its clusters, one per extent of [`Plan::extents`].
    pub packed: bool,
}

impl DataJob {
    /// Where the file's bytes go: (byte offset in the filesystem, length), in file order.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let whole = ((self.blocks.end - self.blocks.start) * BLOCK).min(self.size);
        let tail = self.tail.map(|at| (at, self.size - whole));
        std::iter::once((self.blocks.start * BLOCK, whole)).filter(|p| p.1 > 0).chain(tail)
    }
}

/// A filesystem, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub(crate) opts: Options,
    /// Per node.
    pub(crate) inodes: Vec<Inode>,
    /// Per node: the parent directory (the root's is itself; unused for files).
    pub(crate) parent: Vec<NodeId>,
    /// Total blocks.
    pub(crate) blocks: u64,
    /// Files with data, in node order.
    pub data: Vec<DataJob>,
    pub(crate) job_of: Vec<u32>,
    /// Runs of nodes serialised together.
    pub(crate) chunks: Vec<Range<NodeId>>,
    /// Per node: the clusters of a file stored compressed (empty for every other node).
    pub(crate) packed: Vec<Vec<Extent>>,
}

impl Plan {
    /// The filesystem's size in bytes.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.blocks * BLOCK
    }

    /// Total 4 KiB blocks.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The node number (`nid`) of `node`.
    #[must_use]
    pub fn nid(&self, node: NodeId) -> u64 {
        self.inodes[node as usize].nid()
    }

    /// The options planned with.
    #[must_use]
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The clusters of file `node` if it is stored compressed, else an empty slice.
    #[must_use]
    pub fn extents(&self, node: NodeId) -> &[Extent] {
        self.packed.get(node as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether any file is stored compressed.
    #[must_use]
    pub fn compressed(&self) -> bool {
        self.data.iter().any(|j| j.packed)
    }
}

/// Where a node's inode goes given the metadata area's fill `cursor`, and whether its `want` bytes of data
/// are kept inline: always when they fit in what is left of the block; else, if they fit in a block with the
/// inode, in the next block when that wastes less than giving the data a block of its own would.
fn place(cursor: u64, isize: u64, want: u64) -> (u64, bool) {
    let left = BLOCK - cursor % BLOCK;
    let next = cursor.next_multiple_of(BLOCK);
    if want == 0 || isize + want > BLOCK {
        // Alone, an inode never crosses a block either.
        return (if isize > left { next } else { cursor }, false);
    }
    if isize + want <= left {
        (cursor, true)
    } else if left < BLOCK - want {
        (next, true)
    } else {
        (if isize > left { next } else { cursor }, false)
    }
}

/// Plans `tree` as an EROFS filesystem, every file stored as it is.
///
/// # Errors
/// A duplicate name in a directory, a label over 16 bytes, more than 2^32 blocks.
pub fn plan(tree: &Tree, opts: &Options) -> Result<Plan, Error> {
    plan_packed(tree, opts, Vec::new())
}

/// Plans `tree` as an EROFS filesystem with the files `packed` gives clusters for (per node, empty for a file
/// stored as it is; missing nodes at the end are stored as they are) stored LZ4-compressed: their inodes carry
/// the cluster map, their clusters are contiguous in the data area.
///
/// # Errors
/// As [`plan`]; a compressed node that is not a file, or whose clusters do not start at 0 and advance.
pub fn plan_packed(tree: &Tree, opts: &Options, mut packed: Vec<Vec<Extent>>) -> Result<Plan, Error> {
    if opts.label.len() > 16 {
        return Err(Error::LabelTooLong(opts.label.len()));
    }
    let n = tree.nodes.len();
    // Parents and link counts.
    let mut parent: Vec<NodeId> = vec![0; n];
    let mut links = vec![0u64; n];
    for (id, node) in tree.nodes.iter().enumerate() {
        if let Node::Dir { entries, .. } = node {
            links[id] += 2;
            for &(_, child) in entries {
                match tree.nodes[child as usize] {
                    Node::Dir { .. } => {
                        parent[child as usize] = id as NodeId;
                        links[id] += 1;
                    }
                    _ => links[child as usize] += 1,
                }
            }
        }
    }
    packed.resize(n, Vec::new());
    for (id, extents) in packed.iter().enumerate().filter(|(_, e)| !e.is_empty()) {
        let size = match tree.nodes[id] {
            Node::File { size, .. } => size,
            _ => return Err(Error::BadClusters { node: id as NodeId }),
        };
        let ordered = extents.first().is_some_and(|e| e.start == 0)
            && extents.windows(2).all(|w| w[0].start < w[1].start)
            && extents.last().is_some_and(|e| e.start < size);
        if !ordered {
            return Err(Error::BadClusters { node: id as NodeId });
        }
    }
    let mut inodes = Vec::with_capacity(n);
    let mut cursor = 0u64;
    for (id, node) in tree.nodes.iter().enumerate() {
        // A compressed file keeps no data inline: its cluster map follows the inode (and may cross a block).
        let (size, want, map) = match node {
            Node::File { size, .. } if !packed[id].is_empty() => {
                let map = u32::try_from(MAP_HEADER + 8 * size.div_ceil(BLOCK))
                    .map_err(|_| Error::TooLarge { blocks: size.div_ceil(BLOCK) })?;
                (*size, 0, map)
            }
            Node::Dir { entries, .. } => {
                let sorted = dir::sorted(entries, id as NodeId, parent[id])?;
                let size = dir::size(&sorted, &dir::split(sorted.iter().map(|e| e.0.len())));
                (size, size % BLOCK, 0)
            }
            Node::File { size, .. } => (*size, size % BLOCK, 0),
            Node::Symlink { target, .. } => (target.len() as u64, target.len() as u64, 0),
        };
        let nlink =
            u32::try_from(links[id]).map_err(|_| Error::TooManyLinks { node: id as NodeId, links: links[id] })?;
        let extended = needs_extended(size, nlink, node.meta(), opts);
        let isize = if extended { EXTENDED } else { COMPACT };
        let (pos, inline) = place(cursor, isize, want);
        let inline = if inline { want as u32 } else { 0 };
        let inode = Inode { pos, extended, inline, blkaddr: 0, map, size, nlink };
        cursor = inode.end().next_multiple_of(SLOT);
        inodes.push(inode);
    }
    let meta_blocks = cursor.div_ceil(BLOCK).max(1);
    // Data blocks, in node order after the metadata.
    let mut next = META_BLKADDR + meta_blocks;
    let mut data = Vec::new();
    let mut job_of = vec![u32::MAX; n];
    for (id, inode) in inodes.iter_mut().enumerate() {
        let count = if !packed[id].is_empty() {
            packed[id].len() as u64
        } else if inode.inline > 0 {
            inode.size / BLOCK
        } else {
            inode.size.div_ceil(BLOCK)
        };
        if matches!(tree.nodes[id], Node::Symlink { .. }) && inode.inline > 0 {
            continue;
        }
        if count > 0 {
            inode.blkaddr = u32::try_from(next).map_err(|_| Error::TooLarge { blocks: next + count })?;
        }
        if let Node::File { size, .. } = tree.nodes[id]
            && size > 0
        {
            job_of[id] = data.len() as u32;
            let tail = (inode.inline > 0).then(|| (META_BLKADDR * BLOCK) + inode.pos + inode.isize());
            let packed = !packed[id].is_empty();
            data.push(DataJob { node: id as NodeId, size, blocks: next..next + count, tail, packed });
        }
        next += count;
    }
    if next > u64::from(u32::MAX) {
        return Err(Error::TooLarge { blocks: next });
    }
    let chunks = (0..n).step_by(CHUNK_NODES).map(|s| s as NodeId..(s + CHUNK_NODES).min(n) as NodeId).collect();
    Ok(Plan { opts: opts.clone(), inodes, parent, blocks: next, data, job_of, chunks, packed })
}

/// Bytes of a compressed inode's map before its indexes: the map header and 8 reserved bytes.
pub(crate) const MAP_HEADER: u64 = 16;

/// Whether an inode needs the 64-byte form: a size, link count or owner too large for the compact one, or a
/// modification time other than the superblock's.
fn needs_extended(size: u64, nlink: u32, meta: &crate::ext4::Meta, opts: &Options) -> bool {
    size > u64::from(u32::MAX)
        || nlink > u32::from(u16::MAX)
        || meta.uid > u32::from(u16::MAX)
        || meta.gid > u32::from(u16::MAX)
        || meta.mtime.max(0) as u64 != opts.timestamp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_data_stays_in_the_inodes_block() {
        // Fits in what is left.
        assert_eq!(place(0, 32, 100), (0, true));
        assert_eq!(place(4000, 32, 64), (4000, true));
        // Does not fit: the next block wastes 96 bytes, a block of its own would waste 4096 - 100.
        assert_eq!(place(4000, 32, 100), (4096, true));
        // A 4000-byte tail: the next block would waste 3008 bytes, its own block only 96.
        assert_eq!(place(1088, 32, 4000), (1088, false));
        // Too big to sit beside an inode at all; an inode alone does not cross a block.
        assert_eq!(place(4064, 64, 4090), (4096, false));
        assert_eq!(place(4064, 32, 0), (4064, false));
    }
}
