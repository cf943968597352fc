//! The partitions as the report shows them: what [`readback`](crate::readback) read of each, in bytes and
//! sectors, with its type's name, its GPT attributes by name and the filesystem it holds.

use kiln_formats::disk::{Bytes, GptAttributes, Guid, Lba};
use serde::Serialize;

use super::fs::Filesystem;
use crate::readback::{self, PartitionType, ser};

/// GPT partition attribute bits and their names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attributes {
    /// All 64 bits, as `0x` and 16 hex digits.
    #[serde(serialize_with = "ser::attributes")]
    pub raw: GptAttributes,
    /// The set bits by name: `required`, `no-block-io-protocol`, `legacy-bios-bootable`, and the Discoverable
    /// Partitions Specification's `growfs`, `read-only`, `no-auto`; other bits as `bit-<n>`.
    pub names: Vec<String>,
}

impl Attributes {
    fn of(raw: GptAttributes) -> Self {
        let names = (0..64)
            .filter(|bit| raw.0 & (1 << bit) != 0)
            .map(|bit| match bit {
                0 => "required".to_owned(),
                1 => "no-block-io-protocol".to_owned(),
                2 => "legacy-bios-bootable".to_owned(),
                59 => "growfs".to_owned(),
                60 => "read-only".to_owned(),
                63 => "no-auto".to_owned(),
                n => format!("bit-{n}"),
            })
            .collect();
        Self { raw, names }
    }
}

/// One partition and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Number, from 1 (the entry's index in the table).
    pub number: u32,
    /// GPT partition name (Linux: `PARTLABEL`); `None` on DOS.
    pub name: Option<String>,
    /// Type: the GPT type GUID, or the MBR type byte in hex (both as `sfdisk --json` prints them).
    #[serde(rename = "type", serialize_with = "ser::display")]
    pub kind: PartitionType,
    /// What the type is called (`ESP`, `BIOS boot`, `Linux root (x86-64)`, `Linux`, … or `unknown`).
    pub type_name: &'static str,
    /// Unique partition GUID (Linux: `PARTUUID`); `None` on DOS.
    #[serde(serialize_with = "ser::opt_display")]
    pub guid: Option<Guid>,
    /// Byte offset of its first byte.
    #[serde(serialize_with = "ser::bytes")]
    pub start: Bytes,
    /// Byte offset just past its last byte.
    #[serde(serialize_with = "ser::bytes")]
    pub end: Bytes,
    /// Its size in bytes.
    #[serde(serialize_with = "ser::bytes")]
    pub size: Bytes,
    /// Its first sector.
    #[serde(serialize_with = "ser::lba")]
    pub first_lba: Lba,
    /// Its last sector (inclusive, as GPT and `sgdisk` count).
    #[serde(serialize_with = "ser::lba")]
    pub last_lba: Lba,
    /// GPT attributes; `None` on DOS.
    pub attributes: Option<Attributes>,
    /// DOS: the active flag; GPT: the legacy-BIOS-bootable attribute.
    pub bootable: bool,
    /// What it holds.
    pub filesystem: Filesystem,
}

impl Partition {
    /// The report of `p`, holding `filesystem`.
    pub(crate) fn of(p: &readback::Partition, filesystem: Filesystem) -> Self {
        Self {
            number: p.number,
            name: p.name.clone(),
            kind: p.kind,
            type_name: p.kind.name(),
            guid: p.guid,
            start: p.range.start,
            end: p.range.end,
            size: p.range.len(),
            first_lba: p.extent.start,
            last_lba: p.extent.last().unwrap_or(p.extent.start),
            attributes: p.attributes.map(Attributes::of),
            bootable: p.bootable,
            filesystem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_bits_by_name() {
        assert_eq!(Attributes::of(GptAttributes::GROWFS | GptAttributes(1 << 50)).names, ["bit-50", "growfs"]);
        assert_eq!(Attributes::of(GptAttributes::NONE).names, Vec::<String>::new());
    }
}
