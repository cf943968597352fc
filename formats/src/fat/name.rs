//! Short (8.3) names and VFAT long-name entries.
//!
//! A name that is an 8.3 name exactly as given (`BOOTX64.EFI`, `EFI`) is stored as a short entry alone. Every
//! other name (lower or mixed case, long, with spaces or non-ASCII characters) gets long-name entries holding
//! it in UTF-16, and a short name generated as Windows and Linux do: the basis name (upper case, spaces and
//! leading periods dropped, other characters invalid in short names replaced by `_`, 8 + 3 characters) with a
//! numeric tail `~n` where the name was changed beyond case or the basis is taken. Lower-case 8.3 names get
//! long-name entries too (as Linux writes them) rather than the NT case bits, which fewer readers know.

use std::collections::{HashMap, HashSet};

use super::tree::fold;

/// Directory entry size in bytes.
pub(crate) const ENTRY: usize = 32;
/// Attribute of a long-name entry.
pub(crate) const ATTR_LFN: u8 = 0x0F;
/// UTF-16 code units in one long-name entry.
const UNITS_PER_SLOT: usize = 13;
/// Bytes of a short name without its tail's characters beyond 8.
const BASE_LEN: usize = 8;

/// The names of one directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryName {
    /// The 8.3 name, space-padded: 8 bytes of base, 3 of extension.
    pub short: [u8; 11],
    /// The long name in UTF-16, when the name is not its short name.
    pub long: Option<Vec<u16>>,
}

impl EntryName {
    /// Directory entries this name takes (long-name entries and the short entry).
    pub(crate) fn slots(&self) -> usize {
        1 + self.long.as_ref().map_or(0, |l| l.len().div_ceil(UNITS_PER_SLOT))
    }
}

/// Characters allowed in short names besides upper-case letters and digits (bytes above 0x7F are too, in an
/// OEM code page, but this writer never makes them: they would read differently under different code pages).
fn short_char_ok(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&b)
}

fn pad(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base);
    out[8..8 + ext.len()].copy_from_slice(ext);
    out
}

/// The short name, if `name` is an 8.3 name exactly as given.
pub(crate) fn exact_short(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    let ok = (1..=BASE_LEN).contains(&base.len())
        && ext.len() <= 3
        && (ext.is_empty() != name.contains('.'))
        && base.bytes().chain(ext.bytes()).all(short_char_ok);
    ok.then(|| pad(base.as_bytes(), ext.as_bytes()))
}

/// The basis name (base of at most 8 bytes, extension of at most 3) and whether characters were replaced.
fn basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let mut lossy = false;
    let mut conv = Vec::with_capacity(name.len());
    for c in fold(name).chars() {
        match c {
            ' ' => {}
            '.' => conv.push(b'.'),
            c if c.is_ascii() && short_char_ok(c as u8) => conv.push(c as u8),
            _ => {
                conv.push(b'_');
                lossy = true;
            }
        }
    }
    let start = conv.iter().position(|&b| b != b'.').unwrap_or(conv.len());
    let conv = &conv[start..];
    let base: Vec<u8> = conv.iter().copied().take_while(|&b| b != b'.').take(BASE_LEN).collect();
    let ext: Vec<u8> = match conv.iter().rposition(|&b| b == b'.') {
        Some(dot) => conv[dot + 1..].iter().copied().take(3).collect(),
        None => Vec::new(),
    };
    (base, ext, lossy)
}

/// Names for the entries of one directory, in the order given. Names that are exact short names keep them;
/// the others get generated short names unique in the directory, assigned in the order given.
pub(crate) fn assign(names: &[&str]) -> Vec<EntryName> {
    let exact: Vec<Option<[u8; 11]>> = names.iter().map(|n| exact_short(n)).collect();
    let mut used: HashSet<[u8; 11]> = exact.iter().flatten().copied().collect();
    // Next tail to try per basis, so a directory of many similar names stays linear.
    let mut next_tail: HashMap<(Vec<u8>, Vec<u8>), u32> = HashMap::new();
    names
        .iter()
        .zip(exact)
        .map(|(name, exact)| {
            if let Some(short) = exact {
                return EntryName { short, long: None };
            }
            let long = Some(name.encode_utf16().collect());
            let (base, ext, lossy) = basis(name);
            let plain = pad(&base, &ext);
            if !lossy && exact_short(&fold(name)) == Some(plain) && used.insert(plain) {
                return EntryName { short: plain, long };
            }
            let n = next_tail.entry((base.clone(), ext.clone())).or_insert(1);
            loop {
                let tail = format!("~{n}");
                *n += 1;
                let keep = base.len().min(BASE_LEN - tail.len());
                let mut b = base[..keep].to_vec();
                b.extend_from_slice(tail.as_bytes());
                let short = pad(&b, &ext);
                if used.insert(short) {
                    return EntryName { short, long };
                }
            }
        })
        .collect()
}

/// The checksum of a short name that its long-name entries carry.
pub(crate) fn checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// The long-name entries for `long`, in on-disk order (last part first, flagged 0x40), for a short entry
/// with checksum `sum`.
pub(crate) fn lfn_entries(long: &[u16], sum: u8) -> Vec<[u8; ENTRY]> {
    let count = long.len().div_ceil(UNITS_PER_SLOT);
    (0..count)
        .rev()
        .map(|i| {
            let mut units = [0xFFFFu16; UNITS_PER_SLOT];
            let part = &long[i * UNITS_PER_SLOT..long.len().min((i + 1) * UNITS_PER_SLOT)];
            units[..part.len()].copy_from_slice(part);
            if part.len() < UNITS_PER_SLOT {
                units[part.len()] = 0; // the terminator, then 0xFFFF padding
            }
            let mut e = [0u8; ENTRY];
            e[0] = (i + 1) as u8 | if i + 1 == count { 0x40 } else { 0 };
            e[11] = ATTR_LFN;
            e[13] = sum;
            let offsets = (1..11).step_by(2).chain((14..26).step_by(2)).chain((28..32).step_by(2));
            for (off, u) in offsets.zip(units) {
                e[off..off + 2].copy_from_slice(&u.to_le_bytes());
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(s: &[u8; 11]) -> String {
        String::from_utf8_lossy(s).into_owned()
    }

    #[test]
    fn short_names() {
        struct Case {
            name: &'static str,
            short: &'static str,
            long: bool,
        }
        let cases = [
            Case { name: "BOOTX64.EFI", short: "BOOTX64 EFI", long: false },
            Case { name: "EFI", short: "EFI        ", long: false },
            Case { name: "A.B", short: "A       B  ", long: false },
            Case { name: "loader", short: "LOADER     ", long: true },
            Case { name: "loader.conf", short: "LOADER~1CON", long: true },
            Case { name: "Boot", short: "BOOT       ", long: true },
            Case { name: "systemd-bootx64.efi", short: "SYSTEM~1EFI", long: true },
            Case { name: "nixos-generation-1.conf", short: "NIXOS-~1CON", long: true },
            Case { name: "Ünïcødé.txt", short: "_N_C_D~1TXT", long: true },
            Case { name: "with space.txt", short: "WITHSP~1TXT", long: true },
            Case { name: ".hidden", short: "HIDDEN~1   ", long: true },
            Case { name: "a+b.c", short: "A_B~1   C  ", long: true },
            Case { name: "x.tar.gz", short: "X~1     GZ ", long: true },
            Case { name: "ABCDEFGHI", short: "ABCDEF~1   ", long: true },
        ];
        for case in cases {
            let got = &assign(&[case.name])[0];
            assert_eq!(short(&got.short), case.short, "{}", case.name);
            assert_eq!(got.long.is_some(), case.long, "{}", case.name);
            if let Some(long) = &got.long {
                assert_eq!(String::from_utf16(long).unwrap(), case.name);
            }
        }
    }

    #[test]
    fn generated_names_are_unique_and_avoid_exact_ones() {
        let mut names: Vec<String> = (0..300).map(|i| format!("entry-number-{i:03}.conf")).collect();
        names.push("ENTRY-~1.CON".to_owned());
        names.push("loader".to_owned());
        names.push("LOADER".to_owned()); // not a valid tree (same name ignoring case), but names stay unique
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = assign(&refs);
        let set: HashSet<[u8; 11]> = got.iter().map(|n| n.short).collect();
        assert_eq!(set.len(), got.len());
        assert_eq!(short(&got[0].short), "ENTRY-~2CON"); // ~1 is taken by the exact name
        assert_eq!(short(&got[8].short), "ENTRY~10CON");
        assert_eq!(short(&got[98].short), "ENTR~100CON");
        assert_eq!(short(&got[300].short), "ENTRY-~1CON");
        assert_eq!(short(&got[301].short), "LOADER~1   ");
        assert_eq!(short(&got[302].short), "LOADER     ");
    }

    #[test]
    fn checksum_matches_the_specification() {
        // The specification's algorithm, written out.
        let name = *b"SYSTEM~1EFI";
        let mut sum: u8 = 0;
        for b in name {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 }).wrapping_add(sum >> 1).wrapping_add(b);
        }
        assert_eq!(checksum(&name), sum);
    }

    #[test]
    fn long_name_entries() {
        let long: Vec<u16> = "systemd-bootx64.efi".encode_utf16().collect(); // 19 units: two entries
        let e = lfn_entries(&long, 0xAB);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0][0], 0x42);
        assert_eq!(e[1][0], 0x01);
        assert!(e.iter().all(|e| e[11] == ATTR_LFN && e[12] == 0 && e[13] == 0xAB && e[26..28] == [0, 0]));
        // Second part: "64.efi" (6 units), terminator, 0xFFFF × 6.
        let units: Vec<u16> = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2))
            .map(|o| u16::from_le_bytes([e[0][o], e[0][o + 1]]))
            .collect();
        let mut want: Vec<u16> = "64.efi".encode_utf16().collect();
        want.push(0);
        want.resize(13, 0xFFFF);
        assert_eq!(units, want);
        // Exactly 13 units: one entry, no terminator.
        let e = lfn_entries(&[u16::from(b'a'); 13], 0);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0][0], 0x41);
        assert_eq!(&e[0][30..32], &[b'a', 0]);
    }
}
