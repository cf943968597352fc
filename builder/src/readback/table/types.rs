//! Partition types by the names people know them by, and what each is for when a reader looks for the root
//! filesystem, the ESP, the XBOOTLDR partition and GRUB's BIOS boot partition.

use std::fmt;

use kiln_formats::disk::Guid;

/// A partition type: a GPT type GUID or an MBR type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    /// A GPT type GUID.
    Gpt(Guid),
    /// An MBR type byte.
    Mbr(u8),
}

/// What a partition is for, as far as finding the boot and root filesystems goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The EFI system partition (GPT type, or MBR type 0xEF).
    Esp,
    /// The Boot Loader Specification's extended boot partition.
    Xbootldr,
    /// The BIOS boot partition holding GRUB's core.img.
    BiosBoot,
    /// A `/usr` partition of the Discoverable Partitions Specification: kiln's verified store (`efi-verity`).
    Usr,
    /// A `/usr` partition's dm-verity hash partition.
    UsrVerity,
    /// Anything else (the root among them).
    Other,
}

/// GPT type GUIDs people meet on Linux disks, named as in the UEFI specification and the Discoverable Partitions
/// Specification (shortened the way `sfdisk` and `systemd-repart` do), with their role and how much each says
/// "this is the root filesystem" (higher wins; 0: not a root).
const GPT_TYPES: &[(&str, &str, Role, u8)] = &[
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ESP", Role::Esp, 0),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot", Role::BiosBoot, 0),
    ("BC13C2FF-59E6-4262-A352-B275FD6F7172", "XBOOTLDR", Role::Xbootldr, 0),
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)", Role::Other, 3),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)", Role::Other, 3),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)", Role::Other, 3),
    ("69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "Linux root (ARM)", Role::Other, 3),
    ("72EC70A6-CF74-40E6-BD49-4BDA08E8F224", "Linux root (RISC-V 64)", Role::Other, 3),
    ("8484680C-9521-48C6-9C11-B0720656F69E", "Linux /usr (x86-64)", Role::Usr, 0),
    ("B0E01050-EE5F-4390-949A-9101B17104E9", "Linux /usr (ARM64)", Role::Usr, 0),
    ("77FF5F63-E7B6-4633-ACF4-1565B864C0E6", "Linux /usr verity (x86-64)", Role::UsrVerity, 0),
    ("6E11A4E7-FBCA-4DED-B9E9-E1A512BB664E", "Linux /usr verity (ARM64)", Role::UsrVerity, 0),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem data", Role::Other, 1),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap", Role::Other, 0),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home", Role::Other, 0),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux server data", Role::Other, 0),
    ("4D21B016-B534-45C2-A9FB-5C16E091FD2D", "Linux variable data", Role::Other, 0),
    ("7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "Linux temporary data", Role::Other, 0),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM", Role::Other, 0),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID", Role::Other, 0),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS", Role::Other, 0),
    ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data", Role::Other, 0),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved", Role::Other, 0),
    ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery environment", Role::Other, 0),
];

/// MBR type bytes, named as `sfdisk` names them.
const MBR_TYPES: &[(u8, &str)] = &[
    (0x01, "FAT12"),
    (0x05, "Extended"),
    (0x06, "FAT16"),
    (0x07, "HPFS/NTFS/exFAT"),
    (0x0B, "W95 FAT32"),
    (0x0C, "W95 FAT32 (LBA)"),
    (0x0E, "W95 FAT16 (LBA)"),
    (0x0F, "W95 Ext'd (LBA)"),
    (0x82, "Linux swap"),
    (0x83, "Linux"),
    (0x85, "Linux extended"),
    (0x8E, "Linux LVM"),
    (0xEA, "Linux extended boot"),
    (0xEE, "GPT protective"),
    (0xEF, "EFI (FAT-12/16/32)"),
    (0xFD, "Linux raid autodetect"),
];

/// The MBR type of the EFI system partition.
const MBR_ESP: u8 = 0xEF;
/// The MBR types of extended partitions (CHS, LBA, Linux).
pub(super) const MBR_EXTENDED: &[u8] = &[0x05, 0x0F, 0x85];
/// The MBR type of a GPT's protective partition.
pub(super) const MBR_PROTECTIVE: u8 = 0xEE;

impl PartitionType {
    fn gpt_entry(self) -> Option<&'static (&'static str, &'static str, Role, u8)> {
        match self {
            Self::Gpt(g) => GPT_TYPES.iter().find(|(text, ..)| Guid::parse(text) == Some(g)),
            Self::Mbr(_) => None,
        }
    }

    /// What the type is called, or `unknown`.
    #[must_use]
    pub fn name(self) -> &'static str {
        let found = match self {
            Self::Gpt(_) => self.gpt_entry().map(|t| t.1),
            Self::Mbr(b) => MBR_TYPES.iter().find(|(t, _)| *t == b).map(|t| t.1),
        };
        found.unwrap_or("unknown")
    }

    /// What messages call it: a GPT type by its name, or its GUID when it has none here; an MBR type as
    /// `type 0x83`.
    #[must_use]
    pub fn label(self) -> String {
        match (self, self.gpt_entry()) {
            (_, Some(t)) => t.1.to_owned(),
            (Self::Gpt(g), None) => g.to_string(),
            (Self::Mbr(b), None) => format!("type {b:#04x}"),
        }
    }

    /// What a partition of this type is for.
    #[must_use]
    pub fn role(self) -> Role {
        match self {
            Self::Gpt(_) => self.gpt_entry().map_or(Role::Other, |t| t.2),
            Self::Mbr(MBR_ESP) => Role::Esp,
            Self::Mbr(_) => Role::Other,
        }
    }

    /// Whether this is the EFI system partition type.
    #[must_use]
    pub fn is_esp(self) -> bool {
        self.role() == Role::Esp
    }

    /// How much the type says "this is the root filesystem": 3 for a Linux root type, 1 for Linux filesystem
    /// data, 0 for anything else. MBR types rank 0: there the root is looked for by type 0x83 alone.
    #[must_use]
    pub fn root_rank(self) -> u8 {
        self.gpt_entry().map_or(0, |t| t.3)
    }
}

/// GPT: the type GUID as sfdisk prints it; MBR: the type byte in hex without `0x`, as sfdisk prints it.
impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gpt(g) => write!(f, "{g}"),
            Self::Mbr(b) => write!(f, "{b:x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use kiln_formats::disk::partition_type;

    use super::*;

    #[test]
    fn names_roles_and_ranks() {
        struct Case {
            kind: PartitionType,
            name: &'static str,
            label: &'static str,
            role: Role,
            rank: u8,
        }
        let unknown = Guid::from_u128(0x1234);
        let cases = [
            Case { kind: PartitionType::Gpt(partition_type::ESP), name: "ESP", label: "ESP", role: Role::Esp, rank: 0 },
            Case {
                kind: PartitionType::Gpt(partition_type::ROOT_X86_64),
                name: "Linux root (x86-64)",
                label: "Linux root (x86-64)",
                role: Role::Other,
                rank: 3,
            },
            Case {
                kind: PartitionType::Gpt(partition_type::LINUX_DATA),
                name: "Linux filesystem data",
                label: "Linux filesystem data",
                role: Role::Other,
                rank: 1,
            },
            Case {
                kind: PartitionType::Gpt(partition_type::XBOOTLDR),
                name: "XBOOTLDR",
                label: "XBOOTLDR",
                role: Role::Xbootldr,
                rank: 0,
            },
            Case {
                kind: PartitionType::Gpt(unknown),
                name: "unknown",
                label: "00000000-0000-0000-0000-000000001234",
                role: Role::Other,
                rank: 0,
            },
            Case { kind: PartitionType::Mbr(0x83), name: "Linux", label: "type 0x83", role: Role::Other, rank: 0 },
            Case {
                kind: PartitionType::Mbr(0xEF),
                name: "EFI (FAT-12/16/32)",
                label: "type 0xef",
                role: Role::Esp,
                rank: 0,
            },
        ];
        for c in cases {
            assert_eq!(
                (c.kind.name(), c.kind.label().as_str(), c.kind.role(), c.kind.root_rank()),
                (c.name, c.label, c.role, c.rank),
                "{}",
                c.kind
            );
        }
        assert_eq!((PartitionType::Mbr(0x83).to_string(), PartitionType::Mbr(0xEF).is_esp()), ("83".into(), true));
    }
}
