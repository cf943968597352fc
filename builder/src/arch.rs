//! What differs between the architectures kiln builds images for, in one table: a row per architecture, read by
//! everything that needs an architecture's fact (the partition types, the boot files, the console). Adding an
//! architecture is adding a row.

use anyhow::{Result, bail};
use kiln_formats::disk::{Guid, partition_type};

/// One architecture's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// Nix's system type: `x86_64-linux`.
    pub system: &'static str,
    /// Types of the Discoverable Partitions Specification.
    pub root_type: Guid,
    /// The `/usr` partition's type.
    pub usr_type: Guid,
    /// The root's dm-verity hash partition's type.
    pub root_verity_type: Guid,
    /// The `/usr` dm-verity hash partition's type.
    pub usr_verity_type: Guid,
    /// The UEFI specification's short name, as in `BOOTX64.EFI` and `systemd-bootx64.efi`: `x64`, `aa64`.
    pub efi: &'static str,
    /// The PE/COFF machine type of its UEFI binaries (`IMAGE_FILE_MACHINE_*`).
    pub pe_machine: u16,
    /// The kernel file NixOS's kernel package installs: `bzImage`, `Image`.
    pub kernel_file: &'static str,
    /// The first serial port's device on a virtual machine (QEMU's pc/q35 and virt machines).
    pub console: &'static str,
    /// Whether BIOS (legacy) booting exists: GRUB's i386-pc, the BIOS boot partition, the MBR's boot code.
    pub bios: bool,
}

/// Every architecture kiln builds images for.
pub const ARCHES: &[Arch] = &[
    Arch {
        system: "x86_64-linux",
        root_type: partition_type::ROOT_X86_64,
        usr_type: partition_type::USR_X86_64,
        root_verity_type: partition_type::ROOT_VERITY_X86_64,
        usr_verity_type: partition_type::USR_VERITY_X86_64,
        efi: "x64",
        pe_machine: 0x8664,
        kernel_file: "bzImage",
        console: "ttyS0",
        bios: true,
    },
    Arch {
        system: "aarch64-linux",
        root_type: partition_type::ROOT_ARM64,
        usr_type: partition_type::USR_ARM64,
        root_verity_type: partition_type::ROOT_VERITY_ARM64,
        usr_verity_type: partition_type::USR_VERITY_ARM64,
        efi: "aa64",
        pe_machine: 0xAA64,
        kernel_file: "Image",
        // QEMU's virt machine, like most ARM servers, has a PL011 UART.
        console: "ttyAMA0",
        bios: false,
    },
];

impl Arch {
    /// The row of a Nix system type (`aarch64-linux`) or an architecture name (`aarch64`).
    ///
    /// # Errors
    /// An architecture kiln has no row for, naming those it has.
    pub fn of(system: &str) -> Result<&'static Self> {
        let name = system.strip_suffix("-linux").unwrap_or(system);
        if let Some(a) = ARCHES.iter().find(|a| a.name() == name) {
            return Ok(a);
        }
        let known: Vec<_> = ARCHES.iter().map(|a| a.system).collect();
        bail!("system type {system:?}: kiln builds images for {}", known.join(", "))
    }

    /// The architecture alone: `x86_64`, `aarch64`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.system.strip_suffix("-linux").unwrap_or(self.system)
    }

    /// The removable-media boot path UEFI firmware looks for: `EFI/BOOT/BOOTX64.EFI`.
    #[must_use]
    pub fn removable_boot_path(&self) -> String {
        format!("EFI/BOOT/BOOT{}.EFI", self.efi.to_uppercase())
    }

    /// systemd-boot's file name in the closure's systemd: `systemd-bootx64.efi`.
    #[must_use]
    pub fn systemd_boot_file(&self) -> String {
        format!("systemd-boot{}.efi", self.efi)
    }
}

/// The machine type of a PE/COFF image (an EFI application, a kernel with an EFI stub), from its first bytes;
/// `None` for bytes that are no PE image.
#[must_use]
pub fn pe_machine(head: &[u8]) -> Option<u16> {
    if head.get(..2)? != b"MZ" {
        return None;
    }
    let at = u32::from_le_bytes(head.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if head.get(at..at.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    Some(u16::from_le_bytes(head.get(at + 4..at + 6)?.try_into().ok()?))
}

/// The name of a PE machine type, for messages.
#[must_use]
pub fn pe_machine_name(machine: u16) -> String {
    match ARCHES.iter().find(|a| a.pe_machine == machine) {
        Some(a) => format!("{} (PE machine {machine:#06x})", a.name()),
        None => format!("PE machine {machine:#06x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_by_system_type_or_name() {
        assert_eq!(Arch::of("x86_64-linux").unwrap().efi, "x64");
        assert_eq!(Arch::of("aarch64").unwrap().root_type, partition_type::ROOT_ARM64);
        assert_eq!(Arch::of("aarch64-linux").unwrap().removable_boot_path(), "EFI/BOOT/BOOTAA64.EFI");
        assert_eq!(Arch::of("x86_64-linux").unwrap().systemd_boot_file(), "systemd-bootx64.efi");
        let e = Arch::of("riscv64-linux").unwrap_err().to_string();
        assert!(e.contains("riscv64-linux") && e.contains("x86_64-linux, aarch64-linux"), "{e}");
        // One row per architecture, and no two sharing a fact that tells them apart.
        for (i, a) in ARCHES.iter().enumerate() {
            for b in &ARCHES[i + 1..] {
                assert!(a.system != b.system && a.root_type != b.root_type && a.efi != b.efi, "{a:?} {b:?}");
                assert!(a.pe_machine != b.pe_machine && a.usr_type != b.usr_type, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn pe_machine_types_are_read_from_the_headers() {
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xAA64u16.to_le_bytes());
        assert_eq!(pe_machine(&pe), Some(0xAA64));
        assert_eq!(pe_machine_name(0xAA64), "aarch64 (PE machine 0xaa64)");
        assert_eq!(pe_machine_name(0x14c), "PE machine 0x014c");
        assert_eq!(pe_machine(b"\x7fELF"), None);
        pe[0x80] = b'X';
        assert_eq!(pe_machine(&pe), None);
        pe[0x3c..0x40].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert_eq!(pe_machine(&pe), None);
    }
}
