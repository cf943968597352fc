//! The jbd2 journal superblock (big-endian, v2), as mke2fs writes it for an internal journal: empty
//! (`s_start` = 0, nothing to replay), no optional features; the kernel adds checksum features when it mounts.

use super::layout::BLOCK;

/// The first block of a journal of `blocks` blocks.
#[must_use]
pub fn superblock(blocks: u64, fs_uuid: &[u8; 16]) -> Box<[u8]> {
    let mut b = vec![0u8; BLOCK as usize].into_boxed_slice();
    let put = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    put(&mut b, 0x00, 0xc03b_3998); // magic
    put(&mut b, 0x04, 4); // superblock v2
    put(&mut b, 0x0c, BLOCK as u32);
    put(&mut b, 0x10, blocks as u32); // s_maxlen
    put(&mut b, 0x14, 1); // s_first: the log starts after this block
    put(&mut b, 0x18, 1); // s_sequence
    b[0x30..0x40].copy_from_slice(fs_uuid);
    put(&mut b, 0x40, 1); // s_nr_users
    b
}
