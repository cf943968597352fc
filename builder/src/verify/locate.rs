//! Finding the root filesystem in an image: a bare ext4 filesystem at byte 0, a GPT partition (512- or 4096-byte
//! sectors) of a Linux root or data type or with the label `nixos`, or an MBR partition of type 0x83.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use anyhow::{Result, bail};

/// Byte offset of the ext4 superblock from the start of the filesystem.
const SUPERBLOCK: u64 = 1024;
/// `s_magic` inside the superblock, and its value.
const MAGIC_AT: u64 = 0x38;
const EXT4_MAGIC: u16 = 0xEF53;
/// `s_volume_name` inside the superblock.
const LABEL_AT: u64 = 0x78;
/// The label NixOS mounts its root by.
const ROOT_LABEL: &[u8] = b"nixos";

/// Partition type GUIDs this module knows, as text (as `sgdisk`/`systemd-gpt-auto-generator` spell them), with
/// how much each one says "this is the root filesystem" (higher wins).
const TYPES: &[(&str, &str, u8)] = &[
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)", 3),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)", 3),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem data", 1),
];

/// Whatever an image can be read from at byte offsets (a file, or memory in tests).
pub(crate) trait ReadAt {
    /// Fills `buf` from byte `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        match start.and_then(|s| self.get(s..s + buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

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

/// A logical block address: a sector number, meaningful only with its [`SectorSize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lba(u64);

impl Lba {
    /// The byte offset of this sector, or `None` if it does not fit in 64 bits.
    fn byte_offset(self, sector: SectorSize) -> Option<u64> {
        self.0.checked_mul(sector.bytes())
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

/// The root filesystem: where it starts in the image, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootFs {
    /// Byte offset of the filesystem's first byte in the image.
    pub offset: u64,
    /// How it was found.
    pub location: Location,
}

/// Finds the root filesystem in `image`; `name` is what errors call the image.
pub(crate) fn root_fs(image: &(impl ReadAt + ?Sized), name: &str) -> Result<RootFs> {
    if has_ext4_magic(image, 0) {
        return Ok(RootFs { offset: 0, location: Location::WholeImage });
    }
    let mut tried = vec!["no ext4 superblock at offset 0".to_owned()];
    for sector in [SectorSize::S512, SectorSize::S4096] {
        match gpt_root(image, sector)? {
            GptResult::Found(fs) => return Ok(fs),
            GptResult::NoTable => tried.push(format!("no GPT with {}-byte sectors", sector.bytes())),
            GptResult::NoRoot(why) => bail!("{name}: GPT with {}-byte sectors, but {why}", sector.bytes()),
        }
    }
    match mbr_root(image)? {
        Some(fs) => Ok(fs),
        None => {
            tried.push("no MBR partition of type 0x83 holding ext4".to_owned());
            bail!("{name}: no root filesystem found: {}", tried.join(", "))
        }
    }
}

fn has_ext4_magic(image: &(impl ReadAt + ?Sized), fs_offset: u64) -> bool {
    let mut magic = [0u8; 2];
    let Some(at) = fs_offset.checked_add(SUPERBLOCK + MAGIC_AT) else { return false };
    image.read_exact_at(&mut magic, at).is_ok() && u16::from_le_bytes(magic) == EXT4_MAGIC
}

fn ext4_label(image: &(impl ReadAt + ?Sized), fs_offset: u64) -> Vec<u8> {
    let mut label = [0u8; 16];
    let Some(at) = fs_offset.checked_add(SUPERBLOCK + LABEL_AT) else { return Vec::new() };
    if image.read_exact_at(&mut label, at).is_err() {
        return Vec::new();
    }
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    label[..end].to_vec()
}

/// How well a partition fits as the root: its type's rank, whether it is labelled `nixos`, and lower numbers
/// first.
type Rank = (u8, bool, std::cmp::Reverse<u32>);

enum GptResult {
    Found(RootFs),
    NoTable,
    NoRoot(String),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the primary GPT at LBA 1 and picks the root partition: the best-ranked type (root over data), then the
/// `nixos` label, then the lowest number; only partitions holding ext4 count.
fn gpt_root(image: &(impl ReadAt + ?Sized), sector: SectorSize) -> Result<GptResult> {
    let mut header = vec![0u8; sector.bytes() as usize];
    if image.read_exact_at(&mut header, sector.bytes()).is_err() || &header[..8] != b"EFI PART" {
        return Ok(GptResult::NoTable);
    }
    let header_size = le32(&header, 12) as usize;
    if !(92..=header.len()).contains(&header_size) {
        return Ok(GptResult::NoRoot(format!("its header size {header_size} is invalid")));
    }
    let mut crc_input = header[..header_size].to_vec();
    crc_input[16..20].fill(0);
    if crc32(&crc_input) != le32(&header, 16) {
        return Ok(GptResult::NoRoot("its header checksum is wrong".into()));
    }
    let entries_lba = Lba(le64(&header, 72));
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 1 << 16 {
        return Ok(GptResult::NoRoot(format!("it declares {count} entries of {entry_size} bytes")));
    }
    let Some(entries_at) = entries_lba.byte_offset(sector) else {
        return Ok(GptResult::NoRoot("its entry array is beyond 2^64 bytes".into()));
    };
    let mut entries = vec![0u8; count as usize * entry_size];
    if image.read_exact_at(&mut entries, entries_at).is_err() {
        return Ok(GptResult::NoRoot(format!("its entry array at byte {entries_at} is past the end of the image")));
    }
    if crc32(&entries) != le32(&header, 88) {
        return Ok(GptResult::NoRoot("its partition entry array checksum is wrong".into()));
    }
    let types: Vec<([u8; 16], &str, u8)> = TYPES.iter().map(|&(g, n, r)| (guid_bytes(g), n, r)).collect();
    let mut best: Option<(Rank, RootFs)> = None;
    let mut seen = Vec::new();
    for (i, entry) in entries.chunks_exact(entry_size).enumerate() {
        let type_guid: [u8; 16] = entry[..16].try_into().expect("16 bytes");
        if type_guid == [0; 16] {
            continue;
        }
        let number = i as u32 + 1;
        let known = types.iter().find(|t| t.0 == type_guid);
        let kind = known.map_or_else(|| guid_text(&type_guid), |t| t.1.to_owned());
        let Some(offset) = Lba(le64(entry, 32)).byte_offset(sector) else { continue };
        if !has_ext4_magic(image, offset) {
            seen.push(format!("{number} ({kind}, not ext4)"));
            continue;
        }
        let labelled = ext4_label(image, offset) == ROOT_LABEL;
        let rank: Rank = (known.map_or(0, |t| t.2), labelled, std::cmp::Reverse(number));
        seen.push(format!("{number} ({kind}, ext4)"));
        if (rank.0 > 0 || labelled) && best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, RootFs { offset, location: Location::Gpt { number, kind, sector } }));
        }
    }
    Ok(match best {
        Some((_, fs)) => GptResult::Found(fs),
        None if seen.is_empty() => GptResult::NoRoot("it has no partitions".into()),
        None => GptResult::NoRoot(format!(
            "no partition of a Linux root or data type, or labelled nixos, holds ext4 (partitions: {})",
            seen.join(", ")
        )),
    })
}

/// The first MBR primary partition of type 0x83 that holds ext4.
fn mbr_root(image: &(impl ReadAt + ?Sized)) -> Result<Option<RootFs>> {
    let mut mbr = [0u8; 512];
    if image.read_exact_at(&mut mbr, 0).is_err() || mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    for i in 0..4 {
        let entry = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        if entry[4] != 0x83 {
            continue;
        }
        let Some(offset) = Lba(u64::from(le32(entry, 8))).byte_offset(SectorSize::S512) else { continue };
        if has_ext4_magic(image, offset) {
            return Ok(Some(RootFs { offset, location: Location::Mbr { number: i as u32 + 1 } }));
        }
    }
    Ok(None)
}

/// A GUID's on-disk bytes (the first three fields little-endian) from its text form.
fn guid_bytes(text: &str) -> [u8; 16] {
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
fn crc32(data: &[u8]) -> u32 {
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

    const MIB: usize = 1 << 20;

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
    fn guid_round_trips_and_crc_matches_the_check_value() {
        let b = guid_bytes(ROOT_X86);
        assert_eq!(&b[..4], &[0xE3, 0xBC, 0x68, 0x4F]);
        assert_eq!(guid_text(&b), ROOT_X86);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

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
                want: gpt_at(SectorSize::S512, 1, ESP, 2048),
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
                    fake_ext4(img, 2048 * 512, b"");
                },
                want: Some((2048 * 512, Location::Mbr { number: 2 })),
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
            let got = root_fs(img.as_slice(), "test.img");
            match (&case.want, got) {
                (Some((offset, location)), Ok(fs)) => {
                    assert_eq!((fs.offset, &fs.location), (*offset, location), "{}", case.name);
                }
                (None, Err(e)) => assert!(e.to_string().starts_with("test.img: "), "{}: {e}", case.name),
                (want, got) => panic!("{}: want {want:?}, got {got:?}", case.name),
            }
        }
    }
}
