//! `kiln inspect`: what an image holds, read back read-only.
//!
//! 1. [`readback`](crate::readback) reads the layout: a GPT (512- or 4096-byte sectors, checksums checked),
//!    else — when byte 0 starts no filesystem — a DOS table; neither and no filesystem means it is not a disk
//!    image (a container or stream is named). What is odd about the table is a warning; what lies past the end
//!    is an error.
//! 2. `fs` reports each partition's filesystem (or the bare image's), as [`readback`](crate::readback)
//!    identifies it by magic number: ext4 from its superblock, FAT from its boot sector (and `fatfs`, through a
//!    window whose writes fail), a few others by name; `partition` reports each partition.
//! 3. `systemd_boot` reads an ESP's systemd-boot binaries, `loader.conf` and entries; `grub` recognises GRUB's
//!    boot.img in sector 0, follows it to core.img, and reads `grub.cfg` from ext4 (with `ext4-view`).
//! 4. `nixos` follows the system profile to its toplevel and counts the Nix database's valid paths.
//!
//! What makes the image unreadable — not an image, a read error, a corrupt partition table, a table or boot
//! sector pointing past the end (truncated) — is an error naming the image and the byte offset. What cannot be
//! read inside a filesystem is a warning in the [`Report`], so one run still shows everything else.

mod fs;
mod grub;
mod nixos;
mod partition;
mod systemd_boot;
mod text;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln_formats::disk::{Bytes, SectorSize};
use serde::Serialize;

pub use fs::{Ext4, Fat, Filesystem};
pub use grub::{GrubBios, GrubConfig, GrubEntry};
pub use nixos::{Generation, NixOs};
pub use partition::{Attributes, Partition};
pub use systemd_boot::{EfiBinary, LoaderEntry, SystemdBoot};

pub use crate::readback::{PartitionType, Table};

use crate::cli::InspectArgs;
use crate::readback::{Disk, Layout, Window, not_a_disk_image, ser};

/// The `v` of `kiln inspect --json`; raised when a field changes meaning or goes away (not when one is added).
pub const VERSION: u32 = 1;

/// What an image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The image file.
    #[serde(serialize_with = "ser::path")]
    pub image: PathBuf,
    /// Its size.
    #[serde(serialize_with = "ser::bytes")]
    pub size: Bytes,
    /// The partition table's logical sector size; `None` without a table.
    #[serde(serialize_with = "ser::opt_sector")]
    pub sector_size: Option<SectorSize>,
    /// The partition table.
    pub table: Table,
    /// The partitions, in table order.
    pub partitions: Vec<Partition>,
    /// Without a partition table: the filesystem the image is.
    pub filesystem: Option<Filesystem>,
    /// The bootloaders found.
    pub bootloaders: Bootloaders,
    /// The NixOS system, on the first ext4 filesystem with `/nix`.
    pub nixos: Option<NixOs>,
    /// What could not be read, each naming where.
    pub warnings: Vec<String>,
}

/// Bootloaders, each `None` when not installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bootloaders {
    /// systemd-boot on a FAT volume (the ESP).
    pub systemd_boot: Option<SystemdBoot>,
    /// GRUB for BIOS: boot.img in sector 0.
    pub grub_bios: Option<GrubBios>,
}

/// `kiln inspect`: prints the report as text, or as one JSON object with `--json`.
pub fn command(args: InspectArgs) -> Result<()> {
    let report = inspect(&args.image)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        #[derive(Serialize)]
        struct Json<'a> {
            v: u32,
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            report: &'a Report,
        }
        let json = serde_json::to_string(&Json { v: VERSION, kind: "inspect", report: &report })
            .context("serialising the report")?;
        writeln!(out, "{json}")?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    out.flush().context("writing to stdout")
}

/// Reads `image` and reports what it holds.
pub fn inspect(image: &Path) -> Result<Report> {
    inspect_disk(&Disk::open(image)?, image)
}

fn inspect_disk(disk: &Disk, image: &Path) -> Result<Report> {
    let layout = read_layout(disk)?;
    let mut warnings: Vec<String> = layout.issues.iter().map(|i| format!("{}: {i}", disk.name())).collect();
    let whole = disk.whole();
    let bare = layout.bare.as_ref().map(|magic| fs::report(&whole, magic, &mut warnings));
    let mut partitions = Vec::new();
    let mut windows = Vec::new();
    for p in &layout.partitions {
        let window = disk.window(p.range);
        partitions.push(Partition::of(p, fs::probe(&window, &mut warnings)?));
        windows.push(window);
    }
    let volumes: Vec<Volume<'_>> = match &bare {
        Some(fs) => vec![Volume { partition: None, window: whole, fs, esp: false }],
        None => partitions
            .iter()
            .zip(windows)
            .map(|(p, window)| Volume { partition: Some(p.number), window, fs: &p.filesystem, esp: p.kind.is_esp() })
            .collect(),
    };
    let systemd_boot = find_systemd_boot(&volumes, &mut warnings);
    let ext4s: Vec<(Option<u32>, ext4_view::Ext4, String)> = volumes
        .iter()
        .filter(|v| matches!(v.fs, Filesystem::Ext4(_)))
        .filter_map(|v| match crate::readback::open_ext4(&v.window) {
            Ok(fs) => Some((v.partition, fs, v.describe("ext4"))),
            Err(e) => {
                warnings.push(format!("{e:#}"));
                None
            }
        })
        .collect();
    let mut grub_bios = grub::bios(disk, &partitions)?;
    if let Some(grub) = &mut grub_bios {
        grub.config = find_grub_config(&ext4s, &mut warnings);
    }
    let nixos = ext4s.iter().find_map(|(partition, fs, at)| nixos::read(fs, *partition, at, &mut warnings));
    Ok(Report {
        image: image.to_path_buf(),
        size: disk.len(),
        sector_size: layout.sector,
        table: layout.table,
        partitions,
        filesystem: bare,
        bootloaders: Bootloaders { systemd_boot, grub_bios },
        nixos,
        warnings,
    })
}

/// The layout: a partition table, or the filesystem the image is. Not a disk image, a corrupt table and a
/// truncated image (a table placing something past its end) are errors.
fn read_layout(disk: &Disk) -> Result<Layout> {
    let name = disk.name();
    let looked_for = "no GPT header at byte 512 or 4096, no filesystem kiln knows at byte 0, and no DOS partition \
                      table (55 AA) at byte 510";
    let layout = Layout::read(disk)?.ok_or_else(|| not_a_disk_image(disk, "inspect", looked_for))?;
    if let Some(missing) = layout.past_end(disk.len()).first() {
        bail!("{name}: truncated: {missing}, past the end of the image ({} bytes)", disk.len());
    }
    Ok(layout)
}

/// A filesystem in the image: a partition's, or the bare image's.
struct Volume<'a> {
    partition: Option<u32>,
    window: Window,
    fs: &'a Filesystem,
    esp: bool,
}

impl Volume<'_> {
    /// What warnings call it: the image, the partition, the filesystem and where it starts.
    fn describe(&self, kind: &str) -> String {
        let name = self.window.disk().name();
        match self.partition {
            Some(n) => format!("{name}: partition {n} ({kind} at byte {})", self.window.range().start),
            None => format!("{name}: {kind} at byte 0"),
        }
    }
}

/// systemd-boot on the first FAT volume that has it, ESPs first. A volume fatfs could not read is already a
/// warning, and is skipped.
fn find_systemd_boot(volumes: &[Volume<'_>], warnings: &mut Vec<String>) -> Option<SystemdBoot> {
    let mut fats: Vec<&Volume<'_>> =
        volumes.iter().filter(|v| matches!(v.fs, Filesystem::Fat(f) if f.free.is_some())).collect();
    fats.sort_by_key(|v| !v.esp);
    for v in fats {
        match systemd_boot::read(&v.window, v.partition) {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {}
            Err(e) => warnings.push(format!("{e:#}")),
        }
    }
    None
}

/// The first `grub.cfg` on the ext4 filesystems (root's `/boot/grub`, then a separate /boot's `/grub`).
fn find_grub_config(
    ext4s: &[(Option<u32>, ext4_view::Ext4, String)],
    warnings: &mut Vec<String>,
) -> Option<GrubConfig> {
    for (partition, fs, at) in ext4s {
        for path in grub::CONFIG_PATHS {
            match fs.read(*path) {
                Ok(bytes) => return Some(grub::parse_config(&String::from_utf8_lossy(&bytes), *partition, path)),
                Err(ext4_view::Ext4Error::NotFound) => {}
                Err(e) => warnings.push(format!("{at}: {path}: {e}")),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn mem(bytes: Vec<u8>) -> Disk {
        let len = Bytes(bytes.len() as u64);
        Disk::new(Arc::new(bytes), len, "mem.img".into())
    }

    #[test]
    fn not_an_image() {
        struct Case {
            name: &'static str,
            bytes: Vec<u8>,
            want: &'static str,
        }
        let cases = [
            Case { name: "tiny", bytes: b"hello\n".to_vec(), want: "mem.img: not a disk image: 6 bytes, less than" },
            Case {
                name: "text",
                bytes: b"lorem ipsum\n".repeat(1000),
                want: "mem.img: not a disk image: no GPT header at byte 512 or 4096",
            },
            Case {
                name: "qcow2",
                bytes: [b"QFI\xfb\0\0\0\x03".as_slice(), &[0; 4096]].concat(),
                want: "mem.img: a qcow2 image, not a raw disk: convert it first",
            },
        ];
        for case in cases {
            let err = inspect_disk(&mem(case.bytes), Path::new("mem.img")).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.starts_with(case.want), "{}: {err}", case.name);
            assert!(!err.contains('\n'), "{}: one line: {err}", case.name);
        }
    }

    /// A DOS table whose partition runs past the end of the image: truncated, with the offset.
    #[test]
    fn truncated_partition() {
        let mut b = vec![0u8; 1 << 20];
        b[510] = 0x55;
        b[511] = 0xAA;
        let e = &mut b[0x1BE..0x1CE];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&2048u32.to_le_bytes());
        e[12..16].copy_from_slice(&4096u32.to_le_bytes());
        let err = format!("{:#}", inspect_disk(&mem(b), Path::new("mem.img")).unwrap_err());
        assert_eq!(
            err,
            "mem.img: truncated: partition 1 ends at byte 3145728, past the end of the image (1048576 bytes)"
        );
    }

    /// An empty DOS table is a disk with no partitions, and its JSON carries the documented shape.
    #[test]
    fn empty_dos_disk() {
        let mut b = vec![0u8; 1 << 20];
        b[0x1B8..0x1BC].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        b[510] = 0x55;
        b[511] = 0xAA;
        let report = inspect_disk(&mem(b), Path::new("mem.img")).unwrap();
        assert_eq!(report.table, Table::Dos { disk_signature: 0xDEAD_BEEF });
        assert!(report.partitions.is_empty() && report.nixos.is_none());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["table"], serde_json::json!({ "kind": "dos", "disk_signature": "0xdeadbeef" }));
        assert_eq!(json["sector_size"], 512);
        assert_eq!(json["bootloaders"], serde_json::json!({ "systemd_boot": null, "grub_bios": null }));
        assert!(report.to_text().contains("\ntable            dos\n"), "{}", report.to_text());
    }
}
