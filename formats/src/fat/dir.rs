//! Directory contents: 32-byte entries, `.` and `..` first in subdirectories, the volume label first in the
//! root, then every name's long-name entries followed by its short entry.

use super::name::{ENTRY, EntryName, checksum, lfn_entries};
use super::time::DosTime;

/// Attribute of a directory.
pub(crate) const ATTR_DIRECTORY: u8 = 0x10;
/// Attribute of a file (the archive bit, set on every new file).
pub(crate) const ATTR_ARCHIVE: u8 = 0x20;
/// Attribute of the volume label entry.
pub(crate) const ATTR_VOLUME_ID: u8 = 0x08;

/// One short entry.
pub(crate) fn short_entry(name: &[u8; 11], attr: u8, first_cluster: u32, size: u32, t: DosTime) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[13] = t.hundredths;
    e[14..16].copy_from_slice(&t.time.to_le_bytes());
    e[16..18].copy_from_slice(&t.date.to_le_bytes());
    e[18..20].copy_from_slice(&t.date.to_le_bytes());
    e[20..22].copy_from_slice(&((first_cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&t.time.to_le_bytes());
    e[24..26].copy_from_slice(&t.date.to_le_bytes());
    e[26..28].copy_from_slice(&(first_cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// One named entry of a directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub name: &'a EntryName,
    pub attr: u8,
    /// First cluster, 0 for an empty file.
    pub first_cluster: u32,
    pub size: u32,
}

/// What a directory starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Head {
    /// The root: the volume label, if any.
    Root { label: Option<[u8; 11]> },
    /// A subdirectory: `.` (its own first cluster) and `..` (the parent's, 0 for the root).
    Sub { own: u32, parent: u32 },
}

impl Head {
    fn slots(self) -> usize {
        match self {
            Self::Root { label } => usize::from(label.is_some()),
            Self::Sub { .. } => 2,
        }
    }
}

/// Entries a directory needs (head, long-name and short entries); its size is 32 bytes each.
pub(crate) fn slots(head: Head, names: &[EntryName]) -> usize {
    head.slots() + names.iter().map(EntryName::slots).sum::<usize>()
}

/// The bytes of a directory, without the zeroed free entries after the last one.
pub(crate) fn render(head: Head, entries: &[Entry<'_>], t: DosTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY * (head.slots() + entries.iter().map(|e| e.name.slots()).sum::<usize>()));
    match head {
        Head::Root { label: Some(label) } => out.extend_from_slice(&short_entry(&label, ATTR_VOLUME_ID, 0, 0, t)),
        Head::Root { label: None } => {}
        Head::Sub { own, parent } => {
            out.extend_from_slice(&short_entry(b".          ", ATTR_DIRECTORY, own, 0, t));
            out.extend_from_slice(&short_entry(b"..         ", ATTR_DIRECTORY, parent, 0, t));
        }
    }
    for e in entries {
        if let Some(long) = &e.name.long {
            for slot in lfn_entries(long, checksum(&e.name.short)) {
                out.extend_from_slice(&slot);
            }
        }
        out.extend_from_slice(&short_entry(&e.name.short, e.attr, e.first_cluster, e.size, t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::name::{ATTR_LFN, assign};
    use super::*;

    #[test]
    fn dots_come_first_and_long_names_precede_their_short_entry() {
        let names = assign(&["BOOTX64.EFI", "systemd-bootx64.efi"]);
        let entries = [
            Entry { name: &names[0], attr: ATTR_ARCHIVE, first_cluster: 0x0001_0005, size: 7 },
            Entry { name: &names[1], attr: ATTR_ARCHIVE, first_cluster: 0, size: 0 },
        ];
        let t = DosTime::from_unix(1_700_000_000);
        let head = Head::Sub { own: 9, parent: 0 };
        let bytes = render(head, &entries, t);
        assert_eq!(bytes.len(), 32 * slots(head, &names));
        let e: Vec<&[u8]> = bytes.chunks(32).collect();
        assert_eq!(&e[0][..11], b".          ");
        assert_eq!(e[0][26], 9);
        assert_eq!(&e[1][..11], b"..         ");
        assert_eq!(&e[1][20..22], &[0, 0]);
        assert_eq!(&e[1][26..28], &[0, 0]);
        assert_eq!(&e[2][..11], b"BOOTX64 EFI");
        assert_eq!(&e[2][20..22], &[1, 0]);
        assert_eq!(&e[2][26..28], &[5, 0]);
        assert_eq!(&e[2][28..32], &[7, 0, 0, 0]);
        assert_eq!((e[3][0], e[3][11]), (0x42, ATTR_LFN));
        assert_eq!((e[4][0], e[4][11]), (0x01, ATTR_LFN));
        assert_eq!(&e[5][..11], b"SYSTEM~1EFI");
        assert_eq!(e.len(), 6);
    }

    #[test]
    fn root_starts_with_the_label() {
        let t = DosTime::from_unix(0);
        let bytes = render(Head::Root { label: Some(*b"ESP        ") }, &[], t);
        assert_eq!(&bytes[..11], b"ESP        ");
        assert_eq!(bytes[11], ATTR_VOLUME_ID);
        assert!(render(Head::Root { label: None }, &[], t).is_empty());
    }
}
