//! Write: a [`Plan`] becomes bytes in a raw image file: the partition table, the FAT filesystems, swap
//! signatures, the root filesystem's metadata (in parallel with) every store file's data, copied and hashed in
//! one pass ([`copy`]), then GRUB's boot code, read back to prove it. Nothing here decides anything: every
//! offset comes from the plan.

pub mod copy;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use crate::plan::{Disk, Plan};
use crate::progress::{Meter, Phase, Progress};
use crate::resolve::Resolved;

/// Writes the image `plan` describes into `sink` (an empty file of the image's size, which reads as zeros),
/// copying the store of `r`; `shown` names the output in errors. Checks each store path against its narHash
/// when `verify_hashes`.
///
/// # Errors
/// Any write that fails, a store file that changed since it was planned, a narHash that does not match.
pub fn write(
    plan: &Plan,
    r: &Resolved,
    verify_hashes: bool,
    sink: &File,
    shown: &str,
    progress: &dyn Progress,
) -> Result<()> {
    if let Some(d) = &plan.disk {
        write_disk(d, sink, shown)?;
    }
    let root = &plan.root;
    let meter = Meter::new(progress, Phase::Write, r.inventory.totals.unique_bytes);
    let (meta, data) = rayon::join(
        || root.plan.write_metadata(&root.tree, sink, root.offset).map_err(anyhow::Error::new),
        || {
            let job = copy::Job { r, nodes: &root.nodes, plan: &root.plan, base: root.offset };
            copy::copy_and_hash(&job, sink, verify_hashes, &plan.self_hashed, &meter)
        },
    );
    meta.with_context(|| format!("writing {shown}"))?;
    let (_, copied) = data?;
    // Files outside the store (the database, its schema file, …) are the ones no store path copied.
    root.plan
        .write_files(&root.tree, sink, root.offset, &|i| copied[i].load(Ordering::Relaxed))
        .with_context(|| format!("writing {shown}"))?;
    if let Some(embedding) = plan.disk.as_ref().and_then(|d| d.grub.as_ref()) {
        embedding.write(sink).with_context(|| format!("installing GRUB into {shown}"))?;
        embedding
            .verify(|offset, buf| sink.read_exact_at(buf, offset.get()))
            .with_context(|| format!("reading GRUB back from {shown}"))?;
    }
    Ok(())
}

/// The partition table, the boot partitions' filesystems and the swap signatures.
fn write_disk(d: &Disk, sink: &File, shown: &str) -> Result<()> {
    d.layout.write(sink).with_context(|| format!("writing the partition table of {shown}"))?;
    for b in &d.boot_fs {
        let at = d.layout.byte_range(b.number).expect("planned partition").start.get();
        b.plan.write(&b.tree, sink, at).with_context(|| format!("writing the {} of {shown}", b.kind.what()))?;
    }
    for swap in &d.swaps {
        let range = d.layout.byte_range(swap.number).expect("planned partition");
        let page = kiln_formats::swap::header(range.end.get() - range.start.get(), swap.uuid, &swap.label)
            .with_context(|| format!("partition {}", swap.number))?;
        sink.write_all_at(&page, range.start.get())
            .with_context(|| format!("writing the swap signature of {shown}"))?;
    }
    Ok(())
}
