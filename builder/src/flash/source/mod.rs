//! What `kiln flash` reads: a kiln output (raw, raw.zst, qcow2, fixed VHD, stream-optimized VMDK, a GCE
//! `*.raw.tar.gz`) from a file or an `http://`/`https://` URL, as a stream of data chunks of the raw disk image in
//! increasing offset order. Never expanded to a temporary file, never downloaded to disk first.
//!
//! Checksums are checked by the stream itself while it is read: the source file's sha256 (`--sha256`, or a
//! `.sha256` file beside it) over every byte of the source as read, and the bmap's per-range sha256s over the
//! raw image's bytes. A mismatch is an error from [`Stream::next`] — at the latest from the call that would
//! return `None` — so a caller that writes partition tables only after the end has been reached never writes
//! them for a corrupt source.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::Result;

/// Bytes of the raw disk image at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset in the raw disk image.
    pub offset: u64,
    /// The bytes (never empty).
    pub data: Vec<u8>,
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
    let _ = req;
    anyhow::bail!("flash sources are not built yet")
}
