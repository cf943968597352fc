//! What an image is laid out as: a bare ext4 filesystem at byte 0, a GPT (512- or 4096-byte sectors) or an MBR,
//! with every partition's byte range (which may run past the end of a truncated image); and which partition
//! holds the root filesystem: of a Linux root or data type or labelled `nixos` on GPT, of type 0x83 on MBR.
//! A file that is none of these is named when it is a container or compressed stream kiln writes (qcow2, VHD,
//! VHDX, VMDK, zstd, gzip), so the error says what to convert it with.

use std::fmt;

use anyhow::{Result, bail};
use kiln_formats::disk::Bytes;

use super::{container, table};
use crate::inspect::disk::Disk;

/// Byte offset of the ext4 superblock from the start of the filesystem.
pub(crate) const SUPERBLOCK: u64 = 1024;
/// `s_magic` inside the superblock, and its value.
const MAGIC_AT: u64 = 0x38;
const EXT4_MAGIC: u16 = 0xEF53;
/// `s_volume_name` inside the superblock.
const LABEL_AT: u64 = 0x78;
/// The label NixOS mounts its root by.
const ROOT_LABEL: &[u8] = b"nixos";

/// A logical sector size GPT may be written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorSize {
    /// 512-byte sectors.
    S512,
    /// 4096-byte sectors (4Kn disks).
    S4096,
}

impl SectorSize {
    /// Bytes per sector.
    #[must_use]
    pub fn bytes(self) -> u64 {
        match self {
            Self::S512 => 512,
            Self::S4096 => 4096,
        }
    }
}

impl serde::Serialize for SectorSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.bytes())
    }
}

/// Where the root filesystem was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "table", rename_all = "kebab-case")]
pub enum Location {
    /// The image is the filesystem (`--layout none`).
    WholeImage,
    /// A GPT partition.
    Gpt {
        /// Partition number, from 1.
        number: u32,
        /// What its type GUID means, or the GUID.
        kind: String,
        /// The sector size the table was found with.
        sector: SectorSize,
    },
    /// An MBR primary partition.
    Mbr {
        /// Partition number, 1 to 4.
        number: u32,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WholeImage => f.write_str("the whole image"),
            Self::Gpt { number, kind, sector } => {
                write!(f, "GPT partition {number} ({kind}, {}-byte sectors)", sector.bytes())
            }
            Self::Mbr { number } => write!(f, "MBR partition {number} (type 0x83)"),
        }
    }
}

/// The root filesystem: where it lies in the image, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootFs {
    /// Byte offset of the filesystem's first byte in the image.
    pub offset: u64,
    /// Byte offset just past the end of its partition (of the image, for a bare filesystem); it may lie past the
    /// end of a truncated image.
    pub end: u64,
    /// How it was found.
    pub location: Location,
}

/// What a partition is for, as far as verifying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The EFI system partition (GPT type, or MBR type 0xEF).
    Esp,
    /// The Boot Loader Specification's extended boot partition.
    Xbootldr,
    /// The BIOS boot partition holding GRUB's core.img.
    BiosBoot,
    /// Anything else (the root among them).
    Other,
}

/// One partition as its table describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    /// Number, from 1.
    pub number: u32,
    /// What its type is called, or its type GUID, or `type 0x..` on MBR.
    pub kind: String,
    /// What it is for.
    pub role: Role,
    /// Byte offset of its first byte.
    pub start: u64,
    /// Byte offset just past its last byte (may lie past the end of the image).
    pub end: u64,
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} ({})", self.number, self.kind)
    }
}

/// The partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// None: the image is a filesystem.
    None,
    /// A GPT.
    Gpt {
        /// Its sector size.
        sector: SectorSize,
        /// Byte offset of the backup header the primary names (may lie past the end of the image).
        backup_header: u64,
    },
    /// An MBR (DOS) table.
    Mbr,
}

/// How the image is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The table.
    pub table: Table,
    /// Its partitions, in table order.
    pub partitions: Vec<Partition>,
}

impl Layout {
    /// The partitions with `role`.
    pub(crate) fn with_role(&self, role: Role) -> impl Iterator<Item = &Partition> {
        self.partitions.iter().filter(move |p| p.role == role)
    }
}

/// Reads how `disk` is laid out. A corrupt GPT is an error naming what is wrong; a file with no filesystem at
/// byte 0 and no table is an error saying what it is, when kiln knows.
pub(crate) fn layout(disk: &Disk) -> Result<Layout> {
    let name = disk.name();
    if has_ext4_magic(disk, 0)? {
        return Ok(Layout { table: Table::None, partitions: Vec::new() });
    }
    for sector in [SectorSize::S512, SectorSize::S4096] {
        match table::gpt(disk, sector)? {
            table::Gpt::Found(layout) => return Ok(layout),
            table::Gpt::NoTable => {}
            table::Gpt::Corrupt(why) => bail!("{name}: GPT with {}-byte sectors, but {why}", sector.bytes()),
        }
    }
    if let Some(layout) = table::mbr(disk)? {
        return Ok(layout);
    }
    if let Some(what) = container::container(disk)? {
        bail!("{name}: {what}");
    }
    bail!(
        "{name}: not a disk image: no ext4 superblock at byte {SUPERBLOCK}, no GPT header at byte 512 or 4096, and no \
         MBR partition table (55 AA at byte 510)"
    )
}

/// Finds the root filesystem of `layout`: the whole image without a table; on GPT the best-ranked type (root
/// over data), then the `nixos` label, then the lowest number; on MBR the first partition of type 0x83. Only
/// partitions holding ext4 count.
pub(crate) fn root_fs(disk: &Disk, layout: &Layout) -> Result<RootFs> {
    let name = disk.name();
    let len = disk.len().get();
    let sector = match layout.table {
        Table::None => return Ok(RootFs { offset: 0, end: len, location: Location::WholeImage }),
        Table::Gpt { sector, .. } => Some(sector),
        Table::Mbr => None,
    };
    let mut best: Option<(Rank, RootFs)> = None;
    let mut seen = Vec::new();
    for p in &layout.partitions {
        // A partition whose superblock the image does not reach is chosen by its type alone, so that verify can
        // say what is missing of it.
        let cut = p.start.saturating_add(SUPERBLOCK + 1024) > len;
        if cut {
            seen.push(format!("{} ({}, past the end of the image)", p.number, p.kind));
        } else if !has_ext4_magic(disk, p.start)? {
            seen.push(format!("{} ({}, not ext4)", p.number, p.kind));
            continue;
        } else {
            seen.push(format!("{} ({}, ext4)", p.number, p.kind));
        }
        let (rank, location) = match sector {
            Some(sector) => {
                let type_rank = table::TYPES.iter().find(|t| t.1 == p.kind).map_or(0, |t| t.3);
                let labelled = !cut && ext4_label(disk, p.start)? == ROOT_LABEL;
                let rank: Rank = (type_rank, labelled, std::cmp::Reverse(p.number));
                if type_rank == 0 && !labelled {
                    continue;
                }
                (rank, Location::Gpt { number: p.number, kind: p.kind.clone(), sector })
            }
            None if p.kind == MBR_LINUX => {
                ((1, false, std::cmp::Reverse(p.number)), Location::Mbr { number: p.number })
            }
            None => continue,
        };
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, RootFs { offset: p.start, end: p.end, location }));
        }
    }
    match (best, sector) {
        (Some((_, fs)), _) => Ok(fs),
        (None, _) if seen.is_empty() => bail!("{name}: no root filesystem found: the partition table is empty"),
        (None, Some(sector)) => bail!(
            "{name}: GPT with {}-byte sectors, but no partition of a Linux root or data type, or labelled nixos, \
             holds ext4 (partitions: {})",
            sector.bytes(),
            seen.join(", ")
        ),
        (None, None) => bail!(
            "{name}: no root filesystem found: no MBR partition of type 0x83 holds ext4 (partitions: {})",
            seen.join(", ")
        ),
    }
}

/// How an MBR partition of type 0x83 is named.
const MBR_LINUX: &str = "type 0x83";

fn has_ext4_magic(disk: &Disk, fs_offset: u64) -> Result<bool> {
    let Some(at) = fs_offset.checked_add(SUPERBLOCK + MAGIC_AT) else { return Ok(false) };
    let mut magic = [0u8; 2];
    if !disk.contains(Bytes(at), magic.len()) {
        return Ok(false);
    }
    disk.read("the ext4 superblock's magic number", Bytes(at), &mut magic)?;
    Ok(u16::from_le_bytes(magic) == EXT4_MAGIC)
}

fn ext4_label(disk: &Disk, fs_offset: u64) -> Result<Vec<u8>> {
    let mut label = [0u8; 16];
    disk.read("the ext4 label", Bytes(fs_offset + SUPERBLOCK + LABEL_AT), &mut label)?;
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Ok(label[..end].to_vec())
}

/// How well a partition fits as the root: its type's rank, whether it is labelled `nixos`, and lower numbers
/// first.
type Rank = (u8, bool, std::cmp::Reverse<u32>);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::table::{crc32, guid_bytes};
    use super::*;

    const MIB: usize = 1 << 20;

    fn disk(img: Vec<u8>) -> Disk {
        let len = Bytes(img.len() as u64);
        Disk::new(Arc::new(img), len, "test.img".into())
    }

    fn find(img: Vec<u8>) -> Result<RootFs> {
        let disk = disk(img);
        root_fs(&disk, &layout(&disk)?)
    }

    /// A minimal ext4 superblock at `at`: the magic and a label.
    fn fake_ext4(img: &mut [u8], at: usize, label: &[u8]) {
        let sb = at + SUPERBLOCK as usize;
        img[sb + MAGIC_AT as usize..sb + MAGIC_AT as usize + 2].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        img[sb + LABEL_AT as usize..sb + LABEL_AT as usize + label.len()].copy_from_slice(label);
    }

    /// A GPT with `parts` (type GUID text, first LBA) and 128 entries of 128 bytes at LBA 2.
    fn gpt(img: &mut [u8], sector: SectorSize, parts: &[(&str, u64)]) {
        let s = sector.bytes() as usize;
        let mut entries = vec![0u8; 128 * 128];
        for (i, (guid, first)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&guid_bytes(guid));
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&(first + 100).to_le_bytes());
        }
        img[2 * s..2 * s + entries.len()].copy_from_slice(&entries);
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        img[s..s + 92].copy_from_slice(&h);
        img[510] = 0x55;
        img[511] = 0xAA;
        img[446 + 4] = 0xEE;
    }

    const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    const ROOT_X86: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    const DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

    #[test]
    fn finds_the_root_filesystem() {
        struct Case {
            name: &'static str,
            build: fn(&mut [u8]),
            want: Option<(u64, Location)>,
        }
        let gpt_at = |sector, number, kind: &str, lba: u64| {
            let offset = lba * SectorSize::bytes(sector);
            Some((offset, Location::Gpt { number, kind: kind.to_owned(), sector }))
        };
        let cases = [
            Case { name: "bare", build: |img| fake_ext4(img, 0, b""), want: Some((0, Location::WholeImage)) },
            Case {
                name: "gpt root type",
                build: |img| {
                    gpt(img, SectorSize::S512, &[(ESP, 2048), (ROOT_X86, 4096)]);
                    fake_ext4(img, 2048 * 512, b"ESP");
                    fake_ext4(img, 4096 * 512, b"");
                },
                want: gpt_at(SectorSize::S512, 2, "Linux root (x86-64)", 4096),
            },
            Case {
                name: "root type beats a data partition labelled nixos",
                build: |img| {
                    gpt(img, SectorSize::S512, &[(DATA, 2048), (ROOT_X86, 4096)]);
                    fake_ext4(img, 2048 * 512, b"nixos");
                    fake_ext4(img, 4096 * 512, b"other");
                },
                want: gpt_at(SectorSize::S512, 2, "Linux root (x86-64)", 4096),
            },
            Case {
                name: "label picks among data partitions",
                build: |img| {
                    gpt(img, SectorSize::S512, &[(DATA, 2048), (DATA, 4096)]);
                    fake_ext4(img, 2048 * 512, b"boot");
                    fake_ext4(img, 4096 * 512, b"nixos");
                },
                want: gpt_at(SectorSize::S512, 2, "Linux filesystem data", 4096),
            },
            Case {
                name: "label on an unknown type",
                build: |img| {
                    gpt(img, SectorSize::S512, &[(ESP, 2048)]);
                    fake_ext4(img, 2048 * 512, b"nixos");
                },
                want: gpt_at(SectorSize::S512, 1, "ESP", 2048),
            },
            Case {
                name: "4096-byte sectors",
                build: |img| {
                    gpt(img, SectorSize::S4096, &[(ROOT_X86, 256)]);
                    fake_ext4(img, 256 * 4096, b"");
                },
                want: gpt_at(SectorSize::S4096, 1, "Linux root (x86-64)", 256),
            },
            Case {
                name: "mbr 0x83",
                build: |img| {
                    img[510] = 0x55;
                    img[511] = 0xAA;
                    img[446 + 16 + 4] = 0x83;
                    img[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&2048u32.to_le_bytes());
                    img[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&4096u32.to_le_bytes());
                    fake_ext4(img, 2048 * 512, b"");
                },
                want: Some((2048 * 512, Location::Mbr { number: 2 })),
            },
            Case {
                name: "mbr status bytes that are not 0x00 or 0x80",
                build: |img| {
                    img[510] = 0x55;
                    img[511] = 0xAA;
                    img[446] = 0x42;
                    img[446 + 4] = 0x83;
                    img[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
                    fake_ext4(img, 2048 * 512, b"");
                },
                want: None,
            },
            Case { name: "nothing", build: |_| {}, want: None },
            Case { name: "gpt without ext4", build: |img| gpt(img, SectorSize::S512, &[(ROOT_X86, 2048)]), want: None },
            Case {
                name: "gpt with a bad checksum",
                build: |img| {
                    gpt(img, SectorSize::S512, &[(ROOT_X86, 2048)]);
                    fake_ext4(img, 2048 * 512, b"");
                    img[512 + 80] ^= 1;
                },
                want: None,
            },
        ];
        for case in cases {
            let mut img = vec![0u8; 4 * MIB];
            (case.build)(&mut img);
            let got = find(img);
            match (&case.want, got) {
                (Some((offset, location)), Ok(fs)) => {
                    assert_eq!((fs.offset, &fs.location), (*offset, location), "{}", case.name);
                    assert!(fs.end > fs.offset, "{}: {fs:?}", case.name);
                }
                (None, Err(e)) => assert!(e.to_string().starts_with("test.img: "), "{}: {e}", case.name),
                (want, got) => panic!("{}: want {want:?}, got {got:?}", case.name),
            }
        }
    }

    #[test]
    fn partitions_keep_their_byte_ranges_and_roles() {
        let mut img = vec![0u8; 4 * MIB];
        gpt(&mut img, SectorSize::S512, &[(ESP, 2048), (ROOT_X86, 4096)]);
        fake_ext4(&mut img, 4096 * 512, b"");
        let l = layout(&disk(img)).unwrap();
        assert_eq!(l.table, Table::Gpt { sector: SectorSize::S512, backup_header: 0 });
        let got: Vec<(u32, &str, Role, u64, u64)> =
            l.partitions.iter().map(|p| (p.number, p.kind.as_str(), p.role, p.start, p.end)).collect();
        assert_eq!(
            got,
            [
                (1, "ESP", Role::Esp, 2048 * 512, 2149 * 512),
                (2, "Linux root (x86-64)", Role::Other, 4096 * 512, 4197 * 512)
            ]
        );
        assert_eq!(l.partitions[0].to_string(), "partition 1 (ESP)");
    }

    /// A root partition past the end of a truncated image is still found by its type, so verify can say what
    /// is missing of it; other partitions there are named as such when no root is found.
    #[test]
    fn partitions_past_the_end() {
        let mut img = vec![0u8; 4 * MIB];
        gpt(&mut img, SectorSize::S512, &[(ESP, 2048), (ROOT_X86, 8192)]);
        let fs = find(img).unwrap();
        assert_eq!((fs.offset, fs.end), (8192 * 512, 8293 * 512));
        let mut img = vec![0u8; 4 * MIB];
        gpt(&mut img, SectorSize::S512, &[(ESP, 2048), (ESP, 8192)]);
        let err = format!("{:#}", find(img).unwrap_err());
        assert!(err.contains("(partitions: 1 (ESP, not ext4), 2 (ESP, past the end of the image))"), "{err}");
    }

    /// What a file is, when it is no disk image: the containers and streams kiln writes are named, with what to
    /// convert them with; anything else is "not a disk image".
    #[test]
    fn says_what_a_file_that_is_no_disk_image_is() {
        struct Case {
            name: &'static str,
            head: &'static [u8],
            want: &'static str,
        }
        let cases = [
            Case {
                name: "qcow2",
                head: b"QFI\xfb\0\0\0\x03",
                want: "test.img: a qcow2 image, not a raw disk: convert it first (qemu-img convert -f qcow2 -O raw test.img disk.raw)",
            },
            Case { name: "vhdx", head: b"vhdxfile", want: "test.img: a VHDX image, not a raw disk" },
            Case { name: "vmdk", head: b"KDMV\x01\0\0\0", want: "test.img: a VMDK image, not a raw disk" },
            Case { name: "dynamic vhd", head: b"conectix", want: "test.img: a dynamic VHD image, not a raw disk" },
            Case {
                name: "zstd",
                head: &[0x28, 0xB5, 0x2F, 0xFD],
                want: "test.img: zstd-compressed, not a raw disk: decompress it first (zstd -d test.img -o disk.raw)",
            },
            Case { name: "gzip", head: &[0x1F, 0x8B, 0x08], want: "test.img: gzip-compressed, not a raw disk" },
            Case {
                name: "random",
                head: &[0x5A, 0x13, 0xC7, 0x01, 0x99],
                want: "test.img: not a disk image: no ext4 superblock at byte 1024, no GPT header at byte 512 or 4096, and no MBR partition table (55 AA at byte 510)",
            },
        ];
        for case in cases {
            let mut img: Vec<u8> = (0..MIB as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
            img[..case.head.len()].copy_from_slice(case.head);
            img[510] = 0;
            let err = format!("{:#}", find(img).unwrap_err());
            assert!(err.starts_with(case.want), "{}: {err}", case.name);
        }
        let err = format!("{:#}", find(b"tiny".to_vec()).unwrap_err());
        assert!(err.starts_with("test.img: not a disk image"), "{err}");
    }
}
