//! The header of a sparse tar member in GNU tar's old format, as `tar --format=oldgnu -S` writes it.
//!
//! A 512-byte header of type `S` holds up to 4 sparse map entries (offset, length of a data region), the real
//! file size, and an "is extended" flag; each following extension header holds 21 more entries and its own
//! flag. The member's data is the regions' bytes back to back, padded to 512 bytes. Like GNU tar, the map ends
//! with an entry reaching the real size: a zero-length one at the end of the file when the file ends in a hole.
//! Numbers are octal, NUL-terminated, or base-256 (first byte 0x80, big-endian) when too large for octal.

use std::io;
use std::ops::Range;

/// Size of a tar block.
pub(super) const BLOCK: u64 = 512;

/// Size of a tar record: GNU tar pads archives to whole records of 20 blocks.
pub(super) const RECORD: u64 = 20 * BLOCK;

/// Sparse map entries in the main header.
const MAIN_ENTRIES: usize = 4;
/// Sparse map entries in an extension header.
const EXT_ENTRIES: usize = 21;

/// The headers (main and extension, a multiple of 512 bytes) of a sparse regular file `name` of `size` bytes,
/// mode 0644, owned by root (uid and gid 0), modified at `mtime`, whose data is `regions` (sorted, disjoint,
/// non-empty, within `size`).
///
/// # Errors
/// If `name` does not fit the header.
pub(super) fn sparse_header(name: &str, size: u64, regions: &[Range<u64>], mtime: u64) -> io::Result<Vec<u8>> {
    if name.is_empty() || name.len() > 100 || name.contains('\0') {
        return Err(io::Error::other(format!("tar member name {name:?} must be 1 to 100 bytes without NUL")));
    }
    let mut map: Vec<(u64, u64)> = regions.iter().map(|r| (r.start, r.end - r.start)).collect();
    if regions.last().is_none_or(|r| r.end < size) {
        map.push((size, 0));
    }
    let stored: u64 = regions.iter().map(|r| r.end - r.start).sum();

    let mut h = [0u8; BLOCK as usize];
    h[..name.len()].copy_from_slice(name.as_bytes());
    number(&mut h[100..108], 0o644);
    number(&mut h[108..116], 0);
    number(&mut h[116..124], 0);
    number(&mut h[124..136], stored);
    number(&mut h[136..148], mtime);
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    let (first, mut rest) = map.split_at(map.len().min(MAIN_ENTRIES));
    entries(&mut h[386..482], first);
    h[482] = u8::from(!rest.is_empty());
    number(&mut h[483..495], size);
    checksum(&mut h);

    let mut out = h.to_vec();
    while !rest.is_empty() {
        let (these, more) = rest.split_at(rest.len().min(EXT_ENTRIES));
        let mut ext = [0u8; BLOCK as usize];
        entries(&mut ext[..504], these);
        ext[504] = u8::from(!more.is_empty());
        out.extend_from_slice(&ext);
        rest = more;
    }
    Ok(out)
}

/// Writes sparse map entries (12-byte offset, 12-byte length) from the start of `area`.
fn entries(area: &mut [u8], map: &[(u64, u64)]) {
    for (slot, &(offset, len)) in area.chunks_exact_mut(24).zip(map) {
        number(&mut slot[..12], offset);
        number(&mut slot[12..], len);
    }
}

/// Writes `v` into a numeric header field: zero-padded octal and a NUL when it fits, else base-256.
fn number(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    if digits * 3 >= 64 || v >> (digits * 3) == 0 {
        let s = format!("{v:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let be = v.to_be_bytes();
        let n = field.len();
        field[n - be.len()..].copy_from_slice(&be);
        field[0] = 0x80;
    }
}

/// Fills the checksum field: the sum of the header's bytes with the field counted as spaces, as six octal
/// digits, a NUL and a space.
fn checksum(h: &mut [u8; BLOCK as usize]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], r: Range<usize>) -> &str {
        std::str::from_utf8(&h[r]).unwrap()
    }

    #[test]
    fn numbers() {
        struct Case {
            width: usize,
            v: u64,
            want: &'static [u8],
        }
        let cases = [
            Case { width: 8, v: 0o644, want: b"0000644\0" },
            Case { width: 12, v: 0, want: b"00000000000\0" },
            Case { width: 12, v: (1 << 33) - 1, want: b"77777777777\0" },
            Case { width: 12, v: 1 << 33, want: &[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0] },
        ];
        for c in cases {
            let mut f = vec![0xff; c.width];
            number(&mut f, c.v);
            assert_eq!(f, c.want, "{} in {} bytes", c.v, c.width);
        }
    }

    #[test]
    fn like_gnu_tar_for_one_region() {
        // What `tar --format=oldgnu -S --owner=0 --group=0 --mtime=@0` writes for a 1 MiB file with data in
        // its third 4 KiB block.
        let region = 8192..12288;
        let h = sparse_header("disk.raw", 1 << 20, std::slice::from_ref(&region), 0).unwrap();
        assert_eq!(h.len(), 512);
        assert_eq!(field(&h, 0..9), "disk.raw\0");
        assert_eq!(
            field(&h, 100..156),
            "0000644\u{0}0000000\u{0}0000000\u{0}00000010000\u{0}00000000000\u{0}016347\u{0} "
        );
        assert_eq!(h[156], b'S');
        assert_eq!(field(&h, 257..269), "ustar  \0root");
        assert_eq!(field(&h, 386..434), "00000020000\u{0}00000010000\u{0}00004000000\u{0}00000000000\u{0}");
        assert!(h[434..482].iter().all(|&b| b == 0));
        assert_eq!(h[482], 0);
        assert_eq!(field(&h, 483..495), "00004000000\0");
    }

    #[test]
    fn extension_headers() {
        let regions: Vec<_> = (0..30u64).map(|i| i * 8192..i * 8192 + 512).collect();
        let size = 30 * 8192;
        let h = sparse_header("disk.raw", size, &regions, 0).unwrap();
        // 31 entries (with the end marker): 4 in the header, 21 + 6 in two extensions.
        assert_eq!(h.len(), 3 * 512);
        assert_eq!(h[482], 1);
        assert_eq!(h[512 + 504], 1);
        assert_eq!(h[1024 + 504], 0);
        assert_eq!(field(&h, 1024 + 5 * 24..1024 + 5 * 24 + 24), "00000740000\u{0}00000000000\u{0}");
        assert!(h[1024 + 6 * 24..1024 + 504].iter().all(|&b| b == 0));
        // Exactly four entries fit without an extension when the last region reaches the end.
        let four: Vec<_> = (0..4u64).map(|i| i * 1024..i * 1024 + 512).collect();
        assert_eq!(sparse_header("disk.raw", 3 * 1024 + 512, &four, 0).unwrap().len(), 512);
        assert_eq!(sparse_header("disk.raw", 4 * 1024, &four, 0).unwrap().len(), 1024);
    }

    #[test]
    fn rejects_long_names() {
        assert!(sparse_header(&"x".repeat(101), 0, &[], 0).is_err());
    }
}
