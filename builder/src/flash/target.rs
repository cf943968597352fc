//! The disk `kiln flash` writes: opened, measured, and checked against everything that would make writing it
//! destroy the wrong thing, before a byte is written.
//!
//! A block device is opened with `O_EXCL`, which the kernel refuses (`EBUSY`) while the device or one of its
//! partitions is mounted, used as swap, or claimed by device-mapper or md; kiln also reads `/proc/self/mountinfo`,
//! `/proc/swaps` and sysfs (`holders/`, `partition`) to say *what* holds it. A regular file is a disk of its own
//! size (created at the image's size when it does not exist).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln_formats::disk::SectorSize;
use rustix::fs::{FallocateFlags, fallocate};

use crate::units::human_bytes;

/// What the target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A block device.
    Device {
        /// Its device number.
        rdev: u64,
        /// Whether it is a partition (allowed with `--allow-partition`).
        partition: bool,
    },
    /// A regular file.
    File {
        /// Whether kiln created it (and removes it again on an error).
        created: bool,
    },
}

/// How the image's holes are made to read as zeros on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Holes {
    /// Deallocated: a hole punched in a file, or the device's own zeroing without writing (`BLKZEROOUT` with no
    /// fallback: discard that guarantees zeros, or write-zeroes offload).
    Discard,
    /// Zeros written (`--zero-holes`).
    Write,
    /// Left as they are: the device cannot zero them without writing every byte (a plain USB stick). The image
    /// does not read them: its block map says they hold nothing.
    Leave,
}

/// The target, open for writing.
#[derive(Debug)]
pub struct Target {
    /// As the user named it.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Device or file.
    pub kind: Kind,
    /// Its size in bytes.
    pub size: u64,
    /// Its logical sector size (a file's is the image's unless the device says otherwise).
    pub sector: Option<SectorSize>,
}

/// What the refusals need to know besides the target.
#[derive(Debug, Clone, Default)]
pub struct Guard<'a> {
    /// The source, when it is a local file.
    pub source: Option<&'a Path>,
    /// `--allow-partition`.
    pub allow_partition: bool,
    /// The size to create a new file target with.
    pub create_size: u64,
}

impl Target {
    /// Opens `path` for writing after the refusals: a partition (unless allowed), a device that is mounted,
    /// used as swap, held by another driver or open exclusively, the device of the running root or of the source,
    /// the source file itself. A path that does not exist becomes a new regular file of `create_size` bytes,
    /// made only when `create` (not on a dry run).
    ///
    /// # Errors
    /// Each refusal, naming the target and what holds it.
    pub fn open(path: &Path, guard: &Guard<'_>, create: bool) -> Result<Self> {
        let shown = path.display();
        let meta = match fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
        };
        if let (Some(src), Some(meta)) = (guard.source, &meta) {
            let s = fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
            if s.dev() == meta.dev() && s.ino() == meta.ino() {
                bail!("{shown} is the source image itself: refusing to write an image over itself");
            }
        }
        let Some(meta) = meta else {
            if !create {
                return Ok(Self {
                    path: path.to_owned(),
                    file: File::open("/dev/null").context("opening /dev/null")?,
                    kind: Kind::File { created: true },
                    size: guard.create_size,
                    sector: None,
                });
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
                .with_context(|| format!("creating {shown}"))?;
            file.set_len(guard.create_size).with_context(|| format!("sizing {shown}"))?;
            return Ok(Self {
                path: path.to_owned(),
                file,
                kind: Kind::File { created: true },
                size: guard.create_size,
                sector: None,
            });
        };
        let ft = meta.file_type();
        if ft.is_file() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("opening {shown} for writing"))?;
            return Ok(Self {
                path: path.to_owned(),
                file,
                kind: Kind::File { created: false },
                size: meta.len(),
                sector: None,
            });
        }
        if !ft.is_block_device() {
            bail!("{shown} is neither a block device nor a regular file");
        }
        let rdev = meta.rdev();
        let dev = SysDev::of(rdev);
        let partition = dev.is_partition();
        if partition && !guard.allow_partition {
            let whole = dev.whole_disk_name().map_or(String::new(), |d| format!(" of /dev/{d}"));
            bail!(
                "{shown} is a partition{whole}, not a whole disk: an image carries its own partition table \
                 (--allow-partition writes it into the partition anyway)"
            );
        }
        // Everything on this disk: the device itself, its partitions (or, for a partition, just itself).
        let family = if partition { vec![rdev] } else { dev.with_partitions() };
        refuse_in_use(path, &family)?;
        if let Some(src) = guard.source {
            let s = fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
            if family.contains(&s.dev()) {
                bail!("{shown} holds the source image {}: refusing to overwrite it while reading it", src.display());
            }
        }
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc_o_excl()).open(path).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                anyhow::anyhow!(
                    "{shown} is in use: the kernel refuses to open it exclusively (mounted, swap, a device-mapper \
                         or RAID member, or held open exclusively by another program)"
                )
            } else {
                anyhow::Error::new(e).context(format!("opening {shown} for writing"))
            }
        })?;
        let size = (&file).seek(SeekFrom::End(0)).with_context(|| format!("measuring {shown}"))?;
        let logical = rustix::fs::ioctl_blksszget(&file).with_context(|| format!("reading {shown}'s sector size"))?;
        let sector = match logical {
            512 => SectorSize::S512,
            4096 => SectorSize::S4096,
            n => bail!("{shown} has {n}-byte logical sectors; kiln writes images for 512 or 4096"),
        };
        Ok(Self { path: path.to_owned(), file, kind: Kind::Device { rdev, partition }, size, sector: Some(sector) })
    }

    /// As the user named it.
    #[must_use]
    pub fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// Whether it is a block device.
    #[must_use]
    pub fn is_device(&self) -> bool {
        matches!(self.kind, Kind::Device { .. })
    }

    /// How holes will be zeroed, asking the device (by trying on zero bytes) whether it can deallocate.
    #[must_use]
    pub fn holes(&self, zero_holes: bool) -> Holes {
        if zero_holes {
            return Holes::Write;
        }
        match self.kind {
            Kind::File { .. } => Holes::Discard,
            Kind::Device { rdev, .. } => {
                let q = SysDev::of(rdev).queue_dir();
                let offload = read_u64(&q.join("write_zeroes_max_bytes")).unwrap_or(0) > 0;
                if offload { Holes::Discard } else { Holes::Leave }
            }
        }
    }

    /// Makes `range` read as zeros the way `holes` says. A file or device that cannot deallocate after all gets
    /// zeros written.
    ///
    /// # Errors
    /// When writing fails.
    pub fn zero(&self, holes: Holes, start: u64, len: u64) -> Result<()> {
        if len == 0 || holes == Holes::Leave {
            return Ok(());
        }
        if holes == Holes::Discard {
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if fallocate(&self.file, mode, start, len).is_ok() {
                return Ok(());
            }
        }
        if self.is_device() {
            // The kernel writes zeros itself where the device cannot (BLKZEROOUT's fallback).
            if fallocate(&self.file, FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE, start, len).is_ok() {
                return Ok(());
            }
        }
        write_zeros(&self.file, start, len)
            .with_context(|| format!("zeroing {len} bytes at byte {start} of {}", self.shown()))
    }

    /// Flushes written data to the device.
    ///
    /// # Errors
    /// When the device reports a write error.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().with_context(|| format!("flushing {} (a write error on the device)", self.shown()))
    }
}

/// Writes zeros over `len` bytes at `start`.
fn write_zeros(file: &File, start: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = start;
    while at < start + len {
        let n = (start + len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// `O_EXCL`: on a block device without `O_CREAT`, an exclusive claim the kernel refuses while the device is in use.
fn libc_o_excl() -> i32 {
    rustix::fs::OFlags::EXCL.bits() as i32
}

/// Refuses a device any of whose numbers (`family`) is mounted, used as swap, held by another driver, or holds
/// the running root.
fn refuse_in_use(path: &Path, family: &[u64]) -> Result<()> {
    let shown = path.display();
    let root = fs::metadata("/").map(|m| m.dev()).ok();
    if root.is_some_and(|r| family.contains(&r)) {
        bail!("{shown} holds the running system's root filesystem");
    }
    if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (Some(devno), Some(mnt)) = (f.get(2), f.get(4)) else { continue };
            if let Some(dev) = parse_devno(devno)
                && family.contains(&dev)
            {
                bail!("{shown} is mounted: {} on {mnt}; unmount it first", devname(dev));
            }
        }
    }
    if let Ok(text) = fs::read_to_string("/proc/swaps") {
        for line in text.lines().skip(1) {
            let Some(name) = line.split_whitespace().next() else { continue };
            let name = name.replace("\\040", " ");
            if let Ok(m) = fs::metadata(&name)
                && m.file_type().is_block_device()
                && family.contains(&m.rdev())
            {
                bail!("{shown} is in use as swap ({name}); swapoff it first");
            }
        }
    }
    for &dev in family {
        let holders = SysDev::of(dev).dir.join("holders");
        if let Ok(rd) = fs::read_dir(&holders) {
            let names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            if !names.is_empty() {
                bail!(
                    "{shown}: {} is held by {} (device-mapper, RAID or LVM); release it first",
                    devname(dev),
                    names.join(", ")
                );
            }
        }
    }
    Ok(())
}

fn parse_devno(s: &str) -> Option<u64> {
    let (ma, mi) = s.split_once(':')?;
    Some(rustix::fs::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// `/dev/<name>` of a device number, from sysfs.
fn devname(dev: u64) -> String {
    SysDev::of(dev).name().map_or_else(
        || format!("device {}:{}", rustix::fs::major(dev), rustix::fs::minor(dev)),
        |n| format!("/dev/{n}"),
    )
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A block device's sysfs directory.
#[derive(Debug)]
struct SysDev {
    dir: PathBuf,
}

impl SysDev {
    fn of(dev: u64) -> Self {
        Self { dir: PathBuf::from(format!("/sys/dev/block/{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))) }
    }

    fn is_partition(&self) -> bool {
        self.dir.join("partition").exists()
    }

    fn name(&self) -> Option<String> {
        let real = fs::canonicalize(&self.dir).ok()?;
        Some(real.file_name()?.to_string_lossy().into_owned())
    }

    fn whole_disk_name(&self) -> Option<String> {
        let real = fs::canonicalize(&self.dir).ok()?;
        Some(real.parent()?.file_name()?.to_string_lossy().into_owned())
    }

    /// The queue directory (a partition's is its disk's).
    fn queue_dir(&self) -> PathBuf {
        if self.is_partition() { self.dir.join("../queue") } else { self.dir.join("queue") }
    }

    /// This device's number and its partitions'.
    fn with_partitions(&self) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(d) = read_devno(&self.dir.join("dev")) {
            out.push(d);
        }
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.join("partition").exists()
                    && let Some(d) = read_devno(&p.join("dev"))
                {
                    out.push(d);
                }
            }
        }
        out
    }
}

fn read_devno(p: &Path) -> Option<u64> {
    parse_devno(fs::read_to_string(p).ok()?.trim())
}

/// Says the size in words, for refusals.
#[must_use]
pub fn size_words(bytes: u64) -> String {
    format!("{bytes} bytes ({})", human_bytes(bytes))
}
