//! FAT32 ESP images built by `kiln_formats::fat`, checked by independent readers, read-only: `fsck.fat -n` and
//! `fatlabel` (dosfstools), mtools (`mdir`, `mcopy`, `minfo`), the `fatfs` crate, and a parse of the boot
//! sector here. Missing tools fail the tests with the Debian package to install.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kiln_formats::fat::{self, Options, Plan, Source, Tree};
use kiln_formats::units::SectorSize;

use crate::common::{Output, tool};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// 2023-11-14T22:13:20Z.
const STAMP: i64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------------------------
// Tools

fn run(cmd: &mut Command) -> Output {
    // mtools refuses volumes whose sector count is not a multiple of the customary 63 sectors per track (a
    // floppy-era check); the geometry fields mean nothing on an ESP.
    crate::common::run(cmd.env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C.UTF-8"))
}

/// `fsck.fat -n -v`, read-only, strict about short names with spaces (`-S`) and lower-case labels (`-U`).
/// Returns its output after checking it exits 0 and reports nothing but the normal progress lines.
fn fsck(img: &Path) -> String {
    let out = run(Command::new(tool("fsck.fat", "dosfstools")).args(["-n", "-v", "-V", "-S", "-U"]).arg(img));
    assert!(out.ok, "fsck.fat -n failed on {}:\n{}", img.display(), out.text);
    let normal = [
        "fsck.fat ",
        "Checking we can access the last sector of the filesystem",
        "Boot sector contents:",
        "System ID ",
        "Media byte 0xf8 (hard disk)",
        "bytes per logical sector",
        "bytes per cluster",
        "reserved sectors",
        "First FAT starts at byte",
        "2 FATs, 32 bit entries",
        "bytes per FAT (=",
        "Root directory start at cluster 2 (arbitrary size)",
        "Data area starts at byte",
        "data clusters (",
        "sectors/track,",
        "hidden sectors",
        "sectors total",
        "Checking for unused clusters.",
        "Checking free cluster summary.",
        "Starting check/repair pass.",
        "Starting verification pass.",
        "Checking file ",
        "files, ",
    ];
    for line in out.text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(normal.iter().any(|n| line.contains(n)), "fsck.fat reported {line:?}:\n{}", out.text);
    }
    out.text
}

fn mtools_image(img: &Path, offset: u64) -> String {
    if offset == 0 { img.display().to_string() } else { format!("{}@@{offset}", img.display()) }
}

/// Every path on the volume, as `mdir -/ -b` lists it (long names, recursive), without the `::/` prefix.
fn mdir_paths(img: &Path, offset: u64) -> BTreeSet<String> {
    let out = run(Command::new(tool("mdir", "mtools")).args(["-/", "-b", "-i", &mtools_image(img, offset), "::/"]));
    assert!(out.ok, "mdir failed:\n{}", out.text);
    out.text
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .map(|l| l.trim_end_matches('/').to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A file's bytes through `mcopy … -`.
fn mcopy(img: &Path, offset: u64, path: &str) -> Vec<u8> {
    let out = run(Command::new(tool("mcopy", "mtools"))
        .args(["-n", "-i", &mtools_image(img, offset)])
        .arg(format!("::/{path}"))
        .arg("-"));
    assert!(out.ok, "mcopy ::/{path} failed:\n{}", out.text);
    out.stdout
}

/// mtools 4.0.32 decodes long names as UCS-2: a character outside the Basic Multilingual Plane (two UTF-16
/// units, correctly stored, as fatfs reads back) shows as `__`.
fn as_mtools_shows(path: &str) -> String {
    path.chars().map(|c| if u32::from(c) > 0xFFFF { "__".to_owned() } else { c.to_string() }).collect()
}

fn minfo(img: &Path, offset: u64) -> String {
    let out = run(Command::new(tool("minfo", "mtools")).args(["-i", &mtools_image(img, offset), "::"]));
    assert!(out.ok, "minfo failed:\n{}", out.text);
    out.text
}

// ---------------------------------------------------------------------------------------------------------------
// Trees and what they should read back as

/// Deterministic bytes that do not compress into patterns a reader could get right by accident.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    crate::common::xorshift_bytes(seed, len).collect()
}

/// A tree and its expected contents.
#[derive(Default)]
struct Spec {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    tree: Tree,
}

impl Spec {
    fn add_dirs(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.dirs.insert(at.clone());
        }
    }

    fn file(&mut self, path: &str, bytes: Vec<u8>) {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.add_dirs(dir);
        }
        self.tree.add_file(path, Source::Bytes(Arc::from(bytes.clone()))).unwrap();
        self.files.insert(path.to_owned(), bytes);
    }

    /// A file read from the host at write time.
    fn host_file(&mut self, dir: &Path, path: &str, bytes: Vec<u8>) {
        if let Some((d, _)) = path.rsplit_once('/') {
            self.add_dirs(d);
        }
        let host = dir.join(path.replace('/', "_"));
        std::fs::write(&host, &bytes).unwrap();
        self.tree.add_file(path, Source::Host(host)).unwrap();
        self.files.insert(path.to_owned(), bytes);
    }

    fn dir(&mut self, path: &str) {
        self.add_dirs(path);
        self.tree.mkdir_all(path).unwrap();
    }
}

const HASH: &str = "0a1b2c3d4e5f6g7h8i9j0k1l2m3n4p5q";

/// What a NixOS ESP with systemd-boot holds; kernels and an initrd of a few MiB read from host files.
fn realistic(host: &Path) -> Spec {
    let mut s = Spec::default();
    s.file("EFI/BOOT/BOOTX64.EFI", noise(120 * KIB as usize, 1));
    s.file("EFI/systemd/systemd-bootx64.efi", noise(120 * KIB as usize, 1));
    s.file("loader/loader.conf", b"timeout 3\ndefault nixos-generation-2.conf\nconsole-mode keep\n".to_vec());
    for g in 1..=3 {
        let entry = format!(
            "title NixOS\nversion Generation {g}\nlinux /EFI/nixos/{HASH}-linux-6.6.{g}-bzImage.efi\n\
             initrd /EFI/nixos/{HASH}-initrd-linux-6.6.{g}-initrd.efi\noptions init=/nix/store/x-init loglevel=4\n"
        );
        s.file(&format!("loader/entries/nixos-generation-{g}.conf"), entry.into_bytes());
    }
    s.host_file(host, &format!("EFI/nixos/{HASH}-linux-6.6.1-bzImage.efi"), noise(5 * MIB as usize + 123, 2));
    // An initrd with a long run of zeros (a hole-like region the writer skips).
    let mut initrd = noise(3 * MIB as usize, 3);
    initrd[MIB as usize..2 * MIB as usize].fill(0);
    s.host_file(host, &format!("EFI/nixos/{HASH}-initrd-linux-6.6.1-initrd.efi"), initrd);
    s.file(&format!("EFI/nixos/{HASH}-linux-6.6.2-bzImage.efi"), noise(4 * MIB as usize + 1, 4));
    s.file("EFI/Linux/.keep", Vec::new());
    s
}

/// Names of every kind, deep directories, empty files and directories, and files at cluster boundaries.
fn mixed(cluster: usize) -> Spec {
    let mut s = Spec::default();
    s.file("EFI/BOOT/BOOTX64.EFI", noise(70_000, 10));
    // Deep directories, a file at each level.
    let mut dir = String::from("deep");
    for level in 1..=12 {
        dir.push_str(&format!("/Level {level:02}"));
        s.file(&format!("{dir}/file-{level}.bin"), noise(100 * level, level as u64));
    }
    // Names that need long-name entries.
    let long_name = format!("{}.txt", "n".repeat(251));
    let lfn = [
        "Ünïcødé.txt",
        "with space.conf",
        "MixedCase.Efi",
        "a+b,c;d=e[f].txt",
        ".hidden",
        "x.tar.gz",
        "😀 smile.txt",
        "nixos-generation-1.conf",
        "ABCDEFGHI",
        "systemd-bootx64.efi",
        long_name.as_str(),
    ];
    for (i, name) in lfn.iter().enumerate() {
        s.file(&format!("names/{name}"), noise(10 + i * 37, 20 + i as u64));
    }
    s.file(&format!("names/{HASH}-linux-6.6-bzImage.efi"), noise(3000, 40));
    // Names that are 8.3 names, in upper case (short entry only) and otherwise.
    for (i, name) in ["README.TXT", "readme2.txt", "UPPER", "lower", "A.B", "Mixed.Txt", "FOOBAR~1.TEX", "foobar.text"]
        .iter()
        .enumerate()
    {
        s.file(&format!("names83/{name}"), noise(5 + i, 50 + i as u64));
    }
    // Empty files and directories.
    s.file("empty/zero", Vec::new());
    s.file("empty/ZERO.TXT", Vec::new());
    s.dir("empty/nothing here");
    s.dir("EMPTYDIR");
    // Sizes around one cluster.
    s.file("edges/one-byte.bin", noise(1, 60));
    s.file("edges/cluster-minus-one.bin", noise(cluster - 1, 61));
    s.file("edges/one-cluster.bin", noise(cluster, 62));
    s.file("edges/one-cluster-plus-one.bin", noise(cluster + 1, 63));
    s.file("edges/zeros.bin", vec![0; 100_000]);
    s
}

/// The cluster size the writer picks for a size (planning an empty tree).
fn cluster_bytes(size: u64, sector: SectorSize) -> usize {
    let mut opts = Options::new(size, 0, 0, 0);
    opts.sector_size = sector;
    fat::plan(&Tree::new(), &opts).unwrap().geometry.cluster_bytes() as usize
}

// ---------------------------------------------------------------------------------------------------------------
// Building and checking

struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
    plan: Plan,
}

fn options(size: u64, sector: SectorSize, hidden: u32) -> Options {
    let mut opts = Options::new(size, hidden, 0xC0FF_EE42, STAMP);
    opts.sector_size = sector;
    opts
}

/// Writes the tree into a new sparse file of `total` bytes at `offset`.
fn build_at(tree: &Tree, opts: &Options, offset: u64, total: u64) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esp.img");
    let plan = fat::plan(tree, opts).unwrap();
    assert_eq!(plan.size_bytes(), opts.size_bytes);
    let file = File::create(&path).unwrap();
    file.set_len(total).unwrap();
    plan.write(tree, &file, offset).unwrap();
    drop(file);
    Image { _dir: dir, path, plan }
}

fn build(tree: &Tree, opts: &Options) -> Image {
    build_at(tree, opts, 0, opts.size_bytes)
}

/// The partition inside an image file, for `fatfs`: reads only; any write fails.
struct Partition {
    file: File,
    base: u64,
    len: u64,
    pos: u64,
}

impl Read for Partition {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let n = self.file.read_at(&mut buf[..n], self.base + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Partition {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

impl Write for Partition {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("fatfs tried to write to a read-only check"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything `fatfs` reads: file paths with contents, and directory paths.
fn fatfs_read(
    img: &Path,
    offset: u64,
    len: u64,
    opts: &Options,
    plan: &Plan,
) -> (BTreeMap<String, Vec<u8>>, BTreeSet<String>) {
    let part = Partition { file: File::open(img).unwrap(), base: offset, len, pos: 0 };
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).expect("fatfs opens the volume");
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    assert_eq!(fs.volume_id(), opts.volume_id);
    assert_eq!(fs.volume_label(), opts.label);
    assert_eq!(fs.read_volume_label_from_root_dir().unwrap().as_deref(), Some(opts.label.as_str()));
    let stats = fs.stats().unwrap();
    assert_eq!(stats.cluster_size(), plan.geometry.cluster_bytes());
    assert_eq!(stats.total_clusters(), plan.geometry.clusters);
    assert_eq!(stats.free_clusters(), plan.free_clusters());
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    fn walk<T: fatfs::ReadWriteSeek>(
        dir: fatfs::Dir<'_, T>,
        prefix: &str,
        files: &mut BTreeMap<String, Vec<u8>>,
        dirs: &mut BTreeSet<String>,
    ) {
        let entries: Vec<_> = dir.iter().map(|e| e.expect("fatfs reads the directory")).collect();
        let names: Vec<String> = entries.iter().map(|e| e.file_name()).collect();
        if !prefix.is_empty() {
            assert_eq!(names[..2], [".", ".."], "{prefix}: . and .. come first");
        }
        for e in entries {
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            // Every entry carries the given time, 2023-11-14T22:13:20.
            let (m, c, a) = (e.modified(), e.created(), e.accessed());
            assert_eq!((m.date.year, m.date.month, m.date.day), (2023, 11, 14), "{path}");
            assert_eq!((m.time.hour, m.time.min, m.time.sec), (22, 13, 20), "{path}");
            assert_eq!((c.date, c.time.hour, c.time.min, c.time.sec), (m.date, 22, 13, 20), "{path}");
            assert_eq!(a, m.date, "{path}");
            if e.is_dir() {
                dirs.insert(path.clone());
                walk(e.to_dir(), &path, files, dirs);
            } else {
                let mut bytes = Vec::new();
                e.to_file().read_to_end(&mut bytes).unwrap();
                assert_eq!(bytes.len() as u64, e.len(), "{path}");
                files.insert(path, bytes);
            }
        }
    }
    walk(fs.root_dir(), "", &mut files, &mut dirs);
    fs.unmount().expect("fatfs unmounts without writing");
    (files, dirs)
}

/// Little-endian field of the boot sector.
fn le(b: &[u8], at: usize, len: usize) -> u64 {
    b[at..at + len].iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x))
}

/// Parses the boot sector and checks it is FAT32 as planned.
fn check_boot_sector(img: &Path, offset: u64, opts: &Options) {
    let mut b = [0u8; 512];
    File::open(img).unwrap().read_exact_at(&mut b, offset).unwrap();
    assert_eq!(&b[..3], &[0xEB, 0x58, 0x90]);
    assert_eq!(&b[510..], &[0x55, 0xAA]);
    let bps = le(&b, 11, 2);
    let spc = le(&b, 13, 1);
    let reserved = le(&b, 14, 2);
    let fats = le(&b, 16, 1);
    assert_eq!(bps, opts.sector_size.bytes().get());
    assert_eq!((reserved, fats), (32, 2));
    assert_eq!(le(&b, 17, 2), 0, "root entries");
    assert_eq!(le(&b, 19, 2), 0, "16-bit total sectors");
    assert_eq!(b[21], 0xF8);
    assert_eq!(le(&b, 22, 2), 0, "16-bit FAT size");
    assert_eq!(le(&b, 28, 4), u64::from(opts.hidden_sectors));
    let total = le(&b, 32, 4);
    assert_eq!(total * bps, opts.size_bytes);
    let fat = le(&b, 36, 4);
    assert_eq!(le(&b, 44, 4), 2, "root cluster");
    assert_eq!((le(&b, 48, 2), le(&b, 50, 2)), (1, 6), "FSInfo and backup sectors");
    assert_eq!((b[64], b[66]), (0x80, 0x29));
    assert_eq!(le(&b, 67, 4), u64::from(opts.volume_id));
    assert_eq!(&b[71..82], format!("{:<11}", opts.label).as_bytes());
    assert_eq!(&b[82..90], b"FAT32   ");
    // Microsoft's definition of the FAT type: the cluster count.
    let clusters = (total - reserved - fats * fat) / spc;
    assert!(clusters >= 65_525, "{clusters} clusters is not FAT32");
    assert!((clusters + 2) * 4 <= fat * bps, "FAT too short for {clusters} clusters");
}

/// Every check that reads the volume: boot sector, fsck.fat (when the volume starts the file), fatfs, mtools.
fn check(img: &Image, offset: u64, opts: &Options, spec: &Spec) {
    check_boot_sector(&img.path, offset, opts);
    if offset == 0 {
        let report = fsck(&img.path);
        let used = img.plan.used_clusters;
        let total = img.plan.geometry.clusters;
        assert!(report.contains(&format!(", {used}/{total} clusters")), "fsck.fat counted otherwise:\n{report}");
        assert!(report.contains(&format!("{:>10} hidden sectors", opts.hidden_sectors)), "{report}");
        let label = run(Command::new(tool("fatlabel", "dosfstools")).arg(&img.path));
        assert_eq!(label.text.trim(), opts.label, "fatlabel");
        let id = run(Command::new(tool("fatlabel", "dosfstools")).arg("-i").arg(&img.path));
        assert_eq!(id.text.trim(), format!("{:08x}", opts.volume_id), "fatlabel -i");
    }
    let (files, dirs) = fatfs_read(&img.path, offset, opts.size_bytes, opts, &img.plan);
    assert_eq!(dirs, spec.dirs, "directories fatfs lists");
    assert_eq!(files.keys().collect::<Vec<_>>(), spec.files.keys().collect::<Vec<_>>(), "files fatfs lists");
    for (path, bytes) in &spec.files {
        assert!(files[path] == *bytes, "{path}: fatfs reads other bytes");
    }
    let listed = mdir_paths(&img.path, offset);
    let want: BTreeSet<String> = spec.dirs.iter().chain(spec.files.keys()).map(|p| as_mtools_shows(p)).collect();
    assert_eq!(listed, want, "paths mdir lists");
    // A few files through mcopy: the first, the last, the largest, and every one with a non-ASCII name that
    // mtools can name.
    let largest = spec.files.iter().max_by_key(|(_, b)| b.len()).map(|(p, _)| p).unwrap();
    let some = [spec.files.keys().next().unwrap(), spec.files.keys().next_back().unwrap(), largest];
    let non_ascii = spec.files.keys().filter(|p| !p.is_ascii() && *p == &as_mtools_shows(p));
    for path in some.into_iter().chain(non_ascii) {
        assert!(mcopy(&img.path, offset, path) == spec.files[path], "{path}: mcopy reads other bytes");
    }
    let info = minfo(&img.path, offset);
    for want in [
        format!("sector size: {} bytes", opts.sector_size.bytes()),
        format!("hidden sectors: {}", opts.hidden_sectors),
        format!("serial number: {:08X}", opts.volume_id),
        "disk type=\"FAT32   \"".to_owned(),
        format!("free clusters={}", img.plan.free_clusters()),
        format!("last allocated cluster={}", img.plan.used_clusters + 1),
    ] {
        assert!(info.contains(&want), "minfo lacks {want:?}:\n{info}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[test]
#[should_panic(expected = "install the Debian package no-such-package")]
fn a_missing_tool_fails_naming_its_package() {
    tool("no-such-tool-kiln", "no-such-package");
}

#[test]
fn realistic_esp() {
    let host = tempfile::tempdir().unwrap();
    let spec = realistic(host.path());
    let opts = options(512 * MIB, SectorSize::S512, 2048);
    let img = build(&spec.tree, &opts);
    assert_eq!(img.plan.geometry.cluster_bytes(), 4096);
    check(&img, 0, &opts, &spec);
    // mdir shows long names beside the generated short ones.
    let out = run(Command::new(tool("mdir", "mtools")).args(["-i", &mtools_image(&img.path, 0), "::/EFI/systemd"]));
    assert!(out.text.contains("SYSTEM~1 EFI") && out.text.contains("systemd-bootx64.efi"), "{}", out.text);
}

fn check_mixed(size: u64, sector: SectorSize, cluster: usize) {
    assert_eq!(cluster_bytes(size, sector), cluster, "cluster size for {size} bytes");
    let spec = mixed(cluster);
    let opts = options(size, sector, 2048);
    let img = build(&spec.tree, &opts);
    assert!(img.plan.geometry.clusters >= fat::MIN_CLUSTERS);
    check(&img, 0, &opts, &spec);
}

#[test]
fn mixed_33_mib_smallest() {
    check_mixed(33 * MIB, SectorSize::S512, 512);
}

#[test]
fn mixed_100_mib() {
    check_mixed(100 * MIB, SectorSize::S512, 1024);
}

#[test]
fn mixed_256_mib() {
    check_mixed(256 * MIB, SectorSize::S512, 2048);
}

#[test]
fn mixed_512_mib() {
    check_mixed(512 * MIB, SectorSize::S512, 4096);
}

#[test]
fn mixed_1_gib() {
    check_mixed(GIB, SectorSize::S512, 4096);
}

#[test]
fn mixed_4096_byte_sectors() {
    check_mixed(300 * MIB, SectorSize::S4096, 4096);
}

#[test]
fn realistic_esp_4096_byte_sectors() {
    let host = tempfile::tempdir().unwrap();
    let spec = realistic(host.path());
    let opts = options(GIB, SectorSize::S4096, 256);
    let img = build(&spec.tree, &opts);
    check(&img, 0, &opts, &spec);
}

#[test]
fn many_files_in_one_directory() {
    let mut spec = Spec::default();
    for i in 0..300 {
        spec.file(&format!("EFI/nixos/{HASH}-generation-{i:03}-linux.efi"), noise(i, i as u64));
    }
    for i in 0..40 {
        spec.file(&format!("UPPER/F{i:05}.BIN"), noise(1, i));
    }
    let opts = options(64 * MIB, SectorSize::S512, 2048);
    let img = build(&spec.tree, &opts);
    // 300 names of 58 characters: 5 long-name entries and a short entry each, 57,600 bytes of directory in
    // a chain of 113 clusters of 512 bytes.
    assert_eq!(img.plan.geometry.cluster_bytes(), 512);
    check(&img, 0, &opts, &spec);
    let out = run(Command::new(tool("mdir", "mtools")).args(["-i", &mtools_image(&img.path, 0), "::/EFI/nixos"]));
    assert!(out.text.contains("302 files"), "300 and . and ..: {}", out.text);
    assert!(out.text.contains(&format!("{HASH}-generation-299-linux.efi")), "{}", out.text);
}

#[test]
fn too_small_partition_is_refused_with_both_numbers() {
    let host = tempfile::tempdir().unwrap();
    let spec = realistic(host.path());
    let needed = fat::min_size(&spec.tree, SectorSize::S512).unwrap();
    let given = 12 * MIB;
    // A partition that is FAT32-sized but too small for the files.
    let mut big = spec.tree.clone();
    big.add_file("EFI/nixos/huge.efi", Source::Bytes(Arc::from(vec![1u8; 40 << 20]))).unwrap();
    let needed_big = fat::min_size(&big, SectorSize::S512).unwrap();
    let err = fat::plan(&big, &options(48 * MIB, SectorSize::S512, 2048)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&needed_big.to_string()) && msg.contains(&(48 * MIB).to_string()), "{msg}");
    // The size min_size names works, for the tree and at the FAT32 minimum.
    fat::plan(&big, &options(needed_big, SectorSize::S512, 2048)).unwrap();
    fat::plan(&spec.tree, &options(needed, SectorSize::S512, 2048)).unwrap();
    // A partition too small for any FAT32.
    let err = fat::plan(&spec.tree, &options(given, SectorSize::S512, 2048)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&given.to_string()) && msg.contains(&needed.to_string()), "{msg}");
    assert!(matches!(err, fat::Error::TooSmallForFat32 { .. }), "{err:?}");
    // With 4 KiB sectors clusters are at least 4 KiB, so FAT32 needs about 257 MiB.
    let err = fat::plan(&Tree::new(), &options(200 * MIB, SectorSize::S4096, 256)).unwrap_err();
    assert!(err.to_string().contains(&(200 * MIB).to_string()), "{err}");
}

#[test]
fn deterministic() {
    let host = tempfile::tempdir().unwrap();
    let spec = realistic(host.path());
    let opts = options(100 * MIB, SectorSize::S512, 2048);
    let a = build(&spec.tree, &opts);
    let b = build(&spec.tree, &opts);
    // The same files added in reverse order.
    let mut reversed = Tree::new();
    for (path, bytes) in spec.files.iter().rev() {
        reversed.add_file(path, Source::Bytes(Arc::from(bytes.clone()))).unwrap();
    }
    let c = build(&reversed, &opts);
    let read = |img: &Image| std::fs::read(&img.path).unwrap();
    let first = read(&a);
    assert!(first == read(&b), "two writes differ");
    assert!(first == read(&c), "insertion order changed the image");
}

#[test]
fn at_an_offset_inside_a_disk() {
    let host = tempfile::tempdir().unwrap();
    let spec = realistic(host.path());
    let opts = options(100 * MIB, SectorSize::S512, 2048);
    let disk = build_at(&spec.tree, &opts, MIB, 102 * MIB);
    // mtools (`img@@offset`) and fatfs read it in place.
    check(&disk, MIB, &opts, &spec);
    let out =
        run(Command::new(tool("mdir", "mtools")).args(["-i", &format!("{}@@1M", disk.path.display()), "::/loader"]));
    assert!(out.ok && out.text.contains("loader.conf"), "{}", out.text);
    // fsck.fat has no offset option: the partition's bytes equal a volume written alone, which it checks.
    let alone = build(&spec.tree, &opts);
    fsck(&alone.path);
    let whole = std::fs::read(&disk.path).unwrap();
    let part = std::fs::read(&alone.path).unwrap();
    assert!(whole[MIB as usize..(MIB + 100 * MIB) as usize] == part[..], "the partition differs from the volume alone");
    assert!(whole[..MIB as usize].iter().chain(&whole[(101 * MIB) as usize..]).all(|&b| b == 0), "wrote outside");
}

#[test]
fn a_file_named_like_the_label() {
    let mut spec = Spec::default();
    spec.file("ESP", b"not the label".to_vec());
    spec.file("esp.txt", b"x".to_vec());
    let opts = options(40 * MIB, SectorSize::S512, 63);
    let img = build(&spec.tree, &opts);
    check(&img, 0, &opts, &spec);
}

#[test]
fn no_label() {
    let mut tree = Tree::new();
    tree.add_file("EFI/BOOT/BOOTX64.EFI", Source::Bytes(Arc::from(noise(5000, 9)))).unwrap();
    let mut opts = options(40 * MIB, SectorSize::S512, 2048);
    opts.label = String::new();
    let img = build(&tree, &opts);
    fsck(&img.path);
    let mut b = [0u8; 512];
    File::open(&img.path).unwrap().read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b[71..82], b"NO NAME    ");
    let info = minfo(&img.path, 0);
    assert!(info.contains("disk label=\"NO NAME    \""), "{info}");
    let part = Partition { file: File::open(&img.path).unwrap(), base: 0, len: opts.size_bytes, pos: 0 };
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.read_volume_label_from_root_dir().unwrap(), None);
}
