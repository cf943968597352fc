//! Fitting an image's partition table to the target, decided from the image's first MiB before anything is
//! written: the backup GPT moved to the target's last sectors, sizes and checksums redone, the root partition
//! grown to the end (`--grow-root`), and for UEFI layouts the table rewritten in the target's sector size with
//! the FAT boot partitions re-made ([`Fit::remake`]); ext4 is 1 MiB-aligned with 4 KiB blocks and is copied as
//! it is. Layouts with BIOS boot code are never re-targeted: GRUB's BIOS path needs 512-byte sectors.
//!
//! The table is rebuilt with `kiln_formats`' own writer ([`DiskLayout`]) from the partitions read back, after
//! checking that the same writer reproduces the image's table byte for byte: a table kiln did not write (or not
//! this way) is written as it is, or refused where it would have to change.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{Result, bail};
use kiln_formats::disk::{
    Bytes, DiskLayout, GptAttributes, GptGeometry, Lba, LbaRange, MBR_SIZE, MIB, Partition as Part, PartitionTable,
    Region, SectorSize, partition_type,
};

use crate::readback::table::{PartitionType, Role, Table};
use crate::readback::{Disk, Ext4Superblock, FatBootSector, Layout, Magic, Partition, ReadAt};
use crate::units::human_bytes;

/// The first MiB: sector 0, the primary GPT and whatever boot code lies before the first partition. Written
/// last.
pub const HEAD: u64 = MIB.get();

/// Bytes of sector 0 that are boot code and disk identity (kept from the image); the partition entries and the
/// signature after them come from the rebuilt table.
const BOOT_CODE: usize = 0x1BE;

/// A FAT partition re-made for the target's sector size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Remake {
    /// Partition number.
    pub number: u32,
    /// Its bytes in the image and on the target (partitions keep their byte offsets).
    pub range: Range<u64>,
    /// The partition's first sector on the target, in target sectors.
    pub start_lba: u64,
}

/// The root partition grown to the end of the target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Grown {
    /// Partition number.
    pub number: u32,
    /// Its end in the image (bytes).
    pub from: u64,
    /// Its end on the target (bytes).
    pub to: u64,
}

/// How the image's table is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Table2 {
    /// No partition table: the image is one filesystem.
    None,
    /// The image's table as it is (sizes unchanged).
    AsIs,
    /// Rebuilt for the target: backup GPT at its end, sizes and checksums redone.
    Refit,
}

/// What will be written where, decided before writing.
#[derive(Clone)]
pub struct Fit {
    /// The raw image's size.
    pub image_size: u64,
    /// The image's sector size (`None`: no table).
    pub image_sector: Option<SectorSize>,
    /// The sector size the table is written in.
    pub sector: Option<SectorSize>,
    /// The table, as `gpt`, `dos` or `none`.
    pub table: &'static str,
    /// How.
    pub how: Table2,
    /// Bytes `[0, HEAD)` of the target, written last (sector 0 very last).
    pub head: Vec<u8>,
    /// Table regions beyond the head (the backup GPT at the target's end).
    pub tail: Vec<Region>,
    /// Image bytes not written (the image's own backup GPT, replaced by `tail`).
    pub skip: Option<Range<u64>>,
    /// FAT partitions re-made for the target's sector size.
    pub remake: Vec<Remake>,
    /// The root partition grown.
    pub grown: Option<Grown>,
    /// Bytes of the target the image needs.
    pub needed: u64,
}

impl std::fmt::Debug for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fit")
            .field("image_size", &self.image_size)
            .field("sector", &self.sector)
            .field("table", &self.table)
            .field("how", &self.how)
            .field("tail", &self.tail.iter().map(|r| (r.what, r.offset.get())).collect::<Vec<_>>())
            .field("skip", &self.skip)
            .field("remake", &self.remake)
            .field("grown", &self.grown)
            .field("needed", &self.needed)
            .finish_non_exhaustive()
    }
}

/// The image's first MiB as a disk of `len` bytes: zeros beyond it.
struct HeadRead(Arc<Vec<u8>>);

impl ReadAt for HeadRead {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.fill(0);
        let len = self.0.len() as u64;
        if offset < len {
            let n = ((len - offset) as usize).min(buf.len());
            buf[..n].copy_from_slice(&self.0[offset as usize..offset as usize + n]);
        }
        Ok(())
    }
}

/// The image's size as its first MiB says: the GPT's backup header is its last sector; an MBR's partitions end
/// before its end; a bare filesystem says its size.
pub fn size_from_head(head: &[u8]) -> Option<u64> {
    for ss in [512usize, 4096] {
        if head.get(ss..ss + 8) == Some(b"EFI PART".as_slice()) {
            let alt = u64::from_le_bytes(head[ss + 32..ss + 40].try_into().ok()?);
            return alt.checked_add(1)?.checked_mul(ss as u64);
        }
    }
    let sb: &[u8; 1024] = head.get(1024..2048)?.try_into().ok()?;
    let ext4 = Ext4Superblock::parse(sb);
    if ext4.is_ext4() {
        return ext4.size().map(Bytes::get);
    }
    let boot: &[u8; 512] = head.get(..512)?.try_into().ok()?;
    if let Some(fat) = FatBootSector::parse(boot).filter(FatBootSector::is_fat) {
        return Some(fat.size().get());
    }
    None
}

/// What the refusals and the fitting need to know about the target.
#[derive(Debug, Clone, Copy)]
pub struct TargetFacts {
    /// Its size in bytes.
    pub size: u64,
    /// Its logical sector size; `None` for a file (the image's then).
    pub sector: Option<SectorSize>,
}

/// Decides how `head` (the image's first [`HEAD`] bytes, zeros where it has none) goes onto the target.
/// `image_size` is the raw image's size if the source said it; `last_data` the end of its last data range, if
/// known.
///
/// # Errors
/// When the image is no disk kiln can write, the target is too small, the sector sizes differ where the
/// layout cannot be re-targeted, or the root cannot be grown.
pub fn fit(
    name: &str,
    head: Vec<u8>,
    image_size: Option<u64>,
    last_data: Option<u64>,
    target: TargetFacts,
    grow_root: bool,
) -> Result<Fit> {
    let Some(image_size) = image_size.or_else(|| size_from_head(&head)) else {
        bail!(
            "{name}: cannot tell the image's size from its first MiB (no GPT, no filesystem); give a block map \
             (--bmap)"
        );
    };
    let head = Arc::new(head);
    let disk = Disk::new(Arc::new(HeadRead(Arc::clone(&head))), Bytes(image_size), name.to_owned());
    let Some(layout) = Layout::read(&disk)? else {
        bail!("{name}: not a disk image: no partition table or filesystem in its first MiB");
    };
    let head = Arc::try_unwrap(head).unwrap_or_else(|h| (*h).clone());
    let target_sector = target.sector.or(layout.sector).unwrap_or(SectorSize::S512);
    let too_small = |needed: u64, what: &str| -> Result<()> {
        if target.size < needed {
            bail!(
                "the target is too small: {} ({}), and the image needs {} ({}) for {what}",
                target.size,
                human_bytes(target.size),
                needed,
                human_bytes(needed)
            );
        }
        Ok(())
    };
    let mut fit = Fit {
        image_size,
        image_sector: layout.sector,
        sector: layout.sector.map(|_| target_sector),
        table: match layout.table {
            Table::Gpt { .. } => "gpt",
            Table::Dos { .. } => "dos",
            Table::None => "none",
        },
        how: Table2::AsIs,
        head,
        tail: Vec::new(),
        skip: None,
        remake: Vec::new(),
        grown: None,
        needed: image_size,
    };
    match layout.table {
        Table::None => {
            fit.how = Table2::None;
            if grow_root {
                bail!("{name} is a bare filesystem without a partition table: there is no partition to grow");
            }
            if let (Some(Magic::Fat(fat)), Some(ss)) = (&layout.bare, target.sector)
                && fat.sector_size != ss.bytes().get()
            {
                bail!(
                    "{name} is a FAT filesystem of {}-byte sectors and the target has {ss}-byte sectors",
                    fat.sector_size
                );
            }
            too_small(image_size, "the filesystem")?;
            Ok(fit)
        }
        Table::Dos { disk_signature } => {
            if target_sector != SectorSize::S512 {
                bail!(
                    "{name} has a DOS partition table and BIOS boot code, which need 512-byte sectors; the target \
                     has {target_sector}-byte sectors"
                );
            }
            let table = PartitionTable::Mbr { disk_signature };
            refit(name, &mut fit, &layout, table, target_sector, target, last_data, grow_root)?;
            Ok(fit)
        }
        Table::Gpt { disk_guid, .. } => {
            let image_sector = layout.sector.unwrap_or(SectorSize::S512);
            if image_sector != target_sector {
                if let Some(p) = layout.with_role(Role::BiosBoot).next() {
                    bail!(
                        "{name} boots by BIOS too ({p}: GRUB's core.img), and GRUB's BIOS path needs 512-byte \
                         sectors; the target has {target_sector}-byte sectors. Build the image for the target: \
                         --layout efi --sector-size {target_sector}"
                    );
                }
                for p in &layout.partitions {
                    if matches!(p.role(), Role::Esp | Role::Xbootldr) {
                        let start_lba = p.range.start.get() / target_sector.bytes().get();
                        fit.remake.push(Remake {
                            number: p.number,
                            range: p.range.start.get()..p.range.end.get(),
                            start_lba,
                        });
                    }
                }
            }
            let table = PartitionTable::Gpt { disk_guid };
            refit(name, &mut fit, &layout, table, target_sector, target, last_data, grow_root)?;
            Ok(fit)
        }
    }
}

/// Rebuilds the table for the target (or keeps it as it is where that changes nothing and kiln's writer would
/// not reproduce it).
#[allow(clippy::too_many_arguments)]
fn refit(
    name: &str,
    fit: &mut Fit,
    layout: &Layout,
    table: PartitionTable,
    sector: SectorSize,
    target: TargetFacts,
    last_data: Option<u64>,
    grow_root: bool,
) -> Result<()> {
    let image_sector = layout.sector.unwrap_or(SectorSize::S512);
    let gpt = matches!(table, PartitionTable::Gpt { .. });
    let copy = |ss: SectorSize| if gpt { GptGeometry::copy_sectors(ss) * ss.bytes().get() } else { 0 };
    let parts_end = layout.partitions.iter().map(|p| p.range.end.get()).max().unwrap_or(HEAD);
    // The image's own backup GPT is replaced; the rest of its data must fit.
    if gpt {
        fit.skip = Some(fit.image_size.saturating_sub(copy(image_sector))..fit.image_size);
    }
    let data_end = last_data.map_or(0, |d| match &fit.skip {
        Some(s) if d > s.start => s.start,
        _ => d,
    });
    fit.needed = parts_end.saturating_add(copy(sector)).max(data_end);

    let as_image = to_layout(layout, image_sector, fit.image_size, table, None);
    let reproduced = as_image.as_ref().is_ok_and(|l| same_table(l, &fit.head));
    if !reproduced {
        let why = as_image.err().map_or_else(|| "kiln's writer does not reproduce it".to_owned(), |e| e.to_string());
        if sector != image_sector || grow_root {
            bail!("{name}: its partition table cannot be rewritten for the target ({why})");
        }
        if target.size < fit.image_size {
            bail!(
                "the target is too small: {} ({}), and {name} needs {} ({}) with its table as it is ({why})",
                target.size,
                human_bytes(target.size),
                fit.image_size,
                human_bytes(fit.image_size)
            );
        }
        fit.skip = None;
        fit.needed = fit.image_size;
        return Ok(());
    }
    if target.size < fit.needed {
        bail!(
            "the target is too small: {} ({}), and the image needs {} ({}) for its partitions{}",
            target.size,
            human_bytes(target.size),
            fit.needed,
            human_bytes(fit.needed),
            if gpt { " and the backup GPT" } else { "" }
        );
    }
    let target_bytes = target.size / sector.bytes().get() * sector.bytes().get();
    let grow = if grow_root { Some(grow_target(name, layout, target_bytes, copy(sector), gpt)?) } else { None };
    let new = to_layout(layout, sector, target_bytes, table, grow.as_ref())
        .map_err(|e| anyhow::anyhow!("{name}: rewriting its partition table for the target: {e}"))?;
    fit.grown = grow;
    fit.how = Table2::Refit;
    // The old table's sectors are cleared, the new one placed; boot code and anything else before the first
    // partition stay.
    let old_table = if gpt { copy(image_sector) } else { MBR_SIZE as u64 };
    let boot_code: Vec<u8> = fit.head[..BOOT_CODE].to_vec();
    fit.head[..old_table as usize].fill(0);
    for r in new.regions() {
        let at = r.offset.get();
        if at < HEAD {
            fit.head[at as usize..at as usize + r.bytes.len()].copy_from_slice(&r.bytes);
        } else {
            fit.tail.push(r);
        }
    }
    fit.head[..BOOT_CODE].copy_from_slice(&boot_code);
    Ok(())
}

/// Whether `head` holds exactly the table `layout` writes (sector 0's partition entries and signature, and on
/// GPT the primary header and entries).
fn same_table(layout: &DiskLayout, head: &[u8]) -> bool {
    layout.regions().iter().filter(|r| r.offset.get() < HEAD).all(|r| {
        let at = r.offset.get() as usize;
        let (want, have) = if at == 0 {
            (&r.bytes[BOOT_CODE..MBR_SIZE], head.get(BOOT_CODE..MBR_SIZE))
        } else {
            (&r.bytes[..], head.get(at..at + r.bytes.len()))
        };
        have == Some(want)
    })
}

/// The partition whose end moves, and where to: the last partition, which must be the root (or a Linux data
/// partition), to the last MiB boundary before the backup GPT.
fn grow_target(name: &str, layout: &Layout, target_bytes: u64, backup: u64, gpt: bool) -> Result<Grown> {
    let Some(last) = layout.partitions.iter().max_by_key(|p| p.range.end) else {
        bail!("{name} has no partitions to grow");
    };
    let is_root = match last.kind {
        PartitionType::Gpt(_) => last.kind.root_rank() > 0,
        PartitionType::Mbr(t) => t == 0x83,
    };
    if !is_root {
        bail!("--grow-root: the last partition of {name} is {last}, not the root filesystem");
    }
    let limit = if gpt { target_bytes - backup } else { target_bytes.min(u64::from(u32::MAX) * 512) };
    let to = limit / HEAD * HEAD;
    Ok(Grown { number: last.number, from: last.range.end.get(), to: to.max(last.range.end.get()) })
}

/// The layout of `layout`'s partitions on a disk of `size` bytes with `sector`-byte sectors (partitions keep
/// their byte offsets), the root grown as `grow` says.
fn to_layout(
    layout: &Layout,
    sector: SectorSize,
    size: u64,
    table: PartitionTable,
    grow: Option<&Grown>,
) -> Result<DiskLayout> {
    let ss = sector.bytes().get();
    let mut parts = Vec::with_capacity(layout.partitions.len());
    for p in &layout.partitions {
        let mut end = p.range.end.get();
        if let Some(g) = grow.filter(|g| g.number == p.number) {
            end = g.to;
        }
        let (start, end_lba) = (p.range.start.get() / ss, end / ss);
        if p.range.start.get() % ss != 0 || end % ss != 0 {
            bail!("{p} does not start and end on a {sector}-byte sector");
        }
        parts.push(to_part(p, table, LbaRange::new(Lba(start), Lba(end_lba)))?);
    }
    Ok(DiskLayout::new(sector, Bytes(size), table, parts)?)
}

fn to_part(p: &Partition, table: PartitionTable, extent: LbaRange) -> Result<Part> {
    Ok(match (table, p.kind) {
        (PartitionTable::Gpt { .. }, PartitionType::Gpt(type_guid)) => Part {
            name: p.name.clone().unwrap_or_default(),
            type_guid,
            guid: p.guid.unwrap_or(kiln_formats::disk::Guid::NIL),
            attributes: p.attributes.unwrap_or(GptAttributes(0)),
            extent,
        },
        (PartitionTable::Mbr { .. }, PartitionType::Mbr(t)) => {
            let type_guid = match t {
                0x83 => partition_type::LINUX_DATA,
                0xEF => partition_type::ESP,
                0xEA => partition_type::XBOOTLDR,
                _ => bail!("{p}: MBR type {t:#04x} is not one kiln writes"),
            };
            let attributes = if p.bootable { GptAttributes::LEGACY_BIOS_BOOTABLE } else { GptAttributes(0) };
            Part { name: String::new(), type_guid, guid: kiln_formats::disk::Guid::NIL, attributes, extent }
        }
        _ => bail!("{p}: its type does not belong in this table"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::disk::Guid;

    const MIB: u64 = HEAD;

    fn part(name: &str, type_guid: Guid, n: u8, sector: SectorSize, mib: Range<u64>) -> Part {
        let ss = sector.bytes().get();
        Part {
            name: name.to_owned(),
            type_guid,
            guid: Guid::from_bytes([n; 16]),
            attributes: GptAttributes(0),
            extent: LbaRange::new(Lba(mib.start * MIB / ss), Lba(mib.end * MIB / ss)),
        }
    }

    /// A 64 MiB image's first MiB: (BIOS boot 1–2 MiB when `bios`), ESP to 33 MiB, root to 63 MiB.
    fn image(sector: SectorSize, bios: bool) -> Vec<u8> {
        let mut parts = Vec::new();
        if bios {
            parts.push(part("BIOS boot", partition_type::BIOS_BOOT, 3, sector, 1..2));
        }
        parts.push(part("ESP", partition_type::ESP, 1, sector, if bios { 2..33 } else { 1..33 }));
        parts.push(part("nixos", partition_type::ROOT_X86_64, 2, sector, 33..63));
        let table = PartitionTable::Gpt { disk_guid: Guid::from_bytes([9; 16]) };
        let layout = DiskLayout::new(sector, Bytes(64 * MIB), table, parts).unwrap();
        let mut head = vec![0u8; HEAD as usize];
        for r in layout.regions() {
            let at = r.offset.get() as usize;
            if at < HEAD as usize {
                head[at..at + r.bytes.len()].copy_from_slice(&r.bytes);
            }
        }
        // Boot code in sector 0 that the fitting must keep.
        head[..4].copy_from_slice(b"BOOT");
        head
    }

    fn target(mib: u64, sector: SectorSize) -> TargetFacts {
        TargetFacts { size: mib * MIB, sector: Some(sector) }
    }

    fn header_u64(head: &[u8], ss: usize, at: usize) -> u64 {
        u64::from_le_bytes(head[ss + at..ss + at + 8].try_into().unwrap())
    }

    #[test]
    fn the_backup_gpt_moves_to_the_end_of_a_larger_disk() {
        let fit = fit("img", image(SectorSize::S512, false), None, None, target(128, SectorSize::S512), false).unwrap();
        assert_eq!(fit.how, Table2::Refit);
        assert_eq!(fit.image_size, 64 * MIB, "the size the GPT header says");
        assert_eq!(fit.skip, Some(64 * MIB - 33 * 512..64 * MIB), "the image's own backup GPT is not written");
        assert_eq!(header_u64(&fit.head, 512, 32), 128 * MIB / 512 - 1, "the primary header points at the new backup");
        let backup = fit.tail.iter().find(|r| r.what == "backup GPT header").unwrap();
        assert_eq!(backup.offset.get(), 128 * MIB - 512);
        assert_eq!(&fit.head[..4], b"BOOT", "boot code in sector 0 is kept");
        assert_eq!(&fit.head[510..512], &[0x55, 0xAA]);
        assert!(fit.remake.is_empty() && fit.grown.is_none());
    }

    #[test]
    fn grow_root_extends_the_last_partition_to_the_last_mib_before_the_backup_gpt() {
        let fit = fit("img", image(SectorSize::S512, false), None, None, target(128, SectorSize::S512), true).unwrap();
        assert_eq!(fit.grown, Some(Grown { number: 2, from: 63 * MIB, to: 127 * MIB }));
        let entry = 2 * 512 + 128; // the second entry of the primary array
        let last = u64::from_le_bytes(fit.head[entry + 40..entry + 48].try_into().unwrap());
        assert_eq!(last, 127 * MIB / 512 - 1);
    }

    #[test]
    fn a_512_image_onto_a_4kn_disk_is_rewritten_in_4096_byte_lbas_and_the_esp_remade() {
        let fit =
            fit("img", image(SectorSize::S512, false), None, None, target(128, SectorSize::S4096), false).unwrap();
        assert_eq!(&fit.head[4096..4104], b"EFI PART", "the header at LBA 1 of 4096 bytes");
        assert!(fit.head[512..4096].iter().all(|&b| b == 0), "the 512-byte table is cleared");
        assert_eq!(fit.remake, vec![Remake { number: 1, range: MIB..33 * MIB, start_lba: 256 }]);
        assert_eq!(fit.sector, Some(SectorSize::S4096));
        let backup = fit.tail.iter().find(|r| r.what == "backup GPT header").unwrap();
        assert_eq!(backup.offset.get(), 128 * MIB - 4096);
    }

    #[test]
    fn a_4kn_image_onto_a_512_disk_is_rewritten_too() {
        let fit = fit("img", image(SectorSize::S4096, false), None, None, target(64, SectorSize::S512), false).unwrap();
        assert_eq!(&fit.head[512..520], b"EFI PART");
        assert!(fit.head[4096..4104].iter().all(|&b| b == 0), "the 4096-byte header is cleared");
        assert_eq!(fit.remake.len(), 1);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let err = |r: Result<Fit>| format!("{:#}", r.unwrap_err());
        let e = err(fit("img", image(SectorSize::S512, false), None, None, target(32, SectorSize::S512), false));
        assert!(e.contains("too small") && e.contains("33554432"), "{e}");
        let e = err(fit("img", image(SectorSize::S512, true), None, None, target(128, SectorSize::S4096), false));
        assert!(e.contains("BIOS") && e.contains("512-byte sectors"), "{e}");
        let e = err(fit("img", vec![0; HEAD as usize], None, None, target(128, SectorSize::S512), false));
        assert!(e.contains("cannot tell the image's size"), "{e}");
        // Data past the partitions that the device cannot hold.
        let small = TargetFacts { size: 63 * MIB + MIB / 2, sector: Some(SectorSize::S512) };
        let e = err(fit("img", image(SectorSize::S512, false), None, Some(64 * MIB - 33 * 512), small, false));
        assert!(e.contains("too small"), "{e}");
    }

    #[test]
    fn a_table_kiln_would_not_write_is_kept_as_it_is_or_refused() {
        let mut head = image(SectorSize::S512, false);
        // A partition name kiln's writer would not reproduce from what it reads back: a non-zero byte after the
        // name's terminating zero, with the checksums redone.
        let entry = 2 * 512;
        head[entry + 126] = 0x41;
        let entries_crc = kiln_formats::disk::crc32(&head[1024..1024 + 128 * 128]);
        head[512 + 88..512 + 92].copy_from_slice(&entries_crc.to_le_bytes());
        head[512 + 16..512 + 20].fill(0);
        let crc = kiln_formats::disk::crc32(&head[512..512 + 92]);
        head[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        let kept = fit("img", head.clone(), None, None, target(128, SectorSize::S512), false).unwrap();
        assert_eq!(kept.how, Table2::AsIs);
        assert_eq!(kept.head, head);
        assert!(kept.tail.is_empty() && kept.skip.is_none());
        let e = fit("img", head, None, None, target(128, SectorSize::S512), true).unwrap_err();
        assert!(format!("{e:#}").contains("cannot be rewritten"), "{e:#}");
    }
}
