//! The values a profile holds that the command line spells as text: sizes, partition roles and sizes, GRUB
//! terminals. Each reads and writes the same spelling as the flag it mirrors ([`crate::cli::parse_bytes`],
//! `--size auto|SIZE`), so a resolved profile printed as TOML reads back to itself.

use std::fmt;

use kiln_formats::disk::Guid;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::cli::{SizeSpec, parse_bytes};

/// A size in bytes, written as `--esp-size` takes it: `512M`, `8GiB`, `4096`, or a TOML integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The shortest exact spelling: `256M`, `8G`, or the bytes when no suffix divides them.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{suffix}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"512M\" or \"8G\", or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        parse_bytes(v).map(ByteSize).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("{v} is not a size: it is negative")))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ByteSizeVisitor)
    }
}

/// `size`: `"auto"` or a size, as `--size` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize(pub SizeSpec);

impl Serialize for ImageSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            SizeSpec::Auto => s.serialize_str("auto"),
            SizeSpec::Fixed(n) => ByteSize(n).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ImageSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a size such as \"8G\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ImageSize, E> {
                if v == "auto" {
                    return Ok(ImageSize(SizeSpec::Auto));
                }
                ByteSizeVisitor.visit_str(v).map(|b| ImageSize(SizeSpec::Fixed(b.0)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ImageSize, E> {
                Ok(ImageSize(SizeSpec::Fixed(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ImageSize, E> {
                ByteSizeVisitor.visit_i64(v).map(|b| ImageSize(SizeSpec::Fixed(b.0)))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a custom partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The EFI system partition (FAT32, systemd-boot and the kernels).
    Esp,
    /// An extended boot loader partition (`/boot` beside the ESP).
    Xbootldr,
    /// The BIOS boot partition that holds GRUB's core.img.
    BiosBoot,
    /// The root filesystem (exactly one).
    Root,
    /// Swap space.
    Swap,
    /// A Linux data partition, left unformatted.
    Linux,
    /// Space left unallocated: no partition entry.
    Empty,
}

impl Role {
    /// The name a profile uses.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Esp => "esp",
            Self::Xbootldr => "xbootldr",
            Self::BiosBoot => "bios-boot",
            Self::Root => "root",
            Self::Swap => "swap",
            Self::Linux => "linux",
            Self::Empty => "empty",
        }
    }

    /// Whether a partition of this role carries a filesystem or swap signature that takes a label.
    #[must_use]
    pub const fn takes_label(self) -> bool {
        matches!(self, Self::Esp | Self::Xbootldr | Self::Root | Self::Swap)
    }
}

/// A custom partition's size: a size, or `"fill"` (what the disk leaves; the last partition only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSize {
    /// Exactly this much.
    Bytes(ByteSize),
    /// The rest of the disk.
    Fill,
}

impl Serialize for PartSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bytes(b) => b.serialize(s),
            Self::Fill => s.serialize_str("fill"),
        }
    }
}

impl<'de> Deserialize<'de> for PartSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PartSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512M\", or \"fill\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PartSize, E> {
                if v == "fill" {
                    return Ok(PartSize::Fill);
                }
                ByteSizeVisitor.visit_str(v).map(PartSize::Bytes)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PartSize, E> {
                Ok(PartSize::Bytes(ByteSize(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PartSize, E> {
                ByteSizeVisitor.visit_i64(v).map(PartSize::Bytes)
            }
        }
        d.deserialize_any(V)
    }
}

/// One custom partition, in disk order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PartitionSpec {
    /// What it is for.
    pub role: Role,
    /// How big it is.
    pub size: PartSize,
    /// GPT partition name (default: the layout's name for the role, e.g. `ESP`, `nixos`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Filesystem or swap label (default: `ESP` for the ESP, `nixos` for the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Partition type GUID, instead of the role's own.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "guid_text")]
    pub type_guid: Option<Guid>,
}

#[allow(clippy::ref_option)] // serde's serialize_with hands over `&Option<T>`.
fn guid_text<S: Serializer>(g: &Option<Guid>, s: S) -> Result<S::Ok, S::Error> {
    match g {
        Some(g) => s.collect_str(g),
        None => s.serialize_none(),
    }
}

/// Where GRUB reads and writes its menu (`terminal_input` / `terminal_output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrubTerminal {
    /// The serial port set up by `[grub] serial`.
    Serial,
    /// The screen and keyboard.
    Console,
}

impl GrubTerminal {
    /// GRUB's name for it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::Console => "console",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_print_as_they_parse() {
        for (n, text) in [(256 << 20, "256M"), (8 << 30, "8G"), (1 << 40, "1T"), (4096, "4K"), (1000, "1000"), (0, "0")]
        {
            assert_eq!(ByteSize(n).to_string(), text);
            assert_eq!(parse_bytes(text), Ok(n));
        }
    }
}
