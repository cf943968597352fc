//! What `kiln flash` reads: a kiln output (raw, raw.zst, qcow2, fixed VHD, stream-optimized VMDK, a GCE
//! `*.raw.tar.gz`) from a file or an `http://`/`https://` URL, as a stream of data chunks of the raw disk image in
//! increasing offset order. Never expanded to a temporary file, never downloaded to disk first.
//!
//! Checksums are checked by the stream itself while it is read: the source file's sha256 (`--sha256`, or a
//! `.sha256` file beside it) over every byte of the source as read, and the bmap's per-range sha256s over the
//! raw image's bytes. A mismatch is an error from [`Stream::next`] — at the latest from the call that would
//! return `None` — so a caller that writes partition tables only after the end has been reached never writes
//! them for a corrupt source.

mod bmap;
mod gce;
mod http;
mod pipe;
mod qcow2;
mod raw;
mod side;
mod sniff;
mod sums;
mod tally;
mod vhd;
mod vmdk;
mod zst;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

pub use super::buf::Bytes;

use self::bmap::{Bmap, RangeCheck};
use self::pipe::{Decode, FileCheck, Setup};
use self::tally::{Tally, Tap, read_full};

/// Bytes of the raw disk image at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset in the raw disk image.
    pub offset: u64,
    /// The bytes (never empty), in a 4 KiB-aligned buffer when `offset` is 4 KiB-aligned.
    pub data: Bytes,
}

impl Chunk {
    /// The bytes of the image it covers.
    #[must_use]
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.data.len() as u64
    }
}

/// The raw image's data, in order.
pub trait Stream: Send {
    /// The next chunk: offsets strictly increasing, chunks never overlapping, every chunk within the image's
    /// size. Bytes no chunk covers are zeros. All-zero 4 KiB-aligned blocks may be left out (they are holes).
    /// `Ok(None)` once the whole source has been read and every checksum matched.
    ///
    /// # Errors
    /// Reading, decoding, or a checksum mismatch (naming the source, what was expected and what was found).
    fn next(&mut self) -> Result<Option<Chunk>>;

    /// Source bytes read so far (compressed bytes for a compressed source): for progress.
    fn source_bytes(&self) -> u64;
}

/// What kind of file the source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// A raw disk image.
    Raw,
    /// A raw disk image compressed with zstd.
    RawZst,
    /// qcow2 (uncompressed, zstd or zlib clusters).
    Qcow2,
    /// A fixed VHD (raw + 512-byte footer).
    Vhd,
    /// A stream-optimized VMDK.
    Vmdk,
    /// A GCE image: a gzipped tar holding `disk.raw`.
    Gce,
}

/// How a checksum was established, for the dry run and the summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// `sha256 of the source`, `bmap range checksums`, …
    pub what: String,
    /// Where the expected value came from: `--sha256`, `disk.raw.zst.sha256`, `disk.raw.bmap`.
    pub from: String,
}

/// An opened source.
pub struct Opened {
    /// The source as the user named it (path or URL), for messages.
    pub name: String,
    /// What it is.
    pub format: SourceFormat,
    /// The raw disk image's size, when the source says it before its data (file size of a raw, qcow2/VMDK
    /// header, tar header, the bmap's `ImageSize`, the zstd frame's content size).
    pub size: Option<u64>,
    /// The byte ranges of the raw image that may hold data, when known before streaming (a bmap, the qcow2
    /// tables, the tar's sparse map, `SEEK_DATA` of a local raw file): sorted, disjoint.
    pub map: Option<Vec<Range<u64>>>,
    /// The bmap used, if any (path or URL).
    pub bmap: Option<String>,
    /// The checksums the stream checks.
    pub checks: Vec<Check>,
    /// A local source file (for the "source is on the target" refusal); `None` for a URL.
    pub local: Option<PathBuf>,
    /// The data.
    pub stream: Box<dyn Stream>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("size", &self.size)
            .field("bmap", &self.bmap)
            .field("checks", &self.checks)
            .finish_non_exhaustive()
    }
}

/// What the user asked of the source.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A path or an `http://`/`https://` URL.
    pub source: String,
    /// `--sha256 HEX`: the source file's expected sha256 (takes the place of a `.sha256` beside it).
    pub sha256: Option<String>,
    /// `--bmap PATH|URL`: the block map to use instead of looking beside the source.
    pub bmap: Option<String>,
    /// `--no-bmap`: ignore any block map.
    pub no_bmap: bool,
}

/// Opens a source: sniffs its format from its first bytes, finds its `.bmap` and `.sha256` beside it (for a
/// URL: fetched the same way, absent on 404), reads what the format says up front (size, allocation map).
///
/// # Errors
/// When the source cannot be opened or read, is no image kiln writes (naming what it is), a side file is
/// malformed, or a given `--sha256` is not 64 hex digits.
pub fn open(req: &Request) -> Result<Opened> {
    let name = req.source.clone();
    let url = http::is_url(&name);
    let explicit = req.sha256.as_deref().map(|h| sums::normalize(h, "--sha256")).transpose()?;
    let bmap = if req.no_bmap {
        None
    } else if let Some(at) = &req.bmap {
        let bytes = side::read(at)?.ok_or_else(|| anyhow!("--bmap {at}: no such file"))?;
        Some((at.clone(), bytes))
    } else {
        side::find_bmap(&name, url)?
    };
    let bmap = bmap.map(|(at, bytes)| bmap::parse(&bytes, &at).map(|b| (at, b))).transpose()?;
    let sums_file = if explicit.is_some() { None } else { side::find_sha256(&name, url)? };
    let file_check = |skip_side: bool| -> Result<Option<FileCheck>> {
        if let Some(expected) = &explicit {
            return Ok(Some(FileCheck { expected: expected.clone(), from: "--sha256".to_owned() }));
        }
        match &sums_file {
            Some((at, bytes)) if !skip_side => {
                let expected = sums::lookup(bytes, &side::file_name(&name, url), at)?;
                Ok(Some(FileCheck { expected, from: at.clone() }))
            }
            _ => Ok(None),
        }
    };
    let parts = if url { open_url(&name, file_check(false)?)? } else { open_local(&name, bmap.as_ref(), file_check)? };
    finish(name, url, bmap, parts)
}

/// What a format's opener found.
struct Parts {
    format: SourceFormat,
    size: Option<u64>,
    map: Option<Vec<Range<u64>>>,
    tally: Arc<Tally>,
    file_check: Option<FileCheck>,
    decode: Decode,
}

/// Checks the block map against the source and starts the stream.
fn finish(name: String, url: bool, bmap: Option<(String, Bmap)>, parts: Parts) -> Result<Opened> {
    let mut checks = Vec::new();
    if let Some(c) = &parts.file_check {
        checks.push(Check { what: "sha256 of the source".to_owned(), from: c.from.clone() });
    }
    let (mut size, mut map, mut ranges, mut allowed) = (parts.size, parts.map, None, None);
    if let Some((at, b)) = &bmap {
        if let Some(s) = size
            && s != b.image_size
        {
            bail!("{name}: the block map {at} is for an image of {} bytes, the source holds {s}", b.image_size);
        }
        size = Some(b.image_size);
        let m = b.map();
        allowed = Some((Arc::from(m.clone()), at.clone()));
        map = Some(m);
        if b.ranges.iter().any(|r| r.sha256.is_some()) {
            checks.push(Check { what: "bmap range checksums".to_owned(), from: at.clone() });
            ranges = Some(RangeCheck::new(b, &name, at));
        }
    }
    let setup = Setup { name: name.clone(), size, tally: parts.tally, file_check: parts.file_check, ranges, allowed };
    let stream = pipe::spawn(setup, parts.decode)?;
    Ok(Opened {
        local: (!url).then(|| PathBuf::from(&name)),
        name,
        format: parts.format,
        size,
        map,
        bmap: bmap.map(|(at, _)| at),
        checks,
        stream: Box::new(stream),
    })
}

/// A URL: one GET, sniffed from the body's first bytes, streamed through the decoder.
fn open_url(name: &str, file_check: Option<FileCheck>) -> Result<Parts> {
    let tally = Tally::new(file_check.is_some());
    let (body, _) = http::get(name)?.ok_or_else(|| anyhow!("GET {name}: HTTP 404 Not Found"))?;
    let mut tap = Tap::new(body, Arc::clone(&tally));
    let mut head = vec![0u8; sniff::HEAD];
    let n = read_full(&mut tap, &mut head).with_context(|| format!("GET {name}: reading the first bytes"))?;
    head.truncate(n);
    let format = sniff::sniff(&head, name)?;
    let seq: Box<dyn Read + Send> = Box::new(Cursor::new(head.clone()).chain(tap));
    let owned = name.to_owned();
    let (size, map, decode) = match format {
        SourceFormat::Raw | SourceFormat::Vhd => (None, None, raw::sequential(seq, owned)),
        SourceFormat::RawZst => (zst::content_size(&head), None, zst::decode(seq, owned)),
        SourceFormat::Qcow2 => bail!(
            "{name}: a qcow2 image needs random access, which an HTTP download does not give: serve the image as              raw.zst (kiln build --format raw-zst) and flash that URL, or download the qcow2 first"
        ),
        SourceFormat::Vmdk => {
            let h = vmdk::header(&head, name)?;
            (Some(h.size), None, vmdk::decode(seq, h, owned))
        }
        SourceFormat::Gce => gce_parts(seq, owned)?,
    };
    Ok(Parts { format, size, map, tally, file_check, decode })
}

/// What a sequential format's opener gives: the image size and map when known, and the decoder.
type Opening = (Option<u64>, Option<Vec<Range<u64>>>, Decode);

fn gce_parts(seq: Box<dyn Read + Send>, name: String) -> Result<Opening> {
    let g = gce::Gce::open(seq, name)?;
    let map = g.sparse.then(|| g.regions.clone());
    Ok((Some(g.size), map, g.decode()))
}

/// A local file (or block device).
fn open_local(
    name: &str,
    bmap: Option<&(String, Bmap)>,
    file_check: impl Fn(bool) -> Result<Option<FileCheck>>,
) -> Result<Parts> {
    let mut file = File::open(name).with_context(|| format!("{name}: cannot open it"))?;
    let meta = file.metadata().with_context(|| format!("{name}: reading its metadata"))?;
    if meta.is_dir() {
        bail!("{name}: a directory, not an image");
    }
    let file_len = file.seek(SeekFrom::End(0)).with_context(|| format!("{name}: cannot find its size"))?;
    let mut head = vec![0u8; sniff::HEAD.min(usize::try_from(file_len).unwrap_or(usize::MAX))];
    if !kiln_formats::sparse::read_full(&file, &mut head, 0)
        .with_context(|| format!("{name}: reading its first bytes"))?
    {
        bail!("{name}: the file shrank while its first bytes were read");
    }
    let mut format = sniff::sniff(&head, name)?;
    let mut image_size = file_len;
    if format == SourceFormat::Raw && file_len >= 2 * vhd::FOOTER {
        let mut tail = [0u8; vhd::FOOTER as usize];
        let at = file_len - vhd::FOOTER;
        if !kiln_formats::sparse::read_full(&file, &mut tail, at)
            .with_context(|| format!("{name}: reading byte {at}"))?
        {
            bail!("{name}: the file shrank while its last bytes were read");
        }
        if let Some(size) = vhd::fixed_size(&tail, name)? {
            if size != at {
                bail!("{name}: the fixed VHD footer says the disk is {size} bytes, the file holds {at} before it");
            }
            format = SourceFormat::Vhd;
            image_size = at;
        }
    }
    let owned = name.to_owned();
    if matches!(format, SourceFormat::Raw | SourceFormat::Vhd) {
        // With a block map's checksums the block map's ranges alone are read and checked; hashing the whole
        // file would read every hole. An explicit --sha256 still reads and hashes it all.
        let bmap_checked = bmap.is_some_and(|(_, b)| b.has_checksums());
        let file_check = file_check(bmap_checked)?;
        let tally = Tally::new(file_check.is_some());
        let data = raw::data_ranges(&file, image_size, name)?;
        let read = match bmap {
            Some((_, b)) if file_check.is_none() => b.map(),
            _ => data.clone(),
        };
        let decode = raw::local(file, owned, image_size, file_len, read, Arc::clone(&tally));
        return Ok(Parts { format, size: Some(image_size), map: Some(data), tally, file_check, decode });
    }
    let file_check = file_check(false)?;
    let tally = Tally::new(file_check.is_some());
    if format == SourceFormat::Qcow2 {
        let q = qcow2::Qcow2::open(file, owned, file_len, &head)?;
        let (size, map) = (q.size, q.map()?);
        return Ok(Parts {
            format,
            size: Some(size),
            map: Some(map),
            decode: q.decode(Arc::clone(&tally)),
            tally,
            file_check,
        });
    }
    file.seek(SeekFrom::Start(0)).with_context(|| format!("{name}: seeking to its start"))?;
    let seq: Box<dyn Read + Send> = Box::new(Tap::new(file, Arc::clone(&tally)));
    let (size, map, decode) = match format {
        SourceFormat::RawZst => (zst::content_size(&head), None, zst::decode(seq, owned)),
        SourceFormat::Vmdk => {
            let h = vmdk::header(&head, name)?;
            (Some(h.size), None, vmdk::decode(seq, h, owned))
        }
        _ => gce_parts(seq, owned)?,
    };
    Ok(Parts { format, size, map, tally, file_check, decode })
}
