//! The GUID partition table: the primary header at LBA 1 and its entry array, both checksummed, and the backup
//! header at the LBA the primary names (checked when the image reaches it; [`Layout::past_end`] says when it
//! does not).
//!
//! [`Layout::past_end`]: super::Layout::past_end

use anyhow::{Result, bail};
use kiln_formats::disk::{ByteRange, Bytes, GptAttributes, Guid, Lba, LbaRange, SectorSize};

use super::{Issue, Partition, PartitionType, Table, crc32, guid_at, le16, le32, le64};
use crate::readback::Disk;

/// The GPT signature.
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The most entries a GPT is believed to have (the specification's minimum is 128; tools write 128).
const MAX_ENTRIES: u32 = 1 << 16;

/// A GPT header's fields this reader uses.
struct Header {
    backup: Lba,
    first_usable: Lba,
    last_usable: Lba,
    disk_guid: Guid,
    entries_at: Bytes,
    count: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// Reads the GPT whose primary header is at LBA 1 of `sector`-byte sectors: `Ok(None)` when there is no
/// `EFI PART` there, an error naming the offset when what is there is corrupt or the image too short for it.
/// Problems that leave the table usable (a bad backup header, partitions outside the usable sectors) go to
/// `issues`.
pub(super) fn read(
    disk: &Disk,
    sector: SectorSize,
    issues: &mut Vec<Issue>,
) -> Result<Option<(Table, Vec<Partition>)>> {
    let Some(h) = header(disk, sector)? else { return Ok(None) };
    let mut entries = vec![0u8; h.count as usize * h.entry_size as usize];
    disk.read("GPT partition entry array", h.entries_at, &mut entries)?;
    let got = crc32(&entries);
    if got != h.entries_crc {
        bail!(
            "{}: GPT partition entry array at byte {}: checksum is {got:#010x}, the header says {:#010x}",
            disk.name(),
            h.entries_at,
            h.entries_crc
        );
    }
    check_backup(disk, sector, &h, issues)?;
    let partitions = partitions(disk.name(), sector, &h, &entries)?;
    for p in &partitions {
        if p.extent.start < h.first_usable || p.extent.last().is_some_and(|l| l > h.last_usable) {
            issues.push(Issue::OutsideUsable {
                number: p.number,
                extent: p.extent,
                first: h.first_usable,
                last: h.last_usable,
            });
        }
    }
    let table = Table::Gpt {
        disk_guid: h.disk_guid,
        first_usable_lba: h.first_usable,
        last_usable_lba: h.last_usable,
        backup_header_lba: h.backup,
        entries: h.count,
        entry_size: h.entry_size,
    };
    Ok(Some((table, partitions)))
}

/// The primary header at LBA 1, checked: `Ok(None)` when the image is too short for it or it has no signature.
fn header(disk: &Disk, sector: SectorSize) -> Result<Option<Header>> {
    let name = disk.name();
    let s = sector.bytes().get() as usize;
    let at = Lba(1).offset(sector);
    if !disk.contains(at, s) {
        return Ok(None);
    }
    let mut header = vec![0u8; s];
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
    let backup = Lba(le64(&header, 32));
    if backup.checked_add(1).and_then(|end| end.checked_offset(sector)).is_none() {
        bail!("{name}: GPT header at byte {at}: backup header LBA {backup} is beyond 2^64 bytes");
    }
    Ok(Some(Header {
        backup,
        first_usable: Lba(le64(&header, 40)),
        last_usable: Lba(le64(&header, 48)),
        disk_guid: guid_at(&header, 56),
        entries_at,
        count,
        entry_size,
        entries_crc: le32(&header, 88),
    }))
}

/// The used entries of the entry array, in table order.
fn partitions(name: &str, sector: SectorSize, h: &Header, entries: &[u8]) -> Result<Vec<Partition>> {
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(h.entry_size as usize).enumerate() {
        let kind = guid_at(e, 0);
        if kind.is_nil() {
            continue;
        }
        let number = i as u32 + 1;
        let entry_at = h.entries_at.get() + (i as u64) * u64::from(h.entry_size);
        let (first, last) = (Lba(le64(e, 32)), Lba(le64(e, 40)));
        let Some(end) = last.checked_add(1).filter(|_| last >= first) else {
            bail!("{name}: GPT entry {number} at byte {entry_at}: last LBA {last} is before first LBA {first}");
        };
        let extent = LbaRange::new(first, end);
        let Some(range) = bytes(extent, sector) else {
            bail!("{name}: GPT entry {number} at byte {entry_at}: LBA {extent} lies beyond 2^64 bytes");
        };
        // The name fills the rest of the entry: 36 UTF-16 code units in 128-byte entries.
        let units: Vec<u16> = (56..e.len()).step_by(2).map(|at| le16(e, at)).take_while(|&u| u != 0).collect();
        let attributes = GptAttributes(le64(e, 48));
        out.push(Partition {
            number,
            name: Some(String::from_utf16_lossy(&units)),
            kind: PartitionType::Gpt(kind),
            guid: Some(guid_at(e, 16)),
            extent,
            range,
            attributes: Some(attributes),
            bootable: attributes.contains(GptAttributes::LEGACY_BIOS_BOOTABLE),
        });
    }
    Ok(out)
}

/// Where `extent` lies in bytes; `None` past 2^64 bytes.
fn bytes(extent: LbaRange, sector: SectorSize) -> Option<ByteRange> {
    Some(ByteRange { start: extent.start.checked_offset(sector)?, end: extent.end.checked_offset(sector)? })
}

/// CRC-32 of a GPT header with its own checksum field taken as zero.
fn header_crc(header: &[u8]) -> u32 {
    let mut h = header.to_vec();
    h[16..20].fill(0);
    crc32(&h)
}

/// The backup header, when the image reaches it (when it does not, the image is truncated: see
/// [`Layout::past_end`](super::Layout::past_end)): a bad one, or one before the image's last sector (an image
/// grown after partitioning), is an issue.
fn check_backup(disk: &Disk, sector: SectorSize, h: &Header, issues: &mut Vec<Issue>) -> Result<()> {
    let s = sector.bytes().get() as usize;
    let at = h.backup.offset(sector);
    if !disk.contains(at, s) {
        return Ok(());
    }
    let mut backup = vec![0u8; s];
    disk.read("backup GPT header", at, &mut backup)?;
    let header_size = le32(&backup, 12) as usize;
    let problem = if &backup[..8] != SIGNATURE {
        Some("no EFI PART signature")
    } else if !(92..=s).contains(&header_size) || header_crc(&backup[..header_size]) != le32(&backup, 16) {
        Some("its checksum is wrong")
    } else if le32(&backup, 88) != h.entries_crc {
        Some("its entry array checksum differs from the primary's")
    } else {
        None
    };
    if let Some(why) = problem {
        issues.push(Issue::BackupHeader { at, why });
    }
    let last = Lba(disk.len().get() / sector.bytes().get() - 1);
    if h.backup != last {
        issues.push(Issue::BackupNotLast { lba: h.backup, last });
    }
    Ok(())
}
