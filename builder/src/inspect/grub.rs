//! GRUB for BIOS: its boot.img in sector 0 (recognised by its message strings), where that boot sector says
//! core.img is (the LBA at 0x5C) and how long core.img's own blocklist says it is, and the `menuentry`s of
//! `grub.cfg` on an ext4 filesystem.

use anyhow::Result;
use kiln_formats::disk::{Bytes, Lba, SectorSize};
use kiln_formats::grub::{BLOCKLIST_ENTRY, FIRST_BLOCKLIST, KERNEL_SECTOR, SECTOR};
use serde::Serialize;

use super::Partition;
use crate::readback::{Disk, ser};

/// GRUB installed for BIOS booting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrubBios {
    /// The sector boot.img loads core.img's first sector from (512-byte sectors).
    #[serde(serialize_with = "ser::lba")]
    pub core_lba: Lba,
    /// Its byte offset.
    #[serde(serialize_with = "ser::bytes")]
    pub core_offset: Bytes,
    /// The partition core.img is in (a BIOS boot partition); `None`: outside every partition, in the gap after
    /// the MBR.
    pub core_partition: Option<u32>,
    /// core.img's length in sectors, from its first sector's blocklist; `None` when that sector is not GRUB's
    /// diskboot.
    pub core_sectors: Option<u64>,
    /// `grub.cfg`, when an ext4 filesystem holds one.
    pub config: Option<GrubConfig>,
}

/// A `grub.cfg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrubConfig {
    /// The partition holding it (`None`: the image is the filesystem).
    pub partition: Option<u32>,
    /// Its path in that filesystem.
    pub path: String,
    /// `set default=…`.
    pub default: Option<String>,
    /// `set timeout=…`.
    pub timeout: Option<String>,
    /// Its menu entries, in order.
    pub entries: Vec<GrubEntry>,
}

/// One `menuentry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrubEntry {
    /// Its title (inside a submenu: `Submenu>Title`, as GRUB names it for `default`).
    pub title: String,
    /// The kernel of its `linux` line.
    pub linux: Option<String>,
    /// The kernel command line its `linux` line passes: the words after the kernel, joined as GRUB joins them
    /// (without the `BOOT_IMAGE=` GRUB puts first).
    pub options: Option<String>,
    /// The files of its `initrd` line.
    pub initrd: Vec<String>,
}

/// boot.img's messages, which follow its code in every GRUB 2 i386-pc build (at 0x180).
const BOOT_IMG_MARK: &[u8] = b"GRUB \0Geom\0Hard Disk\0Read\0 Error";
/// diskboot.img's (core.img's first sector) message.
const DISKBOOT_MARK: &[u8] = b"loading\0";
/// Where grub.cfg is looked for: on the root filesystem, and on a separate /boot.
pub(crate) const CONFIG_PATHS: &[&str] = &["/boot/grub/grub.cfg", "/grub/grub.cfg"];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// GRUB's boot sector, if sector 0 is one: where it points and what is there. A core.img pointer past the end
/// of the image is an error (the image is truncated).
pub(crate) fn bios(disk: &Disk, partitions: &[Partition]) -> Result<Option<GrubBios>> {
    let mut s0 = [0u8; SECTOR];
    disk.read("sector 0", Bytes(0), &mut s0)?;
    // The boot code ends where the disk signature and partition table begin.
    if !contains(&s0[..0x1B8], BOOT_IMG_MARK) {
        return Ok(None);
    }
    let core_lba = Lba(u64::from_le_bytes(s0[KERNEL_SECTOR..KERNEL_SECTOR + 8].try_into().expect("8 bytes")));
    let Some(core_offset) = core_lba.checked_offset(SectorSize::S512) else {
        anyhow::bail!("{}: GRUB's boot sector points at LBA {core_lba}, beyond 2^64 bytes", disk.name());
    };
    let mut first = [0u8; SECTOR];
    disk.read("GRUB core.img's first sector, which sector 0 points to", core_offset, &mut first)?;
    let core_sectors = contains(&first, DISKBOOT_MARK).then(|| 1 + blocklist_sectors(&first));
    let core_partition = partitions.iter().find(|p| p.start <= core_offset && core_offset < p.end).map(|p| p.number);
    Ok(Some(GrubBios { core_lba, core_offset, core_partition, core_sectors, config: None }))
}

/// Sectors diskboot's blocklist loads: entries of (u64 start, u16 length, u16 segment) counting down from the
/// end of the sector, until a zero length.
fn blocklist_sectors(diskboot: &[u8; SECTOR]) -> u64 {
    let mut total = 0;
    let mut at = FIRST_BLOCKLIST;
    loop {
        let len = u16::from_le_bytes([diskboot[at + 8], diskboot[at + 9]]);
        if len == 0 {
            return total;
        }
        total += u64::from(len);
        match at.checked_sub(BLOCKLIST_ENTRY) {
            // The code is at the start of the sector; a list that runs into it has no terminator.
            Some(next) if next >= 0x100 => at = next,
            _ => return total,
        }
    }
}

/// The parts of `grub.cfg` inspect reports: `set default`/`set timeout` at top level (outside conditions) and
/// each `menuentry` (nested in `submenu`s too) with its `linux` and `initrd` lines.
pub(crate) fn parse_config(text: &str, partition: Option<u32>, path: &str) -> GrubConfig {
    let mut cfg = GrubConfig { partition, path: path.to_owned(), default: None, timeout: None, entries: Vec::new() };
    // The titles of the enclosing blocks: Some for submenus and menu entries, None for other braces (if, function).
    let mut blocks: Vec<Option<String>> = Vec::new();
    let mut current: Option<GrubEntry> = None;
    // `if … fi` nesting: settings inside a condition may not apply.
    let mut conditions = 0usize;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = crate::boot::grub::words(line);
        let first = words.first().map(String::as_str);
        match first {
            Some("menuentry" | "submenu") => {
                let title = words.get(1).cloned().unwrap_or_default();
                let path: Vec<&str> = blocks.iter().flatten().map(String::as_str).chain([title.as_str()]).collect();
                if first == Some("menuentry") {
                    current = Some(GrubEntry { title: path.join(">"), linux: None, options: None, initrd: Vec::new() });
                }
                if line.ends_with('{') {
                    blocks.push(Some(title));
                }
            }
            Some("linux" | "linux16" | "linuxefi") if current.is_some() => {
                let e = current.as_mut().expect("checked");
                e.linux = words.get(1).cloned();
                // What GRUB's linux command hands the kernel (after its own BOOT_IMAGE=).
                e.options = Some(crate::boot::grub::loader_cmdline(words.get(2..).unwrap_or_default()));
            }
            Some("initrd" | "initrd16" | "initrdefi") if current.is_some() => {
                current.as_mut().expect("checked").initrd = words[1..].to_vec();
            }
            Some("if") => conditions += 1,
            Some("fi") => conditions = conditions.saturating_sub(1),
            Some("set") if blocks.is_empty() && conditions == 0 => {
                for w in &words[1..] {
                    match w.split_once('=') {
                        Some(("default", v)) => cfg.default = Some(v.to_owned()),
                        Some(("timeout", v)) => cfg.timeout = Some(v.to_owned()),
                        _ => {}
                    }
                }
            }
            Some("}") => {
                if let Some(Some(_)) = blocks.pop()
                    && let Some(e) = current.take()
                {
                    cfg.entries.push(e);
                }
            }
            _ => {
                if line.ends_with('{') {
                    blocks.push(None);
                }
            }
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_entries() {
        let text = r#"# Generated by kiln.
set default=0
set timeout=1
serial --unit=0 --speed=115200
menuentry "NixOS" {
  linux /nix/store/k/bzImage init=/nix/store/t/init console=ttyS0
  initrd /nix/store/i/initrd
}
if [ x = y ]; then
  set default=2
fi
submenu 'Older "generations"' --class x {
  menuentry 'NixOS - Configuration 1' {
    linux16 /k2 quiet
  }
}
menuentry "NixOS (debug)" --class nixos {
  linux /k init=/t/init  debug
  initrd /a /b
}
"#;
        let cfg = parse_config(text, Some(3), "/boot/grub/grub.cfg");
        assert_eq!((cfg.default.as_deref(), cfg.timeout.as_deref()), (Some("0"), Some("1")));
        let titles: Vec<&str> = cfg.entries.iter().map(|e| e.title.as_str()).collect();
        assert_eq!(titles, ["NixOS", "Older \"generations\">NixOS - Configuration 1", "NixOS (debug)"]);
        let e = &cfg.entries[0];
        assert_eq!(e.linux.as_deref(), Some("/nix/store/k/bzImage"));
        assert_eq!(e.options.as_deref(), Some("init=/nix/store/t/init console=ttyS0"));
        assert_eq!(e.initrd, ["/nix/store/i/initrd"]);
        assert_eq!(cfg.entries[1].options.as_deref(), Some("quiet"));
        assert_eq!(cfg.entries[2].initrd, ["/a", "/b"]);
    }

    #[test]
    fn blocklists() {
        let mut s = [0u8; SECTOR];
        s[FIRST_BLOCKLIST + 8..FIRST_BLOCKLIST + 10].copy_from_slice(&287u16.to_le_bytes());
        assert_eq!(blocklist_sectors(&s), 287);
        let next = FIRST_BLOCKLIST - BLOCKLIST_ENTRY;
        s[next + 8..next + 10].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(blocklist_sectors(&s), 290);
    }
}
