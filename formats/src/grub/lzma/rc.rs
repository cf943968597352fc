//! The range coder both ways, and the bit-price table the encoder's parser works with.

/// Probabilities are 11-bit fractions of this.
pub(super) const PROB_ONE: u32 = 1 << 11;
/// Every probability starts at one half.
pub(super) const PROB_HALF: u16 = 1 << 10;
/// How far a probability moves towards the coded bit: 1/32 of the gap.
const ADAPT_SHIFT: u32 = 5;
/// The range is renormalised (a byte shifted out) when it drops under this.
const RENORM_BELOW: u32 = 1 << 24;

/// Moves `prob` after coding `bit` with it.
fn adapt(prob: &mut u16, bit: u32) {
    let p = u32::from(*prob);
    let q = if bit == 0 { p + ((PROB_ONE - p) >> ADAPT_SHIFT) } else { p - (p >> ADAPT_SHIFT) };
    *prob = u16::try_from(q).expect("an 11-bit probability");
}

/// The encoding half: `low` is 33 bits wide (the carry is bit 32); bytes that may still take a carry wait as
/// `held` and a count of 0xFF bytes after it.
pub(super) struct RangeEncoder {
    low: u64,
    range: u32,
    held: u8,
    held_count: u64,
    out: Vec<u8>,
}

impl RangeEncoder {
    pub(super) fn new(capacity: usize) -> Self {
        Self { low: 0, range: u32::MAX, held: 0, held_count: 1, out: Vec::with_capacity(capacity) }
    }

    fn shift_low(&mut self) {
        let low32 = (self.low & 0xFFFF_FFFF) as u32;
        let carry = (self.low >> 32) as u8;
        if low32 < 0xFF00_0000 || carry != 0 {
            // The held byte takes the carry, and so do the 0xFF bytes after it (turning into 0x00).
            self.out.push(self.held.wrapping_add(carry));
            for _ in 1..self.held_count {
                self.out.push(0xFFu8.wrapping_add(carry));
            }
            self.held_count = 0;
            self.held = (low32 >> 24) as u8;
        }
        self.held_count += 1;
        self.low = u64::from((low32 & 0x00FF_FFFF) << 8);
    }

    fn renormalise(&mut self) {
        if self.range < RENORM_BELOW {
            self.range <<= 8;
            self.shift_low();
        }
    }

    pub(super) fn bit(&mut self, prob: &mut u16, bit: u32) {
        let bound = (self.range >> 11) * u32::from(*prob);
        if bit == 0 {
            self.range = bound;
        } else {
            self.low += u64::from(bound);
            self.range -= bound;
        }
        adapt(prob, bit);
        self.renormalise();
    }

    /// `count` low bits of `value`, high bit first, each with probability one half.
    pub(super) fn direct(&mut self, value: u32, count: u32) {
        for i in (0..count).rev() {
            self.range >>= 1;
            if (value >> i) & 1 == 1 {
                self.low += u64::from(self.range);
            }
            self.renormalise();
        }
    }

    /// A `bits`-bit symbol through the binary tree `probs[1..1 << bits]`, high bit first.
    pub(super) fn tree(&mut self, probs: &mut [u16], bits: u32, symbol: u32) {
        let mut node = 1usize;
        for i in (0..bits).rev() {
            let b = (symbol >> i) & 1;
            self.bit(&mut probs[node], b);
            node = (node << 1) | b as usize;
        }
    }

    /// A `bits`-bit symbol through the tree at `probs[base + 1..]`, low bit first.
    pub(super) fn reverse_tree(&mut self, probs: &mut [u16], base: usize, bits: u32, symbol: u32) {
        let mut node = 1usize;
        for i in 0..bits {
            let b = (symbol >> i) & 1;
            self.bit(&mut probs[base + node], b);
            node = (node << 1) | b as usize;
        }
    }

    /// Pushes out the last of `low`: the stream ends after these five bytes (no end marker).
    pub(super) fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

/// The decoding half, over a stream that must hold every byte the decoder asks for.
pub(super) struct RangeDecoder<'a> {
    input: &'a [u8],
    at: usize,
    range: u32,
    code: u32,
}

/// A stream that ended early or does not start as a range coder's does.
#[derive(Debug)]
pub(super) struct Truncated;

impl<'a> RangeDecoder<'a> {
    pub(super) fn new(input: &'a [u8]) -> Result<Self, Truncated> {
        // The first byte is always 0 (the encoder's held byte before any carry could reach it).
        if input.len() < 5 || input[0] != 0 {
            return Err(Truncated);
        }
        let code = u32::from_be_bytes(input[1..5].try_into().expect("4 bytes"));
        Ok(Self { input, at: 5, range: u32::MAX, code })
    }

    fn renormalise(&mut self) -> Result<(), Truncated> {
        if self.range < RENORM_BELOW {
            let byte = *self.input.get(self.at).ok_or(Truncated)?;
            self.at += 1;
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(byte);
        }
        Ok(())
    }

    pub(super) fn bit(&mut self, prob: &mut u16) -> Result<u32, Truncated> {
        let bound = (self.range >> 11) * u32::from(*prob);
        let b = if self.code < bound {
            self.range = bound;
            0
        } else {
            self.code -= bound;
            self.range -= bound;
            1
        };
        adapt(prob, b);
        self.renormalise()?;
        Ok(b)
    }

    pub(super) fn direct(&mut self, count: u32) -> Result<u32, Truncated> {
        let mut v = 0;
        for _ in 0..count {
            self.range >>= 1;
            let b = u32::from(self.code >= self.range);
            if b == 1 {
                self.code -= self.range;
            }
            v = (v << 1) | b;
            self.renormalise()?;
        }
        Ok(v)
    }

    pub(super) fn tree(&mut self, probs: &mut [u16], bits: u32) -> Result<u32, Truncated> {
        let mut node = 1usize;
        for _ in 0..bits {
            node = (node << 1) | self.bit(&mut probs[node])? as usize;
        }
        Ok((node - (1 << bits)) as u32)
    }

    pub(super) fn reverse_tree(&mut self, probs: &mut [u16], base: usize, bits: u32) -> Result<u32, Truncated> {
        let (mut node, mut v) = (1usize, 0u32);
        for i in 0..bits {
            let b = self.bit(&mut probs[base + node])?;
            node = (node << 1) | b as usize;
            v |= b << i;
        }
        Ok(v)
    }
}

/// Prices of coding a bit, in 1/16 bit, looked up by the probability to 7 bits (one entry per 16 values, each
/// computed at the middle of its span), as the 4.58 encoder tabulates them: -log2(p) to 4 fraction bits by
/// squaring the 16-bit value four times and counting the halvings.
pub(super) struct Prices([u32; 128]);

impl Prices {
    pub(super) fn new() -> Self {
        let mut t = [0u32; 128];
        for (k, slot) in t.iter_mut().enumerate() {
            let mut w = (k as u32) * 16 + 8;
            let mut halvings = 0u32;
            for _ in 0..4 {
                w *= w;
                halvings <<= 1;
                while w >= 1 << 16 {
                    w >>= 1;
                    halvings += 1;
                }
            }
            *slot = (11 << 4) - 15 - halvings;
        }
        Self(t)
    }

    /// Price of coding `bit` with probability (of a 0) `prob`.
    pub(super) fn bit(&self, prob: u16, bit: u32) -> u32 {
        let p = u32::from(prob);
        let p = if bit == 0 { p } else { p ^ (PROB_ONE - 1) };
        self.0[(p >> 4) as usize]
    }

    pub(super) fn zero(&self, prob: u16) -> u32 {
        self.bit(prob, 0)
    }

    pub(super) fn one(&self, prob: u16) -> u32 {
        self.bit(prob, 1)
    }

    pub(super) fn tree(&self, probs: &[u16], bits: u32, symbol: u32) -> u32 {
        let mut s = symbol | (1 << bits);
        let mut price = 0;
        while s != 1 {
            price += self.bit(probs[(s >> 1) as usize], s & 1);
            s >>= 1;
        }
        price
    }

    pub(super) fn reverse_tree(&self, probs: &[u16], base: usize, bits: u32, symbol: u32) -> u32 {
        let (mut node, mut s, mut price) = (1usize, symbol, 0);
        for _ in 0..bits {
            let b = s & 1;
            s >>= 1;
            price += self.bit(probs[base + node], b);
            node = (node << 1) | b as usize;
        }
        price
    }
}
