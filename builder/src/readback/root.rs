//! Where the root filesystem is: the whole image when it is a bare ext4 filesystem; on GPT the partition of the
//! best-ranked Linux root or data type, or labelled `nixos`, holding ext4; on MBR the first partition of type
//! 0x83 holding ext4. A root partition whose superblock lies past the end of a truncated image is still chosen
//! by its type, so a reader can say what is missing of it.

use std::cmp::Reverse;
use std::fmt;

use anyhow::{Result, bail};
use kiln_formats::disk::{Bytes, SectorSize};
use serde::Serialize;

use super::{Disk, Ext4Superblock, Layout, Magic, PartitionType, Table, ser};

/// The MBR type of Linux filesystems, where the root is looked for on an MBR disk.
const MBR_LINUX: u8 = 0x83;
/// The label NixOS mounts its root by.
const ROOT_LABEL: &[u8] = b"nixos";

/// Where the root filesystem was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
        #[serde(serialize_with = "ser::sector")]
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
            Self::Gpt { number, kind, sector } => write!(f, "GPT partition {number} ({kind}, {sector}-byte sectors)"),
            Self::Mbr { number } => write!(f, "MBR partition {number} (type 0x83)"),
        }
    }
}

/// The root filesystem: where it lies in the image, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootFs {
    /// Byte offset of the filesystem's first byte in the image.
    #[serde(serialize_with = "ser::bytes")]
    pub offset: Bytes,
    /// Byte offset just past the end of its partition (of the image, for a bare filesystem); it may lie past the
    /// end of a truncated image.
    #[serde(serialize_with = "ser::bytes")]
    pub end: Bytes,
    /// How it was found.
    pub location: Location,
}

/// How well a partition fits as the root: its type's rank, whether it is labelled `nixos`, and lower numbers
/// first.
type Rank = (u8, bool, Reverse<u32>);

impl RootFs {
    /// Finds the root filesystem of `layout`: the whole image without a table; on GPT the best-ranked type
    /// (root over data), then the `nixos` label, then the lowest number; on MBR the first partition of type
    /// 0x83. Only partitions holding ext4 count, and those whose superblock the image does not reach.
    ///
    /// # Errors
    ///
    /// When no partition fits (the error lists what each holds), the bare image is not ext4, or a superblock
    /// cannot be read.
    pub fn find(disk: &Disk, layout: &Layout) -> Result<Self> {
        let name = disk.name();
        let len = disk.len();
        let sector = match (&layout.table, layout.sector) {
            (Table::None, _) => match &layout.bare {
                Some(Magic::Ext4(_)) => {
                    return Ok(Self { offset: Bytes(0), end: len, location: Location::WholeImage });
                }
                other => bail!("{name}: no root filesystem found: the image is {}, not ext4", describe(other.as_ref())),
            },
            (Table::Gpt { .. }, Some(sector)) => Some(sector),
            _ => None,
        };
        let mut best: Option<(Rank, Self)> = None;
        let mut seen = Vec::new();
        for p in &layout.partitions {
            let label = p.kind.label();
            // A partition whose superblock the image does not reach is chosen by its type alone.
            let cut = p.range.start.get().saturating_add(Ext4Superblock::OFFSET.get() + 1024) > len.get();
            let sb = if cut { None } else { Ext4Superblock::read(&disk.window(p.range))?.filter(|s| s.is_ext4()) };
            match (&sb, cut) {
                (_, true) => seen.push(format!("{} ({label}, past the end of the image)", p.number)),
                (None, false) => {
                    seen.push(format!("{} ({label}, not ext4)", p.number));
                    continue;
                }
                (Some(_), false) => seen.push(format!("{} ({label}, ext4)", p.number)),
            }
            let (rank, location) = match (sector, p.kind) {
                (Some(sector), _) => {
                    let labelled = sb.as_ref().is_some_and(|s| s.label() == ROOT_LABEL);
                    if p.kind.root_rank() == 0 && !labelled {
                        continue;
                    }
                    let location = Location::Gpt { number: p.number, kind: label, sector };
                    ((p.kind.root_rank(), labelled, Reverse(p.number)), location)
                }
                (None, PartitionType::Mbr(MBR_LINUX)) => {
                    ((1, false, Reverse(p.number)), Location::Mbr { number: p.number })
                }
                (None, _) => continue,
            };
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, Self { offset: p.range.start, end: p.range.end, location }));
            }
        }
        match (best, sector) {
            (Some((_, fs)), _) => Ok(fs),
            (None, _) if seen.is_empty() => bail!("{name}: no root filesystem found: the partition table is empty"),
            (None, Some(sector)) => bail!(
                "{name}: GPT with {sector}-byte sectors, but no partition of a Linux root or data type, or labelled \
                 nixos, holds ext4 (partitions: {})",
                seen.join(", ")
            ),
            (None, None) => bail!(
                "{name}: no root filesystem found: no MBR partition of type 0x83 holds ext4 (partitions: {})",
                seen.join(", ")
            ),
        }
    }
}

/// What a bare image is, for messages.
fn describe(magic: Option<&Magic>) -> String {
    match magic {
        Some(Magic::Ext4(_)) => "ext4".into(),
        Some(Magic::Fat(fat)) => format!("a {} filesystem", fat.fat_type()),
        Some(Magic::Other(name)) => format!("a {name} filesystem"),
        Some(Magic::Unknown) | None => "no filesystem kiln knows".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_formats::disk::{Guid, Lba, crc32};

    use super::*;
    use crate::readback::Role;

    const MIB: usize = 1 << 20;

    fn disk(img: Vec<u8>) -> Disk {
        let len = Bytes(img.len() as u64);
        Disk::new(Arc::new(img), len, "test.img".into())
    }

    fn layout(disk: &Disk) -> Result<Layout> {
        Layout::read(disk)?.ok_or_else(|| anyhow::anyhow!("{}: not a disk image", disk.name()))
    }

    fn find(img: Vec<u8>) -> Result<RootFs> {
        let disk = disk(img);
        RootFs::find(&disk, &layout(&disk)?)
    }

    /// A minimal ext4 superblock at `at`: the magic and a label.
    fn fake_ext4(img: &mut [u8], at: usize, label: &[u8]) {
        let sb = at + Ext4Superblock::OFFSET.get() as usize;
        img[sb + 0x38..sb + 0x3A].copy_from_slice(&Ext4Superblock::MAGIC.to_le_bytes());
        img[sb + 0x78..sb + 0x78 + label.len()].copy_from_slice(label);
    }

    /// A GPT with `parts` (type GUID text, first LBA) and 128 entries of 128 bytes at LBA 2.
    fn gpt(img: &mut [u8], sector: SectorSize, parts: &[(&str, u64)]) {
        let s = sector.bytes().get() as usize;
        let mut entries = vec![0u8; 128 * 128];
        for (i, (guid, first)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&Guid::parse(guid).unwrap().to_gpt_bytes());
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
            want: Option<(Bytes, Location)>,
        }
        let gpt_at = |sector: SectorSize, number, kind: &str, lba: u64| {
            let offset = Bytes(lba * sector.bytes().get());
            Some((offset, Location::Gpt { number, kind: kind.to_owned(), sector }))
        };
        let cases = [
            Case { name: "bare", build: |img| fake_ext4(img, 0, b""), want: Some((Bytes(0), Location::WholeImage)) },
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
                want: Some((Bytes(2048 * 512), Location::Mbr { number: 2 })),
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
        assert_eq!((l.sector, l.backup_header()), (Some(SectorSize::S512), Some((Lba(0), Bytes(0)))));
        let got: Vec<(u32, String, Role, u64, u64)> = l
            .partitions
            .iter()
            .map(|p| (p.number, p.kind.label(), p.role(), p.range.start.get(), p.range.end.get()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "ESP".into(), Role::Esp, 2048 * 512, 2149 * 512),
                (2, "Linux root (x86-64)".into(), Role::Other, 4096 * 512, 4197 * 512)
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
        assert_eq!((fs.offset, fs.end), (Bytes(8192 * 512), Bytes(8293 * 512)));
        let mut img = vec![0u8; 4 * MIB];
        gpt(&mut img, SectorSize::S512, &[(ESP, 2048), (ESP, 8192)]);
        let err = format!("{:#}", find(img).unwrap_err());
        assert!(err.contains("(partitions: 1 (ESP, not ext4), 2 (ESP, past the end of the image))"), "{err}");
    }
}
