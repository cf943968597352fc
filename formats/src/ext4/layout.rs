//! Filesystem geometry (groups, descriptor and inode table sizes, backups) and the block allocator.

use std::ops::Range;

use super::Error;

/// Block size: 4 KiB.
pub const BLOCK: u64 = 4096;
/// Blocks (and, at most, inodes) per group: the bits of one bitmap block.
pub const BLOCKS_PER_GROUP: u64 = BLOCK * 8;
/// On-disk inode size.
pub const INODE_SIZE: u64 = 256;
/// Inodes per inode-table block.
pub const INODES_PER_BLOCK: u64 = BLOCK / INODE_SIZE;
/// Group descriptor size (64bit feature).
pub const DESC_SIZE: u64 = 64;
/// Groups per flex group (`s_log_groups_per_flex` = 4).
pub const FLEX: u64 = 16;
/// Block pointers in one block (for the resize inode's indirect blocks).
pub const ADDR_PER_BLOCK: u64 = BLOCK / 4;

/// A block's number and its contents, decided at planning time.
pub type KnownBlock = (u64, Box<[u8]>);

/// Whether group `g` holds a superblock backup (sparse_super: 0, 1 and powers of 3, 5 and 7).
#[must_use]
pub fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// The journal size mke2fs picks for a filesystem of `blocks` 4 KiB blocks (0: too small for a journal).
#[must_use]
pub fn default_journal_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131_072,
        _ => 262_144,
    }
}

/// Group layout of a filesystem of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Total blocks.
    pub blocks: u64,
    /// Block groups.
    pub groups: u64,
    /// Inodes per group (a multiple of 16).
    pub inodes_per_group: u64,
    /// Group descriptor table blocks.
    pub gdt_blocks: u64,
    /// Reserved descriptor blocks after the table, for online growth.
    pub reserved_gdt: u64,
}

impl Geometry {
    /// The geometry for `blocks` blocks and at least `inodes` inodes.
    pub fn new(blocks: u64, inodes: u64, resize_room: bool) -> Result<Self, Error> {
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let ipg = inodes.div_ceil(groups).next_multiple_of(INODES_PER_BLOCK).max(INODES_PER_BLOCK);
        if ipg > BLOCKS_PER_GROUP {
            return Err(Error::TooManyInodes { inodes, groups });
        }
        let gdt_blocks = (groups * DESC_SIZE).div_ceil(BLOCK);
        // Room to grow the filesystem 1024-fold (capped at 2^32 blocks), as mke2fs reserves.
        let reserved_gdt = if resize_room {
            let max_blocks = blocks.saturating_mul(1024).min(u64::from(u32::MAX));
            let max_groups = max_blocks.div_ceil(BLOCKS_PER_GROUP);
            let want = (max_groups * DESC_SIZE).div_ceil(BLOCK);
            want.saturating_sub(gdt_blocks).min(ADDR_PER_BLOCK)
        } else {
            0
        };
        Ok(Self { blocks, groups, inodes_per_group: ipg, gdt_blocks, reserved_gdt })
    }

    /// Total inodes.
    #[must_use]
    pub fn inodes(&self) -> u64 {
        self.groups * self.inodes_per_group
    }

    /// Inode table blocks per group.
    #[must_use]
    pub fn itable_blocks(&self) -> u64 {
        self.inodes_per_group / INODES_PER_BLOCK
    }

    /// First block of group `g`.
    #[must_use]
    pub fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    /// Blocks in group `g` (the last one may be short).
    #[must_use]
    pub fn group_len(&self, g: u64) -> u64 {
        BLOCKS_PER_GROUP.min(self.blocks - self.group_start(g))
    }

    /// Superblock, descriptor table and reserved descriptor blocks at the start of group `g` (empty if none).
    #[must_use]
    pub fn super_region(&self, g: u64) -> Range<u64> {
        let start = self.group_start(g);
        if has_super(g) { start..start + 1 + self.gdt_blocks + self.reserved_gdt } else { start..start }
    }
}

/// Hands out blocks in increasing order, around ranges already taken (superblock backups, flex metadata).
#[derive(Debug)]
pub struct Allocator {
    /// Taken ranges, sorted and disjoint.
    taken: Vec<Range<u64>>,
    next_taken: usize,
    cursor: u64,
    end: u64,
}

impl Allocator {
    /// An allocator over `0..end` with `taken` (sorted, disjoint) unavailable.
    #[must_use]
    pub fn new(taken: Vec<Range<u64>>, end: u64) -> Self {
        debug_assert!(taken.windows(2).all(|w| w[0].end <= w[1].start));
        Self { taken, next_taken: 0, cursor: 0, end }
    }

    /// The free run at the cursor: its start and its end (where the next taken range or the end begins).
    fn free_run(&mut self) -> Option<Range<u64>> {
        loop {
            while let Some(t) = self.taken.get(self.next_taken) {
                if t.end <= self.cursor {
                    self.next_taken += 1;
                } else if t.start <= self.cursor {
                    self.cursor = t.end;
                    self.next_taken += 1;
                } else {
                    break;
                }
            }
            if self.cursor >= self.end {
                return None;
            }
            let stop = self.taken.get(self.next_taken).map_or(self.end, |t| t.start.min(self.end));
            if stop > self.cursor {
                return Some(self.cursor..stop);
            }
        }
    }

    /// `n` blocks, as few runs as the free space allows, in order.
    pub fn alloc(&mut self, mut n: u64, out: &mut Vec<Range<u64>>) -> Result<(), Error> {
        while n > 0 {
            let run = self.free_run().ok_or(Error::OutOfSpace)?;
            let take = n.min(run.end - run.start);
            out.push(run.start..run.start + take);
            self.cursor = run.start + take;
            n -= take;
        }
        Ok(())
    }

    /// `n` contiguous blocks (skipping free runs that are too short).
    pub fn alloc_contiguous(&mut self, n: u64) -> Result<Range<u64>, Error> {
        loop {
            let run = self.free_run().ok_or(Error::OutOfSpace)?;
            if run.end - run.start >= n {
                self.cursor = run.start + n;
                return Ok(run.start..run.start + n);
            }
            self.cursor = run.end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..130).filter(|&g| has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125]);
    }

    #[test]
    fn allocator_skips_taken_ranges() {
        let mut a = Allocator::new(vec![0..3, 5..6, 10..20], 30);
        let mut runs = Vec::new();
        a.alloc(4, &mut runs).unwrap();
        assert_eq!(runs, [3..5, 6..8]);
        assert_eq!(a.alloc_contiguous(5).unwrap(), 20..25);
        runs.clear();
        a.alloc(5, &mut runs).unwrap();
        assert_eq!(runs, vec![25..30]);
        assert!(matches!(a.alloc(1, &mut runs), Err(Error::OutOfSpace)));
    }

    #[test]
    fn reserves_room_to_grow() {
        // 1 GiB: 8 groups, one descriptor block, and room for 1024x growth (capped at 2^32 blocks).
        let g = Geometry::new(262_144, 65_536, true).unwrap();
        assert_eq!((g.groups, g.gdt_blocks, g.inodes_per_group), (8, 1, 8192));
        assert_eq!(g.reserved_gdt, 127);
        assert_eq!(g.super_region(1), 32768..32768 + 129);
        assert!(g.super_region(2).is_empty());
    }
}
