//! GCE images: a gzip'd tar archive whose member `disk.raw` is the raw image, a GNU sparse member (type `S`,
//! its map in the header and extension headers, as `tar -S` and kiln write it) or a plain regular file.

use std::io::Read;
use std::ops::Range;

use anyhow::{Context, Result, bail, ensure};
use flate2::read::MultiGzDecoder;

use super::pipe::{Decode, MAX_CHUNK};
use super::tally::{drain, read_full};

/// The member GCE reads.
const MEMBER: &str = "disk.raw";
/// A tar block.
const BLOCK: u64 = 512;
/// Longest GNU long name or pax header read.
const MAX_META: u64 = 1 << 20;

type Reader = MultiGzDecoder<Box<dyn Read + Send>>;

/// The archive opened up to the image's data.
pub(super) struct Gce {
    reader: Reader,
    name: String,
    /// Archive bytes read so far (for messages).
    at: u64,
    /// The image size.
    pub(super) size: u64,
    /// Where the stored data goes in the image, in order: for a regular member, all of it.
    pub(super) regions: Vec<Range<u64>>,
    /// Whether the member is sparse (its regions are a real map).
    pub(super) sparse: bool,
}

/// A numeric header field: octal (spaces and NULs around it) or base-256.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

impl Gce {
    fn read_block(&mut self, what: &str) -> Result<[u8; BLOCK as usize]> {
        let mut b = [0u8; BLOCK as usize];
        let n = read_full(&mut self.reader, &mut b)
            .with_context(|| format!("{}: reading {what} at archive byte {}", self.name, self.at))?;
        ensure!(
            n == b.len(),
            "{}: the archive ends inside {what} at byte {}: it is truncated",
            self.name,
            self.at + n as u64
        );
        self.at += BLOCK;
        Ok(b)
    }

    fn skip(&mut self, len: u64, what: &str) -> Result<()> {
        let padded = len.div_ceil(BLOCK) * BLOCK;
        let n = std::io::copy(&mut (&mut self.reader).take(padded), &mut std::io::sink())
            .with_context(|| format!("{}: reading {what} at archive byte {}", self.name, self.at))?;
        ensure!(n == padded, "{}: the archive ends inside {what}: it is truncated", self.name);
        self.at += padded;
        Ok(())
    }

    /// Gunzips `seq` and reads the tar headers up to `disk.raw`'s data.
    ///
    /// # Errors
    /// Not a tar archive, no `disk.raw`, a malformed header or sparse map, or a pax sparse member.
    pub(super) fn open(seq: Box<dyn Read + Send>, name: String) -> Result<Self> {
        let mut g = Self { reader: MultiGzDecoder::new(seq), name, at: 0, size: 0, regions: vec![], sparse: false };
        let mut long_name: Option<String> = None;
        loop {
            let h = g.read_block("a tar header")?;
            if h.iter().all(|&b| b == 0) {
                bail!("{}: a tar archive without {MEMBER}: not a GCE image", g.name);
            }
            let sum: u64 =
                h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
            let stored = number(&h[148..156]);
            ensure!(
                stored == Some(sum),
                "{}: the tar header at archive byte {} has a wrong checksum: not a tar archive, or corrupt",
                g.name,
                g.at - BLOCK
            );
            let field = |r: Range<usize>, what: &str| {
                number(&h[r]).with_context(|| format!("{}: tar header field {what} is not a number", g.name))
            };
            let size = field(124..136, "size")?;
            let kind = h[156];
            let raw_name = h[..100].split(|&b| b == 0).next().unwrap_or_default();
            let mut member = String::from_utf8_lossy(raw_name).into_owned();
            if &h[257..263] == b"ustar\0" && h[345] != 0 {
                let prefix = h[345..500].split(|&b| b == 0).next().unwrap_or_default();
                member = format!("{}/{member}", String::from_utf8_lossy(prefix));
            }
            if let Some(n) = long_name.take() {
                member = n;
            }
            match kind {
                b'L' => {
                    ensure!(size <= MAX_META, "{}: a GNU long name of {size} bytes", g.name);
                    let mut buf = vec![0u8; size.div_ceil(BLOCK) as usize * BLOCK as usize];
                    let n = read_full(&mut g.reader, &mut buf)
                        .with_context(|| format!("{}: reading a long name", g.name))?;
                    ensure!(n == buf.len(), "{}: the archive ends inside a long name", g.name);
                    g.at += buf.len() as u64;
                    let s = &buf[..size as usize];
                    long_name =
                        Some(String::from_utf8_lossy(s.split(|&b| b == 0).next().unwrap_or_default()).into_owned());
                }
                b'x' | b'g' => {
                    ensure!(size <= MAX_META, "{}: a pax header of {size} bytes", g.name);
                    let mut buf = vec![0u8; size.div_ceil(BLOCK) as usize * BLOCK as usize];
                    let n = read_full(&mut g.reader, &mut buf)
                        .with_context(|| format!("{}: reading a pax header", g.name))?;
                    ensure!(n == buf.len(), "{}: the archive ends inside a pax header", g.name);
                    g.at += buf.len() as u64;
                    if buf.windows(10).any(|w| w == b"GNU.sparse") {
                        bail!(
                            "{}: a pax (GNU sparse 1.0) sparse member: only GNU/oldgnu sparse members (tar \
                             --format=oldgnu -S, as kiln writes) can be streamed; extract it first (tar -xSzf)",
                            g.name
                        );
                    }
                }
                b'S' if member.trim_start_matches("./") == MEMBER => {
                    g.sparse_map(&h, size)?;
                    return Ok(g);
                }
                b'0' | b'\0' | b'7' if member.trim_start_matches("./") == MEMBER => {
                    g.size = size;
                    g.regions = std::iter::once(0..size).filter(|r| !r.is_empty()).collect();
                    return Ok(g);
                }
                b'S' => {
                    bail!("{}: the sparse member {member:?} comes before {MEMBER}: not a GCE image", g.name);
                }
                _ => g.skip(size, &format!("member {member:?}"))?,
            }
        }
    }

    /// Reads the sparse map: four entries in the header, 21 in each extension header.
    fn sparse_map(&mut self, h: &[u8; BLOCK as usize], stored: u64) -> Result<()> {
        let real = number(&h[483..495]).with_context(|| format!("{}: the sparse header's real size", self.name))?;
        let mut entries = Vec::new();
        let mut read_entries = |area: &[u8], g: &Self| -> Result<()> {
            for e in area.chunks_exact(24) {
                if e.iter().all(|&b| b == 0) {
                    break;
                }
                let (off, len) = (number(&e[..12]), number(&e[12..]));
                let (Some(off), Some(len)) = (off, len) else {
                    bail!("{}: a sparse map entry is not a number", g.name)
                };
                entries.push((off, len));
            }
            Ok(())
        };
        read_entries(&h[386..482], self)?;
        let mut extended = h[482] != 0;
        let mut count = 0;
        while extended {
            count += 1;
            ensure!(count <= 1 << 20, "{}: more than a million sparse extension headers", self.name);
            let ext = self.read_block("a sparse extension header")?;
            read_entries(&ext[..504], self)?;
            extended = ext[504] != 0;
        }
        let mut regions = Vec::with_capacity(entries.len());
        let (mut end, mut total) = (0u64, 0u64);
        for (off, len) in entries {
            let stop = off.checked_add(len).filter(|&s| off >= end && s <= real);
            let Some(stop) = stop else {
                bail!("{}: sparse map entry {off}+{len} overlaps, is out of order, or beyond {real} bytes", self.name)
            };
            end = stop;
            total += len;
            if len > 0 {
                regions.push(off..stop);
            }
        }
        ensure!(
            total == stored,
            "{}: the sparse map holds {total} bytes, the header says {stored} are stored",
            self.name
        );
        self.size = real;
        self.regions = regions;
        self.sparse = true;
        Ok(())
    }

    /// Streams the member's data into the image, then the rest of the archive and of the gzip stream.
    pub(super) fn decode(mut self) -> Decode {
        Box::new(move |emit| {
            let mut buf = vec![0u8; MAX_CHUNK];
            for r in std::mem::take(&mut self.regions) {
                let mut at = r.start;
                while at < r.end {
                    let n = (r.end - at).min(MAX_CHUNK as u64) as usize;
                    let got = read_full(&mut self.reader, &mut buf[..n]).with_context(|| {
                        format!("{}: reading {MEMBER} at image byte {at} (archive byte {})", self.name, self.at)
                    })?;
                    ensure!(
                        got == n,
                        "{}: the archive ends inside {MEMBER} at image byte {}: it is truncated",
                        self.name,
                        at + got as u64
                    );
                    self.at += n as u64;
                    emit.put(at, &buf[..n])?;
                    at += n as u64;
                }
            }
            drain(&mut self.reader).with_context(|| format!("{}: reading the rest of the archive", self.name))?;
            let mut inner = self.reader.into_inner();
            drain(&mut inner).with_context(|| format!("{}: reading the end of the file", self.name))?;
            Ok(())
        })
    }
}
