//! The encoder: LZMA SDK 4.58's "normal" algorithm (optimal parsing over up to 4096 positions) on the BT4
//! match finder, for GRUB's fixed parameters. Written from the algorithm's description; every choice that
//! decides which bytes come out (when price tables are refreshed, how ties are broken, which candidates are
//! priced, where the parser stops) follows 4.58's.

use super::bt4::Bt4;
use super::rc::{PROB_HALF, Prices, RangeEncoder};
use super::{LC, NICE_LEN, PB};

const STATES: usize = 12;
const POS_STATES: usize = 1 << PB;
const POS_MASK: u32 = (1 << PB) - 1;
const AFTER_LIT: [usize; STATES] = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 4, 5];
const AFTER_MATCH: [usize; STATES] = [7, 7, 7, 7, 7, 7, 7, 10, 10, 10, 10, 10];
const AFTER_REP: [usize; STATES] = [8, 8, 8, 8, 8, 8, 8, 11, 11, 11, 11, 11];
const AFTER_SHORT_REP: [usize; STATES] = [9, 9, 9, 9, 9, 9, 9, 11, 11, 11, 11, 11];
/// States after a literal: the next literal is coded plainly, not against the match byte.
fn literal_state(s: usize) -> bool {
    s < 7
}

const MIN_LEN: u32 = 2;
const MAX_LEN: u32 = 273;
/// Entries of the length price tables that are kept up to date: lengths 2..=nice.
const LEN_PRICED: u32 = NICE_LEN + 1 - MIN_LEN;
/// Positions the optimal parser looks ahead at most.
const OPTS: u32 = 1 << 12;
const INFINITE: u32 = 1 << 30;
const NO_DIST: u32 = u32::MAX;
const REPS: u32 = 4;
/// Distances below this have their own price entries (slots up to 13).
const FULL_DISTANCES: u32 = 128;
const END_POS_MODEL: u32 = 14;
const ALIGN_BITS: u32 = 4;
const ALIGN_MASK: u32 = (1 << ALIGN_BITS) - 1;
/// Slots a 64 KiB dictionary needs.
const DIST_SLOTS: u32 = 32;
/// Normal matches between refreshes of the distance prices; aligned-distance codings between refreshes of
/// the align prices.
const DIST_REFRESH: u32 = 1 << 7;
const ALIGN_REFRESH: u32 = 1 << ALIGN_BITS;

/// How far the bytes at `at` and at `from` agree, counting on from `start` (already known to agree) up to at
/// most `limit`.
fn common_len(d: &[u8], at: usize, from: usize, start: u32, limit: u32) -> u32 {
    let mut l = start;
    while l < limit && d[at + l as usize] == d[from + l as usize] {
        l += 1;
    }
    l
}

fn dist_slot(dist: u32) -> u32 {
    if dist < 4 {
        dist
    } else {
        let top = 31 - dist.leading_zeros();
        2 * top + ((dist >> (top - 1)) & 1)
    }
}

fn len_to_dist_state(len: u32) -> usize {
    if len < 5 { (len - 2) as usize } else { 3 }
}

/// A length coder (choice bits, low/mid trees per position state, a shared high tree) with its price table.
struct LenCoder {
    choice: u16,
    choice2: u16,
    low: [u16; POS_STATES << 3],
    mid: [u16; POS_STATES << 3],
    high: [u16; 256],
    prices: [[u32; LEN_PRICED as usize]; POS_STATES],
    /// Codings left in each position state before its prices are recomputed.
    countdown: [u32; POS_STATES],
}

impl LenCoder {
    fn new(p: &Prices) -> Self {
        let mut c = Self {
            choice: PROB_HALF,
            choice2: PROB_HALF,
            low: [PROB_HALF; POS_STATES << 3],
            mid: [PROB_HALF; POS_STATES << 3],
            high: [PROB_HALF; 256],
            prices: [[0; LEN_PRICED as usize]; POS_STATES],
            countdown: [0; POS_STATES],
        };
        for ps in 0..POS_STATES {
            c.refresh(ps, p);
        }
        c
    }

    fn refresh(&mut self, ps: usize, p: &Prices) {
        let a0 = p.zero(self.choice);
        let a1 = p.one(self.choice);
        let b0 = a1 + p.zero(self.choice2);
        let b1 = a1 + p.one(self.choice2);
        for (i, price) in self.prices[ps].iter_mut().enumerate() {
            let i = i as u32;
            *price = if i < 8 {
                a0 + p.tree(&self.low[ps << 3..], 3, i)
            } else if i < 16 {
                b0 + p.tree(&self.mid[ps << 3..], 3, i - 8)
            } else {
                b1 + p.tree(&self.high, 8, i - 16)
            };
        }
        self.countdown[ps] = LEN_PRICED;
    }

    /// Codes `len` - 2 and counts the coding against the position state's price table.
    fn encode(&mut self, rc: &mut RangeEncoder, len: u32, ps: usize, p: &Prices) {
        let s = len - MIN_LEN;
        if s < 8 {
            rc.bit(&mut self.choice, 0);
            rc.tree(&mut self.low[ps << 3..], 3, s);
        } else {
            rc.bit(&mut self.choice, 1);
            if s < 16 {
                rc.bit(&mut self.choice2, 0);
                rc.tree(&mut self.mid[ps << 3..], 3, s - 8);
            } else {
                rc.bit(&mut self.choice2, 1);
                rc.tree(&mut self.high, 8, s - 16);
            }
        }
        self.countdown[ps] -= 1;
        if self.countdown[ps] == 0 {
            self.refresh(ps, p);
        }
    }

    fn price(&self, len: u32, ps: usize) -> u32 {
        self.prices[ps][(len - MIN_LEN) as usize]
    }
}

/// One position of the parser's lookahead: the cheapest known way to reach it.
#[derive(Clone, Copy, Default)]
struct Node {
    price: u32,
    state: usize,
    /// Reached by a literal then a rep0 (`pos_prev` is the literal's position)…
    via_literal: bool,
    /// …that followed a match (rep or not) from `pos_prev2` with `back_prev2`.
    via_match_literal: bool,
    pos_prev2: u32,
    back_prev2: u32,
    pos_prev: u32,
    /// The coding that reaches this node: `NO_DIST` a literal, 0..=3 a rep, else distance + 4.
    back_prev: u32,
    reps: [u32; 4],
}

impl Node {
    fn set(&mut self, price: u32, pos_prev: u32, back_prev: u32) {
        self.price = price;
        self.pos_prev = pos_prev;
        self.back_prev = back_prev;
        self.via_literal = false;
    }

    fn make_literal(&mut self) {
        self.back_prev = NO_DIST;
        self.via_literal = false;
    }

    fn make_short_rep(&mut self) {
        self.back_prev = 0;
        self.via_literal = false;
    }
}

pub(super) struct Encoder<'a> {
    mf: Bt4<'a>,
    rc: RangeEncoder,
    p: Prices,

    state: usize,
    reps: [u32; 4],
    is_match: [[u16; POS_STATES]; STATES],
    is_rep: [u16; STATES],
    is_rep_g0: [u16; STATES],
    is_rep_g1: [u16; STATES],
    is_rep_g2: [u16; STATES],
    is_rep0_long: [[u16; POS_STATES]; STATES],
    literal: Vec<u16>,
    dist_slot: [[u16; 64]; 4],
    /// The reverse trees of slots 4..=13, shifted by one so that each slot's tree starts at
    /// `base - slot` (the first node of slot 4's would otherwise sit at -1).
    dist_special: [u16; 1 + (FULL_DISTANCES - END_POS_MODEL) as usize],
    align: [u16; 1 << ALIGN_BITS],
    len: LenCoder,
    rep_len: LenCoder,

    slot_prices: [[u32; DIST_SLOTS as usize]; 4],
    dist_prices: [[u32; FULL_DISTANCES as usize]; 4],
    align_prices: [u32; 1 << ALIGN_BITS],
    match_count: u32,
    align_count: u32,

    /// Positions the match finder is ahead of the coder.
    ahead: u32,
    matches: [u32; (MAX_LEN * 2 + 3) as usize],
    opt: Vec<Node>,
    opt_end: u32,
    opt_cur: u32,
    /// The parser stopped at a long match it has already read: its length and how many numbers `matches`
    /// holds for it.
    pending: Option<(u32, usize)>,
}

impl<'a> Encoder<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        let p = Prices::new();
        let len = LenCoder::new(&p);
        let rep_len = LenCoder::new(&p);
        let mut e = Self {
            mf: Bt4::new(data),
            rc: RangeEncoder::new(data.len() / 2 + 64),
            p,
            state: 0,
            reps: [0; 4],
            is_match: [[PROB_HALF; POS_STATES]; STATES],
            is_rep: [PROB_HALF; STATES],
            is_rep_g0: [PROB_HALF; STATES],
            is_rep_g1: [PROB_HALF; STATES],
            is_rep_g2: [PROB_HALF; STATES],
            is_rep0_long: [[PROB_HALF; POS_STATES]; STATES],
            literal: vec![PROB_HALF; 0x300 << LC],
            dist_slot: [[PROB_HALF; 64]; 4],
            dist_special: [PROB_HALF; 1 + (FULL_DISTANCES - END_POS_MODEL) as usize],
            align: [PROB_HALF; 1 << ALIGN_BITS],
            len,
            rep_len,
            slot_prices: [[0; DIST_SLOTS as usize]; 4],
            dist_prices: [[0; FULL_DISTANCES as usize]; 4],
            align_prices: [0; 1 << ALIGN_BITS],
            match_count: 0,
            align_count: 0,
            ahead: 0,
            matches: [0; (MAX_LEN * 2 + 3) as usize],
            opt: vec![Node::default(); OPTS as usize],
            opt_end: 0,
            opt_cur: 0,
            pending: None,
        };
        e.refresh_dist_prices();
        e.refresh_align_prices();
        e
    }

    fn refresh_align_prices(&mut self) {
        for (i, price) in self.align_prices.iter_mut().enumerate() {
            *price = self.p.reverse_tree(&self.align, 0, ALIGN_BITS, i as u32);
        }
        self.align_count = 0;
    }

    fn refresh_dist_prices(&mut self) {
        let mut footer = [0u32; FULL_DISTANCES as usize];
        for (i, f) in footer.iter_mut().enumerate().skip(4) {
            let i = i as u32;
            let slot = dist_slot(i);
            let bits = (slot >> 1) - 1;
            let base = (2 | (slot & 1)) << bits;
            *f = self.p.reverse_tree(&self.dist_special, (base - slot) as usize, bits, i - base);
        }
        for lds in 0..4 {
            for slot in 0..DIST_SLOTS {
                let mut price = self.p.tree(&self.dist_slot[lds], 6, slot);
                if slot >= END_POS_MODEL {
                    price += ((slot >> 1) - 1 - ALIGN_BITS) << 4;
                }
                self.slot_prices[lds][slot as usize] = price;
            }
            for i in 0..FULL_DISTANCES {
                self.dist_prices[lds][i as usize] = if i < 4 {
                    self.slot_prices[lds][i as usize]
                } else {
                    self.slot_prices[lds][dist_slot(i) as usize] + footer[i as usize]
                };
            }
        }
        self.match_count = 0;
    }

    /// The literal coder's probabilities after `prev` (lp 0: the position does not matter).
    fn lit_base(prev: u8) -> usize {
        0x300 * (usize::from(prev) >> (8 - LC))
    }

    fn literal_price(&self, prev: u8, byte: u8) -> u32 {
        let probs = &self.literal[Self::lit_base(prev)..];
        let mut s = u32::from(byte) | 0x100;
        let mut price = 0;
        while s < 0x10000 {
            price += self.p.bit(probs[(s >> 8) as usize], (s >> 7) & 1);
            s <<= 1;
        }
        price
    }

    /// A literal after a match, coded against `matched` (the byte at rep0) while their bits agree.
    fn matched_literal_price(&self, prev: u8, byte: u8, matched: u8) -> u32 {
        let probs = &self.literal[Self::lit_base(prev)..];
        let (mut s, mut m, mut offs) = (u32::from(byte) | 0x100, u32::from(matched), 0x100u32);
        let mut price = 0;
        while s < 0x10000 {
            m <<= 1;
            price += self.p.bit(probs[(offs + (m & offs) + (s >> 8)) as usize], (s >> 7) & 1);
            s <<= 1;
            offs &= !(m ^ s);
        }
        price
    }

    fn encode_literal(&mut self, prev: u8, byte: u8, matched: Option<u8>) {
        let base = Self::lit_base(prev);
        let probs = &mut self.literal[base..base + 0x300];
        let mut s = u32::from(byte) | 0x100;
        match matched {
            None => {
                while s < 0x10000 {
                    self.rc.bit(&mut probs[(s >> 8) as usize], (s >> 7) & 1);
                    s <<= 1;
                }
            }
            Some(matched) => {
                let (mut m, mut offs) = (u32::from(matched), 0x100u32);
                while s < 0x10000 {
                    m <<= 1;
                    self.rc.bit(&mut probs[(offs + (m & offs) + (s >> 8)) as usize], (s >> 7) & 1);
                    s <<= 1;
                    offs &= !(m ^ s);
                }
            }
        }
    }

    fn short_rep_price(&self, state: usize, ps: usize) -> u32 {
        self.p.zero(self.is_rep_g0[state]) + self.p.zero(self.is_rep0_long[state][ps])
    }

    fn pure_rep_price(&self, rep: u32, state: usize, ps: usize) -> u32 {
        match rep {
            0 => self.p.zero(self.is_rep_g0[state]) + self.p.one(self.is_rep0_long[state][ps]),
            1 => self.p.one(self.is_rep_g0[state]) + self.p.zero(self.is_rep_g1[state]),
            _ => {
                self.p.one(self.is_rep_g0[state])
                    + self.p.one(self.is_rep_g1[state])
                    + self.p.bit(self.is_rep_g2[state], rep - 2)
            }
        }
    }

    fn rep_price(&self, rep: u32, len: u32, state: usize, ps: usize) -> u32 {
        self.rep_len.price(len, ps) + self.pure_rep_price(rep, state, ps)
    }

    fn match_dist_price(&self, dist: u32, len: u32) -> u32 {
        let lds = len_to_dist_state(len);
        if dist < FULL_DISTANCES {
            self.dist_prices[lds][dist as usize]
        } else {
            self.align_prices[(dist & ALIGN_MASK) as usize] + self.slot_prices[lds][dist_slot(dist) as usize]
        }
    }

    /// Finds the matches at the match finder's position and moves it on: the longest length (extended past
    /// the nice length up to 273 when it reaches it) and how many numbers `matches` holds.
    fn read_matches(&mut self) -> (u32, usize) {
        let n = self.mf.find(&mut self.matches);
        let mut longest = 0;
        if n > 0 {
            longest = self.matches[n - 2];
            if longest == NICE_LEN {
                let avail = (self.mf.available() + 1).min(MAX_LEN) as usize;
                let d = self.mf.data;
                let at = self.mf.at - 1;
                let from = at - self.matches[n - 1] as usize - 1;
                longest = common_len(d, at, from, longest, avail as u32);
            }
        }
        self.ahead += 1;
        (longest, n)
    }

    fn skip(&mut self, count: u32) {
        if count != 0 {
            self.ahead += count;
            self.mf.skip(count);
        }
    }

    /// Walks the cheapest path to `cur` back to 0, leaving each node pointing forwards; returns the first step.
    fn backward(&mut self, mut cur: u32) -> (u32, u32) {
        let o = &mut self.opt;
        let mut pos_mem = o[cur as usize].pos_prev;
        let mut back_mem = o[cur as usize].back_prev;
        self.opt_end = cur;
        loop {
            let c = o[cur as usize];
            if c.via_literal {
                let pm = pos_mem as usize;
                o[pm].make_literal();
                o[pm].pos_prev = pos_mem - 1;
                if c.via_match_literal {
                    o[pm - 1].via_literal = false;
                    o[pm - 1].pos_prev = c.pos_prev2;
                    o[pm - 1].back_prev = c.back_prev2;
                }
            }
            let prev = pos_mem;
            let back_cur = back_mem;
            back_mem = o[prev as usize].back_prev;
            pos_mem = o[prev as usize].pos_prev;
            o[prev as usize].back_prev = back_cur;
            o[prev as usize].pos_prev = cur;
            cur = prev;
            if cur == 0 {
                break;
            }
        }
        self.opt_cur = o[0].pos_prev;
        (self.opt_cur, o[0].back_prev)
    }

    /// Extends the lookahead to `to`, new nodes unreached.
    fn reach(&mut self, len_end: &mut u32, to: u32) {
        while *len_end < to {
            *len_end += 1;
            self.opt[*len_end as usize].price = INFINITE;
        }
    }

    /// The next coding from `position`: (length, `NO_DIST` for a literal / rep index / distance + 4).
    fn optimum(&mut self, mut position: u32) -> (u32, u32) {
        if self.opt_end != self.opt_cur {
            let n = self.opt[self.opt_cur as usize];
            let len = n.pos_prev - self.opt_cur;
            self.opt_cur = n.pos_prev;
            return (len, n.back_prev);
        }
        self.opt_cur = 0;
        self.opt_end = 0;

        let mut avail = self.mf.available();
        let (len_main, num) = match self.pending.take() {
            Some(found) => found,
            None => self.read_matches(),
        };
        let d = self.mf.data;
        let at = self.mf.at - 1;
        if avail < 2 {
            return (1, NO_DIST);
        }
        avail = avail.min(MAX_LEN);

        let mut reps = self.reps;
        let mut rep_lens = [0u32; 4];
        let mut rep_max = 0usize;
        for i in 0..4 {
            let from = at - reps[i] as usize - 1;
            if d[at] != d[from] || d[at + 1] != d[from + 1] {
                continue;
            }
            let l = common_len(d, at, from, 2, avail);
            rep_lens[i] = l;
            if l > rep_lens[rep_max] {
                rep_max = i;
            }
        }
        if rep_lens[rep_max] >= NICE_LEN {
            let l = rep_lens[rep_max];
            self.skip(l - 1);
            return (l, rep_max as u32);
        }
        if len_main >= NICE_LEN {
            let back = self.matches[num - 1] + REPS;
            self.skip(len_main - 1);
            return (len_main, back);
        }
        let cur_byte = d[at];
        let match_byte = d[at - reps[0] as usize - 1];
        if len_main < 2 && cur_byte != match_byte && rep_lens[rep_max] < 2 {
            return (1, NO_DIST);
        }

        let state = self.state;
        self.opt[0].state = state;
        let ps = (position & POS_MASK) as usize;
        let lit = if literal_state(state) {
            self.literal_price(d[at - 1], cur_byte)
        } else {
            self.matched_literal_price(d[at - 1], cur_byte, match_byte)
        };
        self.opt[1].price = self.p.zero(self.is_match[state][ps]) + lit;
        self.opt[1].make_literal();
        let match_price = self.p.one(self.is_match[state][ps]);
        let rep_match_price = match_price + self.p.one(self.is_rep[state]);
        if match_byte == cur_byte {
            let short = rep_match_price + self.short_rep_price(state, ps);
            if short < self.opt[1].price {
                self.opt[1].price = short;
                self.opt[1].make_short_rep();
            }
        }
        let mut len_end = len_main.max(rep_lens[rep_max]);
        if len_end < 2 {
            return (1, self.opt[1].back_prev);
        }
        self.opt[1].pos_prev = 0;
        self.opt[0].reps = reps;
        for l in 2..=len_end {
            self.opt[l as usize].price = INFINITE;
        }
        for (i, &rl) in rep_lens.iter().enumerate() {
            if rl < 2 {
                continue;
            }
            let price = rep_match_price + self.pure_rep_price(i as u32, state, ps);
            for l in (2..=rl).rev() {
                let c = price + self.rep_len.price(l, ps);
                if c < self.opt[l as usize].price {
                    self.opt[l as usize].set(c, 0, i as u32);
                }
            }
        }
        let normal_price = match_price + self.p.zero(self.is_rep[state]);
        let mut l = if rep_lens[0] >= 2 { rep_lens[0] + 1 } else { 2 };
        if l <= len_main {
            let mut offs = 0;
            while l > self.matches[offs] {
                offs += 2;
            }
            loop {
                let dist = self.matches[offs + 1];
                let c = normal_price + self.len.price(l, ps) + self.match_dist_price(dist, l);
                if c < self.opt[l as usize].price {
                    self.opt[l as usize].set(c, 0, dist + REPS);
                }
                if l == self.matches[offs] {
                    offs += 2;
                    if offs == num {
                        break;
                    }
                }
                l += 1;
            }
        }

        let mut cur = 0u32;
        loop {
            cur += 1;
            if cur == len_end {
                return self.backward(cur);
            }
            let mut avail_full = self.mf.available();
            let (mut new_len, mut num) = self.read_matches();
            if new_len >= NICE_LEN {
                self.pending = Some((new_len, num));
                return self.backward(cur);
            }
            position += 1;
            let node = self.opt[cur as usize];
            let mut pos_prev = node.pos_prev;
            let mut state;
            if node.via_literal {
                pos_prev -= 1;
                if node.via_match_literal {
                    state = self.opt[node.pos_prev2 as usize].state;
                    state = if node.back_prev2 < REPS { AFTER_REP[state] } else { AFTER_MATCH[state] };
                } else {
                    state = self.opt[pos_prev as usize].state;
                }
                state = AFTER_LIT[state];
            } else {
                state = self.opt[pos_prev as usize].state;
            }
            if pos_prev == cur - 1 {
                state = if node.back_prev == 0 { AFTER_SHORT_REP[state] } else { AFTER_LIT[state] };
            } else {
                let back;
                if node.via_literal && node.via_match_literal {
                    pos_prev = node.pos_prev2;
                    back = node.back_prev2;
                    state = AFTER_REP[state];
                } else {
                    back = node.back_prev;
                    state = if back < REPS { AFTER_REP[state] } else { AFTER_MATCH[state] };
                }
                let before = self.opt[pos_prev as usize].reps;
                if back < REPS {
                    let b = back as usize;
                    reps[0] = before[b];
                    reps[1..=b].copy_from_slice(&before[..b]);
                    reps[b + 1..].copy_from_slice(&before[b + 1..]);
                } else {
                    reps[0] = back - REPS;
                    reps[1..].copy_from_slice(&before[..3]);
                }
            }
            self.opt[cur as usize].state = state;
            self.opt[cur as usize].reps = reps;

            let cur_price = node.price;
            let mut next_is_char = false;
            let at = self.mf.at - 1;
            let cur_byte = d[at];
            let match_byte = d[at - reps[0] as usize - 1];
            let ps = (position & POS_MASK) as usize;
            let lit = if literal_state(state) {
                self.literal_price(d[at - 1], cur_byte)
            } else {
                self.matched_literal_price(d[at - 1], cur_byte, match_byte)
            };
            let cur_and_1 = cur_price + self.p.zero(self.is_match[state][ps]) + lit;
            let next = (cur + 1) as usize;
            if cur_and_1 < self.opt[next].price {
                self.opt[next].price = cur_and_1;
                self.opt[next].pos_prev = cur;
                self.opt[next].make_literal();
                next_is_char = true;
            }
            let match_price = cur_price + self.p.one(self.is_match[state][ps]);
            let rep_match_price = match_price + self.p.one(self.is_rep[state]);
            if match_byte == cur_byte && !(self.opt[next].pos_prev < cur && self.opt[next].back_prev == 0) {
                let short = rep_match_price + self.short_rep_price(state, ps);
                if short <= self.opt[next].price {
                    self.opt[next].price = short;
                    self.opt[next].pos_prev = cur;
                    self.opt[next].make_short_rep();
                    next_is_char = true;
                }
            }
            avail_full = avail_full.min(OPTS - 1 - cur);
            if avail_full < 2 {
                continue;
            }
            let avail = avail_full.min(NICE_LEN);

            if !next_is_char && match_byte != cur_byte {
                // A literal, then rep0.
                let from = at - reps[0] as usize - 1;
                let limit = (NICE_LEN + 1).min(avail_full);
                let l2 = common_len(d, at, from, 1, limit) - 1;
                if l2 >= 2 {
                    let state2 = AFTER_LIT[state];
                    let ps2 = ((position + 1) & POS_MASK) as usize;
                    let next_rep = cur_and_1 + self.p.one(self.is_match[state2][ps2]) + self.p.one(self.is_rep[state2]);
                    let offset = cur + 1 + l2;
                    self.reach(&mut len_end, offset);
                    let c = next_rep + self.rep_price(0, l2, state2, ps2);
                    let o = &mut self.opt[offset as usize];
                    if c < o.price {
                        o.set(c, cur + 1, 0);
                        o.via_literal = true;
                        o.via_match_literal = false;
                    }
                }
            }

            let mut start_len = 2u32;
            for rep in 0..4u32 {
                let from = at - reps[rep as usize] as usize - 1;
                if d[at] != d[from] || d[at + 1] != d[from + 1] {
                    continue;
                }
                let lt = common_len(d, at, from, 2, avail);
                self.reach(&mut len_end, cur + lt);
                let price = rep_match_price + self.pure_rep_price(rep, state, ps);
                for l in (2..=lt).rev() {
                    let c = price + self.rep_len.price(l, ps);
                    let o = &mut self.opt[(cur + l) as usize];
                    if c < o.price {
                        o.set(c, cur, rep);
                    }
                }
                if rep == 0 {
                    start_len = lt + 1;
                }
                // The rep, a literal, then rep0.
                let limit = (lt + 1 + NICE_LEN).min(avail_full);
                let l2 = common_len(d, at, from, lt + 1, limit) - (lt + 1);
                if l2 >= 2 {
                    let mut state2 = AFTER_REP[state];
                    let mut ps2 = ((position + lt) & POS_MASK) as usize;
                    let lt_at = at + lt as usize;
                    let with_char = price
                        + self.rep_len.price(lt, ps)
                        + self.p.zero(self.is_match[state2][ps2])
                        + self.matched_literal_price(d[lt_at - 1], d[lt_at], d[from + lt as usize]);
                    state2 = AFTER_LIT[state2];
                    ps2 = ((position + lt + 1) & POS_MASK) as usize;
                    let next_rep = with_char + self.p.one(self.is_match[state2][ps2]) + self.p.one(self.is_rep[state2]);
                    let offset = cur + lt + 1 + l2;
                    self.reach(&mut len_end, offset);
                    let c = next_rep + self.rep_price(0, l2, state2, ps2);
                    let o = &mut self.opt[offset as usize];
                    if c < o.price {
                        o.set(c, cur + lt + 1, 0);
                        o.via_literal = true;
                        o.via_match_literal = true;
                        o.pos_prev2 = cur;
                        o.back_prev2 = rep;
                    }
                }
            }

            if new_len > avail {
                new_len = avail;
                num = 0;
                while new_len > self.matches[num] {
                    num += 2;
                }
                self.matches[num] = new_len;
                num += 2;
            }
            if new_len >= start_len {
                let normal_price = match_price + self.p.zero(self.is_rep[state]);
                self.reach(&mut len_end, cur + new_len);
                let mut offs = 0;
                while start_len > self.matches[offs] {
                    offs += 2;
                }
                let mut back = self.matches[offs + 1];
                let mut lt = start_len;
                loop {
                    let c = normal_price + self.len.price(lt, ps) + self.match_dist_price(back, lt);
                    let o = &mut self.opt[(cur + lt) as usize];
                    if c < o.price {
                        o.set(c, cur, back + REPS);
                    }
                    if lt == self.matches[offs] {
                        // The match, a literal, then rep0.
                        let from = at - back as usize - 1;
                        let limit = (lt + 1 + NICE_LEN).min(avail_full);
                        let l2 = common_len(d, at, from, lt + 1, limit) - (lt + 1);
                        if l2 >= 2 {
                            let mut state2 = AFTER_MATCH[state];
                            let mut ps2 = ((position + lt) & POS_MASK) as usize;
                            let lt_at = at + lt as usize;
                            let with_char = c
                                + self.p.zero(self.is_match[state2][ps2])
                                + self.matched_literal_price(d[lt_at - 1], d[lt_at], d[from + lt as usize]);
                            state2 = AFTER_LIT[state2];
                            ps2 = (ps2 + 1) & POS_MASK as usize;
                            let next_rep =
                                with_char + self.p.one(self.is_match[state2][ps2]) + self.p.one(self.is_rep[state2]);
                            let offset = cur + lt + 1 + l2;
                            self.reach(&mut len_end, offset);
                            let c2 = next_rep + self.rep_price(0, l2, state2, ps2);
                            let o = &mut self.opt[offset as usize];
                            if c2 < o.price {
                                o.set(c2, cur + lt + 1, 0);
                                o.via_literal = true;
                                o.via_match_literal = true;
                                o.pos_prev2 = cur;
                                o.back_prev2 = back + REPS;
                            }
                        }
                        offs += 2;
                        if offs == num {
                            break;
                        }
                        back = self.matches[offs + 1];
                    }
                    lt += 1;
                }
            }
        }
    }

    fn encode_match(&mut self, len: u32, back: u32, ps: usize) {
        let state = self.state;
        self.rc.bit(&mut self.is_match[state][ps], 1);
        if back < REPS {
            self.rc.bit(&mut self.is_rep[state], 1);
            if back == 0 {
                self.rc.bit(&mut self.is_rep_g0[state], 0);
                self.rc.bit(&mut self.is_rep0_long[state][ps], u32::from(len != 1));
            } else {
                let dist = self.reps[back as usize];
                self.rc.bit(&mut self.is_rep_g0[state], 1);
                if back == 1 {
                    self.rc.bit(&mut self.is_rep_g1[state], 0);
                } else {
                    self.rc.bit(&mut self.is_rep_g1[state], 1);
                    self.rc.bit(&mut self.is_rep_g2[state], back - 2);
                    if back == 3 {
                        self.reps[3] = self.reps[2];
                    }
                    self.reps[2] = self.reps[1];
                }
                self.reps[1] = self.reps[0];
                self.reps[0] = dist;
            }
            if len == 1 {
                self.state = AFTER_SHORT_REP[state];
            } else {
                self.rep_len.encode(&mut self.rc, len, ps, &self.p);
                self.state = AFTER_REP[state];
            }
        } else {
            self.rc.bit(&mut self.is_rep[state], 0);
            self.state = AFTER_MATCH[state];
            self.len.encode(&mut self.rc, len, ps, &self.p);
            let dist = back - REPS;
            let slot = dist_slot(dist);
            self.rc.tree(&mut self.dist_slot[len_to_dist_state(len)], 6, slot);
            if slot >= 4 {
                let bits = (slot >> 1) - 1;
                let base = (2 | (slot & 1)) << bits;
                let reduced = dist - base;
                if slot < END_POS_MODEL {
                    self.rc.reverse_tree(&mut self.dist_special, (base - slot) as usize, bits, reduced);
                } else {
                    self.rc.direct(reduced >> ALIGN_BITS, bits - ALIGN_BITS);
                    self.rc.reverse_tree(&mut self.align, 0, ALIGN_BITS, reduced & ALIGN_MASK);
                    self.align_count += 1;
                }
            }
            self.reps = [dist, self.reps[0], self.reps[1], self.reps[2]];
            self.match_count += 1;
        }
    }

    pub(super) fn run(mut self) -> Vec<u8> {
        let d = self.mf.data;
        if d.is_empty() {
            return self.rc.finish();
        }
        // The first byte: always a literal, with no history.
        self.read_matches();
        self.rc.bit(&mut self.is_match[0][0], 0);
        self.state = AFTER_LIT[self.state];
        self.encode_literal(0, d[0], None);
        self.ahead -= 1;
        let mut now = 1u32;
        if self.mf.available() != 0 {
            loop {
                let (len, back) = self.optimum(now);
                let ps = (now & POS_MASK) as usize;
                if len == 1 && back == NO_DIST {
                    let at = self.mf.at - self.ahead as usize;
                    self.rc.bit(&mut self.is_match[self.state][ps], 0);
                    let matched = (!literal_state(self.state)).then(|| d[at - self.reps[0] as usize - 1]);
                    self.encode_literal(d[at - 1], d[at], matched);
                    self.state = AFTER_LIT[self.state];
                } else {
                    self.encode_match(len, back, ps);
                }
                self.ahead -= len;
                now += len;
                if self.ahead == 0 {
                    if self.match_count >= DIST_REFRESH {
                        self.refresh_dist_prices();
                    }
                    if self.align_count >= ALIGN_REFRESH {
                        self.refresh_align_prices();
                    }
                    if self.mf.available() == 0 {
                        break;
                    }
                }
            }
        }
        self.rc.finish()
    }
}
