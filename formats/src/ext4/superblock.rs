//! The superblock and the group descriptor table.

use super::csum::{crc32c, fs_seed};
use super::layout::{BLOCK, BLOCKS_PER_GROUP, DESC_SIZE, INODE_SIZE};
use super::plan::{JOURNAL_INO, LOST_FOUND_INO, Plan};

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_RESIZE_INODE: u32 = 0x10;
const COMPAT_DIR_INDEX: u32 = 0x20;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// `EXT2_FLAGS_SIGNED_HASH`: directory hashes sign-extend name bytes (see `hash.rs`).
const FLAGS_SIGNED_HASH: u32 = 0x1;
/// `EXT4_BG_INODE_ZEROED`: the inode table reads as zeros where unused.
const BG_INODE_ZEROED: u16 = 0x4;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The 1024-byte superblock as stored in group `group` (0 for the primary).
#[must_use]
pub fn superblock(plan: &Plan, group: u64) -> [u8; 1024] {
    let g = &plan.geometry;
    let o = &plan.opts;
    let mut b = [0u8; 1024];
    put32(&mut b, 0x00, g.inodes() as u32);
    put32(&mut b, 0x04, g.blocks as u32);
    let reserved = g.blocks * u64::from(o.reserved_percent) / 100;
    put32(&mut b, 0x08, reserved as u32);
    put32(&mut b, 0x0c, plan.free_blocks as u32);
    put32(&mut b, 0x10, plan.free_inodes as u32);
    put32(&mut b, 0x14, 0); // first data block
    put32(&mut b, 0x18, 2); // log2(4096) - 10
    put32(&mut b, 0x1c, 2);
    put32(&mut b, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x28, g.inodes_per_group as u32);
    put32(&mut b, 0x30, o.timestamp); // write time
    put16(&mut b, 0x36, 0xffff); // max mount count: no forced checks
    put16(&mut b, 0x38, 0xef53);
    put16(&mut b, 0x3a, 1); // clean
    put16(&mut b, 0x3c, 1); // errors: continue
    put32(&mut b, 0x40, o.timestamp); // last check
    put32(&mut b, 0x4c, 1); // dynamic revision
    put32(&mut b, 0x54, LOST_FOUND_INO);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put16(&mut b, 0x5a, group as u16);
    let mut compat = COMPAT_EXT_ATTR | COMPAT_DIR_INDEX;
    if !plan.journal.is_empty() {
        compat |= COMPAT_HAS_JOURNAL;
    }
    if g.reserved_gdt > 0 {
        compat |= COMPAT_RESIZE_INODE;
    }
    put32(&mut b, 0x5c, compat);
    put32(&mut b, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG);
    put32(
        &mut b,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_METADATA_CSUM,
    );
    b[0x68..0x78].copy_from_slice(&o.uuid);
    b[0x78..0x78 + o.label.len()].copy_from_slice(&o.label);
    put16(&mut b, 0xce, g.reserved_gdt as u16);
    if !plan.journal.is_empty() {
        put32(&mut b, 0xe0, JOURNAL_INO);
    }
    b[0xec..0xfc].copy_from_slice(&o.hash_seed);
    b[0xfc] = 1; // half MD4
    if !plan.journal.is_empty() {
        b[0xfd] = 1; // the journal inode's block map is copied below
    }
    put16(&mut b, 0xfe, DESC_SIZE as u16);
    put32(&mut b, 0x100, 0x0c); // default mount options: user_xattr, acl (as mke2fs)
    put32(&mut b, 0x108, o.timestamp); // creation time
    if let Some(Some(j)) = plan.inodes.get(JOURNAL_INO as usize - 1)
        && !plan.journal.is_empty()
    {
        b[0x10c..0x10c + 60].copy_from_slice(&j.iblock);
        put32(&mut b, 0x10c + 60, (j.size >> 32) as u32);
        put32(&mut b, 0x10c + 64, j.size as u32);
    }
    put32(&mut b, 0x150, (g.blocks >> 32) as u32);
    put32(&mut b, 0x154, (reserved >> 32) as u32);
    put32(&mut b, 0x158, (plan.free_blocks >> 32) as u32);
    put16(&mut b, 0x15c, 32); // min extra isize
    put16(&mut b, 0x15e, 32); // wanted extra isize
    put32(&mut b, 0x160, FLAGS_SIGNED_HASH);
    b[0x174] = 4; // log2 groups per flex
    b[0x175] = 1; // checksum type: crc32c
    let c = crc32c(!0, &b[..0x3fc]);
    put32(&mut b, 0x3fc, c);
    b
}

/// The group descriptor table (all descriptors, padded to whole blocks).
#[must_use]
pub fn descriptors(plan: &Plan, bitmap_csums: &[(u32, u32)]) -> Vec<u8> {
    let g = &plan.geometry;
    let seed = fs_seed(&plan.opts.uuid);
    let mut out = vec![0u8; (g.gdt_blocks * BLOCK) as usize];
    for (i, gp) in plan.groups.iter().enumerate() {
        let d = &mut out[i * DESC_SIZE as usize..(i + 1) * DESC_SIZE as usize];
        let lo_hi = |d: &mut [u8], lo: usize, hi: usize, v: u64| {
            put32(d, lo, v as u32);
            put32(d, hi, (v >> 32) as u32);
        };
        lo_hi(d, 0x00, 0x20, gp.block_bitmap);
        lo_hi(d, 0x04, 0x24, gp.inode_bitmap);
        lo_hi(d, 0x08, 0x28, gp.inode_table);
        let lo_hi16 = |d: &mut [u8], lo: usize, hi: usize, v: u64| {
            put16(d, lo, v as u16);
            put16(d, hi, (v >> 16) as u16);
        };
        lo_hi16(d, 0x0c, 0x2c, gp.free_blocks);
        lo_hi16(d, 0x0e, 0x2e, gp.free_inodes);
        lo_hi16(d, 0x10, 0x30, gp.used_dirs);
        put16(d, 0x12, BG_INODE_ZEROED);
        let (bb, ib) = bitmap_csums[i];
        lo_hi16(d, 0x18, 0x38, u64::from(bb));
        lo_hi16(d, 0x1a, 0x3a, u64::from(ib));
        lo_hi16(d, 0x1c, 0x32, gp.itable_unused);
        let c = crc32c(seed, &(i as u32).to_le_bytes());
        let c = crc32c(c, &d[..0x1e]);
        let c = crc32c(c, &[0, 0]);
        let c = crc32c(c, &d[0x20..]);
        put16(d, 0x1e, c as u16);
    }
    out
}
