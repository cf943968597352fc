//! GRUB i386-pc by `kiln_formats::grub` with Debian's GRUB modules (`/usr/lib/grub/i386-pc`): core.img assembled
//! natively and compared with what `/usr/bin/grub-mkimage` (run here as the oracle, never by kiln) makes from the
//! same modules, prefix and config; embedded into a GPT disk's BIOS boot partition and into an MBR disk's gap: the
//! plan's byte patches, read-back verification, the partition table left intact (sgdisk, sfdisk), and real boots
//! under SeaBIOS in QEMU that print a marker from a config built into core.img. Missing tools fail the tests with
//! the Debian package to install.

use crate::common::tool;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kiln_formats::disk::{
    Bytes, DiskLayout, DiskSize, GptAttributes, Guid, Lba, LbaRange, MIB, PartitionRequest, PartitionSize,
    PartitionTable, SectorSize, partition_type,
};
use kiln_formats::grub::{self, CoreImage, EmbedTarget, Embedding, LINUX_EXT_MODULES, ModuleDir};
use serde_json::Value;

const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";
const MARKER: &str = "KILN-GRUB-EMBED-OK";

// ---------------------------------------------------------------------------------------------------------------
// Tools

/// A file a test needs, or a failure naming the Debian package that has it.
fn require_file(path: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} not found: install the Debian package {package} (apt-get install {package})",
        path.display()
    );
    path
}

fn boot_img() -> Vec<u8> {
    std::fs::read(require_file(&format!("{GRUB_DIR}/boot.img"), "grub-pc-bin")).unwrap()
}

/// core.img assembled natively from Debian's modules with the given prefix, modules and embedded config.
fn native_core(prefix: &str, modules: &[&str], config: Option<&str>) -> grub::Core {
    require_file(&format!("{GRUB_DIR}/biosdisk.mod"), "grub-pc-bin");
    let mut c = CoreImage::new(prefix).modules(modules.iter().copied());
    if let Some(text) = config {
        c = c.config(text);
    }
    c.build(&ModuleDir::new(GRUB_DIR)).unwrap_or_else(|e| panic!("{e}"))
}

/// The oracle: Debian's `grub-mkimage -O i386-pc` with the same inputs (the config written to a file for its
/// `-c`). It writes to a file: on a pipe it fails to fsync its output.
fn grub_mkimage(prefix: &str, modules: &[&str], config: Option<&str>) -> Vec<u8> {
    require_file(&format!("{GRUB_DIR}/biosdisk.mod"), "grub-pc-bin");
    let program = tool("grub-mkimage", "grub-common");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("core.img");
    let mut cmd = Command::new(&program);
    cmd.args(["-O", "i386-pc", "-d", GRUB_DIR, "-p", prefix]).arg("-o").arg(&out);
    if let Some(text) = config {
        let cfg = dir.path().join("early.cfg");
        std::fs::write(&cfg, text).unwrap();
        cmd.arg("-c").arg(cfg);
    }
    let run = cmd.args(modules).env("LC_ALL", "C").stdin(Stdio::null()).output().unwrap();
    assert!(run.status.success(), "{cmd:?}: {}\n{}", run.status, String::from_utf8_lossy(&run.stderr));
    std::fs::read(&out).unwrap()
}

/// The size of Debian's decompressor, which sits between diskboot and the LZMA stream.
fn decompressor_len() -> usize {
    std::fs::read(require_file(&format!("{GRUB_DIR}/lzma_decompress.img"), "grub-pc-bin")).unwrap().len()
}

// ---------------------------------------------------------------------------------------------------------------
// Disks

fn guid(what: &str) -> Guid {
    let mut b = [0u8; 16];
    for (i, c) in what.bytes().cycle().take(16).enumerate() {
        b[i] = c.wrapping_mul(31).wrapping_add(i as u8);
    }
    Guid::v4_from_bytes(b)
}

/// `legacy+gpt`: BIOS boot partition (1 MiB) + root.
fn gpt_layout(sector: SectorSize) -> DiskLayout {
    gpt_disk(sector, false)
}

/// `legacy+gpt` (BIOS boot + root), or with `esp` `hybrid` (BIOS boot + ESP + root).
fn gpt_disk(sector: SectorSize, esp: bool) -> DiskLayout {
    let mut parts = vec![PartitionRequest {
        name: "BIOS".to_owned(),
        type_guid: partition_type::BIOS_BOOT,
        guid: guid("bios"),
        attributes: GptAttributes::NONE,
        size: PartitionSize::AtLeast(MIB),
    }];
    if esp {
        parts.push(PartitionRequest {
            name: "ESP".to_owned(),
            type_guid: partition_type::ESP,
            guid: guid("esp"),
            attributes: GptAttributes::NONE,
            size: PartitionSize::AtLeast(Bytes::mib(4)),
        });
    }
    parts.push(PartitionRequest {
        name: "nixos".to_owned(),
        type_guid: partition_type::ROOT_X86_64,
        guid: guid("root"),
        attributes: GptAttributes::LEGACY_BIOS_BOOTABLE,
        size: PartitionSize::AtLeast(Bytes::mib(8)),
    });
    DiskLayout::sequential(sector, PartitionTable::Gpt { disk_guid: guid("disk") }, DiskSize::Fit, parts).unwrap()
}

/// `legacy`: one bootable Linux partition in a DOS table.
fn mbr_layout() -> DiskLayout {
    DiskLayout::sequential(
        SectorSize::S512,
        PartitionTable::Mbr { disk_signature: 0x4B49_4C4E },
        DiskSize::Exactly(Bytes::mib(10)),
        vec![PartitionRequest {
            name: String::new(),
            type_guid: partition_type::LINUX_DATA,
            guid: Guid::NIL,
            attributes: GptAttributes::LEGACY_BIOS_BOOTABLE,
            size: PartitionSize::Fill,
        }],
    )
    .unwrap()
}

/// Writes the table, then GRUB, into a new image file; reads it back through the file to verify.
fn write_image(path: &Path, layout: &DiskLayout, e: &Embedding) -> Vec<u8> {
    let file = File::create(path).unwrap();
    file.set_len(layout.size().get()).unwrap();
    layout.write(&file).unwrap();
    e.write(&file).unwrap();
    drop(file);
    let file = File::open(path).unwrap();
    e.verify(|offset: Bytes, buf: &mut [u8]| file.read_exact_at(buf, offset.get()))
        .unwrap_or_else(|err| panic!("{err}"));
    std::fs::read(path).unwrap()
}

/// The byte patches DESIGN.md §4 and grub-bios-setup describe, checked on the image.
fn check_patches(img: &[u8], boot: &[u8], core: &[u8], layout: &DiskLayout, core_lba: u64) {
    let mbr = layout.mbr();
    let s0 = &img[..512];
    assert_eq!(s0[..0x03], boot[..0x03], "jump");
    assert_eq!(s0[0x03..0x5A], mbr[0x03..0x5A], "BPB area kept from the disk");
    assert_eq!(s0[0x5A..0x5C], boot[0x5A..0x5C]);
    assert_eq!(s0[0x5C..0x64], core_lba.to_le_bytes(), "kernel sector");
    assert_eq!(s0[0x64], 0xFF, "boot drive");
    assert_eq!(boot[0x66..0x68], [0xEB, 0x05], "Debian's boot.img has the drive-check jump");
    assert_eq!(s0[0x66..0x68], [0x90, 0x90], "drive-check jump made nops");
    assert_eq!(s0[0x65], boot[0x65]);
    assert_eq!(s0[0x68..0x1B8], boot[0x68..0x1B8], "boot code");
    assert_eq!(s0[0x1B8..0x1FE], mbr[0x1B8..0x1FE], "disk signature and partition table kept");
    assert_eq!(s0[0x1FE..], [0x55, 0xAA]);

    let at = usize::try_from(core_lba).unwrap() * 512;
    let sectors = core.len().div_ceil(512);
    let written = &img[at..at + sectors * 512];
    // grub-mkimage's own blocklist assumes core.img at LBA 1: start 2, all sectors but the first.
    assert_eq!(core[0x1F4..0x1FC], 2u64.to_le_bytes(), "grub-mkimage's default blocklist start");
    assert_eq!(core[0x1FC..0x1FE], u16::try_from(sectors - 1).unwrap().to_le_bytes(), "grub-mkimage's default length");
    assert_eq!(written[0x1F4..0x1FC], (core_lba + 1).to_le_bytes(), "blocklist start");
    assert_eq!(written[0x1FC..0x1FE], u16::try_from(sectors - 1).unwrap().to_le_bytes(), "blocklist length");
    assert_eq!(written[0x1FE..0x200], 0x820u16.to_le_bytes(), "blocklist segment");
    assert!(written[0x1E8..0x1F4].iter().all(|&b| b == 0), "blocklist terminator");
    assert_eq!(written[..0x1E8], core[..0x1E8], "diskboot code");
    assert_eq!(written[512..core.len()], core[512..], "the rest of core.img");
    assert!(written[core.len()..].iter().all(|&b| b == 0), "padding");
    let no_rs = u16::from_le_bytes([core[0x214], core[0x215]]);
    assert_ne!(no_rs, 0xFFFF, "core+0x214 (no-Reed-Solomon length)");
    assert!(usize::from(no_rs) < core.len(), "no-Reed-Solomon length {no_rs} is a length inside core.img");
}

fn sfdisk_partitions(img: &Path) -> Vec<(u64, u64)> {
    let out = Command::new(tool("sfdisk", "fdisk")).arg("--json").arg(img).env("LC_ALL", "C").output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect()
}

fn sgdisk_clean(img: &Path) {
    let out = Command::new(tool("sgdisk", "gdisk")).arg("-v").arg(img).env("LC_ALL", "C").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("No problems found."), "sgdisk -v:\n{text}");
    let rest = text.replace("No problems found.", "");
    assert!(!rest.contains("roblem") && !rest.contains("Warning") && !rest.contains("Caution"), "sgdisk -v:\n{text}");
}

// ---------------------------------------------------------------------------------------------------------------
// core.img against grub-mkimage

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Checks a native core.img against grub-mkimage's for the same inputs: the WHOLE image is the same, byte for
/// byte — diskboot with its sector count, the decompressor with both sizes, and the LZMA stream (kiln's encoder
/// makes the LZMA SDK 4.58 encoder's choices, see `kiln_formats::grub`'s core_img module docs). The parts are
/// checked first so that a difference is named; both streams decode to the payload.
fn assert_matches_grub_mkimage(name: &str, native: &grub::Core, oracle: &[u8]) {
    let dlen = decompressor_len();
    let img = native.image();
    let stream_of = |core: &[u8]| core.len() - grub::SECTOR - dlen;
    for (who, core) in [("native", img), ("grub-mkimage", oracle)] {
        let sectors = (dlen + stream_of(core)).div_ceil(grub::SECTOR);
        assert_eq!(usize::from(u16_at(core, 0x1FC)), sectors, "{name}: {who}'s diskboot sector count");
        let compressed = u32_at(core, grub::SECTOR + grub::COMPRESSED_SIZE);
        assert_eq!(compressed as usize, stream_of(core), "{name}: {who}'s compressed size");
    }
    assert_eq!(img[..0x1FC], oracle[..0x1FC], "{name}: diskboot");
    assert_eq!(img[0x1FE..grub::SECTOR], oracle[0x1FE..grub::SECTOR], "{name}: diskboot's load segment");
    let d = grub::SECTOR;
    assert_eq!(img[d..d + grub::COMPRESSED_SIZE], oracle[d..d + grub::COMPRESSED_SIZE], "{name}: decompressor");
    let rest = d + grub::UNCOMPRESSED_SIZE;
    assert_eq!(img[rest..d + dlen], oracle[rest..d + dlen], "{name}: decompressor with its uncompressed size");
    assert_eq!(u32_at(img, rest) as usize, native.payload().len(), "{name}: uncompressed size");

    let theirs = grub::unpack(oracle, dlen).unwrap_or_else(|e| panic!("{name}: grub-mkimage's stream: {e}"));
    if let Some(i) = theirs.iter().zip(native.payload()).position(|(a, b)| a != b) {
        panic!("{name}: the payloads differ from byte {i:#x} on (kernel.img is {:#x} bytes)", theirs.len());
    }
    assert_eq!(theirs.len(), native.payload().len(), "{name}: payload length");
    assert!(grub::unpack(img, dlen).unwrap() == native.payload(), "{name}: the native stream decodes to the payload");

    let (ours, gmk) = (native.stream(), &oracle[d + dlen..]);
    eprintln!(
        "{name}: core.img {} bytes ({} sectors); payload {} bytes; LZMA stream {} bytes",
        oracle.len(),
        oracle.len().div_ceil(grub::SECTOR),
        native.payload().len(),
        gmk.len(),
    );
    if let Some(i) = ours.iter().zip(gmk).position(|(a, b)| a != b) {
        panic!(
            "{name}: the LZMA streams differ from byte {i} on ({} bytes native, {} grub-mkimage)",
            ours.len(),
            gmk.len()
        );
    }
    assert_eq!(ours.len(), gmk.len(), "{name}: LZMA stream length");
    assert!(img == oracle, "{name}: core.img is grub-mkimage's, byte for byte");
    // Far inside what diskboot loads and grub-bios-setup embeds, with room for more modules.
    let sectors = img.len().div_ceil(grub::SECTOR) as u64;
    assert!(sectors * 2 < grub::MAX_CORE_SECTORS, "{name}: {sectors} sectors");
}

#[test]
fn core_img_matches_grub_mkimage_for_kilns_modules() {
    let early = "search --no-floppy --fs-uuid --set=root 0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9\n\
                 set prefix=($root)/boot/grub\n";
    for (prefix, config) in [
        ("(hd0,gpt2)/boot/grub", Some(early)),
        ("(hd0,gpt3)/boot/grub", None),
        ("(hd0,msdos1)/boot/grub", Some(early)),
        ("(hd0,msdos1)/boot/grub", None),
    ] {
        let name = format!("prefix {prefix}, {}", if config.is_some() { "with config" } else { "no config" });
        let native = native_core(prefix, &LINUX_EXT_MODULES, config);
        assert_matches_grub_mkimage(&name, &native, &grub_mkimage(prefix, &LINUX_EXT_MODULES, config));
    }
}

#[test]
fn core_img_matches_grub_mkimage_for_other_inputs() {
    // Module order as given, `.mod` names, duplicates, a config whose length is a multiple of 4 (so only its NUL
    // padding word follows), a prefix likewise, and a bare kernel with no module at all.
    let cases: [(&str, &[&str], Option<&str>); 3] = [
        ("/grub", &["test", "ext2.mod", "biosdisk", "ext2", "halt", "linux16"], Some("echo 123456\n")),
        ("(hd0)/boot/grub/i386", &["normal", "all_video"], Some("")),
        ("/b", &[], None),
    ];
    for (prefix, modules, config) in cases {
        let name = format!("{modules:?} prefix {prefix:?} config {config:?}");
        let native = native_core(prefix, modules, config);
        assert_matches_grub_mkimage(&name, &native, &grub_mkimage(prefix, modules, config));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Embedding

#[test]
fn embeds_in_gpt_bios_boot_partition() {
    let dir = tempfile::tempdir().unwrap();
    let layout = gpt_layout(SectorSize::S512);
    let boot = boot_img();
    let modules = ["biosdisk", "part_gpt", "ext2", "normal", "linux", "search", "search_label", "serial", "echo"];
    let core = native_core(&grub::prefix(&layout, 2, "/boot/grub"), &modules, None).into_image();
    assert_eq!(core, native_core("(hd0,gpt2)/boot/grub", &modules, None).into_image(), "core.img is not reproducible");
    let e = Embedding::for_layout(&boot, &core, &layout).unwrap();
    assert_eq!(e.area(), LbaRange::new(Lba(2048), Lba(4096)));
    assert_eq!(e.core_lba(), Lba(2048));
    eprintln!("core.img: {} bytes, {} sectors", core.len(), core.len().div_ceil(512));

    let path = dir.path().join("gpt.img");
    let img = write_image(&path, &layout, &e);
    check_patches(&img, &boot, &core, &layout, 2048);
    e.verify_image(&img).unwrap();
    // The table is intact and untouched by GRUB.
    sgdisk_clean(&path);
    let parts = sfdisk_partitions(&path);
    let want: Vec<(u64, u64)> =
        layout.partitions().iter().map(|p| (p.extent.start.get(), p.extent.sectors())).collect();
    assert_eq!(parts, want);
    // Only sector 0, the table's sectors and core.img's are written.
    let core_end = 2048 * 512 + core.len().div_ceil(512) * 512;
    assert!(img[core_end..2 * MIB.get() as usize].iter().all(|&b| b == 0));
    // Reproducible.
    let again =
        write_image(&dir.path().join("gpt2.img"), &layout, &Embedding::for_layout(&boot, &core, &layout).unwrap());
    assert!(img == again, "second image differs");
}

#[test]
fn embeds_in_mbr_gap() {
    let dir = tempfile::tempdir().unwrap();
    let layout = mbr_layout();
    let boot = boot_img();
    let modules = ["biosdisk", "part_msdos", "ext2", "normal", "linux", "serial", "echo"];
    let core = native_core(&grub::prefix(&layout, 1, "/boot/grub"), &modules, None).into_image();
    let e = Embedding::for_layout(&boot, &core, &layout).unwrap();
    assert_eq!(e.area(), LbaRange::new(Lba(1), Lba(2048)));
    let path = dir.path().join("mbr.img");
    let img = write_image(&path, &layout, &e);
    check_patches(&img, &boot, &core, &layout, 1);
    // Sector 0 keeps the disk signature and the bootable partition entry.
    assert_eq!(img[0x1B8..0x1BC], 0x4B49_4C4Eu32.to_le_bytes());
    assert_eq!(img[0x1BE], 0x80);
    assert_eq!(img[0x1C2], 0x83);
    // In the gap at LBA 1 grub-mkimage's own blocklist was already right: core.img is written unchanged.
    assert_eq!(img[512..512 + core.len()], core[..]);
    assert_eq!(sfdisk_partitions(&path), vec![(2048, 18432)]);
}

#[test]
fn refusals_name_the_sizes() {
    let boot = boot_img();
    let core =
        native_core("(hd0,gpt2)/boot/grub", &["biosdisk", "part_gpt", "ext2", "normal", "linux"], None).into_image();
    let sectors = core.len().div_ceil(512) as u64;
    let mut target = EmbedTarget::for_layout(&gpt_layout(SectorSize::S512)).unwrap();
    target.area = LbaRange::new(Lba(2048), Lba(2048 + 50));
    let err = Embedding::plan(&boot, &core, &target).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, grub::Error::CoreTooLarge { .. }), "{text}");
    assert!(
        text.contains(&format!("{} bytes ({sectors} sectors of 512)", core.len())) && text.contains("holds 50 sectors"),
        "{text}"
    );

    let err = Embedding::for_layout(&boot, &core, &gpt_layout(SectorSize::S4096)).unwrap_err();
    assert!(matches!(err, grub::Error::SectorSize { sector: SectorSize::S4096 }), "{err}");
    assert!(err.to_string().contains("512-byte sectors"), "{err}");
}

#[test]
fn core_img_failures_are_clear() {
    require_file(&format!("{GRUB_DIR}/biosdisk.mod"), "grub-pc-bin");
    let err = CoreImage::new("(hd0,gpt2)/boot/grub")
        .modules(["biosdisk", "no_such_module"])
        .build(&ModuleDir::new(GRUB_DIR))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, grub::Error::ReadFile { .. }), "{text}");
    assert!(text.contains(&format!("{GRUB_DIR}/no_such_module.mod")) && !text.contains("os error"), "{text}");
    let source = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
    assert!(source.contains("No such file"), "{text}: {source}");

    let err = CoreImage::new("(hd0,gpt2)/boot/grub").modules(["biosdisk"]).build(&ModuleDir::new("/nonexistent/grub"));
    let text = err.unwrap_err().to_string();
    assert!(text.contains("/nonexistent/grub/moddep.lst"), "{text}");

    let err = CoreImage::new("/boot/grub").modules(["../../../../etc/passwd"]).build(&ModuleDir::new(GRUB_DIR));
    assert!(matches!(err, Err(grub::Error::ModuleName { .. })), "{err:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Boots

/// Kills QEMU however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `img` under SeaBIOS until `MARKER` appears on the serial port or `timeout` passes. Returns whether it
/// appeared, the serial output, and the time taken.
fn boot(img: &Path, timeout: Duration) -> (bool, String, Duration) {
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86");
    require_file("/usr/share/seabios/bios-256k.bin", "seabios");
    let tmp = tempfile::tempdir().unwrap();
    let drive = format!("file={},format=raw,if=virtio,snapshot=on", img.display().to_string().replace(',', ",,"));
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35", "-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-nic", "none", "-no-reboot", "-drive", &drive])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("running {cmd:?}: {e}")));
    let mut stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut serial = Vec::new();
    let found = loop {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(chunk) => {
                serial.extend_from_slice(&chunk);
                if serial.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let elapsed = start.elapsed();
    let mut stderr = child.0.stderr.take().unwrap();
    drop(child);
    let _ = reader.join();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    (found, format!("{}{err}", String::from_utf8_lossy(&serial)), elapsed)
}

/// An image whose core.img runs a built-in config printing the marker on the serial port.
fn marker_image(dir: &Path, name: &str, layout: &DiskLayout, part_module: &str) -> (PathBuf, Embedding) {
    let cfg = format!("serial --unit=0 --speed=115200\nterminal_output serial\necho {MARKER}\nhalt\n");
    let root = layout.partitions().len();
    // The modules a real installation carries too, so core.img is as big as kiln's (≈ 290 sectors) and diskboot
    // loads it in several BIOS reads.
    let modules = [
        "biosdisk",
        part_module,
        "serial",
        "terminal",
        "echo",
        "halt",
        "ext2",
        "normal",
        "linux",
        "search",
        "search_label",
        "configfile",
        "test",
    ];
    let core = native_core(&grub::prefix(layout, root, "/boot/grub"), &modules, Some(&cfg)).into_image();
    let e = Embedding::for_layout(&boot_img(), &core, layout).unwrap();
    let path = dir.join(name);
    write_image(&path, layout, &e);
    (path, e)
}

fn boots(name: &str, layout: &DiskLayout, part_module: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (img, e) = marker_image(dir.path(), name, layout, part_module);
    let (found, serial, elapsed) = boot(&img, Duration::from_secs(60));
    eprintln!(
        "{name}: core.img at LBA {} ({} sectors): marker {} after {:.1} s",
        e.core_lba(),
        e.core().len() / 512,
        if found { "seen" } else { "NOT seen" },
        elapsed.as_secs_f64()
    );
    assert!(found, "{name}: no {MARKER} on serial within 60 s; QEMU said:\n{serial}");
}

#[test]
fn boots_from_gpt_bios_boot_partition_under_seabios() {
    boots("gpt-boot.img", &gpt_layout(SectorSize::S512), "part_gpt");
}

#[test]
fn boots_hybrid_from_bios_boot_partition_under_seabios() {
    boots("hybrid-boot.img", &gpt_disk(SectorSize::S512, true), "part_gpt");
}

#[test]
fn boots_from_mbr_gap_under_seabios() {
    boots("mbr-boot.img", &mbr_layout(), "part_msdos");
}

/// The boot test can fail: with core.img's blocklist pointing one sector too far, diskboot loads the wrong
/// sectors and the marker never appears.
#[test]
fn broken_blocklist_does_not_boot() {
    let dir = tempfile::tempdir().unwrap();
    let layout = gpt_layout(SectorSize::S512);
    let (img, e) = marker_image(dir.path(), "broken.img", &layout, "part_gpt");
    let file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let at = e.core_lba().offset(SectorSize::S512).get() + 0x1F4;
    file.write_all_at(&(e.core_lba().get() + 2).to_le_bytes(), at).unwrap();
    drop(file);
    let file = File::open(&img).unwrap();
    assert!(e.verify(|o: Bytes, b: &mut [u8]| file.read_exact_at(b, o.get())).is_err(), "verify missed the damage");
    let (found, serial, elapsed) = boot(&img, Duration::from_secs(10));
    eprintln!(
        "broken blocklist: marker {} after {:.1} s",
        if found { "seen" } else { "not seen" },
        elapsed.as_secs_f64()
    );
    assert!(!found, "booted despite a broken blocklist:\n{serial}");
}
