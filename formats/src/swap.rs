//! Linux swap space signatures (what `mkswap` writes): version 1 header in the first page, `SWAPSPACE2` at the
//! end of it. Everything after the first page is left as it is (zeros in a fresh image).

/// The page size the signature is written for (x86-64 and most arm64 kernels).
pub const PAGE: usize = 4096;

/// The smallest swap area the kernel accepts: 10 pages.
pub const MIN_BYTES: u64 = 10 * PAGE as u64;

/// The first page of a swap area of `size_bytes`, with `uuid` and `label` (at most 16 bytes).
///
/// # Errors
/// If the area is smaller than [`MIN_BYTES`] or too large for the header, or the label is longer than 16 bytes.
pub fn header(size_bytes: u64, uuid: [u8; 16], label: &str) -> Result<[u8; PAGE], String> {
    if size_bytes < MIN_BYTES {
        return Err(format!("a swap area needs at least {MIN_BYTES} bytes, not {size_bytes}"));
    }
    if label.len() > 16 {
        return Err(format!("swap label {label:?} is longer than 16 bytes"));
    }
    let last_page = u32::try_from(size_bytes / PAGE as u64 - 1)
        .map_err(|_| format!("a swap area of {size_bytes} bytes is too large for a version 1 header"))?;
    let mut page = [0u8; PAGE];
    // After 1024 bytes of boot block: version, last page, number of bad pages, uuid, label.
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    page[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    page[1036..1052].copy_from_slice(&uuid);
    page[1052..1052 + label.len()].copy_from_slice(label.as_bytes());
    page[PAGE - 10..].copy_from_slice(b"SWAPSPACE2");
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let p = header(64 << 20, [7; 16], "swap").unwrap();
        assert_eq!(&p[PAGE - 10..], b"SWAPSPACE2");
        assert_eq!(u32::from_le_bytes(p[1024..1028].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(p[1028..1032].try_into().unwrap()), (64 << 20) / 4096 - 1);
        assert_eq!(&p[1036..1052], &[7; 16]);
        assert_eq!(&p[1052..1056], b"swap");
        assert!(header(4096, [0; 16], "").is_err());
        assert!(header(1 << 20, [0; 16], "seventeen-bytes!!").is_err());
    }
}
