//! Write: a [`Plan`] becomes bytes in a raw image file: the partition table, the FAT filesystems, swap
//! signatures, the root filesystem's metadata (in parallel with) every store file's data, copied and hashed in
//! one pass ([`copy`]), then GRUB's boot code, read back to prove it. Nothing here decides anything: every
//! offset comes from the plan.

pub mod copy;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use kiln_formats::disk::{DiskLayout, Guid};

use crate::plan::{BootFs, Disk, Plan, ROOT_HASH_PLACEHOLDER};
use crate::progress::{self, Meter, Phase, Progress};
use crate::resolve::Resolved;

/// Writes the image `plan` describes into `sink` (an empty file of the image's size, which reads as zeros),
/// copying the store of `r`; `shown` names the output in errors. Checks each store path against its narHash
/// when `verify_hashes`. Returns the store's root hash when it has a verity tree (`efi-verity`).
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
) -> Result<Option<[u8; 32]>> {
    // With a verity store, the partition table and the boot files wait for the root hash.
    if let Some(d) = &plan.disk
        && plan.store.is_none()
    {
        write_disk(d, sink, shown)?;
    }
    // A verity store's disk is flushed while it is written, its pages kept for the tree to read back what the
    // data pass did not hash (the data pass of an ext4 root starts writeback and drops each chunk instead, see
    // `copy`: each measured the faster for its layout).
    writing_back(plan.store.is_some(), sink, shown, || {
        let root = &plan.root;
        let meter = Meter::new(progress, Phase::Write, r.inventory.totals.unique_bytes);
        let job = match &plan.store {
            Some(s) => copy::Job {
                r,
                nodes: &s.nodes,
                plan: copy::StorePlan::Erofs(&s.plan),
                base: s.offset,
                staged: s.staged.as_ref(),
                verity: Some(&s.verity),
            },
            None => copy::Job {
                r,
                nodes: &root.nodes,
                plan: copy::StorePlan::Ext4(&root.plan),
                base: root.offset,
                staged: None,
                verity: None,
            },
        };
        let (meta, data) = rayon::join(
            || -> Result<()> {
                root.plan.write_metadata(&root.tree, sink, root.offset)?;
                if let Some(s) = &plan.store {
                    s.plan.write_metadata(&s.tree, sink, s.offset).context("writing the store filesystem")?;
                }
                Ok(())
            },
            || copy::copy_and_hash(&job, sink, verify_hashes, &plan.self_hashed, &meter),
        );
        meta.with_context(|| format!("writing {shown}"))?;
        let copied = data?;
        // Files outside the store (the database, its schema file, …) are the ones no store path copied.
        match &plan.store {
            None => {
                root.plan.write_files(&root.tree, sink, root.offset, &|i| copied.claimed[i].load(Ordering::Relaxed))
            }
            Some(_) => root.plan.write_files(&root.tree, sink, root.offset, &|_| false),
        }
        .with_context(|| format!("writing {shown}"))?;
        if let Some(embedding) = plan.disk.as_ref().and_then(|d| d.grub.as_ref()) {
            embedding.write(sink).with_context(|| format!("installing GRUB into {shown}"))?;
            embedding
                .verify(|offset, buf| sink.read_exact_at(buf, offset.get()))
                .with_context(|| format!("reading GRUB back from {shown}"))?;
        }
        let (Some(store), Some(d)) = (&plan.store, &plan.disk) else { return Ok(None) };
        let read = |buf: &mut [u8], at: u64| sink.read_exact_at(buf, store.offset + at);
        let hash = progress::phase(
            progress,
            Phase::Verity,
            || {
                let known = kiln_formats::verity::Known::new(copied.leaves);
                store
                    .verity
                    .write_known(&known, &read, sink, store.verity_offset)
                    .with_context(|| format!("writing {shown}"))
            },
            |h| format!("root hash {}", kiln_formats::verity::hex(h)),
        )?;
        write_disk(&with_root_hash(d, &hash), sink, shown)?;
        Ok(Some(hash))
    })
}

/// How often written data is flushed while the image is being written (on the large corpus 20 ms beat 100 ms by
/// 7%: the disk's queue never runs dry, and little is left for the final flush).
const WRITEBACK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs `f` (which writes `sink`); if `enabled`, while a thread of its own flushes what it has written so far
/// (`fdatasync`) every [`WRITEBACK_EVERY`]: the disk writes while the image is made, instead of all at the final
/// flush, and the pages stay cached for what reads them back (the verity tree, an output format). A failed flush fails
/// the build (the kernel reports a writeback error once per open file, so the final flush would not see it).
fn writing_back<T>(enabled: bool, sink: &File, shown: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    if !enabled {
        return f();
    }
    let (done, stop) = channel::<()>();
    std::thread::scope(|s| {
        let flusher = s.spawn(move || -> std::io::Result<()> {
            loop {
                match stop.recv_timeout(WRITEBACK_EVERY) {
                    Err(RecvTimeoutError::Timeout) => sink.sync_data()?,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
        });
        let out = f();
        drop(done);
        let flushed = flusher.join().expect("the flusher does not panic");
        let out = out?;
        flushed.with_context(|| format!("flushing {shown} while writing it"))?;
        Ok(out)
    })
}

/// The disk with what the root hash decides filled in: the store partitions' GUIDs (its first and last 128
/// bits, as systemd-repart derives them and systemd's veritysetup generator finds them), and `usrhash=` in
/// every boot file that says it.
fn with_root_hash(d: &Disk, hash: &[u8; 32]) -> Disk {
    let mut partitions = d.layout.partitions().to_vec();
    for (number, half) in [(d.numbers.store, &hash[..16]), (d.numbers.store_verity, &hash[16..])] {
        let n = number.expect("a verity store has both partitions");
        partitions[n - 1].guid = Guid::from_bytes(half.try_into().expect("16 bytes"));
    }
    let layout = DiskLayout::new(d.layout.sector_size(), d.layout.size(), d.layout.table(), partitions)
        .expect("the same partitions with other GUIDs");
    let from = format!("usrhash={ROOT_HASH_PLACEHOLDER}").into_bytes();
    let to = format!("usrhash={}", kiln_formats::verity::hex(hash)).into_bytes();
    let boot_fs = d
        .boot_fs
        .iter()
        .map(|b| {
            let mut tree = b.tree.clone();
            tree.rewrite_bytes(|bytes| replace_all(bytes, &from, &to));
            BootFs { kind: b.kind, number: b.number, tree, plan: b.plan.clone() }
        })
        .collect();
    Disk { layout, boot_fs, numbers: d.numbers.clone(), swaps: d.swaps.clone(), grub: None }
}

/// `bytes` with every `from` replaced by `to` (of the same length), if it has one.
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == from) {
        let o = out.get_or_insert_with(|| bytes.to_vec());
        o[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + from.len();
    }
    out
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
