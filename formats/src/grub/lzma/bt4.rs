//! The binary-tree match finder with 2-, 3- and 4-byte hashes (LZMA SDK 4.58's "BT4"), as the 4.58 encoder
//! drives it: the order it reports matches in and their lengths, including its quirks, decide the encoder's
//! output.
//!
//! Positions count from `WINDOW` (so that 0, the empty slot, is always out of the window). Every position
//! enters three hash heads (2, 3 and 4 bytes) and a binary tree of the last `WINDOW` positions, ordered by
//! the bytes that follow them; a search walks the tree from the newest position with the same 4-byte hash,
//! re-linking it around the current position, for at most `CUT` steps.
//!
//! Facts of the 4.58 finder kept here because they change which matches come back:
//! - the 2- and 3-byte heads are believed after comparing one byte: a 3-byte head that collides still counts
//!   as length 3, and the length is then extended from there;
//! - a 2-byte match is reported with length 2 even when a 3-byte candidate follows it, only the last pair
//!   found by the heads is extended;
//! - the tree only reports matches longer than the best so far (at least 3), shortest first;
//! - the last 3 bytes of the input are never hashed nor searched (fewer than 4 bytes left).

use super::{DICT_SIZE, NICE_LEN};

/// Positions the window keeps: the dictionary and the current one.
const WINDOW: u32 = DICT_SIZE + 1;
/// Search steps per position: 16 + nice length / 2.
const CUT: u32 = 16 + NICE_LEN / 2;
const HASH2_SIZE: usize = 1 << 10;
const HASH3_SIZE: usize = 1 << 16;
/// The 4-byte hash's mask for a 64 KiB dictionary.
const HASH4_MASK: u32 = 0xFFFF;
const HASH3_AT: usize = HASH2_SIZE;
const HASH4_AT: usize = HASH2_SIZE + HASH3_SIZE;

/// The reflected CRC-32 table (polynomial 0xEDB88320) the hashes mix bytes with.
fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let mut r = i as u32;
        for _ in 0..8 {
            r = if r & 1 == 1 { (r >> 1) ^ 0xEDB8_8320 } else { r >> 1 };
        }
        *e = r;
    }
    t
}

pub(super) struct Bt4<'a> {
    pub(super) data: &'a [u8],
    /// Index in `data` of the next position to hash.
    pub(super) at: usize,
    /// `at` + `WINDOW`: what the hash heads and the tree store.
    pos: u32,
    /// Where the current position's node is in the tree's cyclic array.
    node: u32,
    heads: Vec<u32>,
    /// Two links per node: the subtree of smaller strings, then of greater ones.
    tree: Vec<u32>,
    crc: [u32; 256],
}

impl<'a> Bt4<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            at: 0,
            pos: WINDOW,
            node: 0,
            heads: vec![0; HASH4_AT + HASH4_MASK as usize + 1],
            tree: vec![0; 2 * WINDOW as usize],
            crc: crc_table(),
        }
    }

    /// Bytes from the next position to the end.
    pub(super) fn available(&self) -> u32 {
        u32::try_from(self.data.len() - self.at).expect("input under 4 GiB")
    }

    fn advance(&mut self) {
        self.at += 1;
        self.pos += 1;
        self.node += 1;
        if self.node == WINDOW {
            self.node = 0;
        }
    }

    /// The three hashes of the 4 bytes at `at`.
    fn hashes(&self) -> (usize, usize, usize) {
        let c = &self.data[self.at..self.at + 4];
        let t = self.crc[usize::from(c[0])] ^ u32::from(c[1]);
        let t3 = t ^ (u32::from(c[2]) << 8);
        let h4 = (t3 ^ (self.crc[usize::from(c[3])] << 5)) & HASH4_MASK;
        (t as usize & (HASH2_SIZE - 1), t3 as usize & (HASH3_SIZE - 1), h4 as usize)
    }

    /// Enters the current position in the hash heads; the previous holder of the 4-byte head.
    fn enter(&mut self) -> (u32, u32, u32) {
        let (h2, h3, h4) = self.hashes();
        let old = (self.heads[h2], self.heads[HASH3_AT + h3], self.heads[HASH4_AT + h4]);
        self.heads[h2] = self.pos;
        self.heads[HASH3_AT + h3] = self.pos;
        self.heads[HASH4_AT + h4] = self.pos;
        old
    }

    /// The matches at the current position as (length, distance - 1) pairs into `out`, lengths increasing;
    /// returns how many numbers it wrote. Moves to the next position.
    pub(super) fn find(&mut self, out: &mut [u32]) -> usize {
        let limit = self.available().min(NICE_LEN);
        if limit < 4 {
            self.advance();
            return 0;
        }
        let (head2, head3, head4) = self.enter();
        let (d, cur) = (self.data, self.at);
        let mut d2 = self.pos - head2;
        let d3 = self.pos - head3;
        let mut best = 1u32;
        let mut n = 0usize;
        if d2 < WINDOW && d[cur - d2 as usize] == d[cur] {
            best = 2;
            out[0] = 2;
            out[1] = d2 - 1;
            n = 2;
        }
        if d2 != d3 && d3 < WINDOW && d[cur - d3 as usize] == d[cur] {
            best = 3;
            out[n + 1] = d3 - 1;
            n += 2;
            d2 = d3;
        }
        if n != 0 {
            while best != limit && d[cur + best as usize - d2 as usize] == d[cur + best as usize] {
                best += 1;
            }
            out[n - 2] = best;
            if best == limit {
                self.walk(limit, head4, None);
                self.advance();
                return n;
            }
        }
        let n = self.walk(limit, head4, Some((out, n, best.max(3))));
        self.advance();
        n
    }

    /// Skips `count` positions, entering each in the heads and the tree.
    pub(super) fn skip(&mut self, count: u32) {
        for _ in 0..count {
            let limit = self.available().min(NICE_LEN);
            if limit < 4 {
                self.advance();
                continue;
            }
            let (_, _, head4) = self.enter();
            self.walk(limit, head4, None);
            self.advance();
        }
    }

    /// Walks the tree from `candidate` (the 4-byte head's previous holder), inserting the current position as
    /// the new root of its tree. With `report` = (pairs, how many are filled, best length so far), records
    /// each strictly longer match; returns how many numbers `pairs` then holds.
    fn walk(&mut self, limit: u32, mut candidate: u32, mut report: Option<(&mut [u32], usize, u32)>) -> usize {
        let (d, cur) = (self.data, self.at);
        // Where the next greater / smaller subtree hangs: the current node's two links at first.
        let mut greater_link = 2 * self.node as usize + 1;
        let mut smaller_link = 2 * self.node as usize;
        let (mut greater_len, mut smaller_len) = (0u32, 0u32);
        let mut steps = CUT;
        loop {
            let delta = self.pos - candidate;
            if steps == 0 || delta >= WINDOW {
                self.tree[greater_link] = 0;
                self.tree[smaller_link] = 0;
                return report.map_or(0, |(_, n, _)| n);
            }
            steps -= 1;
            let slot = if delta > self.node { self.node + WINDOW - delta } else { self.node - delta };
            let pair = 2 * slot as usize;
            let back = cur - delta as usize;
            let mut len = greater_len.min(smaller_len);
            if d[back + len as usize] == d[cur + len as usize] {
                len += 1;
                while len != limit && d[back + len as usize] == d[cur + len as usize] {
                    len += 1;
                }
                if let Some((out, n, best)) = report.as_mut()
                    && *best < len
                {
                    *best = len;
                    out[*n] = len;
                    out[*n + 1] = delta - 1;
                    *n += 2;
                }
                if len == limit {
                    // Same string as far as can be seen: the candidate's subtrees become the current node's.
                    self.tree[smaller_link] = self.tree[pair];
                    self.tree[greater_link] = self.tree[pair + 1];
                    return report.map_or(0, |(_, n, _)| n);
                }
            }
            if d[back + len as usize] < d[cur + len as usize] {
                self.tree[smaller_link] = candidate;
                smaller_link = pair + 1;
                candidate = self.tree[smaller_link];
                smaller_len = len;
            } else {
                self.tree[greater_link] = candidate;
                greater_link = pair;
                candidate = self.tree[greater_link];
                greater_len = len;
            }
        }
    }
}
