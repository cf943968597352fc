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
/// `NAME.stream` pairs.
#[test]
fn matches_oracle_streams_in_dir() {
    let Ok(dir) = std::env::var("KILN_LZMA_ORACLE") else { return };
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
