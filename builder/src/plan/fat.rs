//! The FAT32 filesystems of the boot partitions (the ESP, the XBOOTLDR partition), planned in their partitions.

use anyhow::{Context, Result};
use kiln_formats::disk::DiskLayout;
use kiln_formats::fat;

use super::disk::{DiskParts, Numbers};
use crate::profile::{PartitionSpec, Role};
use crate::seed::Seed;

/// Which boot partition a FAT filesystem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootFsKind {
    /// The EFI system partition.
    Esp,
    /// The XBOOTLDR partition (entries, kernels and initrds beside a small ESP).
    Xbootldr,
}

impl BootFsKind {
    /// What to call it in messages.
    #[must_use]
    pub fn what(self) -> &'static str {
        match self {
            Self::Esp => "ESP",
            Self::Xbootldr => "XBOOTLDR partition",
        }
    }

    /// Its default volume label.
    fn label(self) -> &'static str {
        match self {
            Self::Esp => "ESP",
            Self::Xbootldr => "XBOOTLDR",
        }
    }

    /// The seed purpose its volume id derives from.
    fn volume_id_purpose(self) -> &'static str {
        match self {
            Self::Esp => "fat-volume-id",
            Self::Xbootldr => "fat-volume-id-xbootldr",
        }
    }

    fn role(self) -> Role {
        match self {
            Self::Esp => Role::Esp,
            Self::Xbootldr => Role::Xbootldr,
        }
    }
}

/// One boot partition's FAT32 filesystem, planned.
#[derive(Debug)]
pub struct BootFs {
    /// Which one.
    pub kind: BootFsKind,
    /// Its partition number.
    pub number: usize,
    /// Its files.
    pub tree: fat::Tree,
    /// The FAT plan: geometry, clusters, directory entries.
    pub plan: fat::Plan,
}

/// Plans a FAT32 filesystem for each boot partition the disk has.
pub(super) fn plan_all(
    parts: &DiskParts,
    layout: &DiskLayout,
    numbers: &Numbers,
    custom: Option<&[PartitionSpec]>,
    seed: &Seed,
    timestamp: i64,
) -> Result<Vec<BootFs>> {
    let mut out = Vec::new();
    for (tree, number, kind) in
        [(&parts.esp, numbers.esp, BootFsKind::Esp), (&parts.xbootldr, numbers.xbootldr, BootFsKind::Xbootldr)]
    {
        let (Some(tree), Some(number)) = (tree, number) else { continue };
        let label = custom
            .and_then(|specs| specs.iter().find(|p| p.role == kind.role()))
            .and_then(|p| p.label.as_deref())
            .unwrap_or(kind.label());
        let range = layout.byte_range(number).expect("planned partition");
        let what = kind.what();
        let hidden = u32::try_from(range.start.get() / layout.sector_size().bytes().get())
            .with_context(|| format!("the {what} starts beyond sector 2^32"))?;
        let id = seed.bytes16(kind.volume_id_purpose());
        let volume_id = u32::from_le_bytes(id[..4].try_into().expect("4 bytes"));
        let mut opts = fat::Options::new(range.end.get() - range.start.get(), hidden, volume_id, timestamp);
        opts.sector_size = layout.sector_size();
        label.clone_into(&mut opts.label);
        let plan = fat::plan(tree, &opts).with_context(|| format!("planning the {what}"))?;
        out.push(BootFs { kind, number, tree: tree.clone(), plan });
    }
    Ok(out)
}
