//! What `grub-bios-setup` does to a disk, without a device: boot.img into sector 0 around the partition table,
//! core.img into the embedding area with its blocklist pointing at itself. Offsets are GRUB's
//! (`include/grub/i386/pc/boot.h`, `include/grub/offsets.h`, `util/setup.c`).

use super::Error;
use crate::disk::{Bytes, DiskLayout, Lba, LbaRange, MBR_SIZE, PartitionTable, SectorSize, partition_type};
use crate::sink::WriteAt;

/// The only sector size GRUB's i386-pc boot code handles: boot.img and diskboot load 512-byte sectors.
pub const SECTOR: usize = 512;

/// boot.img: start of the BIOS parameter block kept from the disk (`GRUB_BOOT_MACHINE_BPB_START`).
pub const BPB_START: usize = 0x03;
/// boot.img: end of the BIOS parameter block (`GRUB_BOOT_MACHINE_BPB_END`).
pub const BPB_END: usize = 0x5A;
/// boot.img: u64 LBA of core.img's first sector (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`).
pub const KERNEL_SECTOR: usize = 0x5C;
/// boot.img: boot drive, 0xFF = the one the BIOS booted from (`GRUB_BOOT_MACHINE_BOOT_DRIVE`).
pub const BOOT_DRIVE: usize = 0x64;
/// boot.img: the `jmp` over the drive-number check, made two `nop`s on hard disks
/// (`GRUB_BOOT_MACHINE_DRIVE_CHECK`).
pub const DRIVE_CHECK: usize = 0x66;
/// boot.img: start of what is kept from the disk: disk signature, partition table
/// (`GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC`).
pub const TABLE_START: usize = 0x1B8;
/// boot.img: end of the partition table (`GRUB_BOOT_MACHINE_PART_END`), where `55 AA` follows.
pub const TABLE_END: usize = 0x1FE;
/// core.img: offset of the first (highest) blocklist entry in the diskboot sector; entries of
/// [`BLOCKLIST_ENTRY`] bytes grow down from here.
pub const FIRST_BLOCKLIST: usize = SECTOR - BLOCKLIST_ENTRY;
/// Bytes of a blocklist entry: u64 start LBA, u16 sector count, u16 load segment.
pub const BLOCKLIST_ENTRY: usize = 12;
/// core.img: the segment the sector after diskboot loads at (`GRUB_BOOT_I386_PC_KERNEL_SEG` + 512/16).
pub const FIRST_SEGMENT: u16 = 0x820;
/// core.img: u16 length of the part not covered by Reed-Solomon codes, in the decompressor's header right after
/// diskboot (`GRUB_KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH`); 0xFFFF means a core.img older than the setup
/// code expects, and `grub-bios-setup` refuses it as a "core.img version mismatch".
pub const NO_RS_LENGTH: usize = SECTOR + 0x14;
/// Most sectors of core.img: `grub-bios-setup` embeds at most `(0x78000 - GRUB_KERNEL_I386_PC_LINK_ADDR) / 512`
/// with `GRUB_KERNEL_I386_PC_LINK_ADDR = 0x9000`, and `grub-mkimage` refuses to make a larger image.
pub const MAX_CORE_SECTORS: u64 = (0x78000 - 0x9000) / SECTOR as u64;

/// Where GRUB goes on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedTarget {
    /// The disk's sector size (only [`SectorSize::S512`] is accepted).
    pub sector_size: SectorSize,
    /// The disk's current sector 0 (the first 512 bytes): its BPB area, disk signature and partition table are
    /// kept.
    pub mbr: [u8; MBR_SIZE],
    /// The sectors core.img may occupy: the BIOS boot partition, or the gap between the MBR and the first
    /// partition.
    pub area: LbaRange,
}

impl EmbedTarget {
    /// The target on a planned disk: sector 0 as [`DiskLayout::mbr`] writes it, and the area GRUB itself would
    /// embed into: the BIOS boot partition on GPT, sectors from 1 to the first partition on MBR.
    ///
    /// # Errors
    ///
    /// [`Error::SectorSize`] on a 4096-byte-sector disk, [`Error::NoEmbeddingArea`] if a GPT disk has no BIOS
    /// boot partition (or several) or an MBR disk no partition.
    pub fn for_layout(layout: &DiskLayout) -> Result<Self, Error> {
        check_sector_size(layout.sector_size())?;
        let area = match layout.table() {
            PartitionTable::Gpt { .. } => {
                let bios: Vec<usize> = layout
                    .partitions()
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.type_guid == partition_type::BIOS_BOOT)
                    .map(|(i, _)| i + 1)
                    .collect();
                match bios[..] {
                    [n] => layout.partitions()[n - 1].extent,
                    [] => {
                        return Err(Error::NoEmbeddingArea {
                            why: format!(
                                "the GPT disk has no BIOS boot partition (type {})",
                                partition_type::BIOS_BOOT
                            ),
                        });
                    }
                    _ => {
                        return Err(Error::NoEmbeddingArea {
                            why: format!("the GPT disk has several BIOS boot partitions: {bios:?}"),
                        });
                    }
                }
            }
            PartitionTable::Mbr { .. } => {
                let first =
                    layout.partitions().iter().map(|p| p.extent.start).min().ok_or_else(|| Error::NoEmbeddingArea {
                        why: "the MBR disk has no partition to end the gap after sector 0".to_owned(),
                    })?;
                LbaRange::new(Lba(1), first)
            }
        };
        Ok(Self { sector_size: layout.sector_size(), mbr: layout.mbr(), area })
    }
}

/// The planned GRUB installation of one disk: the new sector 0 and core.img with its blocklist, and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedding {
    pub(super) sector0: [u8; SECTOR],
    pub(super) core: Vec<u8>,
    pub(super) core_lba: Lba,
    pub(super) area: LbaRange,
}

impl Embedding {
    /// Plans the installation of `boot_img` (GRUB's `i386-pc/boot.img`) and `core_img` (from
    /// [`CoreImage::build`](super::CoreImage::build), or `grub-mkimage -O i386-pc`) on `target`, as
    /// `grub-bios-setup --no-rs-codes` would: core.img at the start of the area, padded to whole sectors, with one
    /// blocklist entry for its sectors after the first; sector 0 = boot.img with the disk's BPB area, disk
    /// signature and partition table, pointing at core.img.
    ///
    /// # Errors
    ///
    /// If the disk does not have 512-byte sectors or a partition table, boot.img is not one, core.img is too
    /// small, from another GRUB version, has no blocklist terminator, or does not fit the area.
    pub fn plan(boot_img: &[u8], core_img: &[u8], target: &EmbedTarget) -> Result<Self, Error> {
        check_sector_size(target.sector_size)?;
        let boot: &[u8; SECTOR] = boot_img.try_into().map_err(|_| Error::BadBootImg {
            why: format!("it has {} bytes, boot.img is exactly one 512-byte sector", boot_img.len()),
        })?;
        if boot[TABLE_END..] != [0x55, 0xAA] {
            return Err(Error::BadBootImg { why: "no 55 AA boot signature at 0x1FE".to_owned() });
        }
        if boot[DRIVE_CHECK..DRIVE_CHECK + 2] != [0xEB, 0x05] && boot[DRIVE_CHECK..DRIVE_CHECK + 2] != [0x90, 0x90] {
            return Err(Error::BadBootImg {
                why: format!(
                    "bytes {:02x} {:02x} at 0x66 are not GRUB's drive-check jump (eb 05)",
                    boot[DRIVE_CHECK],
                    boot[DRIVE_CHECK + 1]
                ),
            });
        }
        if target.mbr[TABLE_END..] != [0x55, 0xAA] {
            return Err(Error::NoPartitionTable);
        }
        let area = target.area;
        if area.is_empty() || area.start.get() == 0 {
            return Err(Error::NoEmbeddingArea { why: format!("{area} is empty or includes sector 0") });
        }

        // core.img, padded to whole sectors.
        if core_img.len() < NO_RS_LENGTH + 2 {
            return Err(Error::CoreTooSmall { bytes: core_img.len() });
        }
        let sectors = core_img.len().div_ceil(SECTOR) as u64;
        if sectors > MAX_CORE_SECTORS || sectors > area.sectors() {
            return Err(Error::CoreTooLarge {
                bytes: core_img.len() as u64,
                sectors,
                area,
                area_sectors: area.sectors(),
                limit: MAX_CORE_SECTORS,
            });
        }
        let mut core = core_img.to_vec();
        core.resize(sectors as usize * SECTOR, 0);
        let no_rs = u16::from_le_bytes([core[NO_RS_LENGTH], core[NO_RS_LENGTH + 1]]);
        if no_rs == 0xFFFF {
            return Err(Error::CoreVersion);
        }

        // Clear the blocklist grub-mkimage left (it assumes core.img at LBA 1), as setup.c does.
        let mut at = FIRST_BLOCKLIST;
        while blocklist_len(&core, at) != 0 {
            core[at..at + BLOCKLIST_ENTRY].fill(0);
            at = at.checked_sub(BLOCKLIST_ENTRY).filter(|&a| a > 0).ok_or(Error::NoTerminator)?;
        }
        // One entry for the sectors after diskboot, then a terminator.
        let core_lba = area.start;
        // At most MAX_CORE_SECTORS - 1 (887): fits the u16 length field.
        let rest = (sectors - 1) as u16;
        let e = FIRST_BLOCKLIST;
        core[e..e + 8].copy_from_slice(&(core_lba.get() + 1).to_le_bytes());
        core[e + 8..e + 10].copy_from_slice(&rest.to_le_bytes());
        core[e + 10..e + 12].copy_from_slice(&FIRST_SEGMENT.to_le_bytes());
        core[e - BLOCKLIST_ENTRY..e].fill(0);

        // Sector 0.
        let mut s0 = *boot;
        s0[BPB_START..BPB_END].copy_from_slice(&target.mbr[BPB_START..BPB_END]);
        s0[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.get().to_le_bytes());
        s0[BOOT_DRIVE] = 0xFF;
        s0[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
        s0[TABLE_START..TABLE_END].copy_from_slice(&target.mbr[TABLE_START..TABLE_END]);
        s0[TABLE_END..].copy_from_slice(&[0x55, 0xAA]);

        Ok(Self { sector0: s0, core, core_lba, area })
    }

    /// Plans the installation on a planned disk ([`EmbedTarget::for_layout`]).
    ///
    /// # Errors
    ///
    /// As [`EmbedTarget::for_layout`] and [`Embedding::plan`].
    pub fn for_layout(boot_img: &[u8], core_img: &[u8], layout: &DiskLayout) -> Result<Self, Error> {
        Self::plan(boot_img, core_img, &EmbedTarget::for_layout(layout)?)
    }

    /// The new sector 0.
    #[must_use]
    pub fn sector0(&self) -> &[u8; SECTOR] {
        &self.sector0
    }

    /// core.img as written: padded to whole sectors, blocklist filled in.
    #[must_use]
    pub fn core(&self) -> &[u8] {
        &self.core
    }

    /// The sector core.img starts at.
    #[must_use]
    pub fn core_lba(&self) -> Lba {
        self.core_lba
    }

    /// The sectors core.img occupies.
    #[must_use]
    pub fn core_extent(&self) -> LbaRange {
        LbaRange::new(self.core_lba, Lba(self.core_lba.get() + (self.core.len() / SECTOR) as u64))
    }

    /// The embedding area planned into.
    #[must_use]
    pub fn area(&self) -> LbaRange {
        self.area
    }

    /// Writes core.img, then sector 0, into `sink`. Write the partition table first: sector 0 carries it.
    ///
    /// # Errors
    ///
    /// [`Error::Write`] naming what and where if the sink fails.
    pub fn write(&self, sink: &dyn WriteAt) -> Result<(), Error> {
        let core_at = self.core_lba.offset(SectorSize::S512);
        sink.write_all_at(&self.core, core_at.get()).map_err(|source| Error::Write {
            what: "GRUB core.img",
            offset: core_at,
            source,
        })?;
        sink.write_all_at(&self.sector0, 0).map_err(|source| Error::Write {
            what: "GRUB boot sector",
            offset: Bytes(0),
            source,
        })
    }
}

pub(super) fn blocklist_len(sector: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([sector[at + 8], sector[at + 9]])
}

fn check_sector_size(sector: SectorSize) -> Result<(), Error> {
    match sector {
        SectorSize::S512 => Ok(()),
        SectorSize::S4096 => Err(Error::SectorSize { sector }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{DiskSize, GptAttributes, Guid, MIB, PartitionRequest, PartitionSize, PartitionTable};
    use crate::sink::MemSink;

    fn boot_img() -> Vec<u8> {
        let mut b: Vec<u8> = (0..SECTOR).map(|i| (i * 7 % 251) as u8).collect();
        b[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0xEB, 0x05]);
        b[TABLE_END..].copy_from_slice(&[0x55, 0xAA]);
        b
    }

    /// A core.img as grub-mkimage leaves it: blocklist for LBA 1 (start 2, the rest of the sectors), terminator.
    fn core_img(bytes: usize) -> Vec<u8> {
        let mut c: Vec<u8> = (0..bytes).map(|i| (i * 13 % 253) as u8 | 1).collect();
        let sectors = bytes.div_ceil(SECTOR) as u16;
        c[FIRST_BLOCKLIST - BLOCKLIST_ENTRY..FIRST_BLOCKLIST].fill(0);
        c[FIRST_BLOCKLIST..FIRST_BLOCKLIST + 8].copy_from_slice(&2u64.to_le_bytes());
        c[FIRST_BLOCKLIST + 8..FIRST_BLOCKLIST + 10].copy_from_slice(&(sectors - 1).to_le_bytes());
        c[FIRST_BLOCKLIST + 10..SECTOR].copy_from_slice(&FIRST_SEGMENT.to_le_bytes());
        c[NO_RS_LENGTH..NO_RS_LENGTH + 2].copy_from_slice(&0x075Bu16.to_le_bytes());
        c
    }

    fn layout(table: PartitionTable, sector: SectorSize) -> DiskLayout {
        let gpt = matches!(table, PartitionTable::Gpt { .. });
        let mut requests = Vec::new();
        if gpt {
            requests.push(PartitionRequest {
                name: "BIOS".to_owned(),
                type_guid: partition_type::BIOS_BOOT,
                guid: Guid::v4_from_bytes([1; 16]),
                attributes: GptAttributes::NONE,
                size: PartitionSize::AtLeast(MIB),
            });
        }
        requests.push(PartitionRequest {
            name: if gpt { "nixos".to_owned() } else { String::new() },
            type_guid: partition_type::LINUX_DATA,
            guid: if gpt { Guid::v4_from_bytes([2; 16]) } else { Guid::NIL },
            attributes: GptAttributes::LEGACY_BIOS_BOOTABLE,
            size: PartitionSize::AtLeast(MIB),
        });
        DiskLayout::sequential(sector, table, DiskSize::Fit, requests).unwrap()
    }

    const GPT: PartitionTable =
        PartitionTable::Gpt { disk_guid: Guid::from_u128(0x1111_2222_3333_4444_8555_6666_7777_8888) };
    const MBR: PartitionTable = PartitionTable::Mbr { disk_signature: 0xCAFE_F00D };

    fn image(layout: &DiskLayout, e: &Embedding) -> Vec<u8> {
        let sink = MemSink::new(layout.size().get() as usize);
        layout.write(&sink).unwrap();
        e.write(&sink).unwrap();
        sink.into_inner()
    }

    #[test]
    fn plans_like_grub_bios_setup() {
        struct Case {
            table: PartitionTable,
            core_lba: u64,
        }
        for c in [Case { table: GPT, core_lba: 2048 }, Case { table: MBR, core_lba: 1 }] {
            let layout = layout(c.table, SectorSize::S512);
            let boot = boot_img();
            let core = core_img(100 * SECTOR + 17);
            let e = Embedding::for_layout(&boot, &core, &layout).unwrap();
            let s0 = e.sector0();
            let mbr = layout.mbr();
            assert_eq!(s0[..BPB_START], boot[..BPB_START]);
            assert_eq!(s0[BPB_START..BPB_END], mbr[BPB_START..BPB_END]);
            assert_eq!(s0[BPB_END..KERNEL_SECTOR], boot[BPB_END..KERNEL_SECTOR]);
            assert_eq!(s0[KERNEL_SECTOR..KERNEL_SECTOR + 8], c.core_lba.to_le_bytes());
            assert_eq!(s0[BOOT_DRIVE], 0xFF);
            assert_eq!(s0[BOOT_DRIVE + 1], boot[BOOT_DRIVE + 1]);
            assert_eq!(s0[DRIVE_CHECK..DRIVE_CHECK + 2], [0x90, 0x90]);
            assert_eq!(s0[DRIVE_CHECK + 2..TABLE_START], boot[DRIVE_CHECK + 2..TABLE_START]);
            assert_eq!(s0[TABLE_START..], mbr[TABLE_START..]);

            assert_eq!(e.core_lba(), Lba(c.core_lba));
            assert_eq!(e.core().len(), 101 * SECTOR);
            let b = FIRST_BLOCKLIST;
            assert_eq!(e.core()[b..b + 8], (c.core_lba + 1).to_le_bytes());
            assert_eq!(e.core()[b + 8..b + 10], 100u16.to_le_bytes());
            assert_eq!(e.core()[b + 10..b + 12], 0x820u16.to_le_bytes());
            assert!(e.core()[b - BLOCKLIST_ENTRY..b].iter().all(|&x| x == 0));
            assert_eq!(e.core()[..b - BLOCKLIST_ENTRY], core[..b - BLOCKLIST_ENTRY]);
            assert_eq!(e.core()[SECTOR..core.len()], core[SECTOR..]);
            assert!(e.core()[core.len()..].iter().all(|&x| x == 0));

            let img = image(&layout, &e);
            e.verify_image(&img).unwrap();
        }
    }

    #[test]
    fn verify_finds_damage() {
        let layout = layout(GPT, SectorSize::S512);
        let e = Embedding::for_layout(&boot_img(), &core_img(50 * SECTOR), &layout).unwrap();
        let good = image(&layout, &e);
        struct Case {
            name: &'static str,
            offset: usize,
            want: &'static str,
        }
        let cases = [
            Case { name: "boot code", offset: 0x70, want: "boot sector" },
            Case { name: "partition table", offset: 0x1C0, want: "boot sector" },
            Case { name: "core.img body", offset: 2048 * 512 + 30 * 512 + 5, want: "core.img" },
            Case { name: "blocklist length", offset: 2048 * 512 + FIRST_BLOCKLIST + 8, want: "core.img" },
            Case { name: "blocklist segment", offset: 2048 * 512 + FIRST_BLOCKLIST + 10, want: "blocklist" },
            Case { name: "blocklist start", offset: 2048 * 512 + FIRST_BLOCKLIST + 3, want: "blocklist" },
        ];
        for c in cases {
            let mut bad = good.clone();
            bad[c.offset] ^= 0x40;
            match e.verify_image(&bad) {
                Err(Error::Mismatch { what, .. }) if what == c.want => {}
                other => panic!("{}: {other:?}", c.name),
            }
        }
        assert!(matches!(e.verify_image(&good[..2048 * 512 + 1000]), Err(Error::Read { .. })));
    }

    #[test]
    fn refusals() {
        let gpt = layout(GPT, SectorSize::S512);
        let target = EmbedTarget::for_layout(&gpt).unwrap();
        assert_eq!(target.area, LbaRange::new(Lba(2048), Lba(4096)));
        type Check = fn(&Error) -> bool;
        struct Case {
            name: &'static str,
            boot: Vec<u8>,
            core: Vec<u8>,
            target: EmbedTarget,
            want: Check,
        }
        let mut no_table = target.clone();
        no_table.mbr[TABLE_END] = 0;
        let mut zero_area = target.clone();
        zero_area.area = LbaRange::new(Lba(0), Lba(100));
        let mut old_core = core_img(4 * SECTOR);
        old_core[NO_RS_LENGTH..NO_RS_LENGTH + 2].copy_from_slice(&[0xFF, 0xFF]);
        let mut not_boot = boot_img();
        not_boot[DRIVE_CHECK] = 0;
        let cases = [
            Case {
                name: "core larger than the BIOS boot partition",
                boot: boot_img(),
                core: core_img(2048 * SECTOR + 1),
                target: target.clone(),
                want: |e| matches!(e, Error::CoreTooLarge { sectors: 2049, area_sectors: 2048, .. }),
            },
            Case {
                name: "core larger than GRUB loads",
                boot: boot_img(),
                core: core_img(889 * SECTOR),
                target: EmbedTarget { area: LbaRange::new(Lba(2048), Lba(8192)), ..target.clone() },
                want: |e| matches!(e, Error::CoreTooLarge { sectors: 889, limit: 888, .. }),
            },
            Case {
                name: "boot.img of the wrong size",
                boot: vec![0; 1024],
                core: core_img(4 * SECTOR),
                target: target.clone(),
                want: |e| matches!(e, Error::BadBootImg { .. }),
            },
            Case {
                name: "boot.img without the drive check",
                boot: not_boot,
                core: core_img(4 * SECTOR),
                target: target.clone(),
                want: |e| matches!(e, Error::BadBootImg { .. }),
            },
            Case {
                name: "core.img version mismatch",
                boot: boot_img(),
                core: old_core,
                target: target.clone(),
                want: |e| matches!(e, Error::CoreVersion),
            },
            Case {
                name: "tiny core.img",
                boot: boot_img(),
                core: vec![1; 300],
                target: target.clone(),
                want: |e| matches!(e, Error::CoreTooSmall { bytes: 300 }),
            },
            Case {
                name: "no partition table",
                boot: boot_img(),
                core: core_img(4 * SECTOR),
                target: no_table,
                want: |e| matches!(e, Error::NoPartitionTable),
            },
            Case {
                name: "area over sector 0",
                boot: boot_img(),
                core: core_img(4 * SECTOR),
                target: zero_area,
                want: |e| matches!(e, Error::NoEmbeddingArea { .. }),
            },
        ];
        for c in cases {
            match Embedding::plan(&c.boot, &c.core, &c.target) {
                Ok(_) => panic!("{}: planned", c.name),
                Err(e) => assert!((c.want)(&e), "{}: wrong error {e}", c.name),
            }
        }
        let err = Embedding::plan(&boot_img(), &core_img(2048 * SECTOR + 1), &target).unwrap_err().to_string();
        assert!(err.contains("2049 sectors") && err.contains("holds 2048 sectors"), "{err}");

        let k4 = layout(GPT, SectorSize::S4096);
        let err = EmbedTarget::for_layout(&k4).unwrap_err();
        assert!(matches!(err, Error::SectorSize { sector: SectorSize::S4096 }), "{err}");
        assert!(err.to_string().contains("4096-byte sectors"), "{err}");
        let no_bios =
            DiskLayout::new(SectorSize::S512, gpt.size(), gpt.table(), gpt.partitions()[1..].to_vec()).unwrap();
        assert!(matches!(EmbedTarget::for_layout(&no_bios), Err(Error::NoEmbeddingArea { .. })));
    }
}
