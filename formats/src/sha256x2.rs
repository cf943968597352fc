//! SHA-256 of two messages of the same length at once.
//!
//! With the x86 SHA extensions, one SHA-256 stream is bound by the latency of `sha256rnds2` (each pair of
//! rounds waits for the one before), not by how many the core can start: two independent streams interleaved
//! instruction by instruction run in about the time of one. dm-verity hashes every 4 KiB block on its own
//! (`sha256(salt ‖ block)`), so its blocks pair up naturally; on a core with SHA-NI this hashes them about 1.5×
//! faster than one at a time (the Linux kernel's dm-verity does the same). Elsewhere each lane is hashed by the
//! `sha2` crate. The rounds follow FIPS 180-4; the instruction sequence is Intel's documented use of the
//! extensions (state as ABEF/CDGH, `sha256msg1`/`sha256msg2` for the message schedule).

use sha2::{Digest, Sha256};

/// Hashes two messages of equal length side by side: feed both with [`Pair::update`] in pieces of equal
/// length, then [`Pair::finalize`].
#[derive(Debug, Clone)]
pub struct Pair {
    lanes: Lanes,
}

#[derive(Debug, Clone)]
enum Lanes {
    /// Each lane by `sha2`.
    Portable(Box<[Sha256; 2]>),
    /// Interleaved with the SHA extensions.
    #[cfg(target_arch = "x86_64")]
    Interleaved(Box<ni::State>),
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Pair {
    /// Two empty messages.
    #[must_use]
    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        if ni::available() {
            return Self { lanes: Lanes::Interleaved(Box::default()) };
        }
        Self::portable()
    }

    /// Two empty messages, hashed without the SHA extensions (for comparison in tests).
    #[must_use]
    pub fn portable() -> Self {
        Self { lanes: Lanes::Portable(Box::new([Sha256::new(), Sha256::new()])) }
    }

    /// Appends `a` to the first message and `b` to the second.
    ///
    /// # Panics
    /// If `a` and `b` differ in length.
    pub fn update(&mut self, a: &[u8], b: &[u8]) {
        assert_eq!(a.len(), b.len(), "both messages grow by the same length");
        match &mut self.lanes {
            Lanes::Portable(h) => {
                h[0].update(a);
                h[1].update(b);
            }
            #[cfg(target_arch = "x86_64")]
            Lanes::Interleaved(s) => s.update(a, b),
        }
    }

    /// The two digests.
    #[must_use]
    pub fn finalize(self) -> [[u8; 32]; 2] {
        match self.lanes {
            Lanes::Portable(h) => {
                let [a, b] = *h;
                [a.finalize().into(), b.finalize().into()]
            }
            #[cfg(target_arch = "x86_64")]
            Lanes::Interleaved(s) => s.finalize(),
        }
    }
}

/// `sha256(prefix ‖ a)` and `sha256(prefix ‖ b)`.
///
/// # Panics
/// If `a` and `b` differ in length.
#[must_use]
pub fn prefixed(prefix: &[u8], a: &[u8], b: &[u8]) -> [[u8; 32]; 2] {
    let mut p = Pair::new();
    p.update(prefix, prefix);
    p.update(a, b);
    p.finalize()
}

#[cfg(target_arch = "x86_64")]
mod ni {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_extract_epi32, _mm_set_epi32, _mm_sha256msg1_epu32,
        _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32,
    };

    /// Round constants (FIPS 180-4, 4.2.2).
    const K: [u32; 64] = [
        0x428a_2f98,
        0x7137_4491,
        0xb5c0_fbcf,
        0xe9b5_dba5,
        0x3956_c25b,
        0x59f1_11f1,
        0x923f_82a4,
        0xab1c_5ed5,
        0xd807_aa98,
        0x1283_5b01,
        0x2431_85be,
        0x550c_7dc3,
        0x72be_5d74,
        0x80de_b1fe,
        0x9bdc_06a7,
        0xc19b_f174,
        0xe49b_69c1,
        0xefbe_4786,
        0x0fc1_9dc6,
        0x240c_a1cc,
        0x2de9_2c6f,
        0x4a74_84aa,
        0x5cb0_a9dc,
        0x76f9_88da,
        0x983e_5152,
        0xa831_c66d,
        0xb003_27c8,
        0xbf59_7fc7,
        0xc6e0_0bf3,
        0xd5a7_9147,
        0x06ca_6351,
        0x1429_2967,
        0x27b7_0a85,
        0x2e1b_2138,
        0x4d2c_6dfc,
        0x5338_0d13,
        0x650a_7354,
        0x766a_0abb,
        0x81c2_c92e,
        0x9272_2c85,
        0xa2bf_e8a1,
        0xa81a_664b,
        0xc24b_8b70,
        0xc76c_51a3,
        0xd192_e819,
        0xd699_0624,
        0xf40e_3585,
        0x106a_a070,
        0x19a4_c116,
        0x1e37_6c08,
        0x2748_774c,
        0x34b0_bcb5,
        0x391c_0cb3,
        0x4ed8_aa4a,
        0x5b9c_ca4f,
        0x682e_6ff3,
        0x748f_82ee,
        0x78a5_636f,
        0x84c8_7814,
        0x8cc7_0208,
        0x90be_fffa,
        0xa450_6ceb,
        0xbef9_a3f7,
        0xc671_78f2,
    ];
    /// Initial hash value (FIPS 180-4, 5.3.3).
    const H0: [u32; 8] =
        [0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19];

    /// Whether this CPU has what [`compress`] uses.
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }

    /// Both lanes' hash values (a..h), the block being filled, and the length so far (the same for both).
    #[derive(Debug, Clone)]
    pub(super) struct State {
        h: [[u32; 8]; 2],
        buf: [[u8; 64]; 2],
        fill: usize,
        len: u64,
    }

    impl Default for State {
        fn default() -> Self {
            Self { h: [H0; 2], buf: [[0; 64]; 2], fill: 0, len: 0 }
        }
    }

    impl State {
        pub(super) fn update(&mut self, mut a: &[u8], mut b: &[u8]) {
            self.len += a.len() as u64;
            if self.fill > 0 {
                let take = (64 - self.fill).min(a.len());
                self.buf[0][self.fill..self.fill + take].copy_from_slice(&a[..take]);
                self.buf[1][self.fill..self.fill + take].copy_from_slice(&b[..take]);
                self.fill += take;
                (a, b) = (&a[take..], &b[take..]);
                if self.fill < 64 {
                    return;
                }
                let [x, y] = self.buf;
                self.blocks(&x, &y);
                self.fill = 0;
            }
            let whole = a.len() / 64 * 64;
            if whole > 0 {
                self.blocks(&a[..whole], &b[..whole]);
            }
            let rest = a.len() - whole;
            self.buf[0][..rest].copy_from_slice(&a[whole..]);
            self.buf[1][..rest].copy_from_slice(&b[whole..]);
            self.fill = rest;
        }

        pub(super) fn finalize(mut self) -> [[u8; 32]; 2] {
            // FIPS 180-4, 5.1.1: 0x80, zeros to 56 mod 64, the length in bits big-endian.
            let bits = self.len * 8;
            let mut tail = [[0u8; 128]; 2];
            let n = if self.fill < 56 { 64 } else { 128 };
            for (t, b) in tail.iter_mut().zip(&self.buf) {
                t[..self.fill].copy_from_slice(&b[..self.fill]);
                t[self.fill] = 0x80;
                t[n - 8..n].copy_from_slice(&bits.to_be_bytes());
            }
            self.blocks(&tail[0][..n], &tail[1][..n]);
            self.h.map(|h| {
                let mut out = [0u8; 32];
                for (o, w) in out.chunks_exact_mut(4).zip(h) {
                    o.copy_from_slice(&w.to_be_bytes());
                }
                out
            })
        }

        fn blocks(&mut self, a: &[u8], b: &[u8]) {
            debug_assert!(a.len() == b.len() && a.len().is_multiple_of(64));
            #[allow(unsafe_code)]
            // SAFETY: a `State` is only made after `available()` found every feature `compress` is compiled for.
            unsafe {
                compress(&mut self.h, a, b);
            }
        }
    }

    /// A block's 16 words, big-endian, as four vectors of four (word 0 in lane 0).
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn words(block: &[u8]) -> [__m128i; 4] {
        let w = |i: usize| u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().expect("4 bytes")).cast_signed();
        [0, 1, 2, 3].map(|j| _mm_set_epi32(w(4 * j + 3), w(4 * j + 2), w(4 * j + 1), w(4 * j)))
    }

    /// Runs the compression function over the whole blocks of `a` and `b`, one lane each, interleaved.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn compress(h: &mut [[u32; 8]; 2], a: &[u8], b: &[u8]) {
        // The extensions keep the state as two vectors: ABEF and CDGH (A in the top lane).
        let pack = |h: &[u32; 8]| {
            let i = |x: u32| x.cast_signed();
            (_mm_set_epi32(i(h[0]), i(h[1]), i(h[4]), i(h[5])), _mm_set_epi32(i(h[2]), i(h[3]), i(h[6]), i(h[7])))
        };
        let (mut a0, mut a1) = pack(&h[0]);
        let (mut b0, mut b1) = pack(&h[1]);
        for (x, y) in a.chunks_exact(64).zip(b.chunks_exact(64)) {
            let [mut x0, mut x1, mut x2, mut x3] = words(x);
            let [mut y0, mut y1, mut y2, mut y3] = words(y);
            let saved = (a0, a1, b0, b1);
            // Four rounds of both lanes with the message words in `$w0` (holding W[4r..4r+4]); then, while
            // rounds remain for them, the words 16 further on take their place (W[i] from W[i-16], W[i-15],
            // W[i-7] and W[i-2]: msg1 over $w0/$w1, the words from $w2/$w3 shifted in, msg2 with $w3).
            macro_rules! rounds {
                ($r:expr, $x0:ident, $x1:ident, $x2:ident, $x3:ident, $y0:ident, $y1:ident, $y2:ident, $y3:ident) => {{
                    let k = {
                        let k = |i: usize| K[$r * 4 + i].cast_signed();
                        _mm_set_epi32(k(3), k(2), k(1), k(0))
                    };
                    let mut kx = _mm_add_epi32($x0, k);
                    let mut ky = _mm_add_epi32($y0, k);
                    a1 = _mm_sha256rnds2_epu32(a1, a0, kx);
                    b1 = _mm_sha256rnds2_epu32(b1, b0, ky);
                    kx = _mm_shuffle_epi32(kx, 0x0e);
                    ky = _mm_shuffle_epi32(ky, 0x0e);
                    a0 = _mm_sha256rnds2_epu32(a0, a1, kx);
                    b0 = _mm_sha256rnds2_epu32(b0, b1, ky);
                    if $r < 12 {
                        let tx = _mm_alignr_epi8($x3, $x2, 4);
                        let ty = _mm_alignr_epi8($y3, $y2, 4);
                        $x0 = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32($x0, $x1), tx), $x3);
                        $y0 = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32($y0, $y1), ty), $y3);
                    }
                }};
            }
            for g in 0..4 {
                rounds!(g * 4, x0, x1, x2, x3, y0, y1, y2, y3);
                rounds!(g * 4 + 1, x1, x2, x3, x0, y1, y2, y3, y0);
                rounds!(g * 4 + 2, x2, x3, x0, x1, y2, y3, y0, y1);
                rounds!(g * 4 + 3, x3, x0, x1, x2, y3, y0, y1, y2);
            }
            a0 = _mm_add_epi32(a0, saved.0);
            a1 = _mm_add_epi32(a1, saved.1);
            b0 = _mm_add_epi32(b0, saved.2);
            b1 = _mm_add_epi32(b1, saved.3);
        }
        let unpack = |abef: __m128i, cdgh: __m128i| {
            let x = [
                _mm_extract_epi32(abef, 0),
                _mm_extract_epi32(abef, 1),
                _mm_extract_epi32(abef, 2),
                _mm_extract_epi32(abef, 3),
            ]
            .map(i32::cast_unsigned);
            let y = [
                _mm_extract_epi32(cdgh, 0),
                _mm_extract_epi32(cdgh, 1),
                _mm_extract_epi32(cdgh, 2),
                _mm_extract_epi32(cdgh, 3),
            ]
            .map(i32::cast_unsigned);
            // Lanes low to high: F E B A and H G D C.
            [x[3], x[2], y[3], y[2], x[1], x[0], y[1], y[0]]
        };
        h[0] = unpack(a0, a1);
        h[1] = unpack(b0, b1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(m: &[u8]) -> [u8; 32] {
        Sha256::digest(m).into()
    }

    /// Every length around the padding boundaries, both implementations, against `sha2`.
    #[test]
    fn digests_match_sha2_at_every_padding_boundary() {
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in 0..=200 {
            let (a, b) = (&data[..len], &data[100..100 + len]);
            for mut p in [Pair::new(), Pair::portable()] {
                p.update(a, b);
                assert_eq!(p.finalize(), [one(a), one(b)], "length {len}");
            }
        }
    }

    #[test]
    fn salted_blocks_hash_as_veritysetup_does() {
        let salt = [0x5a; 32];
        let a = vec![1u8; 4096];
        let b: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let joined = |x: &[u8]| [&salt[..], x].concat();
        assert_eq!(prefixed(&salt, &a, &b), [one(&joined(&a)), one(&joined(&b))]);
    }

    proptest! {
        /// Fed in any pieces, the digests are those of the whole messages.
        #[test]
        fn pieces_of_any_size(
            a in proptest::collection::vec(any::<u8>(), 0..2000),
            seed in any::<u64>(),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let b: Vec<u8> = a.iter().enumerate().map(|(i, x)| x ^ (seed >> (i % 57)) as u8).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(a.len())).collect();
            cuts.push(0);
            cuts.push(a.len());
            cuts.sort_unstable();
            let mut p = Pair::new();
            for w in cuts.windows(2) {
                p.update(&a[w[0]..w[1]], &b[w[0]..w[1]]);
            }
            prop_assert_eq!(p.finalize(), [one(&a), one(&b)]);
        }
    }
}
