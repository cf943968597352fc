//! Directory blocks: all entries, `.` and `..` among them, sorted bytewise by name across the directory (the
//! kernel's lookup binary-searches blocks, then entries); each block starts with its 12-byte entries
//! (`nid`, `nameoff`, `file_type`), followed by their names, packed and not NUL-terminated, the rest of the
//! block zero. The last block holds only what it uses: the directory's size ends there.

use super::BLOCK;
use super::Error;
use crate::ext4::NodeId;

/// `file_type` of a regular file.
pub(crate) const FT_REG: u8 = 1;
/// Of a directory.
pub(crate) const FT_DIR: u8 = 2;
/// Of a symbolic link.
pub(crate) const FT_SYMLINK: u8 = 7;

const DIRENT: usize = 12;
const BS: usize = BLOCK as usize;

/// A directory's entries sorted, with `.` (itself) and `..` (its parent); refuses a name given twice.
pub(crate) fn sorted(
    entries: &[(Box<[u8]>, NodeId)],
    me: NodeId,
    parent: NodeId,
) -> Result<Vec<(&[u8], NodeId)>, Error> {
    let mut all: Vec<(&[u8], NodeId)> = Vec::with_capacity(entries.len() + 2);
    all.push((b".", me));
    all.push((b"..", parent));
    all.extend(entries.iter().map(|(n, id)| (&n[..], *id)));
    all.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::DuplicateName { name: w[0].0.to_vec() });
    }
    Ok(all)
}

/// Where the blocks of a directory with these (sorted) name lengths end: the index one past each block's
/// last entry, filling each block as far as it goes.
pub(crate) fn split(names: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut used = 0;
    let mut i = 0;
    for len in names {
        if used + DIRENT + len > BS {
            ends.push(i);
            used = 0;
        }
        used += DIRENT + len;
        i += 1;
    }
    ends.push(i);
    ends
}

/// The directory's size in bytes: whole blocks, then what the last one uses.
pub(crate) fn size(entries: &[(&[u8], NodeId)], ends: &[usize]) -> u64 {
    let last_start = ends.len().checked_sub(2).map_or(0, |i| ends[i]);
    let last: usize = entries[last_start..].iter().map(|(n, _)| DIRENT + n.len()).sum();
    (ends.len() as u64 - 1) * BLOCK + last as u64
}

/// The directory's bytes (its [`size`]): `nid_ft` gives each entry's node number and file type.
pub(crate) fn render(entries: &[(&[u8], NodeId)], ends: &[usize], nid_ft: impl Fn(NodeId) -> (u64, u8)) -> Vec<u8> {
    let mut out = Vec::with_capacity(ends.len() * BS);
    let mut start = 0;
    for &end in ends {
        let block = &entries[start..end];
        let at = out.len();
        let mut nameoff = DIRENT * block.len();
        for (name, node) in block {
            let (nid, ft) = nid_ft(*node);
            out.extend_from_slice(&nid.to_le_bytes());
            out.extend_from_slice(&(nameoff as u16).to_le_bytes());
            out.push(ft);
            out.push(0);
            nameoff += name.len();
        }
        for (name, _) in block {
            out.extend_from_slice(name);
        }
        if end != entries.len() {
            out.resize(at + BS, 0);
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sort_bytewise_with_dot_entries_among_them() {
        let entries: Vec<(Box<[u8]>, NodeId)> = [&b"b"[..], b"-a", b".hidden", b"A"]
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).into(), i as u32 + 10))
            .collect();
        let s = sorted(&entries, 1, 0).unwrap();
        let names: Vec<&[u8]> = s.iter().map(|e| e.0).collect();
        assert_eq!(names, [&b"-a"[..], b".", b"..", b".hidden", b"A", b"b"]);
        let dup: Vec<(Box<[u8]>, NodeId)> = vec![((*b"x").into(), 2), ((*b"x").into(), 3)];
        assert!(matches!(sorted(&dup, 1, 0), Err(Error::DuplicateName { name }) if name == b"x"));
        let dot: Vec<(Box<[u8]>, NodeId)> = vec![((*b"..").into(), 2)];
        assert!(sorted(&dot, 1, 0).is_err(), "a second .. is a duplicate");
    }

    #[test]
    fn blocks_fill_up_and_the_last_one_is_only_what_it_uses() {
        // 4096 / (12 + 20) = 128 entries of 20-byte names per block.
        let names: Vec<Vec<u8>> = (0..300).map(|i| format!("{i:020}").into_bytes()).collect();
        let entries: Vec<(&[u8], NodeId)> = names.iter().map(|n| (&n[..], 5)).collect();
        let ends = split(entries.iter().map(|e| e.0.len()));
        assert_eq!(ends, [128, 256, 300]);
        assert_eq!(size(&entries, &ends), 2 * BLOCK + 44 * 32);
        let bytes = render(&entries, &ends, |n| (u64::from(n) * 7, FT_REG));
        assert_eq!(bytes.len() as u64, size(&entries, &ends));
        // The second block's first entry: nid 35, names start after its 128 entries.
        let b = &bytes[BS..];
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 35);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 128 * 12);
        assert_eq!(&b[128 * 12..128 * 12 + 20], &names[128][..]);
        assert_eq!(b[10], FT_REG);
        let exact: Vec<(&[u8], NodeId)> = names[..128].iter().map(|n| (&n[..], 5)).collect();
        let ends = split(exact.iter().map(|e| e.0.len()));
        assert_eq!((ends.as_slice(), size(&exact, &ends)), (&[128][..], BLOCK), "a block filled exactly");
    }
}
