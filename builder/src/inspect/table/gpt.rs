//! The GUID partition table: the primary header at LBA 1 and its entry array, both checksummed, and the backup
//! header at the LBA the primary names.

use anyhow::{Result, bail};
use kiln_formats::disk::{GptAttributes, Lba, LbaRange, SectorSize, crc32};

use super::{Found, PartitionType, Slot, Table, guid_at, le16, le32, le64, overlaps};
use crate::inspect::disk::Disk;

/// The GPT signature.
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The most entries a GPT is believed to have (the specification's minimum is 128; tools write 128).
const MAX_ENTRIES: u32 = 1 << 16;

/// Reads the GPT whose primary header is at LBA 1 of `sector`-byte sectors: `Ok(None)` when there is no
/// `EFI PART` there, an error naming the offset when what is there is corrupt or the image too short for it.
/// Problems that leave the table usable (a bad backup header, partitions outside the usable sectors or
/// overlapping) go to `warnings`.
pub(crate) fn gpt(disk: &Disk, sector: SectorSize, warnings: &mut Vec<String>) -> Result<Option<Found>> {
    let name = disk.name();
    let s = sector.bytes();
    let at = Lba(1).offset(sector);
    if !disk.contains(at, s.get() as usize) {
        return Ok(None);
    }
    let mut header = vec![0u8; s.get() as usize];
    disk.read("GPT header", at, &mut header)?;
    if &header[..8] != SIGNATURE {
        return Ok(None);
    }
    let header_size = le32(&header, 12) as usize;
    if !(92..=header.len()).contains(&header_size) {
        bail!("{name}: GPT header at byte {at}: header size {header_size} is not between 92 and {}", header.len());
    }
    let want = le32(&header, 16);
    let got = header_crc(&header[..header_size]);
    if got != want {
        bail!("{name}: GPT header at byte {at}: checksum is {got:#010x}, the header says {want:#010x}");
    }
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84);
    if count > MAX_ENTRIES || !(128..=4096).contains(&entry_size) || !entry_size.is_multiple_of(8) {
        bail!("{name}: GPT header at byte {at}: {count} entries of {entry_size} bytes is not a partition entry array");
    }
    let entries_lba = Lba(le64(&header, 72));
    let Some(entries_at) = entries_lba.checked_offset(sector) else {
        bail!("{name}: GPT header at byte {at}: entry array LBA {entries_lba} is beyond 2^64 bytes");
    };
    let mut entries = vec![0u8; count as usize * entry_size as usize];
    disk.read("GPT partition entry array", entries_at, &mut entries)?;
    let (want, got) = (le32(&header, 88), crc32(&entries));
    if got != want {
        bail!(
            "{name}: GPT partition entry array at byte {entries_at}: checksum is {got:#010x}, the header says {want:#010x}"
        );
    }
    let backup = Lba(le64(&header, 32));
    check_backup(disk, sector, backup, want, warnings)?;

    let mut slots = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size as usize).enumerate() {
        let kind = guid_at(e, 0);
        if kind.is_nil() {
            continue;
        }
        let number = i as u32 + 1;
        let (first, last) = (Lba(le64(e, 32)), Lba(le64(e, 40)));
        let Some(end) = last.checked_add(1).filter(|_| last >= first) else {
            bail!(
                "{name}: GPT entry {number} at byte {}: last LBA {last} is before first LBA {first}",
                entries_at.get() + (i as u64) * u64::from(entry_size)
            );
        };
        // The name fills the rest of the entry: 36 UTF-16 code units in 128-byte entries.
        let units: Vec<u16> = (56..e.len()).step_by(2).map(|at| le16(e, at)).take_while(|&u| u != 0).collect();
        let attributes = GptAttributes(le64(e, 48));
        slots.push(Slot {
            number,
            name: Some(String::from_utf16_lossy(&units)),
            kind: PartitionType::Gpt(kind),
            guid: Some(guid_at(e, 16)),
            extent: LbaRange::new(first, end),
            attributes: Some(attributes),
            bootable: attributes.contains(GptAttributes::LEGACY_BIOS_BOOTABLE),
        });
    }
    let (first_usable, last_usable) = (Lba(le64(&header, 40)), Lba(le64(&header, 48)));
    for s in &slots {
        if s.extent.start < first_usable || s.extent.last().is_some_and(|l| l > last_usable) {
            warnings.push(format!(
                "{name}: partition {} ({}) lies outside the sectors the GPT leaves for partitions (LBA \
                 {first_usable} to {last_usable})",
                s.number, s.extent
            ));
        }
    }
    overlaps(&slots, name, warnings);
    let table = Table::Gpt {
        disk_guid: guid_at(&header, 56),
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        backup_header_lba: backup,
        entries: count,
        entry_size,
    };
    Ok(Some(Found { table, sector, slots }))
}

/// CRC-32 of a GPT header with its own checksum field taken as zero.
fn header_crc(header: &[u8]) -> u32 {
    let mut h = header.to_vec();
    h[16..20].fill(0);
    crc32(&h)
}

/// The backup header must be where the primary says, inside the image (else the image is truncated); a bad
/// backup, or one before the image's last sector (an image grown after partitioning), is a warning.
fn check_backup(
    disk: &Disk,
    sector: SectorSize,
    backup: Lba,
    entries_crc: u32,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let name = disk.name();
    let s = sector.bytes().get() as usize;
    let Some(at) = backup.checked_offset(sector) else {
        bail!("{name}: GPT header at byte {}: backup header LBA {backup} is beyond 2^64 bytes", sector.bytes());
    };
    if !disk.contains(at, s) {
        bail!(
            "{name}: truncated: the GPT's backup header belongs at byte {at} (LBA {backup}), past the end of the \
             image ({} bytes)",
            disk.len()
        );
    }
    let mut header = vec![0u8; s];
    disk.read("backup GPT header", at, &mut header)?;
    let header_size = le32(&header, 12) as usize;
    let problem = if &header[..8] != SIGNATURE {
        Some("no EFI PART signature")
    } else if !(92..=s).contains(&header_size) || header_crc(&header[..header_size]) != le32(&header, 16) {
        Some("its checksum is wrong")
    } else if le32(&header, 88) != entries_crc {
        Some("its entry array checksum differs from the primary's")
    } else {
        None
    };
    if let Some(why) = problem {
        warnings.push(format!("{name}: backup GPT header at byte {at}: {why}"));
    }
    let last = disk.len().get() / sector.bytes().get() - 1;
    if backup.get() != last {
        warnings.push(format!(
            "{name}: the GPT's backup header is at LBA {backup}, not the image's last sector {last} (the image was \
             resized after partitioning)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_formats::disk::{Bytes, Guid, PartitionTable, partition_type};

    use super::super::Attributes;
    use super::super::tests::{request, written};
    use super::*;

    /// What kiln's own partition table writer planned comes back, field by field.
    #[test]
    fn reads_back_what_formats_writes() {
        for sector in [SectorSize::S512, SectorSize::S4096] {
            let requests = vec![
                request("BIOS boot", partition_type::BIOS_BOOT, 1, GptAttributes::NONE, 1),
                request("ESP", partition_type::ESP, 2, GptAttributes::REQUIRED, 3),
                request("nixos", partition_type::ROOT_X86_64, 3, GptAttributes::GROWFS, 4),
            ];
            let disk_guid = Guid::from_u128(0xABCD);
            let (layout, disk) = written(sector, PartitionTable::Gpt { disk_guid }, requests);
            let mut warnings = Vec::new();
            let other = if sector == SectorSize::S512 { SectorSize::S4096 } else { SectorSize::S512 };
            if sector == SectorSize::S4096 {
                assert_eq!(gpt(&disk, other, &mut warnings).unwrap(), None, "no table at LBA 1 of 512 bytes");
            }
            let found = gpt(&disk, sector, &mut warnings).unwrap().expect("a GPT");
            assert_eq!(warnings, Vec::<String>::new());
            assert_eq!(found.sector, sector);
            let Table::Gpt { disk_guid: got, backup_header_lba, .. } = found.table else { panic!("{:?}", found.table) };
            assert_eq!(got, disk_guid);
            assert_eq!(backup_header_lba.get(), layout.sectors() - 1);
            assert_eq!(found.slots.len(), 3);
            for (slot, planned) in found.slots.iter().zip(layout.partitions()) {
                assert_eq!(slot.name.as_deref(), Some(planned.name.as_str()));
                assert_eq!(slot.kind, PartitionType::Gpt(planned.type_guid));
                assert_eq!(slot.guid, Some(planned.guid));
                assert_eq!(slot.extent, planned.extent);
                assert_eq!(slot.attributes, Some(planned.attributes));
            }
            assert_eq!(found.slots[0].kind.name(), "BIOS boot");
            assert_eq!(found.slots[1].kind.name(), "ESP");
            assert_eq!(found.slots[2].kind.name(), "Linux root (x86-64)");
            assert_eq!(Attributes::of(GptAttributes::GROWFS | GptAttributes(1 << 50)).names, ["bit-50", "growfs"]);
        }
    }

    /// Corruption is an error naming the image and the offset; a lost backup header is a warning unless the image
    /// is too short to hold it.
    #[test]
    fn corrupt_and_truncated_tables() {
        struct Case {
            name: &'static str,
            damage: fn(&mut Vec<u8>),
            want_err: Option<&'static str>,
            want_warning: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "header checksum",
                damage: |b| b[512 + 40] ^= 1,
                want_err: Some("mem.img: GPT header at byte 512: checksum is"),
                want_warning: None,
            },
            Case {
                name: "entry array checksum",
                damage: |b| b[1024 + 56] ^= 1,
                want_err: Some("mem.img: GPT partition entry array at byte 1024: checksum is"),
                want_warning: None,
            },
            Case {
                name: "backup header",
                damage: |b| {
                    let n = b.len();
                    b[n - 512] = 0;
                },
                want_err: None,
                want_warning: Some("backup GPT header at byte"),
            },
            Case {
                name: "truncated",
                damage: |b| b.truncate(b.len() - (1 << 20)),
                want_err: Some("mem.img: truncated: the GPT's backup header belongs at byte"),
                want_warning: None,
            },
        ];
        for case in cases {
            let requests = vec![request("a", partition_type::LINUX_DATA, 1, GptAttributes::NONE, 2)];
            let (_, disk) = written(SectorSize::S512, PartitionTable::Gpt { disk_guid: Guid::from_u128(9) }, requests);
            let mut bytes = vec![0u8; disk.len().get() as usize];
            disk.read("all", Bytes(0), &mut bytes).unwrap();
            (case.damage)(&mut bytes);
            let len = Bytes(bytes.len() as u64);
            let disk = Disk::new(Arc::new(bytes), len, "mem.img".into());
            let mut warnings = Vec::new();
            let got = gpt(&disk, SectorSize::S512, &mut warnings);
            match (case.want_err, got) {
                (Some(want), Err(e)) => assert!(e.to_string().starts_with(want), "{}: {e}", case.name),
                (None, Ok(Some(_))) => {}
                (want, got) => panic!("{}: want error {want:?}, got {got:?}", case.name),
            }
            match case.want_warning {
                Some(w) => assert!(warnings.iter().any(|x| x.contains(w)), "{}: {warnings:?}", case.name),
                None => assert!(warnings.is_empty(), "{}: {warnings:?}", case.name),
            }
        }
    }
}
