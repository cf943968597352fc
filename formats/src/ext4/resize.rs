//! The resize inode (inode 7): reserves descriptor blocks so the mounted filesystem can grow online.
//!
//! It is block-mapped, not extent-mapped: its double-indirect block lists the reserved descriptor blocks of
//! group 0 (entry `(gdt_blocks + j) mod 1024` for reserved block `j`), and each of those, read as an indirect
//! block, lists its copies in the backup groups in increasing group order.

use super::inode::InodeRec;
use super::layout::{ADDR_PER_BLOCK, BLOCK, BLOCKS_PER_GROUP, Geometry, KnownBlock, has_super};

/// The inode record and the blocks to write (the double-indirect block and the primary reserved blocks).
#[must_use]
pub fn resize_inode(g: &Geometry, dind: u64, time: u32) -> (InodeRec, Vec<KnownBlock>) {
    let backups: Vec<u64> = (1..g.groups).filter(|&grp| has_super(grp)).collect();
    let mut out = Vec::new();
    let mut dind_block = vec![0u8; BLOCK as usize].into_boxed_slice();
    let first_reserved = 1 + g.gdt_blocks;
    for j in 0..g.reserved_gdt {
        let primary = first_reserved + j;
        let slot = ((g.gdt_blocks + j) % ADDR_PER_BLOCK) as usize * 4;
        dind_block[slot..slot + 4].copy_from_slice(&(primary as u32).to_le_bytes());
        let mut ind = vec![0u8; BLOCK as usize].into_boxed_slice();
        for (k, grp) in backups.iter().enumerate() {
            let copy = primary + grp * BLOCKS_PER_GROUP;
            ind[4 * k..4 * k + 4].copy_from_slice(&(copy as u32).to_le_bytes());
        }
        out.push((primary, ind));
    }
    out.push((dind, dind_block));
    let mut rec = InodeRec::special(0o100_600, time);
    let apb = ADDR_PER_BLOCK;
    rec.size = (apb * apb + apb + 12) * BLOCK;
    rec.iblock[13 * 4..14 * 4].copy_from_slice(&(dind as u32).to_le_bytes());
    let blocks = 1 + g.reserved_gdt * (1 + backups.len() as u64);
    rec.blocks_512 = blocks * (BLOCK / 512);
    (rec, out)
}
