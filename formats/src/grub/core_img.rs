//! GRUB's i386-pc core.img, assembled from GRUB's files as data: what `grub-mkimage -O i386-pc -d DIR -p PREFIX
//! [-c CONFIG] MODULES…` writes (GRUB 2.06, `util/mkimage.c`), without running any program from the GRUB package.
//! Running the closure's `grub-mkimage` on the build host would be running untrusted code, as root.
//!
//! core.img is, in this order:
//!
//! 1. `diskboot.img` (one sector), its blocklist's sector count (u16 at 0x1FC) set to the sectors after it;
//! 2. `lzma_decompress.img`, with the LZMA stream's length at 0x08 and the payload's at 0x0C (u32 LE);
//! 3. the payload as a raw LZMA stream (`lc` 3, `lp` 0, `pb` 2, no header, no end marker).
//!
//! The payload is kernel.img laid out from its link address 0x9000 (see [`super::kernel`]) followed by the
//! module section: `grub_module_info32` {magic `0x676d696d`, offset 12, size of the whole section}, then per
//! object a header {type, size} and its bytes, zero-padded to 4 bytes: each module (dependencies first, see
//! [`ModDeps::resolve`]) as type 0 (ELF), the embedded config as type 2 with at least one NUL after it, the
//! prefix as type 3 likewise. The header's size counts the header and the padded bytes.
//!
//! # The LZMA stream is grub-mkimage's
//!
//! grub-mkimage compresses with the LZMA SDK 4.58 beta encoder GRUB carries (`grub-core/lib/LzmaEnc.c`), with
//! `LzmaEncProps_Init` defaults (level 5: optimal parser, BT4 match finder with 4 hash bytes, 32 fast bytes,
//! 32 match-finder cycles) and dictionary 64 KiB, `lc` 3, `lp` 0, `pb` 2, no end marker. The LZMA format fixes
//! how a stream is decoded, not which matches an encoder chooses: each encoder's parser (its price tables, when
//! it stops searching, how it breaks ties) chooses its own, so the same bytes need that encoder's exact
//! algorithm. Measured on kiln's modules (a 367,644-byte payload that grub-mkimage compresses to 143,649
//! bytes), with the same parameters: lzma-rust2 0.25 (XZ for Java's encoder, liblzma's design) differs from
//! byte 1,232 on; liblzma 5.4 from byte 1,301; lzma-sdk-rs 0.2301.1 (LZMA SDK 23.01, whose parser was
//! rewritten after 4.58) from byte 19. No maintained Rust crate has the 4.58 encoder.
//!
//! So kiln has its own encoder (`formats/src/grub/lzma/`): written from the 4.58 algorithm for exactly these
//! parameters (no code taken from GRUB or the LZMA SDK), it makes the same choices, so the whole core.img —
//! diskboot with its sector count, the decompressor with both sizes, the stream — is byte-identical to grub-
//! mkimage's for the same modules, prefix and config; the tests check it against grub-mkimage. The stream is
//! decoded again (with kiln's own decoder, in the same module) before it is used.

use super::files::GrubFiles;
use super::kernel::{self, LINK_ADDR};
use super::lzma;
use super::moddep::ModDeps;
use super::{Error, SECTOR};
use crate::disk::{DiskLayout, PartitionTable};

/// The modules that boot Linux from an ext2/3/4 filesystem found by UUID on a GPT or MBR disk, with a menu and a
/// serial console: disks and partition tables, the filesystem and the search for it, `normal` (the menu and
/// grub.cfg), `linux`, `configfile`, `serial`/`terminal`, and the script commands grub.cfg uses.
pub const LINUX_EXT_MODULES: [&str; 13] = [
    "biosdisk",
    "part_gpt",
    "part_msdos",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "configfile",
    "serial",
    "terminal",
    "echo",
    "test",
];

/// LZMA dictionary size grub-mkimage uses.
pub const LZMA_DICT_SIZE: u32 = lzma::DICT_SIZE;
/// LZMA literal context bits (GRUB's decompressor has them built in).
pub const LZMA_LC: u32 = lzma::LC;
/// LZMA literal position bits.
pub const LZMA_LP: u32 = lzma::LP;
/// LZMA position bits.
pub const LZMA_PB: u32 = lzma::PB;
/// LZMA fast bytes (nice length) of GRUB's encoder settings.
pub const LZMA_NICE_LEN: u32 = lzma::NICE_LEN;

/// `grub_module_info32.magic`: "mimg" (`GRUB_MODULE_MAGIC`).
pub const MODULE_MAGIC: u32 = 0x676d_696d;
/// Bytes of `grub_module_info32` {magic, offset, size}.
pub const MODULE_INFO: usize = 12;
/// Bytes of `grub_module_header` {type, size}.
pub const MODULE_HEADER: usize = 8;
/// Module section object type of a module (`OBJ_TYPE_ELF`).
pub const OBJ_ELF: u32 = 0;
/// Object type of the embedded config (`OBJ_TYPE_CONFIG`).
pub const OBJ_CONFIG: u32 = 2;
/// Object type of the prefix (`OBJ_TYPE_PREFIX`).
pub const OBJ_PREFIX: u32 = 3;

/// Decompressor: u32 length of the LZMA stream (`GRUB_DECOMPRESSOR_I386_PC_COMPRESSED_SIZE`).
pub const COMPRESSED_SIZE: usize = 0x08;
/// Decompressor: u32 length of the payload (`GRUB_DECOMPRESSOR_I386_PC_UNCOMPRESSED_SIZE`).
pub const UNCOMPRESSED_SIZE: usize = 0x0C;
/// Largest decompressor: it runs at 0x8200 and must end below the kernel's link address.
pub const MAX_DECOMPRESSOR: usize = LINK_ADDR as usize - 0x8200;
/// core.img after diskboot is loaded at the link address and must end below this address.
pub const CORE_END_LIMIT: u32 = 0x78000;
/// diskboot: u16 sector count of its (first) blocklist entry.
const BLOCKLIST_LEN: usize = SECTOR - 4;
/// diskboot: u16 load segment of that entry.
const BLOCKLIST_SEGMENT: usize = SECTOR - 2;

/// What goes into core.img: modules, prefix and embedded config. [`CoreImage::build`] assembles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreImage {
    /// Where GRUB finds its modules and `grub.cfg` at boot (`-p`), e.g. `(hd0,gpt2)/boot/grub` (see [`prefix`]).
    pub prefix: String,
    /// A configuration built into core.img and run before anything else (`-c`, here the text itself).
    pub config: Option<String>,
    /// Modules built in, e.g. `biosdisk part_gpt ext2 normal linux`; their dependencies are added.
    pub modules: Vec<String>,
}

/// An assembled core.img, with what it was made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    image: Vec<u8>,
    payload: Vec<u8>,
    modules: Vec<String>,
    decompressor_len: usize,
}

impl Core {
    /// core.img's bytes.
    #[must_use]
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// core.img's bytes, owned.
    #[must_use]
    pub fn into_image(self) -> Vec<u8> {
        self.image
    }

    /// What the LZMA stream decompresses to: kernel.img laid out flat, then the module section.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The modules in the module section, in order (the requested ones and their dependencies).
    #[must_use]
    pub fn modules(&self) -> &[String] {
        &self.modules
    }

    /// The LZMA stream.
    #[must_use]
    pub fn stream(&self) -> &[u8] {
        &self.image[SECTOR + self.decompressor_len..]
    }
}

impl CoreImage {
    /// A core.img with `prefix`, no embedded config and no modules yet.
    #[must_use]
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), config: None, modules: Vec::new() }
    }

    /// Adds modules to build in.
    #[must_use]
    pub fn modules<I: IntoIterator<Item = S>, S: Into<String>>(mut self, modules: I) -> Self {
        self.modules.extend(modules.into_iter().map(Into::into));
        self
    }

    /// Builds in a configuration: GRUB runs it before anything else.
    #[must_use]
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Assembles core.img from `files` (GRUB's i386-pc directory): `moddep.lst`, `kernel.img`, the modules,
    /// `lzma_decompress.img` and `diskboot.img` are read as data; nothing is run.
    ///
    /// # Errors
    ///
    /// [`Error::ReadFile`] naming a file that cannot be read; [`Error::ModDep`], [`Error::ModuleName`],
    /// [`Error::DependencyCycle`] for the module list; [`Error::BadKernel`] and [`Error::BadGrubImage`] for
    /// files that are not GRUB's i386-pc ones; [`Error::BadPrefix`]; [`Error::ImageTooBig`] where grub-mkimage
    /// says "too big"; [`Error::Lzma`] if the stream does not decode back.
    pub fn build(&self, files: &dyn GrubFiles) -> Result<Core, Error> {
        if self.prefix.contains('\0') {
            return Err(Error::BadPrefix { prefix: self.prefix.clone() });
        }
        let read = |name: &str| {
            files.read(name).map_err(|source| Error::ReadFile {
                name: name.to_owned(),
                location: files.location(name),
                source,
            })
        };
        let modules = ModDeps::parse(&read("moddep.lst")?, &files.location("moddep.lst"))?.resolve(&self.modules)?;
        let kernel = kernel::load(&read("kernel.img")?, &files.location("kernel.img"))?;
        let mut module_files = Vec::with_capacity(modules.len());
        for m in &modules {
            module_files.push(read(&format!("{m}.mod"))?);
        }
        let mut payload = kernel.image;
        payload.extend_from_slice(&module_section(&module_files, self.config.as_deref(), &self.prefix));
        let too_big = |what, bytes: usize, limit: u64| Error::ImageTooBig { what, bytes: bytes as u64, limit };
        let uncompressed = u32::try_from(payload.len()).map_err(|_| too_big("payload", payload.len(), 1 << 32))?;

        let stream = lzma::encode(&payload);
        if decompress(&stream, payload.len())? != payload {
            return Err(Error::Lzma { why: "the stream does not decompress to the payload".to_owned() });
        }

        let mut decompressor = read("lzma_decompress.img")?;
        let bad = |name: &'static str, why: String| Error::BadGrubImage { location: files.location(name), why };
        if decompressor.len() < UNCOMPRESSED_SIZE + 4 || decompressor.len() > MAX_DECOMPRESSOR {
            let why =
                format!("{} bytes; GRUB's is {} to {MAX_DECOMPRESSOR}", decompressor.len(), UNCOMPRESSED_SIZE + 4);
            return Err(bad("lzma_decompress.img", why));
        }
        // Loaded at the link address, the decompressor and the stream must end below CORE_END_LIMIT.
        let core_size = decompressor.len() + stream.len();
        let limit = u64::from(CORE_END_LIMIT - LINK_ADDR);
        if core_size as u64 > limit {
            return Err(too_big("core.img after its first sector", core_size, limit));
        }
        let compressed = u32::try_from(stream.len()).expect("below CORE_END_LIMIT");
        decompressor[COMPRESSED_SIZE..COMPRESSED_SIZE + 4].copy_from_slice(&compressed.to_le_bytes());
        decompressor[UNCOMPRESSED_SIZE..UNCOMPRESSED_SIZE + 4].copy_from_slice(&uncompressed.to_le_bytes());
        let mut diskboot = read("diskboot.img")?;
        if diskboot.len() != SECTOR {
            return Err(bad("diskboot.img", format!("{} bytes; it is one {SECTOR}-byte sector", diskboot.len())));
        }
        let segment = u16::from_le_bytes([diskboot[BLOCKLIST_SEGMENT], diskboot[BLOCKLIST_SEGMENT + 1]]);
        if segment != super::FIRST_SEGMENT {
            let why = format!("its blocklist loads at segment {segment:#x}, not {:#x}", super::FIRST_SEGMENT);
            return Err(bad("diskboot.img", why));
        }
        let sectors = u16::try_from(core_size.div_ceil(SECTOR)).expect("below CORE_END_LIMIT");
        diskboot[BLOCKLIST_LEN..BLOCKLIST_LEN + 2].copy_from_slice(&sectors.to_le_bytes());

        let mut image = diskboot;
        image.reserve(core_size);
        image.extend_from_slice(&decompressor);
        image.extend_from_slice(&stream);
        Ok(Core { image, payload, modules, decompressor_len: decompressor.len() })
    }
}

/// GRUB's module section: `grub_module_info32`, then each module (type [`OBJ_ELF`]), the config
/// ([`OBJ_CONFIG`], if any) and the prefix ([`OBJ_PREFIX`]), each after its header and zero-padded to 4 bytes;
/// the config and the prefix end in at least one NUL.
#[must_use]
pub fn module_section(modules: &[Vec<u8>], config: Option<&str>, prefix: &str) -> Vec<u8> {
    let padded = |len: usize| len.next_multiple_of(4);
    let mut objects: Vec<(u32, &[u8], usize)> = modules.iter().map(|m| (OBJ_ELF, &m[..], padded(m.len()))).collect();
    if let Some(c) = config {
        objects.push((OBJ_CONFIG, c.as_bytes(), padded(c.len() + 1)));
    }
    objects.push((OBJ_PREFIX, prefix.as_bytes(), padded(prefix.len() + 1)));
    let total = MODULE_INFO + objects.iter().map(|(_, _, size)| MODULE_HEADER + size).sum::<usize>();
    let u32_of = |n: usize| u32::try_from(n).expect("a module section under 4 GiB");
    let mut out = Vec::with_capacity(total);
    for word in [MODULE_MAGIC, u32_of(MODULE_INFO), u32_of(total)] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (kind, bytes, size) in objects {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&u32_of(MODULE_HEADER + size).to_le_bytes());
        out.extend_from_slice(bytes);
        out.resize(out.len() + size - bytes.len(), 0);
    }
    debug_assert_eq!(out.len(), total);
    out
}

/// Decodes a raw LZMA stream (`lc` 3, `lp` 0, `pb` 2) of `len` bytes, as GRUB's decompressor does.
fn decompress(stream: &[u8], len: usize) -> Result<Vec<u8>, Error> {
    lzma::decode(stream, len).map_err(|e| Error::Lzma { why: format!("decoding: {e}") })
}

/// The payload of a GRUB i386-pc core.img (from grub-mkimage or [`CoreImage::build`]) whose decompressor is
/// `decompressor_len` bytes (the size of its `lzma_decompress.img`): the LZMA stream after it, decoded to the
/// length the decompressor's header gives.
///
/// # Errors
///
/// [`Error::CoreTooSmall`] if the sizes in the header point past the image, [`Error::Lzma`] if the stream does
/// not decode.
pub fn unpack(core_img: &[u8], decompressor_len: usize) -> Result<Vec<u8>, Error> {
    let header = SECTOR..SECTOR + UNCOMPRESSED_SIZE + 4;
    let field = |at: usize| core_img.get(SECTOR + at..SECTOR + at + 4).map(|b| b.try_into().expect("4 bytes"));
    let (Some(compressed), Some(uncompressed)) = (field(COMPRESSED_SIZE), field(UNCOMPRESSED_SIZE)) else {
        return Err(Error::CoreTooSmall { bytes: core_img.len().min(header.end) });
    };
    let (compressed, uncompressed) = (u32::from_le_bytes(compressed) as usize, u32::from_le_bytes(uncompressed));
    let start = SECTOR + decompressor_len;
    let stream = core_img.get(start..start + compressed).ok_or(Error::CoreTooSmall { bytes: core_img.len() })?;
    decompress(stream, uncompressed as usize)
}

/// GRUB's name for partition `number` (from 1) of the boot disk followed by `dir`: `(hd0,gpt2)/boot/grub` on a
/// GPT disk, `(hd0,msdos1)/boot/grub` on an MBR disk.
#[must_use]
pub fn prefix(layout: &DiskLayout, number: usize, dir: &str) -> String {
    let scheme = match layout.table() {
        PartitionTable::Gpt { .. } => "gpt",
        PartitionTable::Mbr { .. } => "msdos",
    };
    format!("(hd0,{scheme}{number}){dir}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::grub::kernel::test_elf;

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn module_section_layout() {
        let mods = vec![b"ELF1234".to_vec(), b"abcd".to_vec()];
        let s = module_section(&mods, Some("echo hi\n"), "(hd0,gpt2)/g");
        // info 12; "ELF1234" 8+8; "abcd" 8+4; "echo hi\n"+NUL 8+12; "(hd0,gpt2)/g"+NUL 8+16.
        let total = 12 + 16 + 12 + 20 + 24;
        assert_eq!(s.len(), total);
        assert_eq!(words(&s[..12]), [MODULE_MAGIC, 12, total as u32]);
        assert_eq!(words(&s[12..20]), [OBJ_ELF, 16]);
        assert_eq!(&s[20..28], b"ELF1234\0");
        assert_eq!(words(&s[28..36]), [OBJ_ELF, 12]);
        assert_eq!(&s[36..40], b"abcd", "a module of whole words gets no padding");
        assert_eq!(words(&s[40..48]), [OBJ_CONFIG, 20]);
        assert_eq!(&s[48..60], b"echo hi\n\0\0\0\0");
        assert_eq!(words(&s[60..68]), [OBJ_PREFIX, 24]);
        assert_eq!(&s[68..], b"(hd0,gpt2)/g\0\0\0\0", "a prefix of whole words still ends in NULs");

        let bare = module_section(&[], None, "/b");
        assert_eq!(words(&bare[..12]), [MODULE_MAGIC, 12, 24]);
        assert_eq!(words(&bare[12..20]), [OBJ_PREFIX, 12]);
        assert_eq!(&bare[20..], b"/b\0\0");
    }

    /// A GRUB directory in memory: tiny kernel, decompressor and diskboot of the right shapes, two modules.
    fn grub_files() -> BTreeMap<String, Vec<u8>> {
        let mut diskboot = vec![0xD0u8; SECTOR];
        diskboot[BLOCKLIST_SEGMENT..].copy_from_slice(&super::super::FIRST_SEGMENT.to_le_bytes());
        let files = [
            ("moddep.lst", b"b: a\na:\n".to_vec()),
            ("kernel.img", test_elf(b"KERNEL CODE", 1, b"kernel data", 64)),
            ("a.mod", b"module a".to_vec()),
            ("b.mod", b"module b!".to_vec()),
            ("lzma_decompress.img", vec![0xDE; 100]),
            ("diskboot.img", diskboot),
        ];
        files.into_iter().map(|(n, b)| (n.to_owned(), b)).collect()
    }

    #[test]
    fn assembles_diskboot_decompressor_and_stream() {
        let files = grub_files();
        let core = CoreImage::new("(hd0,msdos1)/boot/grub").modules(["b"]).config("set x=1\n").build(&files).unwrap();
        assert_eq!(core.modules(), ["a", "b"]);
        let kernel = kernel::load(&files["kernel.img"], "kernel.img").unwrap().image;
        let mods = [b"module a".to_vec(), b"module b!".to_vec()];
        let section = module_section(&mods, Some("set x=1\n"), "(hd0,msdos1)/boot/grub");
        assert_eq!(core.payload(), [kernel, section].concat());

        let img = core.image();
        let stream = core.stream();
        assert_eq!(img.len(), SECTOR + 100 + stream.len());
        let sectors = (100 + stream.len()).div_ceil(SECTOR) as u16;
        assert_eq!(img[..BLOCKLIST_LEN], files["diskboot.img"][..BLOCKLIST_LEN]);
        assert_eq!(img[BLOCKLIST_LEN..BLOCKLIST_LEN + 2], sectors.to_le_bytes());
        assert_eq!(img[BLOCKLIST_SEGMENT..SECTOR], [0x20, 0x08]);
        let d = &img[SECTOR..SECTOR + 100];
        assert_eq!(words(&d[8..16]), [stream.len() as u32, core.payload().len() as u32]);
        assert!(d[..8].iter().chain(&d[16..]).all(|&b| b == 0xDE), "the rest of the decompressor is unchanged");
        assert_eq!(unpack(img, 100).unwrap(), core.payload());

        let again = CoreImage::new("(hd0,msdos1)/boot/grub").modules(["b"]).config("set x=1\n").build(&files);
        assert_eq!(again.unwrap(), core, "reproducible");
    }

    #[test]
    fn refusals_name_the_file() {
        let build = |files: &BTreeMap<String, Vec<u8>>, modules: &[&str]| {
            let err = CoreImage::new("/boot/grub").modules(modules.iter().copied()).build(files).unwrap_err();
            // The message and its sources, as anyhow's `{:#}` prints them.
            let mut text = err.to_string();
            let mut at: &dyn std::error::Error = &err;
            while let Some(source) = at.source() {
                text = format!("{text}: {source}");
                at = source;
            }
            text
        };
        let files = grub_files();
        let err = build(&files, &["nope"]);
        assert!(err.contains("nope.mod (in memory)") && err.contains("no such file"), "{err}");

        let mut f = files.clone();
        f.get_mut("diskboot.img").unwrap().pop();
        assert!(build(&f, &["a"]).contains("diskboot.img (in memory) is not GRUB's i386-pc image: 511 bytes"));

        let mut f = files.clone();
        f.get_mut("diskboot.img").unwrap()[SECTOR - 1] = 0x10;
        assert!(build(&f, &["a"]).contains("segment 0x1020"), "{}", build(&f, &["a"]));

        let mut f = files.clone();
        f.insert("lzma_decompress.img".into(), vec![0; MAX_DECOMPRESSOR + 1]);
        assert!(build(&f, &["a"]).contains("lzma_decompress.img (in memory)"));

        let mut f = files.clone();
        f.insert("kernel.img".into(), b"not an elf file at all, not at all".to_vec());
        assert!(build(&f, &["a"]).contains("kernel.img (in memory) is not GRUB's i386-pc kernel"));

        let mut f = files.clone();
        f.insert("moddep.lst".into(), b"a b\n".to_vec());
        assert!(build(&f, &["a"]).contains("moddep.lst (in memory) line 1"), "{}", build(&f, &["a"]));

        let err = CoreImage::new("/boot\0/grub").build(&files).unwrap_err();
        assert!(matches!(err, Error::BadPrefix { .. }), "{err}");
    }

    #[test]
    fn refuses_a_core_img_past_what_diskboot_can_load() {
        // Incompressible: a module of 0x6F000 pseudo-random bytes makes the stream longer than 0x78000 - 0x9000.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..0x6_F000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let mut files = grub_files();
        files.insert("big.mod".into(), noise);
        let err = CoreImage::new("/boot/grub").modules(["big"]).build(&files).unwrap_err();
        assert!(matches!(err, Error::ImageTooBig { limit: 0x6_F000, .. }), "{err}");
        assert!(err.to_string().contains("core.img after its first sector is too big"), "{err}");
    }
}
