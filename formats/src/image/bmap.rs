//! A block map for `bmaptool copy`: which 4 KiB blocks of the raw image hold data, with their sha256, in
//! bmaptool's XML format version 2.0. `bmaptool` then writes only those blocks (from the raw image or a
//! compressed one such as `*.raw.zst`) and checks each range's checksum.
//!
//! Mapped blocks are the non-zero 4 KiB blocks within the image's extents (zero blocks need not be written:
//! the destination is zeroed or sparse). Ranges are cut at 8 MiB boundaries so they are hashed in parallel;
//! the output depends only on the image. The file's own checksum (`BmapFileChecksum`) is the sha256 of the
//! file with that field's value written as 64 `0` characters, which bmaptool verifies before use.

use std::fmt::Write as _;
use std::io;
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::checksum::hex;
use super::scan::{ZERO_BLOCK, map_chunks, nonzero_runs};
use super::{Progress, RawImage};

/// Block size of the map.
pub const BLOCK_SIZE: u64 = ZERO_BLOCK;

/// The bmap format version written.
pub const VERSION: &str = "2.0";

/// The block map of `image` as bmaptool's XML.
///
/// # Errors
/// If reading the image fails.
pub fn generate(image: &RawImage<'_>, progress: &dyn Progress) -> io::Result<String> {
    let ranges: Vec<(Range<u64>, [u8; 32])> = map_chunks(image, progress, |base, data| {
        let mut runs = Vec::new();
        nonzero_runs(data, base, &mut runs);
        Ok(runs
            .into_iter()
            .map(|r| {
                let bytes = &data[(r.start - base) as usize..(r.end - base) as usize];
                (r, Sha256::digest(bytes).into())
            })
            .collect::<Vec<_>>())
    })?
    .into_iter()
    .flatten()
    .collect();
    Ok(render(image.size(), &ranges))
}

/// The XML for an image of `size` bytes whose data lies in `ranges` (byte ranges starting on block boundaries,
/// ending on one or at `size`), each with the sha256 of its bytes.
fn render(size: u64, ranges: &[(Range<u64>, [u8; 32])]) -> String {
    let blocks = size.div_ceil(BLOCK_SIZE);
    let mapped: u64 = ranges.iter().map(|(r, _)| (r.end - r.start).div_ceil(BLOCK_SIZE)).sum();
    let percent = if blocks == 0 { 0.0 } else { mapped as f64 * 100.0 / blocks as f64 };
    let mut x = String::with_capacity(2048 + ranges.len() * 100);
    // Writing to a String cannot fail.
    let _ = write!(
        x,
        r#"<?xml version="1.0" ?>
<!-- The block map of a disk image: the blocks that hold data, with the sha256 of each range of them. Only
     these blocks need be written to the target; the others are zeros. Made by kiln; read by bmaptool. -->

<bmap version="{VERSION}">
    <!-- Image size in bytes: {size_h} -->
    <ImageSize> {size} </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> {BLOCK_SIZE} </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> {blocks} </BlocksCount>

    <!-- Count of mapped blocks: {mapped_h} or {percent:.1}% -->
    <MappedBlocksCount> {mapped} </MappedBlocksCount>

    <!-- Type of checksum used in this file -->
    <ChecksumType> sha256 </ChecksumType>

    <!-- The sha256 of this file with this field's value written as 64 "0" characters -->
    <BmapFileChecksum> {zeros} </BmapFileChecksum>

    <!-- Mapped blocks: ranges "first-last" or single blocks, each with the sha256 of its bytes -->
    <BlockMap>
"#,
        size_h = human_size(size),
        mapped_h = human_size(mapped * BLOCK_SIZE),
        zeros = "0".repeat(64),
    );
    for (r, sum) in ranges {
        let (first, last) = (r.start / BLOCK_SIZE, (r.end - 1) / BLOCK_SIZE);
        let hex = hex(sum);
        if first == last {
            let _ = writeln!(x, r#"        <Range chksum="{hex}"> {first} </Range>"#);
        } else {
            let _ = writeln!(x, r#"        <Range chksum="{hex}"> {first}-{last} </Range>"#);
        }
    }
    x.push_str("    </BlockMap>\n</bmap>\n");
    let own = hex(&Sha256::digest(x.as_bytes()).into());
    x.replacen(&"0".repeat(64), &own, 1)
}

/// `bytes` for people: "512 bytes", "1.5 GiB".
fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        v /= 1024.0;
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
    }
    format!("{:.1} PiB", v / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RawImage;
    use std::os::unix::fs::FileExt;

    #[test]
    fn maps_nonzero_blocks_with_checksums() {
        let f = tempfile::tempfile().unwrap();
        let size = 20 * 4096 + 100;
        f.set_len(size).unwrap();
        f.write_all_at(&[1; 5000], 4096).unwrap(); // blocks 1-2
        f.write_all_at(&[2], 10 * 4096).unwrap(); // block 10
        f.write_all_at(&[3], size - 1).unwrap(); // short block 20
        let img = RawImage::from_file(&f).unwrap();
        let xml = generate(&img, &()).unwrap();
        assert!(xml.contains("<ImageSize> 82020 </ImageSize>"));
        assert!(xml.contains("<BlocksCount> 21 </BlocksCount>"));
        assert!(xml.contains("<MappedBlocksCount> 4 </MappedBlocksCount>"));
        let mut block12 = vec![0u8; 8192];
        block12[..5000].fill(1);
        let want = hex(&Sha256::digest(&block12).into());
        assert!(xml.contains(&format!(r#"<Range chksum="{want}"> 1-2 </Range>"#)), "{xml}");
        let mut last = vec![0u8; 100];
        last[99] = 3;
        let want = hex(&Sha256::digest(&last).into());
        assert!(xml.contains(&format!(r#"<Range chksum="{want}"> 20 </Range>"#)), "{xml}");
        // The file checksum as bmaptool checks it: over the file with the value zeroed.
        let start = xml.find("<BmapFileChecksum> ").unwrap() + 19;
        let own = &xml[start..start + 64];
        let zeroed = xml.replacen(own, &"0".repeat(64), 1);
        assert_eq!(hex(&Sha256::digest(zeroed.as_bytes()).into()), own);
    }

    #[test]
    fn empty_image() {
        let f = tempfile::tempfile().unwrap();
        let img = RawImage::from_file(&f).unwrap();
        let xml = generate(&img, &()).unwrap();
        assert!(xml.contains("<BlocksCount> 0 </BlocksCount>"));
        assert!(xml.contains("<BlockMap>\n    </BlockMap>"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(1_274_019_840), "1.2 GiB");
    }
}
