//! The footer that makes a raw image a fixed VHD: `conectix`, big-endian fields, disk type 2 (fixed), the
//! one's-complement byte-sum checksum. The image is the file without its last 512 bytes.

use anyhow::{Result, bail};

/// Bytes of the footer.
pub(super) const FOOTER: u64 = 512;

/// The image size a fixed VHD footer gives, or `None` when `tail` (the file's last 512 bytes) is no VHD
/// footer.
///
/// # Errors
/// A footer with a wrong checksum, or of a dynamic or differencing VHD (which cannot be streamed as raw).
pub(super) fn fixed_size(tail: &[u8], name: &str) -> Result<Option<u64>> {
    if tail.len() != FOOTER as usize || !tail.starts_with(b"conectix") {
        return Ok(None);
    }
    let be32 = |at: usize| u32::from_be_bytes([tail[at], tail[at + 1], tail[at + 2], tail[at + 3]]);
    let sum = tail
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    if !sum != be32(64) {
        bail!(
            "{name}: ends in a VHD footer whose checksum is wrong ({:08x}, its bytes give {:08x}): the file is corrupt",
            be32(64),
            !sum
        );
    }
    match be32(60) {
        2 => {}
        3 | 4 => bail!(
            "{name}: a {} VHD: only fixed VHDs can be flashed; convert it first (qemu-img convert -f vpc -O raw \
             {name} disk.raw)",
            if be32(60) == 3 { "dynamic" } else { "differencing" }
        ),
        t => bail!("{name}: a VHD footer with disk type {t}, which no VHD has"),
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&tail[48..56]);
    Ok(Some(u64::from_be_bytes(size)))
}
