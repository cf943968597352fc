//! GUIDs as GPT stores them, the partition type GUIDs kiln uses, and GPT partition attributes.

use std::fmt;
use std::ops::BitOr;
use std::str::FromStr;

use super::Error;

/// A GUID (UUID). Held in the byte order of its text form (RFC 9562); GPT stores the first three fields
/// little-endian, see [`Guid::to_gpt_bytes`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    /// All zeros: "unused" in GPT.
    pub const NIL: Guid = Guid([0; 16]);

    /// The GUID whose text form spells these bytes in order.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The GUID whose text form is this number in hex.
    #[must_use]
    pub const fn from_u128(value: u128) -> Self {
        Self(value.to_be_bytes())
    }

    /// A version 4 ("random") GUID made from caller-chosen bytes, e.g. a hash of a seed: the version and variant
    /// bits are set, the other 122 bits are kept. This is how deterministic images get GUIDs that look like
    /// every other GUID to tools that check the version.
    #[must_use]
    pub const fn v4_from_bytes(mut bytes: [u8; 16]) -> Self {
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Self(bytes)
    }

    /// The bytes in text order.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this is [`Guid::NIL`].
    #[must_use]
    pub const fn is_nil(&self) -> bool {
        u128::from_be_bytes(self.0) == 0
    }

    /// Parses `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (either case); `None` for anything else.
    #[must_use]
    pub const fn parse(text: &str) -> Option<Self> {
        let s = text.as_bytes();
        if s.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut i = 0; // index into s
        let mut n = 0; // nibbles written
        while i < 36 {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                if s[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            let v = match s[i] {
                c @ b'0'..=b'9' => c - b'0',
                c @ b'a'..=b'f' => c - b'a' + 10,
                c @ b'A'..=b'F' => c - b'A' + 10,
                _ => return None,
            };
            out[n / 2] |= if n % 2 == 0 { v << 4 } else { v };
            n += 1;
            i += 1;
        }
        Some(Self(out))
    }

    /// The 16 bytes GPT stores: the first three fields little-endian, the rest as in the text.
    #[must_use]
    pub const fn to_gpt_bytes(&self) -> [u8; 16] {
        let b = self.0;
        [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
    }

    /// The GUID GPT stores as these 16 bytes.
    #[must_use]
    pub const fn from_gpt_bytes(g: [u8; 16]) -> Self {
        Self([g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]])
    }
}

/// A GUID constant, checked at compile time.
const fn constant(text: &str) -> Guid {
    match Guid::parse(text) {
        Some(g) => g,
        None => panic!("malformed GUID constant"),
    }
}

impl FromStr for Guid {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Guid::parse(text).ok_or_else(|| Error::BadGuid { text: text.to_owned() })
    }
}

/// Upper case with hyphens, as sfdisk and sgdisk print them.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Partition type GUIDs (UEFI specification and the Discoverable Partitions Specification).
pub mod partition_type {
    use super::{Guid, constant};

    /// EFI system partition.
    pub const ESP: Guid = constant("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    /// BIOS boot partition: GRUB's core.img on a GPT disk booted by a BIOS.
    pub const BIOS_BOOT: Guid = constant("21686148-6449-6E6F-744E-656564454649");
    /// Extended boot loader partition (`/boot` beside the ESP).
    pub const XBOOTLDR: Guid = constant("BC13C2FF-59E6-4262-A352-B275FD6F7172");
    /// Root filesystem for x86-64.
    pub const ROOT_X86_64: Guid = constant("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    /// Root filesystem for 64-bit ARM.
    pub const ROOT_ARM64: Guid = constant("B921B045-1DF0-41C3-AF44-4C6F280D3FAE");
    /// `/usr` for x86-64.
    pub const USR_X86_64: Guid = constant("8484680C-9521-48C6-9C11-B0720656F69E");
    /// `/usr` for 64-bit ARM.
    pub const USR_ARM64: Guid = constant("B0E01050-EE5F-4390-949A-9101B17104E9");
    /// dm-verity hash tree of the root, x86-64.
    pub const ROOT_VERITY_X86_64: Guid = constant("2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5");
    /// dm-verity hash tree of the root, 64-bit ARM.
    pub const ROOT_VERITY_ARM64: Guid = constant("DF3300CE-D69F-4C92-978C-9BFB0F38D820");
    /// dm-verity hash tree of `/usr`, x86-64.
    pub const USR_VERITY_X86_64: Guid = constant("77FF5F63-E7B6-4633-ACF4-1565B864C0E6");
    /// dm-verity hash tree of `/usr`, 64-bit ARM.
    pub const USR_VERITY_ARM64: Guid = constant("6E11A4E7-FBCA-4DED-B9E9-E1A512BB664E");
    /// Generic Linux filesystem data.
    pub const LINUX_DATA: Guid = constant("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    /// Linux swap.
    pub const LINUX_SWAP: Guid = constant("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F");
}

/// GPT partition attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GptAttributes(pub u64);

impl GptAttributes {
    /// No attribute set.
    pub const NONE: Self = Self(0);
    /// Bit 0: the platform requires the partition to function.
    pub const REQUIRED: Self = Self(1 << 0);
    /// Bit 1: EFI firmware must not produce a block I/O protocol for it.
    pub const NO_BLOCK_IO_PROTOCOL: Self = Self(1 << 1);
    /// Bit 2: legacy BIOS bootable (the GPT twin of the MBR active flag; some BIOSes want it on the partition
    /// holding the boot code).
    pub const LEGACY_BIOS_BOOTABLE: Self = Self(1 << 2);
    /// Bit 59 (Discoverable Partitions Specification): grow the filesystem to the partition on first mount.
    pub const GROWFS: Self = Self(1 << 59);
    /// Bit 60 (Discoverable Partitions Specification): mount read-only.
    pub const READ_ONLY: Self = Self(1 << 60);
    /// Bit 63 (Discoverable Partitions Specification): do not mount automatically.
    pub const NO_AUTO: Self = Self(1 << 63);

    /// Whether every bit of `other` is set here.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of both.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl BitOr for GptAttributes {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        self.union(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        struct Case {
            text: &'static str,
            ok: bool,
        }
        let cases = [
            Case { text: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", ok: true },
            Case { text: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", ok: true },
            Case { text: "C12A7328F81F-11D2-BA4B-00A0C93EC93B0", ok: false },
            Case { text: "C12A7328-F81F-11D2-BA4B-00A0C93EC93", ok: false },
            Case { text: "G12A7328-F81F-11D2-BA4B-00A0C93EC93B", ok: false },
            Case { text: "", ok: false },
        ];
        for c in cases {
            let parsed: Result<Guid, _> = c.text.parse();
            assert_eq!(parsed.is_ok(), c.ok, "{:?}", c.text);
            if let Ok(g) = parsed {
                assert_eq!(g.to_string(), c.text.to_uppercase());
            }
        }
    }

    #[test]
    fn gpt_byte_order() {
        // The ESP type as it appears on disk (UEFI specification, and every ESP ever written).
        let disk = [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B];
        assert_eq!(partition_type::ESP.to_gpt_bytes(), disk);
        assert_eq!(Guid::from_gpt_bytes(disk), partition_type::ESP);
        assert_eq!(Guid::from_u128(0x0FC6_3DAF_8483_4772_8E79_3D69_D847_7DE4), partition_type::LINUX_DATA);
    }

    #[test]
    fn v4_bits() {
        let g = Guid::v4_from_bytes([0xFF; 16]);
        assert_eq!(g.to_string(), "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF");
        let g = Guid::v4_from_bytes([0; 16]);
        assert_eq!(g.to_string(), "00000000-0000-4000-8000-000000000000");
        assert!(!g.is_nil());
        assert!(Guid::NIL.is_nil());
    }

    #[test]
    fn attributes() {
        let a = GptAttributes::LEGACY_BIOS_BOOTABLE | GptAttributes::GROWFS;
        assert_eq!(a.0, (1 << 2) | (1 << 59));
        assert!(a.contains(GptAttributes::LEGACY_BIOS_BOOTABLE));
        assert!(!a.contains(GptAttributes::REQUIRED));
    }
}
