//! Partition tables written by `kiln_formats::disk`, checked by independent readers, read-only: `sgdisk -v`
//! (gdisk), `sfdisk --json` and `sfdisk --verify` (fdisk), for every layout kiln offers and both sector sizes, plus
//! byte-for-byte comparison with the table sgdisk itself writes for the same plan, and reproducibility.
//!
//! 4096-byte sectors: neither tool can be told the sector size of an image file here. sgdisk 1.0.9 asks the
//! kernel (`BLKSSZGET`) and assumes 512 when that fails; sfdisk 2.38 has no `--sector-size` (2.39 added it) and
//! skips the ioctl altogether for regular files (`fdisk_is_regfile`). So the tests build a small `LD_PRELOAD` shim
//! (with `cc`) that makes exactly the image file look like a block device with 4096-byte sectors: `fstat`/`stat`
//! report `S_IFBLK` for that path and `ioctl` answers `BLKSSZGET`/`BLKPBSZGET`/`BLKIOMIN` with 4096 and
//! `BLKGETSIZE64`/`BLKGETSIZE` with the file's size. Everything else passes through. Missing tools fail the tests
//! with the Debian package to install.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kiln_formats::disk::{
    Bytes, DiskLayout, DiskSize, GptAttributes, Guid, MIB, PartitionRequest, PartitionSize, PartitionTable, SectorSize,
    mbr_type, partition_type,
};
use kiln_formats::sink::MemSink;
use serde_json::Value;

use crate::common::{run, tool};

// ---------------------------------------------------------------------------------------------------------------
// Tools

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>

static int real_fstat(int fd, struct stat *st) {
  return ((int (*)(int, struct stat *))dlsym(RTLD_NEXT, "fstat"))(fd, st);
}
static int is_target_path(const char *path) {
  const char *want = getenv("KILN_SHIM_PATH");
  char buf[PATH_MAX];
  return want && realpath(path, buf) && strcmp(buf, want) == 0;
}
static int is_target_fd(int fd) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  return is_target_path(link);
}
static void as_block_device(struct stat *st) { st->st_mode = (st->st_mode & ~S_IFMT) | S_IFBLK; }
int fstat(int fd, struct stat *st) {
  int r = real_fstat(fd, st);
  if (r == 0 && is_target_fd(fd)) as_block_device(st);
  return r;
}
int stat(const char *path, struct stat *st) {
  int r = ((int (*)(const char *, struct stat *))dlsym(RTLD_NEXT, "stat"))(path, st);
  if (r == 0 && is_target_path(path)) as_block_device(st);
  return r;
}
int ioctl(int fd, unsigned long req, ...) {
  va_list ap;
  va_start(ap, req);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if (is_target_fd(fd)) {
    struct stat st;
    const char *ss = getenv("KILN_SHIM_SECTOR_SIZE");
    if (real_fstat(fd, &st) != 0) return -1;
    switch (req) {
    case BLKSSZGET: case BLKPBSZGET: case BLKIOMIN: *(int *)arg = ss ? atoi(ss) : 512; return 0;
    case BLKGETSIZE64: *(uint64_t *)arg = (uint64_t)st.st_size; return 0;
    case BLKGETSIZE: *(unsigned long *)arg = (unsigned long)(st.st_size / 512); return 0;
    }
  }
  return ((int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl"))(fd, req, arg);
}
"#;

/// The sector-size shim, built once per test run.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let cc = tool("cc", "gcc");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-sector-shim");
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("shim.c");
        std::fs::write(&src, SHIM_C).unwrap();
        let tmp = dir.join(format!("shim.so.{}", std::process::id()));
        let out =
            run(Command::new(cc).args(["-shared", "-fPIC", "-O2", "-Wall", "-o"]).arg(&tmp).arg(&src).arg("-ldl"));
        assert!(out.ok, "building the sector-size shim failed:\n{}", out.text);
        let so = dir.join("shim.so");
        std::fs::rename(&tmp, &so).unwrap();
        so
    })
}

/// A command on `img` that sees it with `sector` sectors.
fn on_disk(program: PathBuf, img: &Path, sector: SectorSize) -> Command {
    let mut cmd = Command::new(program);
    if sector == SectorSize::S4096 {
        cmd.env("LD_PRELOAD", shim())
            .env("KILN_SHIM_PATH", img.canonicalize().unwrap())
            .env("KILN_SHIM_SECTOR_SIZE", "4096");
    }
    cmd
}

// ---------------------------------------------------------------------------------------------------------------
// Layouts

/// A GUID derived from a seed and a purpose (splitmix64), as the builder derives them.
fn seeded(seed: u64, what: &str) -> Guid {
    let mut x =
        what.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01B3));
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next().to_le_bytes());
    bytes[8..].copy_from_slice(&next().to_le_bytes());
    Guid::v4_from_bytes(bytes)
}

const SEED: u64 = 42;

fn part(name: &str, type_guid: Guid, size: PartitionSize, attributes: GptAttributes) -> PartitionRequest {
    PartitionRequest { name: name.to_owned(), type_guid, guid: seeded(SEED, name), attributes, size }
}

fn gpt() -> PartitionTable {
    PartitionTable::Gpt { disk_guid: seeded(SEED, "disk") }
}

/// The layouts kiln offers, as kiln plans them.
fn layouts(sector: SectorSize) -> Vec<(&'static str, DiskLayout)> {
    use PartitionSize::{AtLeast, Fill};
    let none = GptAttributes::NONE;
    let root = || {
        part("nixos", partition_type::ROOT_X86_64, Fill, GptAttributes::LEGACY_BIOS_BOOTABLE | GptAttributes::GROWFS)
    };
    let bios = || part("BIOS", partition_type::BIOS_BOOT, AtLeast(MIB), none);
    let esp = |mib| part("ESP", partition_type::ESP, AtLeast(Bytes::mib(mib)), none);
    let disk = DiskSize::Exactly(Bytes::mib(48));
    let plan = |table, disk, parts| DiskLayout::sequential(sector, table, disk, parts).unwrap();
    vec![
        ("efi", plan(gpt(), disk, vec![esp(16), root()])),
        ("legacy+gpt", plan(gpt(), disk, vec![bios(), root()])),
        ("hybrid", plan(gpt(), disk, vec![bios(), esp(16), root()])),
        (
            "efixbootldr",
            plan(
                gpt(),
                DiskSize::Fit,
                vec![
                    esp(8),
                    part("XBOOTLDR", partition_type::XBOOTLDR, AtLeast(Bytes::mib(12)), none),
                    part("nixos", partition_type::ROOT_X86_64, AtLeast(Bytes(20_000_000)), GptAttributes::READ_ONLY),
                ],
            ),
        ),
        // sgdisk -v checks an MBR disk by converting it to GPT in memory, and then counts a partition reaching
        // the last 33 sectors (where the backup GPT would go) as a problem: leave the last MiB free here. The
        // filling case is checked by sfdisk in `legacy_fills_the_disk`.
        (
            "legacy",
            plan(
                PartitionTable::Mbr { disk_signature: 0x4B49_4C4E },
                disk,
                vec![PartitionRequest {
                    name: String::new(),
                    type_guid: partition_type::LINUX_DATA,
                    guid: Guid::NIL,
                    attributes: GptAttributes::LEGACY_BIOS_BOOTABLE,
                    size: AtLeast(Bytes::mib(46)),
                }],
            ),
        ),
    ]
}

/// Writes `layout` to a new image file of its size.
fn write_image(dir: &Path, name: &str, layout: &DiskLayout) -> PathBuf {
    let path = dir.join(format!("{}.img", name.replace('+', "-")));
    let file = File::create(&path).unwrap();
    file.set_len(layout.size().get()).unwrap();
    layout.write(&file).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------------------------
// Checks

/// `sgdisk -v` must find a valid table and report nothing. It exits 0 even when it finds problems (and ignores
/// options it does not know), so its words are what count.
fn sgdisk_verify(img: &Path, sector: SectorSize, mbr: bool) {
    let out = run(on_disk(tool("sgdisk", "gdisk"), img, sector).arg("-v").arg(img));
    assert!(out.ok, "sgdisk -v {} failed:\n{}", img.display(), out.text);
    assert!(out.text.contains("No problems found."), "sgdisk -v {}:\n{}", img.display(), out.text);
    let rest = out.text.replace("No problems found.", "");
    for bad in ["Warning", "Caution", "Problem", "problem", "Identified", "rror", "corrupt", "mismatch", "damaged"] {
        assert!(!rest.contains(bad), "sgdisk -v {} says {bad:?}:\n{}", img.display(), out.text);
    }
    if mbr {
        assert!(out.text.contains("Found invalid GPT and valid MBR"), "sgdisk -v {}:\n{}", img.display(), out.text);
    } else {
        assert!(!out.text.contains("MBR"), "sgdisk -v {} did not take it for GPT:\n{}", img.display(), out.text);
    }
}

fn sfdisk_verify(img: &Path, sector: SectorSize) {
    let out = run(on_disk(tool("sfdisk", "fdisk"), img, sector).arg("--verify").arg(img));
    assert!(out.ok, "sfdisk --verify {} failed:\n{}", img.display(), out.text);
    let lines: Vec<&str> = out.text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.get(1) == Some(&"No errors detected."), "sfdisk --verify {}:\n{}", img.display(), out.text);
    // Then only statistics.
    let normal = ["Header version: 1.0", "Using ", "A total of ", "Remaining "];
    for line in &lines[2..] {
        assert!(
            normal.iter().any(|n| line.starts_with(n)),
            "sfdisk --verify {} says {line:?}:\n{}",
            img.display(),
            out.text
        );
    }
}

fn sfdisk_json(img: &Path, sector: SectorSize) -> Value {
    let out = run(on_disk(tool("sfdisk", "fdisk"), img, sector).arg("--json").arg(img));
    assert!(out.ok, "sfdisk --json {} failed:\n{}", img.display(), out.text);
    // sfdisk warns on stderr about anything odd it notices (e.g. "GPT PMBR size mismatch").
    assert_eq!(out.stdout.len(), out.text.len(), "sfdisk --json {} complained:\n{}", img.display(), out.text);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", out.text));
    v["partitiontable"].clone()
}

/// sfdisk's spelling of GPT attribute bits.
fn sfdisk_attrs(a: GptAttributes) -> Option<String> {
    let mut words = Vec::new();
    let named = [(0, "RequiredPartition"), (1, "NoBlockIOProtocol"), (2, "LegacyBIOSBootable")];
    for (bit, name) in named {
        if a.0 & (1 << bit) != 0 {
            words.push(name.to_owned());
        }
    }
    let guid_bits: Vec<String> = (48..64).filter(|b| a.0 & (1 << b) != 0).map(|b| b.to_string()).collect();
    if !guid_bits.is_empty() {
        words.push(format!("GUID:{}", guid_bits.join(",")));
    }
    (!words.is_empty()).then(|| words.join(" "))
}

/// sfdisk must show exactly the plan.
fn check_sfdisk(img: &Path, layout: &DiskLayout) {
    let ss = layout.sector_size();
    let t = sfdisk_json(img, ss);
    let ctx = || format!("{}:\n{t:#}\nplanned:\n{layout}", img.display());
    assert_eq!(t["unit"], "sectors", "{}", ctx());
    assert_eq!(t["sectorsize"].as_u64(), Some(ss.bytes().get()), "{}", ctx());
    let parts = t["partitions"].as_array().unwrap_or_else(|| panic!("no partitions: {}", ctx()));
    assert_eq!(parts.len(), layout.partitions().len(), "{}", ctx());
    match layout.table() {
        PartitionTable::Gpt { disk_guid } => {
            assert_eq!(t["label"], "gpt", "{}", ctx());
            assert_eq!(t["id"].as_str(), Some(disk_guid.to_string().as_str()), "{}", ctx());
            let g = layout.gpt_geometry().unwrap();
            assert_eq!(t["firstlba"].as_u64(), Some(g.usable.start.get()), "{}", ctx());
            assert_eq!(t["lastlba"].as_u64(), Some(g.usable.end.get() - 1), "{}", ctx());
        }
        PartitionTable::Mbr { disk_signature } => {
            assert_eq!(t["label"], "dos", "{}", ctx());
            assert_eq!(t["id"].as_str(), Some(format!("0x{disk_signature:08x}").as_str()), "{}", ctx());
        }
    }
    for (i, (got, want)) in parts.iter().zip(layout.partitions()).enumerate() {
        let keys: BTreeSet<&str> = got.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(got["node"].as_str(), Some(format!("{}{}", img.display(), i + 1).as_str()), "{}", ctx());
        assert_eq!(got["start"].as_u64(), Some(want.extent.start.get()), "partition {}: {}", i + 1, ctx());
        assert_eq!(got["size"].as_u64(), Some(want.extent.sectors()), "partition {}: {}", i + 1, ctx());
        match layout.table() {
            PartitionTable::Gpt { .. } => {
                assert_eq!(got["type"].as_str(), Some(want.type_guid.to_string().as_str()), "{}", ctx());
                assert_eq!(got["uuid"].as_str(), Some(want.guid.to_string().as_str()), "{}", ctx());
                assert_eq!(got["name"].as_str(), Some(want.name.as_str()), "{}", ctx());
                assert_eq!(got["attrs"].as_str().map(str::to_owned), sfdisk_attrs(want.attributes), "{}", ctx());
                let mut expected = BTreeSet::from(["node", "start", "size", "type", "uuid", "name"]);
                if want.attributes != GptAttributes::NONE {
                    expected.insert("attrs");
                }
                assert_eq!(keys, expected, "{}", ctx());
            }
            PartitionTable::Mbr { .. } => {
                let kind = format!("{:x}", mbr_type(want.type_guid).unwrap());
                assert_eq!(got["type"].as_str(), Some(kind.as_str()), "{}", ctx());
                let bootable = want.attributes.contains(GptAttributes::LEGACY_BIOS_BOOTABLE);
                assert_eq!(got["bootable"].as_bool().unwrap_or(false), bootable, "{}", ctx());
            }
        }
    }
}

fn check_all(sector: SectorSize) {
    let dir = tempfile::tempdir().unwrap();
    for (name, layout) in layouts(sector) {
        let img = write_image(dir.path(), name, &layout);
        let mbr = matches!(layout.table(), PartitionTable::Mbr { .. });
        sgdisk_verify(&img, sector, mbr);
        sfdisk_verify(&img, sector);
        check_sfdisk(&img, &layout);

        // Reproducible: planning and writing again, into memory this time, gives the same bytes.
        let bytes = std::fs::read(&img).unwrap();
        let again = layouts(sector).into_iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(again, layout);
        let sink = MemSink::new(usize::try_from(again.size().get()).unwrap());
        again.write(&sink).unwrap();
        assert!(sink.into_inner() == bytes, "{name}: second write differs");
        // Only the table's own sectors are written.
        let written: u64 = layout.regions().iter().map(|r| r.bytes.len() as u64).sum();
        let nonzero_sectors = bytes.chunks(sector.bytes().get() as usize).filter(|s| s.iter().any(|&b| b != 0)).count();
        assert!(nonzero_sectors as u64 <= written / sector.bytes().get(), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[test]
fn layouts_with_512_byte_sectors() {
    check_all(SectorSize::S512);
}

#[test]
fn layouts_with_4096_byte_sectors() {
    check_all(SectorSize::S4096);
}

#[test]
fn shim_is_needed_for_4096() {
    // Without the shim both tools read a 4Kn image as 512-byte sectors and see only the protective MBR: proof that
    // the 4096-byte checks above really read the table at LBA 1 of 4096 bytes.
    let dir = tempfile::tempdir().unwrap();
    let (name, layout) = layouts(SectorSize::S4096).remove(0);
    let img = write_image(dir.path(), name, &layout);
    let t = sfdisk_json_plain(&img);
    assert_eq!(t["label"], "dos", "{t:#}");
    assert_eq!(t["partitions"][0]["type"], "ee", "{t:#}");
}

fn sfdisk_json_plain(img: &Path) -> Value {
    let out = run(Command::new(tool("sfdisk", "fdisk")).arg("--json").arg(img));
    assert!(out.ok, "{}", out.text);
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["partitiontable"].clone()
}

#[test]
fn legacy_fills_the_disk() {
    let layout = DiskLayout::sequential(
        SectorSize::S512,
        PartitionTable::Mbr { disk_signature: 0xDEAD_BEEF },
        DiskSize::Exactly(Bytes::mib(40)),
        vec![PartitionRequest {
            name: String::new(),
            type_guid: partition_type::ROOT_X86_64,
            guid: Guid::NIL,
            attributes: GptAttributes::LEGACY_BIOS_BOOTABLE,
            size: PartitionSize::Fill,
        }],
    )
    .unwrap();
    assert_eq!(layout.byte_range(1).unwrap().end, Bytes::mib(40));
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "legacy-fill", &layout);
    sfdisk_verify(&img, SectorSize::S512);
    check_sfdisk(&img, &layout);
}

/// sgdisk, given the same plan, writes the same image, byte for byte: protective MBR, headers, entry arrays.
/// (sgdisk sleeps about a second after writing, so the cases run side by side.)
#[test]
fn same_bytes_as_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(SectorSize, &str, DiskLayout)> = [SectorSize::S512, SectorSize::S4096]
        .into_iter()
        .flat_map(|sector| layouts(sector).into_iter().map(move |(name, layout)| (sector, name, layout)))
        .filter(|(_, _, layout)| matches!(layout.table(), PartitionTable::Gpt { .. }))
        .collect();
    std::thread::scope(|scope| {
        for (sector, name, layout) in &cases {
            let dir = dir.path();
            scope.spawn(move || same_bytes_as_sgdisk_for(dir, *sector, name, layout));
        }
    });
}

fn same_bytes_as_sgdisk_for(dir: &Path, sector: SectorSize, name: &str, layout: &DiskLayout) {
    let PartitionTable::Gpt { disk_guid } = layout.table() else { unreachable!("GPT layouts only") };
    let name = format!("{}-{sector}", name.replace('+', "-"));
    let ours = std::fs::read(write_image(dir, &name, layout)).unwrap();
    let theirs = dir.join(format!("{name}-sgdisk.img"));
    File::create(&theirs).unwrap().set_len(layout.size().get()).unwrap();
    let mut cmd = on_disk(tool("sgdisk", "gdisk"), &theirs, sector);
    cmd.arg(format!("--disk-guid={disk_guid}"));
    for (i, p) in layout.partitions().iter().enumerate() {
        let n = i + 1;
        let last = p.extent.last().unwrap();
        cmd.arg(format!("--new={n}:{}:{last}", p.extent.start));
        cmd.arg(format!("--typecode={n}:{}", p.type_guid));
        cmd.arg(format!("--partition-guid={n}:{}", p.guid));
        cmd.arg(format!("--change-name={n}:{}", p.name));
        for bit in (0..64).filter(|b| p.attributes.0 & (1 << b) != 0) {
            cmd.arg(format!("--attributes={n}:set:{bit}"));
        }
    }
    let out = run(cmd.arg(&theirs));
    assert!(out.ok, "sgdisk failed:\n{}", out.text);
    let theirs = std::fs::read(&theirs).unwrap();
    if let Some(at) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("{name}: first difference from sgdisk at byte {at}");
    }
    assert_eq!(ours.len(), theirs.len());
}

#[test]
fn plan_prints_like_sfdisk_dump() {
    let (_, layout) = layouts(SectorSize::S512).remove(1);
    let text = layout.to_string();
    assert!(text.starts_with("label: gpt, id: "), "{text}");
    assert!(
        text.contains("1: start=2048, size=2048, bytes 1048576..2097152, type=21686148-6449-6E6F-744E-656564454649"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3, "{text}");
}
