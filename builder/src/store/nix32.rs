//! Nix's base-32 encoding ("nix32"): its own alphabet, and digits taken from the *last* byte first.
//! Used in store path hashes (20 bytes → 32 chars) and `sha256:` NAR hashes (32 bytes → 52 chars).

use std::fmt;

/// The 32 characters Nix uses: digits and lowercase letters without `e o u t`.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Reverse lookup: byte → digit value, or 0xff for bytes outside the alphabet.
const DIGITS: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Whether `b` is one of the 32 characters of the nix32 alphabet.
#[must_use]
pub fn is_digit(b: u8) -> bool {
    DIGITS[b as usize] != 0xff
}

/// Number of nix32 characters that encode `len` bytes.
#[must_use]
pub const fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// Encodes bytes as nix32.
#[must_use]
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let lo = u16::from(bytes[i]) >> j;
        let hi = bytes.get(i + 1).map_or(0, |&b| u16::from(b) << (8 - j));
        out.push(ALPHABET[usize::from((lo | hi) & 0x1f)] as char);
    }
    out
}

/// Why a nix32 string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The string has the wrong number of characters for the expected byte length.
    Length {
        /// Characters expected.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A character outside the nix32 alphabet, at this character index.
    Char {
        /// Index of the offending character.
        index: usize,
        /// The character.
        ch: char,
    },
    /// The value does not fit in the byte length (high bits set in the first digit).
    Overflow,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { expected, found } => {
                write!(f, "expected {expected} nix32 characters, found {found}")
            }
            Self::Char { index, ch } => {
                write!(f, "character {ch:?} at index {index} is not in the nix32 alphabet")
            }
            Self::Overflow => f.write_str("nix32 value too large for its length"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a nix32 string into exactly `N` bytes.
pub fn decode<const N: usize>(s: &str) -> Result<[u8; N], DecodeError> {
    let expected = encoded_len(N);
    if s.len() != expected {
        return Err(DecodeError::Length { expected, found: s.chars().count() });
    }
    let mut out = [0u8; N];
    for (index, b) in s.bytes().enumerate() {
        let digit = DIGITS[b as usize];
        if digit == 0xff {
            let ch = s[index..].chars().next().unwrap_or('?');
            return Err(DecodeError::Char { index, ch });
        }
        let n = expected - 1 - index;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let wide = u16::from(digit) << j;
        out[i] |= (wide & 0xff) as u8;
        let carry = (wide >> 8) as u8;
        if i + 1 < N {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(DecodeError::Overflow);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        hex: &'static str,
        nix32: &'static str,
    }

    // Values from `nix-hash --type sha256 --to-base32 <hex>` (Nix 2.8).
    const CASES: &[Case] = &[
        Case {
            name: "sha256 of the empty string",
            hex: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            nix32: "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        },
        Case {
            name: "sha256 of \"hello\\n\"",
            hex: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            nix32: "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
        },
    ];

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn known_values() {
        for case in CASES {
            let bytes = unhex(case.hex);
            assert_eq!(encode(&bytes), case.nix32, "{}", case.name);
            let back: [u8; 32] = decode(case.nix32).unwrap();
            assert_eq!(back.as_slice(), bytes.as_slice(), "{}", case.name);
        }
    }

    #[test]
    fn round_trips_every_length_pattern() {
        let mut bytes = [0u8; 20];
        for seed in 0..200u32 {
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (seed.wrapping_mul(2_654_435_761).rotate_left(i as u32) >> 7) as u8;
            }
            let s = encode(&bytes);
            assert_eq!(s.len(), 32);
            assert_eq!(decode::<20>(&s).unwrap(), bytes);
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode::<20>("abc"), Err(DecodeError::Length { expected: 32, found: 3 }));
        let with_e = "e".repeat(32);
        assert_eq!(decode::<20>(&with_e), Err(DecodeError::Char { index: 0, ch: 'e' }));
        // 52 chars for 32 bytes: the first digit may carry at most 1 bit (52*5 = 260 = 256 + 4).
        let too_big = format!("z{}", "0".repeat(51));
        assert_eq!(decode::<32>(&too_big), Err(DecodeError::Overflow));
    }
}
