//! Boot entries: one per generation and per specialisation, named and laid out as NixOS's own bootloader
//! builders do, so a later `nixos-rebuild switch` on the booted machine manages them.

pub mod grub;
pub mod grub_bios;
pub mod systemd_boot;

use anyhow::{Context, Result};
use kernel_params::{Changes, DEFAULT_COMMAND_LINE_SIZE};

use crate::system::{BootEntry, StoreFile, System};

/// The generation number an image's system gets (the profile link is `system-1-link`).
pub const GENERATION: u32 = 1;
/// Seconds the boot menu waits (systemd-boot's `timeout`, GRUB's `set timeout`).
pub const MENU_TIMEOUT: u32 = 1;

/// Which bootloaders a layout installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boots {
    /// systemd-boot on an ESP.
    pub uefi: bool,
    /// GRUB for BIOS (in a BIOS boot partition, or the MBR gap).
    pub bios: bool,
    /// Boot entries, kernels and initrds on an XBOOTLDR partition; systemd-boot and loader.conf stay on the ESP.
    pub xbootldr: bool,
}

impl Boots {
    /// The bootloaders of `layout`; refuses layouts not implemented.
    pub fn of(layout: crate::cli::Layout) -> Result<Self> {
        Ok(match layout {
            crate::cli::Layout::Efi | crate::cli::Layout::EfiVerity => {
                Self { uefi: true, bios: false, xbootldr: false }
            }
            crate::cli::Layout::LegacyGpt | crate::cli::Layout::Legacy => {
                Self { uefi: false, bios: true, xbootldr: false }
            }
            crate::cli::Layout::Hybrid => Self { uefi: true, bios: true, xbootldr: false },
            crate::cli::Layout::Efixbootldr => Self { uefi: true, bios: false, xbootldr: true },
            crate::cli::Layout::None => Self { uefi: false, bios: false, xbootldr: false },
            crate::cli::Layout::Custom => {
                anyhow::bail!("a custom layout's bootloaders come from its partitions (profile::boots_of)")
            }
        })
    }
}

impl Boots {
    /// Whether `bootloader` is the one these boots install (`none`: no bootloader at all).
    #[must_use]
    pub fn installs(self, bootloader: crate::cli::Bootloader) -> bool {
        match bootloader {
            crate::cli::Bootloader::SystemdBoot => self.uefi,
            crate::cli::Bootloader::Grub => self.bios,
            crate::cli::Bootloader::None => !self.uefi && !self.bios,
        }
    }

    /// Whether a disk of `sector`-byte sectors can boot this way: GRUB's BIOS boot code reads 512-byte sectors,
    /// so 4Kn disks boot by UEFI only. The one place this rule lives.
    #[must_use]
    pub fn fit_sector_size(self, sector: kiln_formats::disk::SectorSize) -> bool {
        !self.bios || sector == kiln_formats::disk::SectorSize::S512
    }
}

/// One boot entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File stem of the entry: `nixos-generation-1` or `nixos-generation-1-specialisation-<name>`.
    pub id: String,
    /// `None` for the default entry.
    pub specialisation: Option<String>,
    /// Menu title: `NixOS`, or `NixOS (<specialisation>)`.
    pub title: String,
    /// The bootspec label.
    pub label: String,
    /// Kernel image.
    pub kernel: StoreFile,
    /// Initrd.
    pub initrd: Option<StoreFile>,
    /// The whole kernel command line: `init=<toplevel>/init`, the bootspec's parameters, then the changes.
    pub cmdline: String,
}

/// The entries of `system`: the default one first, then specialisations by name. `changes` (a profile's,
/// then the user's) are applied to every entry's command line, which must fit `COMMAND_LINE_SIZE`.
pub fn entries(system: &System, changes: &[&Changes]) -> Result<Vec<Entry>> {
    let one = |boot: &BootEntry, spec: Option<&str>| -> Result<Entry> {
        let init = format!("init={}", boot.init.logical.display());
        let base = std::iter::once(init.as_str()).chain(boot.kernel_params.iter().map(String::as_str));
        let cmdline = kernel_params::merge(base, changes.iter().copied())
            .with_context(|| format!("kernel command line of {}", boot.toplevel))?;
        cmdline
            .validate(DEFAULT_COMMAND_LINE_SIZE)
            .with_context(|| format!("kernel command line of {}", boot.toplevel))?;
        let id = match spec {
            None => format!("nixos-generation-{GENERATION}"),
            Some(name) => format!("nixos-generation-{GENERATION}-specialisation-{name}"),
        };
        Ok(Entry {
            id,
            specialisation: spec.map(str::to_owned),
            title: spec.map_or_else(|| "NixOS".to_owned(), |s| format!("NixOS ({s})")),
            label: boot.label.clone(),
            kernel: boot.kernel.clone(),
            initrd: boot.initrd.clone(),
            cmdline: cmdline.render(),
        })
    };
    std::iter::once(one(&system.boot, None))
        .chain(system.specialisations.iter().map(|s| one(&s.boot, Some(&s.name))))
        .collect()
}

/// `YYYY-MM-DD` of a Unix time (UTC), for entry versions ("built on …").
#[must_use]
pub fn date(unix: i64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_795_478_400), "2026-11-24");
    }
}
