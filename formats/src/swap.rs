//! Linux swap space signatures (what `mkswap` writes): version 1 header in the first page, `SWAPSPACE2` at the
//! end of it. Everything after the first page is left as it is (zeros in a fresh image).

/// The page size the signature is written for (x86-64 and most arm64 kernels).
pub const PAGE: usize = 4096;

/// The smallest swap area the kernel accepts: 10 pages.
pub const MIN_BYTES: u64 = 10 * PAGE as u64;

/// Longest label the header holds, in bytes.
pub const MAX_LABEL: usize = 16;

/// What can go wrong making a swap signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An area smaller than the kernel accepts.
    #[error("swap area of {size} bytes is too small: the kernel needs at least {MIN_BYTES} bytes (10 pages)")]
    TooSmall {
        /// Bytes given.
        size: u64,
    },
    /// An area with more pages than a version 1 header counts.
    #[error("swap area of {size} bytes is too large for a version 1 header (2^32 pages of {PAGE} bytes at most)")]
    TooLarge {
        /// Bytes given.
        size: u64,
    },
    /// A label longer than the header holds.
    #[error("swap label {label:?} is {} bytes, longer than {MAX_LABEL}", .label.len())]
    LabelTooLong {
        /// The label.
        label: String,
    },
}

/// The first page of a swap area of `size_bytes`, with `uuid` and `label` (at most [`MAX_LABEL`] bytes).
///
/// # Errors
/// [`Error::TooSmall`] below [`MIN_BYTES`], [`Error::TooLarge`] past what the header counts,
/// [`Error::LabelTooLong`] for a label of more than [`MAX_LABEL`] bytes.
pub fn header(size_bytes: u64, uuid: [u8; 16], label: &str) -> Result<[u8; PAGE], Error> {
    if size_bytes < MIN_BYTES {
        return Err(Error::TooSmall { size: size_bytes });
    }
    if label.len() > MAX_LABEL {
        return Err(Error::LabelTooLong { label: label.to_owned() });
    }
    let last_page = u32::try_from(size_bytes / PAGE as u64 - 1).map_err(|_| Error::TooLarge { size: size_bytes })?;
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
    }

    #[test]
    fn bad_sizes_and_labels_are_named() {
        struct Case {
            size: u64,
            label: &'static str,
            want: Error,
            text: &'static str,
        }
        let cases = [
            Case {
                size: 4096,
                label: "",
                want: Error::TooSmall { size: 4096 },
                text: "swap area of 4096 bytes is too small: the kernel needs at least 40960 bytes (10 pages)",
            },
            Case {
                size: 1 << 20,
                label: "seventeen-bytes!!",
                want: Error::LabelTooLong { label: "seventeen-bytes!!".to_owned() },
                text: "swap label \"seventeen-bytes!!\" is 17 bytes, longer than 16",
            },
            Case {
                size: (1 << 32) * PAGE as u64 + PAGE as u64,
                label: "",
                want: Error::TooLarge { size: (1 << 32) * PAGE as u64 + PAGE as u64 },
                text: "swap area of 17592186048512 bytes is too large for a version 1 header (2^32 pages of 4096 \
                       bytes at most)",
            },
        ];
        for c in cases {
            let err = header(c.size, [0; 16], c.label).unwrap_err();
            assert_eq!(err, c.want);
            assert_eq!(err.to_string(), c.text);
        }
        assert!(header((1 << 32) * PAGE as u64, [0; 16], "sixteen-bytes!!!").is_ok());
    }
}
