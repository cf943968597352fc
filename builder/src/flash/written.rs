//! What was written to the target, remembered for the read-back: a 64-bit hash of every piece, cut at 4 KiB
//! boundaries (16 bytes per 4 KiB of data: 4 MiB per GiB), so a mismatch is found to its block; the bytes
//! themselves are not kept.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use kiln_formats::sink::WriteAt;
use xxhash_rust::xxh3::xxh3_64;

/// Granularity of the record.
pub const BLOCK: u64 = 4096;

/// One piece written: at most one 4 KiB-aligned block's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Byte offset on the target.
    pub offset: u64,
    /// Length (1 to [`BLOCK`]).
    pub len: u32,
    /// xxh3-64 of the bytes.
    pub hash: u64,
}

/// The record of what was written, in any order.
#[derive(Debug, Default)]
pub struct Written {
    spans: Vec<Span>,
    bytes: u64,
}

impl Written {
    /// Records `data` written at `offset`.
    pub fn record(&mut self, offset: u64, data: &[u8]) {
        let mut at = 0usize;
        while at < data.len() {
            let off = offset + at as u64;
            let n = ((BLOCK - off % BLOCK) as usize).min(data.len() - at);
            self.spans.push(Span { offset: off, len: n as u32, hash: xxh3_64(&data[at..at + n]) });
            at += n;
        }
        self.bytes += data.len() as u64;
    }

    /// Adds another record's spans.
    pub fn extend(&mut self, other: Self) {
        self.spans.extend(other.spans);
        self.bytes += other.bytes;
    }

    /// Bytes recorded.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The spans, sorted by offset.
    #[must_use]
    pub fn sorted(mut self) -> Vec<Span> {
        self.spans.sort_unstable_by_key(|s| s.offset);
        self.spans
    }
}

/// A sink that writes to the target at absolute offsets and records what it wrote (for writers from
/// `kiln_formats`, which may write from several threads).
#[derive(Debug)]
pub struct Recorder<'a> {
    file: &'a File,
    written: Mutex<Written>,
}

impl<'a> Recorder<'a> {
    /// Writes go to `file`.
    #[must_use]
    pub fn new(file: &'a File) -> Self {
        Self { file, written: Mutex::new(Written::default()) }
    }

    /// What was written.
    #[must_use]
    pub fn into_written(self) -> Written {
        self.written.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl WriteAt for Recorder<'_> {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        FileExt::write_all_at(self.file, buf, offset)?;
        let mut part = Written::default();
        part.record(offset, buf);
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(part);
        Ok(())
    }
}
