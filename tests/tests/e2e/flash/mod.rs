//! `kiln flash` onto loop devices the tests make (`losetup`; the tests run as root and fail, not skip, where
//! they cannot make one). The kernel these tests run on may lack partition-table support (no `losetup -P`
//! partitions), so a partition is read through a loop device of its own over the flashed device (`losetup -o
//! OFFSET --sizelimit SIZE` on the device): still through the device, never through the image file.

mod boot;
mod crash;
mod formats;
mod refusals;
mod url;

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use kiln_tests::{fixtures, tools};

use crate::util::{Run, kiln, store_of};

/// A loop device, detached when dropped (also when the test fails).
#[derive(Debug)]
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// A loop device over `file`, with `sector`-byte logical sectors.
    pub fn new(file: &Path, sector: u32) -> Self {
        Self::with_args(file, &["-b", &sector.to_string()])
    }

    /// A loop device over `file` (512-byte sectors) that takes partitions (`losetup -P`), with none yet: this
    /// kernel may have no partition-table parsers, so they are added with [`Loop::add_partition`].
    pub fn partitionable(file: &Path) -> Self {
        Self::with_args(file, &["-P"])
    }

    /// Adds partition `n` over `len` bytes at `offset` through the kernel's `BLKPG` ioctl (`addpart`, which needs
    /// no partition-table parser) and returns its device (`/dev/loopNpM`, made by devtmpfs).
    pub fn add_partition(&self, n: u32, offset: u64, len: u64) -> PathBuf {
        let addpart = tools::require("addpart", "util-linux");
        tools::run_ok(Command::new(addpart).arg(&self.dev).args([
            n.to_string(),
            (offset / 512).to_string(),
            (len / 512).to_string(),
        ]));
        let part = PathBuf::from(format!("{}p{n}", self.dev.display()));
        for _ in 0..100 {
            if part.exists() {
                return part;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("{} was added but has no device node", part.display());
    }

    /// A read-only loop device over `len` bytes at `offset` of `dev` (a partition of a flashed device).
    pub fn part(dev: &Path, offset: u64, len: u64, sector: u32) -> Self {
        Self::with_args(
            dev,
            &["-r", "-b", &sector.to_string(), "-o", &offset.to_string(), "--sizelimit", &len.to_string()],
        )
    }

    /// A writable loop device over `len` bytes at `offset` of `dev`.
    pub fn part_rw(dev: &Path, offset: u64, len: u64) -> Self {
        Self::with_args(dev, &["-o", &offset.to_string(), "--sizelimit", &len.to_string()])
    }

    fn with_args(file: &Path, args: &[&str]) -> Self {
        let losetup = tools::require("losetup", "mount");
        let out = tools::run(Command::new(losetup).args(["-f", "--show"]).args(args).arg(file));
        assert!(
            out.status.success(),
            "cannot make a loop device over {} (the flash tests need root and loop devices): {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Self { dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A sparse file of `size` bytes in `dir`: the backing of a blank disk.
pub fn blank(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

/// Fills `file` with a non-zero pattern at both ends and in the middle: an old disk's leftovers.
pub fn dirty(file: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let len = f.metadata().unwrap().len();
    let junk = vec![0xA5u8; 4 << 20];
    for at in [0, len / 2, len - junk.len() as u64] {
        f.write_all_at(&junk, at).unwrap();
    }
}

/// `kiln flash` with `args`.
pub fn flash<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let mut all: Vec<std::ffi::OsString> = vec!["flash".into(), "--progress".into(), "none".into()];
    all.extend(args.iter().map(|a| a.as_ref().to_owned()));
    kiln(all)
}

/// Builds the demo closure into `out` with `flags`.
pub fn build_demo(out: &Path, flags: &[&str]) {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let ci = fx.join("closure-info");
    let store = store_of(&fx);
    let mut args: Vec<&OsStr> = ["build", "--progress", "none", "--system"].map(OsStr::new).to_vec();
    args.extend([OsStr::new(&top), OsStr::new("--store-dir"), store.as_os_str(), OsStr::new("--closure-info")]);
    args.extend([ci.as_os_str(), OsStr::new("--output"), out.as_os_str()]);
    args.extend(flags.iter().map(OsStr::new));
    kiln(args).ok();
}

/// The demo images the flash tests write, built once per test process into one directory: `efi.img` and
/// `hybrid.img` (raw, with a bmap and a `.sha256`), `efi4k.img` (4096-byte sectors), and the efi image in every
/// other format kiln writes ([`Images::efi_as`]), all from the same seed: the same disk.
/// They live in [`fixtures::process_scratch`], removed by the next test process.
#[derive(Debug)]
pub struct Images {
    pub dir: PathBuf,
    formats: Mutex<()>,
}

impl Images {
    pub fn get() -> &'static Self {
        static IMAGES: OnceLock<Images> = OnceLock::new();
        IMAGES.get_or_init(|| {
            let p = fixtures::process_scratch("flash-images");
            build_demo(&p.join("efi.img"), &["--layout", "efi", "--bmap", "--checksum"]);
            build_demo(&p.join("hybrid.img"), &["--layout", "hybrid", "--bmap", "--checksum"]);
            build_demo(&p.join("efi4k.img"), &["--layout", "efi", "--sector-size", "4096", "--bmap"]);
            Self { dir: p, formats: Mutex::new(()) }
        })
    }

    /// `<name>.img` (raw).
    pub fn raw(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    /// The efi image as `format` (`raw.zst`, `qcow2`, `vhd`, `vmdk`, `gce`), with a `.sha256` (and for raw.zst
    /// a bmap): built on first use.
    pub fn efi_as(&self, format: &str) -> PathBuf {
        let _one = self.formats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = match format {
            "gce" => "efi.raw.tar.gz".to_owned(),
            "raw.zst" => "efi.raw.zst".to_owned(),
            other => format!("efi.{other}"),
        };
        let out = self.dir.join(name);
        if !out.exists() {
            let mut flags = vec!["--layout", "efi", "--format", format, "--checksum"];
            if format == "raw.zst" {
                flags.push("--bmap");
            }
            build_demo(&out, &flags);
        }
        out
    }
}

/// The data ranges of a raw image file (`SEEK_DATA`/`SEEK_HOLE`).
pub fn data_ranges(file: &Path) -> Vec<std::ops::Range<u64>> {
    let f = std::fs::File::open(file).unwrap();
    kiln_formats::sparse::DataRanges::new(&f).unwrap().map(Result::unwrap).collect()
}

/// Asserts that `dev` holds the raw image's bytes in every data range past the first MiB, except the image's
/// own backup GPT (`backup` bytes at its end: the flash moves it to the device's end).
pub fn assert_holds(dev: &Path, raw: &Path, backup: u64) {
    let size = std::fs::metadata(raw).unwrap().len();
    let (a, b) = (std::fs::File::open(raw).unwrap(), std::fs::File::open(dev).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for r in data_ranges(raw) {
        let (mut at, end) = (r.start.max(1 << 20), r.end.min(size - backup));
        while at < end {
            let n = (end - at).min(1 << 20) as usize;
            a.read_exact_at(&mut x[..n], at).unwrap();
            b.read_exact_at(&mut y[..n], at).unwrap();
            if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
                panic!("{} differs from {} at byte {}", dev.display(), raw.display(), at + i as u64);
            }
            at += n as u64;
        }
    }
}

/// (start, size) in bytes of each partition of `dev`, from sfdisk (which reads 4096-byte sectors on a 4Kn
/// device).
pub fn partitions(dev: &Path) -> Vec<(u64, u64, String)> {
    let json = kiln_tests::disk::sfdisk_json(dev);
    let ss = json["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * ss,
                p["size"].as_u64().unwrap() * ss,
                p["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `sgdisk -v` clean, and the backup GPT header in the device's last sector.
pub fn assert_table_fits(dev: &Path, sector: u64) {
    kiln_tests::disk::sgdisk_verify(dev).unwrap();
    let f = std::fs::File::open(dev).unwrap();
    let size = device_size(dev);
    let mut last = vec![0u8; sector as usize];
    f.read_exact_at(&mut last, size - sector).unwrap();
    assert_eq!(&last[..8], b"EFI PART", "{}: no backup GPT header in the last sector", dev.display());
}

/// A block device's size.
pub fn device_size(dev: &Path) -> u64 {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(dev).unwrap().seek(SeekFrom::End(0)).unwrap()
}

/// `e2fsck -fn` and `fsck.fat -n` of every ext4 and FAT partition of `dev`, each read through a loop device of
/// its own over the device.
pub fn assert_filesystems_clean(dev: &Path, sector: u32) {
    let parts = partitions(dev);
    for (start, len, kind) in parts {
        let part = Loop::part(dev, start, len, sector);
        match kind.as_str() {
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => {
                let out = tools::run(
                    Command::new(tools::require("fsck.fat", "dosfstools")).args(["-n", "-v"]).arg(&part.dev),
                );
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                let bad = text.lines().any(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains("wrong") || l.contains("bad") || l.contains("invalid") || l.contains("differ")
                });
                assert!(out.status.success() && !bad, "fsck.fat -n of the ESP on {}:\n{text}", dev.display());
            }
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => e2fsck_clean(&part.dev),
            _ => {}
        }
    }
}

/// `e2fsck -fn` of a device: exit 0 and no question answered.
pub fn e2fsck_clean(dev: &Path) {
    let out = tools::run(Command::new(tools::require("e2fsck", "e2fsprogs")).arg("-fn").arg(dev));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && !text.lines().any(|l| l.trim_end().ends_with("? no")),
        "e2fsck -fn {}:\n{text}",
        dev.display()
    );
}

/// Whether anything on `dev` reads as a partition table: `blkid -p` (low-level probe) finds one, or the
/// protective MBR / a GPT header is there at either end.
pub fn has_partition_table(dev: &Path) -> bool {
    let out = tools::run(Command::new(tools::require("blkid", "util-linux")).args(["-p", "-o", "export"]).arg(dev));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("PTTYPE=") {
        return true;
    }
    let f = std::fs::File::open(dev).unwrap();
    let size = device_size(dev);
    let mut b = vec![0u8; 8192];
    f.read_exact_at(&mut b, 0).unwrap();
    let mut tail = vec![0u8; 4096];
    f.read_exact_at(&mut tail, size - 4096).unwrap();
    b[510..512] == [0x55, 0xAA]
        || &b[512..520] == b"EFI PART"
        || &b[4096..4104] == b"EFI PART"
        || &tail[4096 - 512..4096 - 504] == b"EFI PART"
        || &tail[..8] == b"EFI PART"
}
