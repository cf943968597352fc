//! Inode records and their on-disk form (256 bytes with `i_extra_isize` = 32), and extent trees.

use std::ops::Range;

use super::Error;
use super::csum::crc32c;
use super::layout::{Allocator, BLOCK, INODE_SIZE, KnownBlock};
use super::tree::Node;

/// Targets shorter than this are stored in the inode ("fast" symlinks).
pub const FAST_SYMLINK_MAX: usize = 60;
/// `EXT4_INDEX_FL`: hashed directory.
pub const INDEX_FL: u32 = 0x1000;
/// `EXT4_EXTENTS_FL`.
pub const EXTENTS_FL: u32 = 0x8_0000;
const EXTRA_ISIZE: u16 = 32;
const S_IFREG: u16 = 0o100_000;
const S_IFDIR: u16 = 0o040_000;
const S_IFLNK: u16 = 0o120_000;
const EXTENT_MAGIC: u16 = 0xf30a;
/// Longest extent of initialized blocks.
const MAX_EXTENT: u64 = 32768;
/// Extents in one leaf block: (4096 − 12-byte header − 4-byte tail) / 12.
const LEAF_MAX: usize = 340;

/// Everything an inode says, before serialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeRec {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub time: i64,
    pub links: u16,
    pub flags: u32,
    pub blocks_512: u64,
    pub iblock: [u8; 60],
    /// Extent tree blocks outside the inode.
    pub tree_blocks: u64,
}

impl InodeRec {
    /// A reserved inode (1–10 unless used): empty but for `i_extra_isize`.
    pub fn reserved() -> Self {
        Self {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            time: 0,
            links: 0,
            flags: 0,
            blocks_512: 0,
            iblock: [0; 60],
            tree_blocks: 0,
        }
    }

    /// A special regular file owned by root (journal, resize inode).
    pub fn special(mode: u16, time: u32) -> Self {
        Self { mode, links: 1, time: i64::from(time), ..Self::reserved() }
    }

    /// lost+found when the tree has none: root's, mode 0700.
    pub fn lost_found(time: u32) -> Self {
        Self { mode: S_IFDIR | 0o700, links: 2, time: i64::from(time), ..Self::reserved() }
    }

    /// The record for a tree node with `links` names (directories: 2 + subdirectories).
    pub fn for_node(node: &Node, links: u32) -> Self {
        let meta = node.meta();
        let kind = match node {
            Node::Dir { .. } => S_IFDIR,
            Node::File { .. } => S_IFREG,
            Node::Symlink { .. } => S_IFLNK,
        };
        let size = match node {
            Node::File { size, .. } => *size,
            Node::Symlink { target, .. } => target.len() as u64,
            Node::Dir { .. } => 0,
        };
        // dir_nlink: a directory with more subdirectories than a link count holds says 1.
        let links = if links > super::MAX_LINKS { 1 } else { links as u16 };
        Self {
            mode: kind | (meta.perm & 0o7777),
            uid: meta.uid,
            gid: meta.gid,
            size,
            time: meta.mtime,
            links,
            ..Self::reserved()
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170_000 == S_IFDIR
    }

    /// Stores a short symlink target in the inode itself.
    pub fn set_fast_symlink(&mut self, target: &[u8]) {
        self.iblock = [0; 60];
        self.iblock[..target.len()].copy_from_slice(target);
        self.flags &= !EXTENTS_FL;
    }

    /// Serialises inode `ino` (checksummed with `csum_seed`, the inode's own seed).
    pub fn to_bytes(&self, csum_seed: u32) -> [u8; INODE_SIZE as usize] {
        let mut b = [0u8; INODE_SIZE as usize];
        let put16 = |b: &mut [u8], at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put16(&mut b, 0x00, self.mode);
        put16(&mut b, 0x02, self.uid as u16);
        put32(&mut b, 0x04, self.size as u32);
        let (secs, extra) = encode_time(self.time);
        for at in [0x08, 0x0c, 0x10] {
            put32(&mut b, at, secs);
        }
        put16(&mut b, 0x18, self.gid as u16);
        put16(&mut b, 0x1a, self.links);
        put32(&mut b, 0x1c, self.blocks_512 as u32);
        put32(&mut b, 0x20, self.flags);
        b[0x28..0x64].copy_from_slice(&self.iblock);
        put32(&mut b, 0x6c, (self.size >> 32) as u32);
        put16(&mut b, 0x74, (self.blocks_512 >> 32) as u16);
        put16(&mut b, 0x78, (self.uid >> 16) as u16);
        put16(&mut b, 0x7a, (self.gid >> 16) as u16);
        put16(&mut b, 0x80, EXTRA_ISIZE);
        if self.mode != 0 {
            // ctime, mtime, atime extra (epoch bits), creation time.
            for at in [0x84, 0x88, 0x8c] {
                put32(&mut b, at, extra);
            }
            put32(&mut b, 0x90, secs);
            put32(&mut b, 0x94, extra);
        }
        let c = crc32c(csum_seed, &b[..0x7c]);
        let c = crc32c(c, &[0, 0]);
        let c = crc32c(c, &b[0x7e..0x82]);
        let c = crc32c(c, &[0, 0]);
        let c = crc32c(c, &b[0x84..]);
        put16(&mut b, 0x7c, c as u16);
        put16(&mut b, 0x82, (c >> 16) as u16);
        b
    }
}

/// Seconds as ext4 stores them: the low 32 bits, plus two epoch bits in the `_extra` field.
fn encode_time(t: i64) -> (u32, u32) {
    let low = t as i32;
    let epoch = ((t - i64::from(low)) >> 32) as u32 & 3;
    (low as u32, epoch)
}

/// Builds the extent tree for `runs` (physical blocks in logical order) into `rec`: in the inode when four
/// extents suffice, else with leaf blocks allocated from `alloc` and rendered into `out`. Returns the ranges
/// of tree blocks allocated.
pub fn set_extents(
    rec: &mut InodeRec,
    runs: &[Range<u64>],
    alloc: &mut Allocator,
    out: &mut Vec<KnownBlock>,
    csum_seed: u32,
) -> Result<Vec<Range<u64>>, Error> {
    let mut extents: Vec<(u32, u64, u16)> = Vec::new();
    let mut logical = 0u64;
    for r in runs {
        let mut start = r.start;
        while start < r.end {
            let len = (r.end - start).min(MAX_EXTENT);
            extents.push((u32::try_from(logical).map_err(|_| Error::FileTooLarge)?, start, len as u16));
            logical += len;
            start += len;
        }
    }
    rec.flags |= EXTENTS_FL;
    let mut iblock = [0u8; 60];
    if extents.len() <= 4 {
        header(&mut iblock, extents.len(), 4, 0);
        for (i, e) in extents.iter().enumerate() {
            put_extent(&mut iblock[12 + 12 * i..], e);
        }
        rec.iblock = iblock;
        rec.tree_blocks = 0;
        return Ok(Vec::new());
    }
    let leaves = extents.len().div_ceil(LEAF_MAX);
    if leaves > 4 {
        return Err(Error::FileTooLarge);
    }
    let mut placed = Vec::new();
    alloc.alloc(leaves as u64, &mut placed)?;
    let mut phys = placed.iter().flat_map(Clone::clone);
    header(&mut iblock, leaves, 4, 1);
    for (i, chunk) in extents.chunks(LEAF_MAX).enumerate() {
        let at = phys.next().expect("allocated");
        let mut block = vec![0u8; BLOCK as usize].into_boxed_slice();
        header(&mut block, chunk.len(), LEAF_MAX, 0);
        for (k, e) in chunk.iter().enumerate() {
            put_extent(&mut block[12 + 12 * k..], e);
        }
        let tail = 12 + 12 * LEAF_MAX;
        let c = crc32c(csum_seed, &block[..tail]);
        block[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
        out.push((at, block));
        // Index entry: first logical block, leaf location.
        let e = 12 + 12 * i;
        iblock[e..e + 4].copy_from_slice(&chunk[0].0.to_le_bytes());
        iblock[e + 4..e + 8].copy_from_slice(&(at as u32).to_le_bytes());
        iblock[e + 8..e + 10].copy_from_slice(&((at >> 32) as u16).to_le_bytes());
    }
    rec.iblock = iblock;
    rec.tree_blocks = leaves as u64;
    Ok(placed)
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    b[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
    b[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    b[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    b[6..8].copy_from_slice(&depth.to_le_bytes());
}

fn put_extent(b: &mut [u8], &(logical, start, len): &(u32, u64, u16)) {
    b[0..4].copy_from_slice(&logical.to_le_bytes());
    b[4..6].copy_from_slice(&len.to_le_bytes());
    b[6..8].copy_from_slice(&((start >> 32) as u16).to_le_bytes());
    b[8..12].copy_from_slice(&(start as u32).to_le_bytes());
}
