//! The root filesystem's size, and the disk around it: with `--size` the root partition fills what the other
//! partitions leave; without, the disk fits the root filesystem plus its free space. A size too small is refused
//! here, with the size that is enough.

use anyhow::{Result, bail};
use kiln_formats::disk::{Bytes, DiskLayout, DiskSize, Error as DiskError, GptGeometry, PartitionSize};
use kiln_formats::ext4::{self, Size};

use super::disk::Numbers;
use crate::cli::SizeSpec;
use crate::units::human_bytes;

/// Free space left in a root filesystem by default: 10% of the contents, at least 256 MiB.
const MIN_EXTRA: u64 = 256 << 20;

/// How the root filesystem is sized: `--size` (fixed) or what it needs plus free space.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// `--size` in bytes, when fixed.
    pub fixed: Option<u64>,
    /// Free space with an automatic size.
    pub extra: u64,
}

impl Sizing {
    /// From `--size` and `--extra-space`; `unique_bytes` is the file data the root filesystem holds.
    ///
    /// # Errors
    /// `--extra-space` with a fixed `--size`.
    pub fn new(size: Option<SizeSpec>, extra_space: Option<u64>, unique_bytes: u64) -> Result<Self> {
        let extra = extra_space.unwrap_or_else(|| MIN_EXTRA.max(unique_bytes / 10));
        let fixed = match size {
            None | Some(SizeSpec::Auto) => None,
            Some(SizeSpec::Fixed(bytes)) => {
                if extra_space.is_some() {
                    bail!(
                        "--extra-space applies to --size auto only; with --size {bytes} the free space is what remains"
                    );
                }
                Some(bytes)
            }
        };
        Ok(Self { fixed, extra })
    }
}

fn too_small(needed: u64, given: u64) -> anyhow::Error {
    anyhow::anyhow!("--size {given} is too small: the image needs at least {needed} bytes ({})", human_bytes(needed))
}

/// Plans the root filesystem of `tree` at `size` (setting it in `opts`).
fn plan_root(tree: &ext4::Tree, opts: &mut ext4::Options, size: Size) -> Result<ext4::Plan> {
    opts.size = size;
    ext4::plan(tree, opts).map_err(|e| match e {
        ext4::Error::TooSmall { needed, given } => too_small(needed, given),
        other => anyhow::Error::new(other).context("planning the root filesystem"),
    })
}

/// A bare root filesystem (`--layout none`).
pub fn bare(tree: &ext4::Tree, opts: &mut ext4::Options, sizing: Sizing) -> Result<ext4::Plan> {
    let size = sizing.fixed.map_or(Size::Auto { extra_bytes: sizing.extra }, |bytes| Size::Fixed { bytes });
    plan_root(tree, opts, size)
}

/// Lays out a disk for a root filesystem: `lay(root partition size, disk size)` makes the partition table.
pub type Lay<'a> = dyn Fn(PartitionSize, DiskSize) -> Result<(DiskLayout, Numbers)> + 'a;

/// The root filesystem and the disk around it.
///
/// # Errors
/// A `--size` too small (saying what is enough), and whatever laying out fails with.
pub fn on_disk(
    tree: &ext4::Tree,
    opts: &mut ext4::Options,
    sizing: Sizing,
    lay: &Lay<'_>,
) -> Result<(ext4::Plan, DiskLayout, Numbers)> {
    match sizing.fixed {
        Some(bytes) => fixed_disk(tree, opts, bytes, lay),
        None => {
            let mut plan = plan_root(tree, opts, Size::Auto { extra_bytes: sizing.extra })?;
            let (layout, numbers) = lay(PartitionSize::AtLeast(Bytes(plan.size_bytes())), DiskSize::Fit)?;
            // A profile may make the root partition larger than the filesystem needs: fill it.
            let range = layout.byte_range(numbers.root).expect("root partition");
            let root_len = range.end.get() - range.start.get();
            if root_len > plan.size_bytes() {
                plan = plan_root(tree, opts, Size::Fixed { bytes: root_len })?;
            }
            Ok((plan, layout, numbers))
        }
    }
}

/// A disk of exactly `bytes`, the root partition filling what the others leave.
fn fixed_disk(
    tree: &ext4::Tree,
    opts: &mut ext4::Options,
    bytes: u64,
    lay: &Lay<'_>,
) -> Result<(ext4::Plan, DiskLayout, Numbers)> {
    let (layout, numbers) = match lay(PartitionSize::Fill, DiskSize::Exactly(Bytes(bytes))) {
        Ok(l) => l,
        // Too small even for the partitions besides the root: say what the whole needs.
        Err(e) if e.chain().any(|c| matches!(c.downcast_ref::<DiskError>(), Some(DiskError::DiskTooSmall { .. }))) => {
            return Err(too_small(min_disk(tree, opts, lay)?, bytes));
        }
        Err(e) => return Err(e.context(format!("--size {bytes}"))),
    };
    let range = layout.byte_range(numbers.root).expect("root partition");
    let root_len = range.end.get() - range.start.get();
    let plan = plan_root(tree, opts, Size::Fixed { bytes: root_len }).map_err(|e| match min_disk(tree, opts, lay) {
        Ok(needed) if needed > bytes => too_small(needed, bytes),
        _ => e,
    })?;
    Ok((plan, layout, numbers))
}

/// The smallest disk that holds the root filesystem: the partitions up to the end of the root (the last, whole
/// MiB), then the backup GPT. What "too small" says, so that size builds.
fn min_disk(tree: &ext4::Tree, opts: &ext4::Options, lay: &Lay<'_>) -> Result<u64> {
    let root = plan_root(tree, &mut opts.clone(), Size::Auto { extra_bytes: 0 })?.size_bytes();
    let (l, n) = lay(PartitionSize::AtLeast(Bytes(root)), DiskSize::Fit)?;
    let end = l.byte_range(n.root).expect("root partition").end.get();
    let sector = l.sector_size();
    let backup = l.gpt_geometry().map_or(0, |_| GptGeometry::copy_sectors(sector) * sector.bytes().get());
    Ok(end + backup)
}
