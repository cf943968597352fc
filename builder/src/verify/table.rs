//! The partition tables verify reads itself (it shares no code with kiln's writer): the primary GPT at LBA 1
//! with its header and entry-array checksums, and the MBR's four primary entries; every partition with its byte
//! range and what it is for.

use anyhow::Result;
use kiln_formats::disk::Bytes;

use super::locate::{Layout, Partition, Role, SectorSize, Table};
use crate::inspect::disk::Disk;

/// Partition type GUIDs this module knows, as text (as `sgdisk`/`systemd-gpt-auto-generator` spell them): what
/// each is called, its role, and how much it says "this is the root filesystem" (higher wins; 0: not a root).
pub(super) const TYPES: &[(&str, &str, Role, u8)] = &[
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)", Role::Other, 3),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)", Role::Other, 3),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem data", Role::Other, 1),
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ESP", Role::Esp, 0),
    ("BC13C2FF-59E6-4262-A352-B275FD6F7172", "XBOOTLDR", Role::Xbootldr, 0),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot", Role::BiosBoot, 0),
];

/// A logical block address: a sector number, meaningful only with its [`SectorSize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lba(u64);

impl Lba {
    /// The byte offset of this sector, or `None` if it does not fit in 64 bits.
    fn byte_offset(self, sector: SectorSize) -> Option<u64> {
        self.0.checked_mul(sector.bytes())
    }
}

pub(super) enum Gpt {
    Found(Layout),
    NoTable,
    Corrupt(String),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the primary GPT at LBA 1 of `sector`-byte sectors, with its checksums.
pub(super) fn gpt(disk: &Disk, sector: SectorSize) -> Result<Gpt> {
    let s = sector.bytes();
    let mut header = vec![0u8; s as usize];
    if !disk.contains(Bytes(s), header.len()) {
        return Ok(Gpt::NoTable);
    }
    disk.read("the GPT header", Bytes(s), &mut header)?;
    if &header[..8] != b"EFI PART" {
        return Ok(Gpt::NoTable);
    }
    let header_size = le32(&header, 12) as usize;
    if !(92..=header.len()).contains(&header_size) {
        return Ok(Gpt::Corrupt(format!("its header size {header_size} is invalid")));
    }
    let mut crc_input = header[..header_size].to_vec();
    crc_input[16..20].fill(0);
    if crc32(&crc_input) != le32(&header, 16) {
        return Ok(Gpt::Corrupt("its header checksum is wrong".into()));
    }
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 1 << 16 {
        return Ok(Gpt::Corrupt(format!("it declares {count} entries of {entry_size} bytes")));
    }
    let Some(entries_at) = Lba(le64(&header, 72)).byte_offset(sector) else {
        return Ok(Gpt::Corrupt("its entry array is beyond 2^64 bytes".into()));
    };
    let mut entries = vec![0u8; count as usize * entry_size];
    if !disk.contains(Bytes(entries_at), entries.len()) {
        return Ok(Gpt::Corrupt(format!(
            "its entry array ({} bytes at byte {entries_at}) lies past the end of the image ({} bytes): truncated",
            entries.len(),
            disk.len()
        )));
    }
    disk.read("the GPT partition entry array", Bytes(entries_at), &mut entries)?;
    if crc32(&entries) != le32(&header, 88) {
        return Ok(Gpt::Corrupt("its partition entry array checksum is wrong".into()));
    }
    let Some(backup_header) = Lba(le64(&header, 32)).byte_offset(sector) else {
        return Ok(Gpt::Corrupt("its backup header is beyond 2^64 bytes".into()));
    };
    let types: Vec<([u8; 16], &str, Role)> = TYPES.iter().map(|&(g, n, role, _)| (guid_bytes(g), n, role)).collect();
    let mut partitions = Vec::new();
    for (i, entry) in entries.chunks_exact(entry_size).enumerate() {
        let type_guid: [u8; 16] = entry[..16].try_into().expect("16 bytes");
        if type_guid == [0; 16] {
            continue;
        }
        let number = i as u32 + 1;
        let known = types.iter().find(|t| t.0 == type_guid);
        let (first, last) = (Lba(le64(entry, 32)), Lba(le64(entry, 40)));
        let range = first.byte_offset(sector).zip(last.0.checked_add(1).and_then(|end| Lba(end).byte_offset(sector)));
        let Some((start, end)) = range.filter(|(start, end)| start < end) else {
            return Ok(Gpt::Corrupt(format!("entry {number} has first LBA {} and last LBA {}", first.0, last.0)));
        };
        partitions.push(Partition {
            number,
            kind: known.map_or_else(|| guid_text(&type_guid), |t| t.1.to_owned()),
            role: known.map_or(Role::Other, |t| t.2),
            start,
            end,
        });
    }
    Ok(Gpt::Found(Layout { table: Table::Gpt { sector, backup_header }, partitions }))
}

/// The MBR partition table in sector 0: `None` unless sector 0 ends in `55 AA` and every entry's status byte is
/// 0x00 or 0x80.
pub(super) fn mbr(disk: &Disk) -> Result<Option<Layout>> {
    let mut mbr = [0u8; 512];
    if !disk.contains(Bytes(0), mbr.len()) {
        return Ok(None);
    }
    disk.read("sector 0", Bytes(0), &mut mbr)?;
    let entries: Vec<&[u8]> = mbr[446..510].chunks_exact(16).collect();
    if mbr[510..512] != [0x55, 0xAA] || entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry[4] == 0 {
            continue;
        }
        let start = u64::from(le32(entry, 8)) * SectorSize::S512.bytes();
        let end = start + u64::from(le32(entry, 12)) * SectorSize::S512.bytes();
        partitions.push(Partition {
            number: i as u32 + 1,
            kind: format!("type {:#04x}", entry[4]),
            role: if entry[4] == 0xEF { Role::Esp } else { Role::Other },
            start,
            end,
        });
    }
    Ok(Some(Layout { table: Table::Mbr, partitions }))
}

/// A GUID's on-disk bytes (the first three fields little-endian) from its text form.
pub(super) fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .split('-')
        .flat_map(|part| (0..part.len()).step_by(2).map(move |i| &part[i..i + 2]))
        .map(|h| u8::from_str_radix(h, 16).expect("a GUID constant"))
        .collect();
    let mut out = [0u8; 16];
    out.copy_from_slice(&hex);
    out[..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    out
}

/// A GUID's text form from its on-disk bytes.
fn guid_text(b: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:04X}-{}",
        u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
        u16::from_le_bytes(b[4..6].try_into().expect("2 bytes")),
        u16::from_le_bytes(b[6..8].try_into().expect("2 bytes")),
        u16::from_be_bytes(b[8..10].try_into().expect("2 bytes")),
        b[10..].iter().map(|x| format!("{x:02X}")).collect::<String>()
    )
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses for its header and entry array.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_X86: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

    #[test]
    fn guid_round_trips_and_crc_matches_the_check_value() {
        let b = guid_bytes(ROOT_X86);
        assert_eq!(&b[..4], &[0xE3, 0xBC, 0x68, 0x4F]);
        assert_eq!(guid_text(&b), ROOT_X86);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
