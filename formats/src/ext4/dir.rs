//! Directory blocks: linear (one block) or hashed (htree, `dir_index`), each block with its checksum tail.

use super::csum::crc32c;
use super::hash::half_md4;
use super::layout::BLOCK;

/// `file_type` values in directory entries.
pub const FT_REG: u8 = 1;
/// Directory.
pub const FT_DIR: u8 = 2;
/// Symbolic link.
pub const FT_SYMLINK: u8 = 7;

const BS: usize = BLOCK as usize;
/// Where the checksum tail (a fake 12-byte entry) starts in a leaf block.
const TAIL: usize = BS - 12;
/// Entries in the root index block and in an interior index block (one slot given to the checksum tail).
const ROOT_LIMIT: usize = (BS - 32) / 8 - 1;
const NODE_LIMIT: usize = (BS - 8) / 8 - 1;

/// One directory entry to write.
#[derive(Debug, Clone)]
pub struct DirEntry<'a> {
    /// Name bytes.
    pub name: &'a [u8],
    /// Inode number.
    pub ino: u32,
    /// `FT_*`.
    pub file_type: u8,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

fn put_entry(block: &mut [u8], at: usize, ino: u32, rec: usize, name: &[u8], ft: u8) {
    block[at..at + 4].copy_from_slice(&ino.to_le_bytes());
    block[at + 4..at + 6].copy_from_slice(&(rec as u16).to_le_bytes());
    block[at + 6] = name.len() as u8;
    block[at + 7] = ft;
    block[at + 8..at + 8 + name.len()].copy_from_slice(name);
}

fn seal_leaf(block: &mut [u8], csum_seed: u32) {
    block[TAIL..TAIL + 4].fill(0);
    block[TAIL + 4..TAIL + 6].copy_from_slice(&12u16.to_le_bytes());
    block[TAIL + 6] = 0;
    block[TAIL + 7] = 0xde;
    let c = crc32c(csum_seed, &block[..TAIL]);
    block[TAIL + 8..TAIL + 12].copy_from_slice(&c.to_le_bytes());
}

/// Fills leaf blocks with `entries` in order, starting with `first` (already placed entries at the head of
/// the first block, e.g. `.` and `..`). Returns the blocks and, for each, the index of its first entry.
fn pack<'a>(entries: &[DirEntry<'a>], head: &[DirEntry<'a>], csum_seed: u32) -> (Vec<Box<[u8]>>, Vec<usize>) {
    let mut blocks = Vec::new();
    let mut firsts = Vec::new();
    let mut block = vec![0u8; BS].into_boxed_slice();
    let mut used = 0;
    let mut last_at: Option<usize> = None;
    for e in head {
        let r = rec_len(e.name.len());
        put_entry(&mut block, used, e.ino, r, e.name, e.file_type);
        last_at = Some(used);
        used += r;
    }
    let finish = |block: &mut Box<[u8]>, used: usize, last_at: Option<usize>| {
        match last_at {
            // Stretch the last entry to the tail.
            Some(at) => {
                let rec = TAIL - at;
                block[at + 4..at + 6].copy_from_slice(&(rec as u16).to_le_bytes());
            }
            // An empty leaf: one unused entry spanning the block.
            None => put_entry(block, 0, 0, TAIL, b"", 0),
        }
        let _ = used;
        seal_leaf(block, csum_seed);
    };
    firsts.push(0);
    for (i, e) in entries.iter().enumerate() {
        let r = rec_len(e.name.len());
        if used + r > TAIL {
            finish(&mut block, used, last_at);
            blocks.push(std::mem::replace(&mut block, vec![0u8; BS].into_boxed_slice()));
            firsts.push(i);
            used = 0;
        }
        put_entry(&mut block, used, e.ino, r, e.name, e.file_type);
        last_at = Some(used);
        used += r;
    }
    finish(&mut block, used, last_at);
    blocks.push(block);
    (blocks, firsts)
}

/// A rendered directory: its blocks in logical order and whether it is hashed.
#[derive(Debug)]
pub struct Rendered {
    /// Blocks, logical block 0 first.
    pub blocks: Vec<Box<[u8]>>,
    /// Whether the directory is an htree (`EXT4_INDEX_FL`).
    pub indexed: bool,
}

/// Renders a directory with inode `ino`, parent `parent` and `entries` (any order; not `.`/`..`).
#[must_use]
pub fn render(ino: u32, parent: u32, entries: &[DirEntry<'_>], hash_seed: &[u32; 4], csum_seed: u32) -> Rendered {
    let dots =
        [DirEntry { name: b".", ino, file_type: FT_DIR }, DirEntry { name: b"..", ino: parent, file_type: FT_DIR }];
    let linear: usize = 24 + entries.iter().map(|e| rec_len(e.name.len())).sum::<usize>();
    if linear <= TAIL {
        let (blocks, _) = pack(entries, &dots, csum_seed);
        return Rendered { blocks, indexed: false };
    }
    let mut hashed: Vec<(u32, u32, &DirEntry<'_>)> = entries
        .iter()
        .map(|e| {
            let (major, minor) = half_md4(e.name, hash_seed);
            (major, minor, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));
    let sorted: Vec<DirEntry<'_>> = hashed.iter().map(|h| h.2.clone()).collect();
    let (leaves, firsts) = pack(&sorted, &[], csum_seed);
    // The hash that starts each leaf; the low bit marks a leaf continuing its predecessor's last hash.
    let starts: Vec<u32> = firsts
        .iter()
        .map(|&i| {
            let h = hashed[i].0;
            if i > 0 && hashed[i - 1].0 == h { h | 1 } else { h }
        })
        .collect();
    let n = leaves.len();
    let (levels, nodes) = if n <= ROOT_LIMIT { (0u8, 0) } else { (1u8, n.div_ceil(NODE_LIMIT)) };
    assert!(nodes <= ROOT_LIMIT, "directory too large for a two-level htree");
    let mut blocks = Vec::with_capacity(1 + nodes + n);
    // Logical layout: root, interior nodes, leaves.
    let leaf_base = 1 + nodes as u32;
    let mut root = vec![0u8; BS].into_boxed_slice();
    put_entry(&mut root, 0, ino, 12, b".", FT_DIR);
    put_entry(&mut root, 12, parent, BS - 12, b"..", FT_DIR);
    // dx_root_info: reserved, hash version 1 (half MD4), info length 8, levels, flags.
    root[0x1c] = 1;
    root[0x1d] = 8;
    root[0x1e] = levels;
    let root_entries: Vec<(u32, u32)> = if levels == 0 {
        (0..n).map(|i| (starts[i], leaf_base + i as u32)).collect()
    } else {
        (0..nodes).map(|k| (starts[k * NODE_LIMIT], 1 + k as u32)).collect()
    };
    write_dx(&mut root, 0x20, ROOT_LIMIT, &root_entries, csum_seed);
    blocks.push(root);
    for k in 0..nodes {
        let mut node = vec![0u8; BS].into_boxed_slice();
        // A fake empty entry covering the block, so linear readers skip it.
        node[4..6].copy_from_slice(&(BS as u16).to_le_bytes());
        let range = k * NODE_LIMIT..((k + 1) * NODE_LIMIT).min(n);
        let entries: Vec<(u32, u32)> = range.map(|i| (starts[i], leaf_base + i as u32)).collect();
        write_dx(&mut node, 8, NODE_LIMIT, &entries, csum_seed);
        blocks.push(node);
    }
    blocks.extend(leaves);
    Rendered { blocks, indexed: true }
}

/// Writes a dx count/limit header at `at` followed by entries (the first entry's hash is implied), and the
/// checksum tail after `limit` slots.
fn write_dx(block: &mut [u8], at: usize, limit: usize, entries: &[(u32, u32)], csum_seed: u32) {
    block[at..at + 2].copy_from_slice(&(limit as u16).to_le_bytes());
    block[at + 2..at + 4].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (i, &(hash, blk)) in entries.iter().enumerate() {
        let e = at + 8 * i;
        if i > 0 {
            block[e..e + 4].copy_from_slice(&hash.to_le_bytes());
        }
        block[e + 4..e + 8].copy_from_slice(&blk.to_le_bytes());
    }
    let tail = at + 8 * limit;
    let c = crc32c(csum_seed, &block[..at + 8 * entries.len()]);
    // The tail's reserved word, then its checksum field as zeros.
    let c = crc32c(c, &block[tail..tail + 4]);
    let c = crc32c(c, &[0; 4]);
    block[tail + 4..tail + 8].copy_from_slice(&c.to_le_bytes());
}
