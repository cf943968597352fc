use super::*;

/// Deterministic bytes with repeats at many distances (a small LCG mixing literals and copies).
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) as usize
    };
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let r = next();
        if v.len() > 8 && r % 3 != 0 {
            let dist = 1 + next() % v.len().min(if r % 5 == 0 { 70_000 } else { 300 });
            let n = 2 + next() % if r % 7 == 0 { 300 } else { 12 };
            for _ in 0..n {
                v.push(v[v.len() - dist]);
            }
        } else {
            v.push((next() % if r % 2 == 0 { 16 } else { 256 }) as u8);
        }
    }
    v.truncate(len);
    v
}

#[test]
fn round_trips() {
    for (len, seed) in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (100, 6), (5000, 7), (200_000, 8)] {
        let data = sample(len, seed);
        let s = encode(&data);
        assert_eq!(decode(&s, len).unwrap(), data, "{len} bytes");
    }
    let zeros = vec![0u8; 100_000];
    assert_eq!(decode(&encode(&zeros), zeros.len()).unwrap(), zeros);
}

/// Development check against streams of GRUB's own encoder: `KILN_LZMA_ORACLE=DIR` with `NAME.payload` and
/// `NAME.stream` pairs (`cargo test -p kiln-formats --lib matches_oracle -- --ignored`). The suite's own oracle
/// is grub-mkimage, in `formats/tests/all/grub.rs`.
#[test]
#[ignore = "needs KILN_LZMA_ORACLE=DIR with streams of GRUB's encoder"]
fn matches_oracle_streams_in_dir() {
    let dir = std::env::var("KILN_LZMA_ORACLE").expect("KILN_LZMA_ORACLE=DIR of NAME.payload and NAME.stream pairs");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let mut bad = 0;
    for p in names.iter().filter(|p| p.extension().is_some_and(|e| e == "payload")) {
        let data = std::fs::read(p).unwrap();
        let want = std::fs::read(p.with_extension("stream")).unwrap();
        let got = encode(&data);
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        match first {
            None if got.len() == want.len() => eprintln!("{}: identical ({} bytes)", p.display(), got.len()),
            _ => {
                bad += 1;
                eprintln!(
                    "{}: differs at {:?} (ours {} bytes, theirs {})",
                    p.display(),
                    first.unwrap_or(got.len().min(want.len())),
                    got.len(),
                    want.len()
                );
            }
        }
    }
    assert_eq!(bad, 0);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Streams of GRUB's encoder (LZMA SDK 4.58 in GRUB 2.06's settings, `LzmaEncode` as grub-mkimage calls it)
/// for small inputs, byte for byte.
#[test]
fn small_inputs_give_grubs_streams() {
    assert_eq!(hex(&encode(b"abababa")), "0030989f04000000");
    assert_eq!(hex(&encode(b"aaaaa")), "0030e8fc000000");
    assert_eq!(hex(&encode(&[0, 1, 2, 3, 4])), "00000052500a8447da00");
    assert_eq!(hex(&encode(&[])), "0000000000");
}

/// GRUB's encoder's streams for [`sample`]s (matches at all distances up to the dictionary's, long runs),
/// pinned by SHA-256. grub-mkimage's own streams are compared in `formats/tests/all/grub.rs`.
#[test]
fn samples_give_grubs_streams() {
    use sha2::{Digest, Sha256};
    for (len, seed, size, sha) in [
        (5000, 7, 389, "4ffed6beb0d690a7e5c8dc4f9f6884ad19952ecefc12e33ede180c3401466fb7"),
        (200_000, 8, 17_552, "b4c451848e924ded47720d696834fedc01f2ba1cc6cf510e83a1b22f2c54f86a"),
    ] {
        let s = encode(&sample(len, seed));
        assert_eq!(s.len(), size, "sample {seed}");
        assert_eq!(hex(&Sha256::digest(&s)), sha, "sample {seed}");
    }
}

#[test]
fn decode_refuses_bad_streams() {
    let data = sample(5000, 7);
    let s = encode(&data);
    assert!(decode(&s[..s.len() / 2], data.len()).is_err(), "truncated");
    assert!(decode(&[1, 0, 0, 0, 0, 0], 1).is_err(), "first byte not 0");
    // A match before any output: is_match 1 at the first position.
    assert!(decode(&[0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], 4).is_err(), "match into nothing");
}
