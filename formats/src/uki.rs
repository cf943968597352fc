//! Unified Kernel Images: systemd's EFI stub (`linux<arch>.efi.stub`) with the kernel, initrd, command line
//! and os-release appended as PE sections, as systemd's `ukify` places them (the UAPI Group's UKI
//! specification): each new section after the stub's last one, its virtual address aligned to the stub's
//! section alignment and its file data to the file alignment, marked initialised read-only data; the headers
//! updated (section count, image size, checksum cleared); a COFF symbol table the stub carries after its
//! sections is dropped. The stub finds the sections by name; systemd-boot
//! lists a UKI found under `EFI/Linux/` by its `.osrel` and `.cmdline`.

/// Names and roles of the sections a UKI carries (the UKI specification's).
pub mod section {
    /// The kernel image.
    pub const LINUX: &str = ".linux";
    /// The initrd.
    pub const INITRD: &str = ".initrd";
    /// The kernel command line.
    pub const CMDLINE: &str = ".cmdline";
    /// The os-release file of the system.
    pub const OSREL: &str = ".osrel";
    /// The kernel's release (`uname -r`).
    pub const UNAME: &str = ".uname";
}

/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
const DATA_READONLY: u32 = 0x4000_0040;
const SECTION_HEADER: usize = 40;
/// PE32+ optional header magic.
const PE32_PLUS: u16 = 0x20B;

/// What can go wrong reading a stub or a UKI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a PE32+ image, or one whose headers point outside it.
    #[error("not a PE32+ EFI image: {0}")]
    NotPe(&'static str),
    /// A section name over 8 bytes.
    #[error("section name {0:?} is longer than 8 bytes")]
    Name(String),
    /// A stub that already has a section the UKI adds.
    #[error("the EFI stub already has a {0} section")]
    Duplicate(String),
    /// No room after the section table for more section headers.
    #[error("the EFI stub's headers have room for {room} more sections, {wanted} are added")]
    NoRoom {
        /// Headers that fit.
        room: usize,
        /// Headers wanted.
        wanted: usize,
    },
    /// A signed stub (appending sections would void its signature; sign the UKI instead).
    #[error("the EFI stub is signed (it has a certificate table): give an unsigned stub and sign the UKI")]
    Signed,
}

/// One section of a PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// Its name (up to 8 bytes).
    pub name: String,
    /// Address relative to the image base once loaded.
    pub virtual_address: u32,
    /// Bytes in memory.
    pub virtual_size: u32,
    /// Where its bytes are in the file.
    pub file_offset: u32,
    /// Bytes in the file (a multiple of the file alignment).
    pub file_size: u32,
}

/// The parts of a PE32+ image's headers this module reads and changes.
struct Headers {
    /// Offset of the COFF header (after `PE\0\0`).
    coff: usize,
    /// Offset of the optional header.
    opt: usize,
    /// Offset of the section table.
    table: usize,
    sections: usize,
    section_align: u32,
    file_align: u32,
    size_of_headers: usize,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn headers(pe: &[u8]) -> Result<Headers, Error> {
    if pe.len() < 0x40 || &pe[..2] != b"MZ" {
        return Err(Error::NotPe("no MZ header"));
    }
    let coff = le32(pe, 0x3C) as usize + 4;
    if pe.len() < coff + 20 || &pe[coff - 4..coff] != b"PE\0\0" {
        return Err(Error::NotPe("no PE signature"));
    }
    let opt = coff + 20;
    let opt_size = usize::from(le16(pe, coff + 16));
    if opt_size < 112 || pe.len() < opt + opt_size || le16(pe, opt) != PE32_PLUS {
        return Err(Error::NotPe("no PE32+ optional header"));
    }
    let h = Headers {
        coff,
        opt,
        table: opt + opt_size,
        sections: usize::from(le16(pe, coff + 2)),
        section_align: le32(pe, opt + 32),
        file_align: le32(pe, opt + 36),
        size_of_headers: le32(pe, opt + 60) as usize,
    };
    if !h.section_align.is_power_of_two() || !h.file_align.is_power_of_two() {
        return Err(Error::NotPe("alignments that are not powers of two"));
    }
    if h.table + h.sections * SECTION_HEADER > h.size_of_headers.min(pe.len()) {
        return Err(Error::NotPe("section table beyond the headers"));
    }
    Ok(h)
}

/// The sections of a PE32+ image.
///
/// # Errors
/// Not a PE32+ image, or a section whose bytes lie outside the file.
pub fn sections(pe: &[u8]) -> Result<Vec<SectionInfo>, Error> {
    let h = headers(pe)?;
    (0..h.sections)
        .map(|i| {
            let s = &pe[h.table + i * SECTION_HEADER..][..SECTION_HEADER];
            let name = String::from_utf8_lossy(&s[..8]).trim_end_matches('\0').to_owned();
            let info = SectionInfo {
                name,
                virtual_size: le32(s, 8),
                virtual_address: le32(s, 12),
                file_size: le32(s, 16),
                file_offset: le32(s, 20),
            };
            if info.file_offset as usize + info.file_size as usize > pe.len() {
                return Err(Error::NotPe("a section's bytes beyond the end of the file"));
            }
            Ok(info)
        })
        .collect()
}

/// The bytes of section `name` of `pe` (its virtual size's worth), if it has one.
///
/// # Errors
/// Not a PE32+ image.
pub fn section<'a>(pe: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, Error> {
    Ok(sections(pe)?.into_iter().find(|s| s.name == name).map(|s| {
        let len = s.virtual_size.min(s.file_size) as usize;
        &pe[s.file_offset as usize..s.file_offset as usize + len]
    }))
}

/// The machine type in the COFF header (`0x8664` x86-64, `0xAA64` arm64).
///
/// # Errors
/// Not a PE32+ image.
pub fn machine(pe: &[u8]) -> Result<u16, Error> {
    let h = headers(pe)?;
    Ok(le16(pe, h.coff))
}

/// The UKI made of `stub` and `add` (name, bytes), appended in that order.
///
/// # Errors
/// A stub that is not PE32+, is signed, already has one of the sections or has no room for their headers; a
/// name over 8 bytes.
pub fn build(stub: &[u8], add: &[(&str, &[u8])]) -> Result<Vec<u8>, Error> {
    let h = headers(stub)?;
    let existing = sections(stub)?;
    // The certificate table (data directory 4) would have to stay at the end of the file.
    if le16(stub, h.coff + 16) as usize >= 112 + 5 * 8 && le32(stub, h.opt + 112 + 4 * 8 + 4) != 0 {
        return Err(Error::Signed);
    }
    for (name, _) in add {
        if name.len() > 8 {
            return Err(Error::Name((*name).to_owned()));
        }
        if existing.iter().any(|s| s.name == *name) {
            return Err(Error::Duplicate((*name).to_owned()));
        }
    }
    let table_end = h.table + h.sections * SECTION_HEADER;
    let room = (h.size_of_headers - table_end) / SECTION_HEADER;
    if room < add.len() {
        return Err(Error::NoRoom { room, wanted: add.len() });
    }
    let align = |v: u64, a: u32| v.next_multiple_of(u64::from(a));
    let mut va = existing.iter().map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size)).max().unwrap_or(0);
    let mut file_end = existing
        .iter()
        .map(|s| u64::from(s.file_offset) + u64::from(s.file_size))
        .max()
        .unwrap_or(h.size_of_headers as u64)
        .max(h.size_of_headers as u64);
    let mut out = stub[..file_end as usize].to_vec();
    for (i, (name, data)) in add.iter().enumerate() {
        va = align(va, h.section_align);
        file_end = align(file_end, h.file_align);
        let file_size = align(data.len() as u64, h.file_align);
        let mut hdr = [0u8; SECTION_HEADER];
        hdr[..name.len()].copy_from_slice(name.as_bytes());
        hdr[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        hdr[12..16].copy_from_slice(&(va as u32).to_le_bytes());
        hdr[16..20].copy_from_slice(&(file_size as u32).to_le_bytes());
        hdr[20..24].copy_from_slice(&(file_end as u32).to_le_bytes());
        hdr[36..40].copy_from_slice(&DATA_READONLY.to_le_bytes());
        let at = table_end + i * SECTION_HEADER;
        out[at..at + SECTION_HEADER].copy_from_slice(&hdr);
        out.resize(file_end as usize, 0);
        out.extend_from_slice(data);
        out.resize((file_end + file_size) as usize, 0);
        va += data.len() as u64;
        file_end += file_size;
    }
    // A COFF symbol table after the stub's sections is left out (the sections now follow them): say so.
    out[h.coff + 8..h.coff + 16].fill(0);
    let count = (h.sections + add.len()) as u16;
    out[h.coff + 2..h.coff + 4].copy_from_slice(&count.to_le_bytes());
    let size_of_image = align(va, h.section_align) as u32;
    out[h.opt + 56..h.opt + 60].copy_from_slice(&size_of_image.to_le_bytes());
    // The checksum no longer holds; UEFI does not check it, signing tools set it.
    out[h.opt + 64..h.opt + 68].fill(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: headers of 0x400 bytes, one `.text` section.
    fn stub(section_align: u32) -> Vec<u8> {
        let mut pe = vec![0u8; 0x600];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        pe[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        pe[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        pe[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        pe[opt..opt + 2].copy_from_slice(&PE32_PLUS.to_le_bytes());
        pe[opt + 32..opt + 36].copy_from_slice(&section_align.to_le_bytes());
        pe[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
        pe[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
        let s = opt + 240;
        pe[s..s + 5].copy_from_slice(b".text");
        pe[s + 8..s + 12].copy_from_slice(&0x123u32.to_le_bytes());
        pe[s + 12..s + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        pe[s + 16..s + 20].copy_from_slice(&0x200u32.to_le_bytes());
        pe[s + 20..s + 24].copy_from_slice(&0x400u32.to_le_bytes());
        pe
    }

    #[test]
    fn sections_are_appended_aligned_and_read_back() {
        for align in [0x200, 0x1000] {
            let uki = build(&stub(align), &[(".cmdline", b"quiet"), (".linux", &[7; 5000])]).unwrap();
            let s = sections(&uki).unwrap();
            assert_eq!(s.len(), 3);
            assert_eq!((s[1].name.as_str(), s[1].virtual_size, s[1].file_offset), (".cmdline", 5, 0x600));
            assert_eq!(u64::from(s[1].virtual_address), (0x1123u64).next_multiple_of(u64::from(align)));
            assert_eq!(s[2].file_offset, 0x800);
            assert_eq!(s[2].file_size, 5120);
            assert_eq!(u64::from(s[2].virtual_address) % u64::from(align), 0);
            assert_eq!(section(&uki, ".linux").unwrap().unwrap(), &[7; 5000]);
            assert_eq!(section(&uki, ".cmdline").unwrap().unwrap(), b"quiet");
            let size_of_image = le32(&uki, 0x84 + 20 + 56);
            assert_eq!(
                u64::from(size_of_image),
                u64::from(s[2].virtual_address + 5000).next_multiple_of(u64::from(align))
            );
            assert_eq!(machine(&uki).unwrap(), 0x8664);
        }
    }

    #[test]
    fn bad_stubs_and_sections_are_refused() {
        assert!(matches!(build(b"not a PE", &[]), Err(Error::NotPe(_))));
        assert!(matches!(build(&stub(0x200), &[(".text", b"x")]), Err(Error::Duplicate(_))));
        assert!(matches!(build(&stub(0x200), &[(".toolongname", b"x")]), Err(Error::Name(_))));
        let many: Vec<(&str, &[u8])> = vec![(".a", b"x"); 20];
        assert!(matches!(build(&stub(0x200), &many), Err(Error::NoRoom { room: 14, wanted: 20 })));
        let mut signed = stub(0x200);
        signed[0x84 + 20 + 112 + 32 + 4] = 1;
        assert!(matches!(build(&signed, &[]), Err(Error::Signed)));
    }
}
