//! The planned image as text lines of the dry-run report.

use std::fmt::Write as _;

use crate::cli::{Layout, value_name};
use crate::plan::ImageSummary;
use crate::units::human_bytes;

/// Text lines of the planned image for the dry-run report.
#[must_use]
pub fn image_text(image: &ImageSummary) -> String {
    let f = &image.root_fs;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "image          layout {}, format {}, {} bytes ({}), {}-byte sectors, seed {:?}",
        if image.layout == Layout::Custom { "custom".to_owned() } else { value_name(image.layout) },
        value_name(image.format),
        image.size_bytes,
        human_bytes(image.size_bytes),
        image.sector_size,
        image.seed
    );
    let _ = writeln!(
        s,
        "root fs        {} label {} uuid {}: {} groups, {} inodes ({} free), {} free ({} bytes), journal {}, {} reserved descriptor blocks",
        f.kind,
        f.label,
        f.uuid,
        f.groups,
        f.inodes,
        f.free_inodes,
        human_bytes(f.free_bytes),
        f.free_bytes,
        human_bytes(f.journal_bytes),
        f.reserved_gdt_blocks
    );
    if let Some(st) = &image.store {
        let _ = writeln!(
            s,
            "store fs       {} label {} uuid {}: {} inodes, {} ({} bytes), read-only on partition {}",
            st.kind,
            st.label,
            st.uuid,
            st.inodes,
            human_bytes(st.size_bytes),
            st.size_bytes,
            st.partition
        );
        let _ = writeln!(
            s,
            "store verity   dm-verity sha256 on partition {}: {} ({} bytes), salt {}; root hash {}",
            st.verity_partition,
            human_bytes(st.verity_bytes),
            st.verity_bytes,
            st.verity_salt,
            st.root_hash.as_deref().unwrap_or("computed when the image is written (usrhash= and the store GUIDs)")
        );
    }
    for p in &image.partitions {
        let _ = writeln!(
            s,
            "partition {}    {:<10} start {:>12} size {:>12} ({}) type {}",
            p.number,
            p.name,
            p.start,
            p.size,
            human_bytes(p.size),
            p.type_guid
        );
    }
    if !image.bootloaders.is_empty() {
        let _ = writeln!(s, "bootloaders    {}", image.bootloaders.join(", "));
    }
    s
}
