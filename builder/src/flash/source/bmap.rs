//! bmaptool's block map (XML, format 1.4 and 2.x with sha256 checksums), read without an XML library: the
//! format is a flat list of elements kiln and bmaptool write one per line, and only a handful are needed. The
//! file's own checksum (`BmapFileChecksum`) is checked before anything in it is used.

use std::ops::Range;

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha256};

use super::tally::ZEROS;
use kiln_formats::image::checksum::hex;

/// One range of mapped blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MappedRange {
    /// First and last block, as the file writes them.
    pub(super) blocks: (u64, u64),
    /// The image bytes the blocks cover (the last block cut at the image's end).
    pub(super) bytes: Range<u64>,
    /// The sha256 of those bytes, when the file gives one.
    pub(super) sha256: Option<[u8; 32]>,
}

/// A parsed, verified block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bmap {
    pub(super) image_size: u64,
    pub(super) ranges: Vec<MappedRange>,
}

impl Bmap {
    /// The byte ranges, merged where they touch.
    pub(super) fn map(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::with_capacity(self.ranges.len());
        for r in &self.ranges {
            match out.last_mut() {
                Some(last) if last.end == r.bytes.start => last.end = r.bytes.end,
                _ => out.push(r.bytes.clone()),
            }
        }
        out
    }

    /// Whether every range has a checksum.
    pub(super) fn has_checksums(&self) -> bool {
        !self.ranges.is_empty() && self.ranges.iter().all(|r| r.sha256.is_some())
    }
}

/// The text of the element `tag` (trimmed), outside comments; `None` if absent.
fn element<'a>(xml: &'a str, tag: &str) -> Result<Option<&'a str>> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = xml.find(&open) else { return Ok(None) };
    let body = &xml[start + open.len()..];
    let end = body.find(&close).ok_or_else(|| anyhow!("<{tag}> is not closed"))?;
    Ok(Some(body[..end].trim()))
}

fn number(xml: &str, tag: &str) -> Result<u64> {
    let text = element(xml, tag)?.ok_or_else(|| anyhow!("no <{tag}>"))?;
    text.parse().map_err(|_| anyhow!("<{tag}> {text:?} is not a number"))
}

/// Parses 64 hex digits.
pub(super) fn sha256_hex(text: &str) -> Option<[u8; 32]> {
    let b = text.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The text without `<!-- … -->` comments.
fn strip_comments(xml: &str) -> Result<String> {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find("<!--") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 4..];
        let j = after.find("-->").ok_or_else(|| anyhow!("a comment is not closed"))?;
        rest = &after[j + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses and verifies the block map `bytes`, read from `name`.
///
/// # Errors
/// A malformed file, a version or checksum type not supported, or a wrong `BmapFileChecksum`.
pub(super) fn parse(bytes: &[u8], name: &str) -> Result<Bmap> {
    parse_inner(bytes).with_context(|| format!("block map {name}"))
}

fn parse_inner(bytes: &[u8]) -> Result<Bmap> {
    let text = std::str::from_utf8(bytes).map_err(|e| anyhow!("not UTF-8 text: {e}"))?;
    let xml = strip_comments(text)?;
    let version = xml
        .find("<bmap")
        .and_then(|i| xml[i..].split_once("version=\""))
        .and_then(|(_, v)| v.split_once('"'))
        .map(|(v, _)| v.trim())
        .ok_or_else(|| anyhow!("no <bmap version=\"…\">: not a bmaptool block map"))?;
    let (major, minor) = version.split_once('.').unwrap_or((version, "0"));
    let (major, minor): (u32, u32) = (
        major.parse().map_err(|_| anyhow!("version {version:?}"))?,
        minor.parse().map_err(|_| anyhow!("version {version:?}"))?,
    );
    ensure!(
        major == 2 || (major == 1 && minor >= 4),
        "version {version} is not supported (1.4 and 2.x are): make it again with bmaptool create"
    );
    let kind = element(&xml, "ChecksumType")?.ok_or_else(|| anyhow!("no <ChecksumType>"))?;
    ensure!(kind == "sha256", "checksum type {kind:?} is not supported, only sha256");
    let own = element(&xml, "BmapFileChecksum")?.ok_or_else(|| anyhow!("no <BmapFileChecksum>"))?;
    ensure!(sha256_hex(own).is_some(), "BmapFileChecksum {own:?} is not a sha256");
    // As bmaptool checks it: the sha256 of the file with the value written as zeros.
    let zeroed = text.replace(own, &"0".repeat(64));
    let actual = hex(&Sha256::digest(zeroed.as_bytes()).into());
    ensure!(
        actual.eq_ignore_ascii_case(own),
        "the file's checksum is wrong: it hashes to {actual}, BmapFileChecksum says {own}: the file is corrupt"
    );

    let image_size = number(&xml, "ImageSize")?;
    let block_size = number(&xml, "BlockSize")?;
    ensure!(block_size > 0 && block_size <= 1 << 30, "block size {block_size} is out of range");
    let blocks = number(&xml, "BlocksCount")?;
    ensure!(
        blocks == image_size.div_ceil(block_size),
        "{blocks} blocks of {block_size} bytes do not make an image of {image_size} bytes"
    );
    let mapped = number(&xml, "MappedBlocksCount")?;
    let map = element(&xml, "BlockMap")?.ok_or_else(|| anyhow!("no <BlockMap>"))?;
    let mut ranges = Vec::new();
    let mut next = 0u64;
    let mut count = 0u64;
    let mut rest = map;
    while let Some(i) = rest.find("<Range") {
        let after = &rest[i + 6..];
        let gt = after.find('>').ok_or_else(|| anyhow!("a <Range> is not closed"))?;
        let (attrs, after) = (&after[..gt], &after[gt + 1..]);
        let end = after.find("</Range>").ok_or_else(|| anyhow!("a <Range> is not closed"))?;
        let body = after[..end].trim();
        rest = &after[end + 8..];
        let r = range(attrs, body, block_size, image_size, blocks)?;
        ensure!(r.blocks.0 >= next, "range {body} overlaps or comes before the range before it");
        next = r.blocks.1 + 1;
        count += r.blocks.1 - r.blocks.0 + 1;
        ranges.push(r);
    }
    ensure!(count == mapped, "MappedBlocksCount says {mapped} blocks, the ranges hold {count}");
    Ok(Bmap { image_size, ranges })
}

/// One `<Range chksum="…">A-B</Range>` (or `A`).
fn range(attrs: &str, body: &str, block_size: u64, image_size: u64, blocks: u64) -> Result<MappedRange> {
    let (a, b) = body.split_once('-').unwrap_or((body, body));
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| anyhow!("range {body:?} is not blocks A-B or A"));
    let (first, last) = (parse(a)?, parse(b)?);
    ensure!(first <= last && last < blocks, "range {body} is reversed or beyond the image's {blocks} blocks");
    let sha256 = match attrs.split_once("chksum=\"") {
        None => None,
        Some((_, v)) => {
            let v = v.split_once('"').map(|(v, _)| v).ok_or_else(|| anyhow!("range {body}: chksum not closed"))?;
            Some(sha256_hex(v).ok_or_else(|| anyhow!("range {body}: chksum {v:?} is not a sha256"))?)
        }
    };
    let start = first.saturating_mul(block_size);
    let end = (last + 1).saturating_mul(block_size).min(image_size);
    Ok(MappedRange { blocks: (first, last), bytes: start..end, sha256 })
}

/// Checks the block map's range checksums over the image's bytes as they stream past (bytes no chunk covers
/// count as zeros).
#[derive(Debug)]
pub(super) struct RangeCheck {
    ranges: Vec<(MappedRange, [u8; 32])>,
    at: usize,
    /// Bytes of the current range hashed so far end here.
    pos: u64,
    hasher: Sha256,
    source: String,
    bmap: String,
}

impl RangeCheck {
    /// Checks the ranges of `bmap` (named `bmap_name`) that have checksums, for `source`.
    pub(super) fn new(bmap: &Bmap, source: &str, bmap_name: &str) -> Self {
        let ranges = bmap.ranges.iter().filter_map(|r| r.sha256.map(|s| (r.clone(), s))).collect();
        Self { ranges, at: 0, pos: 0, hasher: Sha256::new(), source: source.to_owned(), bmap: bmap_name.to_owned() }
    }

    /// The ranges split among `n` checks (range `i` to check `i % n`), each fed every chunk, so `n` threads
    /// can share the hashing.
    pub(super) fn split(self, n: usize) -> Vec<Self> {
        let n = n.max(1);
        let mut parts: Vec<Self> = (0..n)
            .map(|_| Self {
                ranges: Vec::new(),
                at: 0,
                pos: 0,
                hasher: Sha256::new(),
                source: self.source.clone(),
                bmap: self.bmap.clone(),
            })
            .collect();
        for (i, r) in self.ranges.into_iter().enumerate() {
            parts[i % n].ranges.push(r);
        }
        parts
    }

    fn zeros(&mut self, until: u64) {
        while self.pos < until {
            let n = (until - self.pos).min(ZEROS.len() as u64);
            self.hasher.update(&ZEROS[..n as usize]);
            self.pos += n;
        }
    }

    fn close(&mut self) -> Result<()> {
        let (r, want) = &self.ranges[self.at];
        let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if got != *want {
            let (a, b) = r.blocks;
            bail!(
                "{}: block map {}: blocks {a}-{b} (image bytes {}..{}) hash to sha256 {}, the block map says {}",
                self.source,
                self.bmap,
                r.bytes.start,
                r.bytes.end,
                hex(&got),
                hex(want)
            );
        }
        self.at += 1;
        Ok(())
    }

    /// The image's bytes `data` at `offset`, after every byte fed before.
    ///
    /// # Errors
    /// A range that ends by then and does not match.
    pub(super) fn feed(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        while let Some((r, _)) = self.ranges.get(self.at) {
            let r = r.bytes.clone();
            if r.start >= end {
                break;
            }
            self.pos = self.pos.max(r.start);
            self.zeros(offset.min(r.end));
            let (s, e) = (self.pos.max(offset), r.end.min(end));
            if s < e {
                self.hasher.update(&data[(s - offset) as usize..(e - offset) as usize]);
                self.pos = e;
            }
            if self.pos < r.end {
                break;
            }
            self.close()?;
        }
        Ok(())
    }

    /// The end of the image: every range not yet closed ends in zeros.
    ///
    /// # Errors
    /// A range that does not match.
    pub(super) fn finish(&mut self) -> Result<()> {
        while let Some((r, _)) = self.ranges.get(self.at) {
            let r = r.bytes.clone();
            self.pos = self.pos.max(r.start);
            self.zeros(r.end);
            self.close()?;
        }
        Ok(())
    }
}
