//! The htree directory hash: ext4's "half MD4" (`DX_HASH_HALF_MD4`), in its signed-char variant
//! (`EXT2_FLAGS_SIGNED_HASH`). The superblock flag records the variant, so every kernel computes the same
//! hashes wherever the filesystem is used; signed is what mke2fs writes on x86, and the only variant some
//! readers (the ext4-view crate) implement.

/// Major and minor hash of a name, as ext4 computes them with `seed` (the superblock's `s_hash_seed`).
#[must_use]
pub fn half_md4(name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    let mut buf =
        if seed.iter().all(|&w| w == 0) { [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476] } else { *seed };
    let mut rest = name;
    loop {
        let input = pack(rest);
        transform(&mut buf, &input);
        if rest.len() <= 32 {
            break;
        }
        rest = &rest[32..];
    }
    let mut major = buf[1] & !1;
    // The largest value is reserved as an end-of-directory marker.
    if major == 0x7fff_ffff << 1 {
        major = (0x7fff_ffff - 1) << 1;
    }
    (major, buf[2])
}

/// Packs up to 32 bytes of `msg` into eight words, big-endian within each word, padded with a pattern built
/// from the length of what remains of the name (as the kernel's `str2hashbuf_unsigned` does).
fn pack(msg: &[u8]) -> [u32; 8] {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut out = [pad; 8];
    let take = msg.len().min(32);
    let mut val = pad;
    let mut word = 0;
    for (i, &b) in msg[..take].iter().enumerate() {
        // Bytes are sign-extended, as `char` is on x86.
        val = (b as i8 as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[word] = val;
            word += 1;
            val = pad;
        }
    }
    if word < 8 && !take.is_multiple_of(4) {
        out[word] = val;
    }
    out
}

fn transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    const K2: u32 = 0x5a82_7999;
    const K3: u32 = 0x6ed9_eba1;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x).rotate_left($s);
        };
    }
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);

    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);

    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from e2fsprogs 1.47: `debugfs -R 'dx_hash -h half_md4 -s <uuid> <name>'` (signed).
    #[test]
    fn matches_e2fsprogs() {
        let seed_bytes =
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        let seed: [u32; 4] =
            std::array::from_fn(|i| u32::from_le_bytes(seed_bytes[4 * i..4 * i + 4].try_into().unwrap()));
        struct Case {
            name: &'static [u8],
            seed: [u32; 4],
            want: (u32, u32),
        }
        let cases = [
            Case { name: b"hello", seed: [0; 4], want: (0x1746_da32, 0x4200_13b5) },
            Case { name: b"hello", seed, want: (0xa26e_4a80, 0x97e5_b7f7) },
            Case { name: b"caf\xe9", seed, want: (0x25f8_3f6a, 0x975a_3862) },
            Case { name: &[b'n'; 40], seed, want: (0xb392_daa0, 0xeaa6_32d6) },
        ];
        for case in cases {
            assert_eq!(half_md4(case.name, &case.seed), case.want, "{:?}", String::from_utf8_lossy(case.name));
        }
    }
}
