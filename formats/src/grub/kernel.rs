//! kernel.img, GRUB's i386-pc kernel: a 32-bit ELF executable linked at 0x9000, laid out flat as grub-mkimage
//! does (GRUB 2.06, `util/grub-mkimagexx.c`, `locate_sections` and `grub_mkimage_load_image` for a target
//! without a relocating loader).
//!
//! Code sections (`SHT_PROGBITS`, allocated and executable) go first and must start at the link address; data
//! sections (`SHT_PROGBITS`, allocated, not executable) follow, each at its own address minus the link address.
//! The image ends where the last of these (in section-header order) ends: `.bss` is not in it — the kernel's
//! startup code zeroes it — but its size counts against the memory below 0x68000 the kernel may use.

use super::Error;

/// Where kernel.img is linked and loaded (`GRUB_KERNEL_I386_PC_LINK_ADDR`).
pub const LINK_ADDR: u32 = 0x9000;
/// The kernel with its `.bss` must end below this address (grub-mkimage: "kernel image is too big").
pub const KERNEL_END_LIMIT: u32 = 0x68000;

const SHT_PROGBITS: u32 = 1;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u32 = 2;
const SHF_EXECINSTR: u32 = 4;
const EM_386: u16 = 3;
/// Bytes of an ELF32 header and section header.
const EHDR: usize = 52;
const SHDR: usize = 40;

/// kernel.img loaded flat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Code and data as they lie in memory from [`LINK_ADDR`] on; grub-mkimage's `kernel_size` is its length.
    pub image: Vec<u8>,
    /// Bytes of `.bss` after the image (grub-mkimage's `bss_size`).
    pub bss_size: u32,
}

struct Section {
    index: usize,
    kind: u32,
    flags: u32,
    addr: u32,
    offset: u32,
    size: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Lays out `elf` (kernel.img's bytes, from `location`) as grub-mkimage does for i386-pc.
///
/// # Errors
///
/// [`Error::BadKernel`] if it is not a little-endian ELF32 i386 executable whose code starts at [`LINK_ADDR`],
/// a section lies outside the file or below the link address, or the kernel with its `.bss` reaches
/// [`KERNEL_END_LIMIT`].
pub fn load(elf: &[u8], location: &str) -> Result<Kernel, Error> {
    let bad = |why: String| Error::BadKernel { location: location.to_owned(), why };
    if elf.len() < EHDR || elf[..4] != *b"\x7fELF" {
        return Err(bad("no ELF header".to_owned()));
    }
    if elf[4] != 1 || elf[5] != 1 || elf[6] != 1 || u32_at(elf, 20) != 1 {
        return Err(bad("not a little-endian 32-bit ELF file of version 1".to_owned()));
    }
    if u16_at(elf, 18) != EM_386 {
        return Err(bad(format!("machine {} is not i386 ({EM_386})", u16_at(elf, 18))));
    }
    let shoff = u32_at(elf, 32) as usize;
    let entsize = usize::from(u16_at(elf, 46));
    let count = usize::from(u16_at(elf, 48));
    if entsize < SHDR || shoff.checked_add(entsize * count).is_none_or(|end| end > elf.len()) {
        return Err(bad(format!("its {count} section headers of {entsize} bytes at {shoff} are not in the file")));
    }
    let sections: Vec<Section> = (0..count)
        .map(|index| {
            let h = &elf[shoff + index * entsize..];
            Section {
                index,
                kind: u32_at(h, 4),
                flags: u32_at(h, 8),
                addr: u32_at(h, 12),
                offset: u32_at(h, 16),
                size: u32_at(h, 20),
            }
        })
        .collect();
    let progbits = |exec: u32| {
        let want = SHF_ALLOC | exec;
        sections.iter().filter(move |s| s.kind == SHT_PROGBITS && s.flags & (SHF_ALLOC | SHF_EXECINSTR) == want)
    };
    let start = |s: &Section| {
        s.addr.checked_sub(LINK_ADDR).ok_or_else(|| {
            bad(format!("section {} is at {:#x}, below the link address {LINK_ADDR:#x}", s.index, s.addr))
        })
    };
    let end = |s: &Section| -> Result<u32, Error> {
        start(s)?.checked_add(s.size).ok_or_else(|| bad(format!("section {} ends past 4 GiB", s.index)))
    };
    // As grub-mkimage: the code sections, then the data sections; the size is where the last one ends.
    let mut kept = Vec::new();
    let mut kernel_size = 0;
    for s in progbits(SHF_EXECINSTR) {
        if s.addr != LINK_ADDR {
            return Err(bad(format!(
                "code section {} starts at {:#x} instead of {LINK_ADDR:#x} (grub-mkimage: miscompiled)",
                s.index, s.addr
            )));
        }
        kernel_size = end(s)?;
        kept.push(s);
    }
    if kept.is_empty() {
        return Err(bad("no code section".to_owned()));
    }
    for s in progbits(0) {
        kernel_size = end(s)?;
        kept.push(s);
    }
    let mut bss_end = kernel_size;
    for s in sections.iter().filter(|s| s.kind == SHT_NOBITS) {
        bss_end = end(s)?;
    }
    let bss_size =
        bss_end.checked_sub(kernel_size).ok_or_else(|| bad(".bss lies before the end of the data".to_owned()))?;
    let limit = KERNEL_END_LIMIT - LINK_ADDR;
    if u64::from(kernel_size) + u64::from(bss_size) > u64::from(limit) {
        return Err(Error::ImageTooBig {
            what: "kernel.img with its .bss",
            bytes: u64::from(kernel_size) + u64::from(bss_size),
            limit: u64::from(limit),
        });
    }
    let mut image = vec![0u8; kernel_size as usize];
    for s in kept {
        let (at, len, from) = (start(s)? as usize, s.size as usize, s.offset as usize);
        let data = from.checked_add(len).and_then(|to| elf.get(from..to)).ok_or_else(|| {
            bad(format!("section {} ({len} bytes at file offset {from}) is not in the file", s.index))
        })?;
        let into = image.get_mut(at..at + len).ok_or_else(|| {
            bad(format!(
                "section {} ends past the last one, at {:#x}",
                s.index,
                LINK_ADDR as usize + kernel_size as usize
            ))
        })?;
        into.copy_from_slice(data);
    }
    Ok(Kernel { image, bss_size })
}

/// A small kernel.img for tests: `.text` at the link address, `.rodata` after a gap, `.data`, `.bss`.
#[cfg(test)]
pub(super) fn test_elf(text: &[u8], rodata_gap: u32, data: &[u8], bss: u32) -> Vec<u8> {
    let text_len = u32::try_from(text.len()).unwrap();
    let rodata_addr = LINK_ADDR + text_len + rodata_gap;
    let data_addr = rodata_addr + 4;
    let bss_addr = (data_addr + u32::try_from(data.len()).unwrap()).next_multiple_of(32);
    let mut body = Vec::new();
    let text_off = EHDR as u32;
    body.extend_from_slice(text);
    let rodata_off = text_off + u32::try_from(body.len()).unwrap();
    body.extend_from_slice(b"RO!\0");
    let data_off = text_off + u32::try_from(body.len()).unwrap();
    body.extend_from_slice(data);
    let shoff = text_off + u32::try_from(body.len()).unwrap();
    let mut elf = vec![0u8; EHDR];
    elf[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    elf[16..18].copy_from_slice(&2u16.to_le_bytes());
    elf[18..20].copy_from_slice(&EM_386.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..28].copy_from_slice(&LINK_ADDR.to_le_bytes());
    elf[32..36].copy_from_slice(&shoff.to_le_bytes());
    elf[40..42].copy_from_slice(&(EHDR as u16).to_le_bytes());
    elf[46..48].copy_from_slice(&(SHDR as u16).to_le_bytes());
    elf[48..50].copy_from_slice(&5u16.to_le_bytes());
    elf.extend_from_slice(&body);
    let shdr = |kind: u32, flags: u32, addr: u32, offset: u32, size: u32| {
        let mut h = [0u8; SHDR];
        for (i, v) in [0, kind, flags, addr, offset, size].into_iter().enumerate() {
            h[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        h
    };
    elf.extend_from_slice(&[0u8; SHDR]);
    elf.extend_from_slice(&shdr(SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, LINK_ADDR, text_off, text_len));
    elf.extend_from_slice(&shdr(SHT_PROGBITS, SHF_ALLOC, rodata_addr, rodata_off, 4));
    let data_len = u32::try_from(data.len()).unwrap();
    elf.extend_from_slice(&shdr(SHT_PROGBITS, SHF_ALLOC | 1, data_addr, data_off, data_len));
    elf.extend_from_slice(&shdr(SHT_NOBITS, SHF_ALLOC | 1, bss_addr, shoff, bss));
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_out_code_and_data_at_their_addresses_without_bss() {
        let elf = test_elf(b"CODE!", 3, b"DATA", 0x100);
        let k = load(&elf, "kernel.img").unwrap();
        assert_eq!(k.image, b"CODE!\0\0\0RO!\0DATA", "the gap before .rodata is zeros");
        // .bss at the next multiple of 32 after the data: 0x9000 + 16 -> 0x9020, 0x100 long.
        assert_eq!(k.bss_size, 0x9020 + 0x100 - 0x9000 - 16);
    }

    #[test]
    fn refuses_what_grub_mkimage_cannot_load() {
        let good = test_elf(b"CODE", 0, b"DATA", 16);
        let shoff = u32_at(&good, 32) as usize;
        let text_hdr = shoff + SHDR;
        let edit = |at: usize, bytes: &[u8]| {
            let mut e = good.clone();
            e[at..at + bytes.len()].copy_from_slice(bytes);
            e
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("not ELF", b"MZ\0\0".repeat(20), "no ELF header"),
            ("64-bit", edit(4, &[2]), "32-bit"),
            ("x86-64", edit(18, &62u16.to_le_bytes()), "not i386"),
            ("headers past the end", edit(32, &(good.len() as u32).to_le_bytes()), "not in the file"),
            ("code elsewhere", edit(text_hdr + 12, &0x8000u32.to_le_bytes()), "instead of 0x9000"),
            ("code past the file", edit(text_hdr + 20, &0x10_0000u32.to_le_bytes()), "not in the file"),
            ("huge bss", edit(shoff + 4 * SHDR + 20, &0x6_0000u32.to_le_bytes()), "too big"),
        ];
        for (name, elf, want) in cases {
            let err = load(&elf, "kernel.img").unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
    }
}
