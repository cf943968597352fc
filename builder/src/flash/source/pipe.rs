//! The stream's two ends: a reading thread decodes the source and hands the raw image's bytes to an
//! [`Emitter`], which cuts them into [`Chunk`]s around all-zero 4 KiB blocks and sends them through a bounded
//! channel; [`Piped`], the [`Stream`], receives them, checks their order and the block map's range checksums.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Result, anyhow, bail};

use super::bmap::RangeCheck;
use super::tally::Tally;
use super::{Chunk, Stream};

/// Holes are found at this granularity, aligned to the image's offsets.
pub(super) const BLOCK: u64 = 4096;

/// The largest chunk.
pub(super) const MAX_CHUNK: usize = 4 << 20;

/// Chunks in flight between the reading thread and the consumer.
const IN_FLIGHT: usize = 3;

type Message = Result<Option<Chunk>>;

/// The error a reading thread returns when the consumer has gone: the stream was dropped, nobody listens.
#[derive(Debug)]
struct Hangup;

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream's reader was dropped")
    }
}

impl std::error::Error for Hangup {}

/// Whether `bytes` are all zeros.
pub(super) fn is_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(16);
    words.by_ref().all(|w| w.try_into().is_ok_and(|w: [u8; 16]| u128::from_ne_bytes(w) == 0))
        && words.remainder().iter().all(|&b| b == 0)
}

/// Cuts the raw image's bytes, given in increasing offset order, into chunks without all-zero blocks.
pub(super) struct Emitter {
    tx: SyncSender<Message>,
    name: Arc<str>,
    size: Option<u64>,
    /// Where data may be (a block map's ranges): non-zero bytes elsewhere are an error.
    allowed: Option<(Arc<[Range<u64>]>, String)>,
    allowed_at: usize,
    /// Offsets below this have been given.
    next: u64,
    /// A block given only in part so far.
    stage: Vec<u8>,
    stage_off: u64,
    /// The chunk being built.
    pending: Vec<u8>,
    pending_off: u64,
    /// The block map's range checksums, checked as chunks leave.
    ranges: Option<RangeCheck>,
}

impl Emitter {
    /// Bytes given beyond `size` are an error; with `allowed` (a block map's ranges, and its name) so are
    /// non-zero bytes outside them.
    fn new(
        tx: SyncSender<Message>,
        name: Arc<str>,
        size: Option<u64>,
        allowed: Option<(Arc<[Range<u64>]>, String)>,
    ) -> Self {
        Self {
            tx,
            name,
            size,
            allowed,
            allowed_at: 0,
            ranges: None,
            next: 0,
            stage: Vec::new(),
            stage_off: 0,
            pending: Vec::new(),
            pending_off: 0,
        }
    }

    /// The image's bytes at `offset`: at or after everything given before.
    ///
    /// # Errors
    /// Bytes out of order or beyond the image, data outside the block map, or the consumer gone.
    pub(super) fn put(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset.checked_add(data.len() as u64).ok_or_else(|| anyhow!("{}: offset overflow", self.name))?;
        if offset < self.next {
            bail!(
                "{}: image bytes {offset}..{end} come after bytes up to {} were given: the source is out of order",
                self.name,
                self.next
            );
        }
        if let Some(size) = self.size
            && end > size
        {
            bail!("{}: image bytes {offset}..{end} lie beyond the image's end at {size} bytes", self.name);
        }
        if !self.stage.is_empty() && self.stage_off + self.stage.len() as u64 != offset {
            self.close_stage()?;
        }
        let (mut at, mut rest) = (offset, data);
        while !rest.is_empty() {
            let block_end = (at / BLOCK + 1) * BLOCK;
            let n = rest.len().min(usize::try_from(block_end - at).unwrap_or(usize::MAX));
            if !self.stage.is_empty() || n < BLOCK as usize {
                if self.stage.is_empty() {
                    self.stage_off = at;
                }
                self.stage.extend_from_slice(&rest[..n]);
                if at + n as u64 == block_end {
                    self.close_stage()?;
                }
            } else {
                self.judge(at, &rest[..n])?;
            }
            at += n as u64;
            rest = &rest[n..];
        }
        self.next = end;
        Ok(())
    }

    /// Sends what is left: the last chunk.
    ///
    /// # Errors
    /// As [`Emitter::put`].
    pub(super) fn finish(&mut self) -> Result<()> {
        self.close_stage()?;
        self.flush()
    }

    fn close_stage(&mut self) -> Result<()> {
        if self.stage.is_empty() {
            return Ok(());
        }
        let stage = std::mem::take(&mut self.stage);
        let r = self.judge(self.stage_off, &stage);
        self.stage = stage;
        self.stage.clear();
        r
    }

    /// A block (or part of one): left out when all zeros, else added to the chunk.
    fn judge(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        if is_zero(bytes) {
            return self.flush();
        }
        let end = at + bytes.len() as u64;
        if let Some((ranges, bmap)) = &self.allowed {
            while ranges.get(self.allowed_at).is_some_and(|r| r.end <= at) {
                self.allowed_at += 1;
            }
            if !ranges.get(self.allowed_at).is_some_and(|r| r.start <= at && end <= r.end) {
                bail!(
                    "{}: image bytes {at}..{end} hold data but lie outside every range of the block map {bmap}: \
                     the block map does not belong to this image",
                    self.name
                );
            }
        }
        if !self.pending.is_empty() && self.pending_off + self.pending.len() as u64 != at {
            self.flush()?;
        }
        if self.pending.is_empty() {
            self.pending_off = at;
            self.pending.reserve(MAX_CHUNK);
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= MAX_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = Chunk { offset: self.pending_off, data: std::mem::take(&mut self.pending) };
        // The block map's checksums are computed here, on the reading thread, so the consumer's writing does
        // not wait for them.
        if let Some(r) = &mut self.ranges {
            r.feed(chunk.offset, &chunk.data)?;
        }
        self.tx.send(Ok(Some(chunk))).map_err(|_| anyhow::Error::new(Hangup))
    }
}

/// How the reading thread reads: the source decoded into the emitter, to the source's last byte.
pub(super) type Decode = Box<dyn FnOnce(&mut Emitter) -> Result<()> + Send>;

/// What the stream checks of the whole source file: its expected sha256 and where that came from.
#[derive(Debug, Clone)]
pub(super) struct FileCheck {
    pub(super) expected: String,
    pub(super) from: String,
}

/// What [`spawn`] needs besides the decoder.
pub(super) struct Setup {
    pub(super) name: String,
    pub(super) size: Option<u64>,
    pub(super) tally: Arc<Tally>,
    pub(super) file_check: Option<FileCheck>,
    pub(super) ranges: Option<RangeCheck>,
    /// A block map's byte ranges and its name: data outside them is an error.
    pub(super) allowed: Option<(Arc<[Range<u64>]>, String)>,
}

/// Starts the reading thread and returns the stream receiving from it.
///
/// # Errors
/// When the thread cannot be started.
pub(super) fn spawn(setup: Setup, decode: Decode) -> Result<Piped> {
    let (tx, rx) = sync_channel(IN_FLIGHT);
    let name: Arc<str> = setup.name.clone().into();
    let tally = Arc::clone(&setup.tally);
    let mut emitter = Emitter::new(tx.clone(), Arc::clone(&name), setup.size, setup.allowed);
    emitter.ranges = setup.ranges;
    let file_check = setup.file_check;
    std::thread::Builder::new()
        .name("flash-source".into())
        .spawn(move || {
            let result =
                decode(&mut emitter).and_then(|()| emitter.finish()).and_then(|()| match &mut emitter.ranges {
                    Some(r) => r.finish(),
                    None => Ok(()),
                });
            let result = result.and_then(|()| {
                let (Some(check), Some(actual)) = (file_check, tally.digest()) else { return Ok(()) };
                if actual != check.expected {
                    bail!(
                        "{name}: sha256 mismatch: the file's bytes hash to {actual}, {} says {}",
                        check.from,
                        check.expected
                    );
                }
                Ok(())
            });
            match result {
                Err(e) if e.is::<Hangup>() => {}
                // Nobody may be listening any more: nothing to do then.
                Err(e) => drop(tx.send(Err(e))),
                Ok(()) => drop(tx.send(Ok(None))),
            }
        })
        .map_err(|e| anyhow!("{}: starting the reading thread: {e}", setup.name))?;
    Ok(Piped { name: setup.name, rx, tally: setup.tally, size: setup.size, end: 0, state: State::Running })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Done,
    Failed,
}

/// The stream: chunks from the reading thread, checked.
pub(super) struct Piped {
    name: String,
    rx: Receiver<Message>,
    tally: Arc<Tally>,
    size: Option<u64>,
    /// The end of the last chunk.
    end: u64,
    state: State,
}

impl Piped {
    fn receive(&mut self) -> Result<Option<Chunk>> {
        let msg = self.rx.recv().map_err(|_| anyhow!("{}: the reading thread stopped unexpectedly", self.name))?;
        let Some(chunk) = msg? else { return Ok(None) };
        let range = chunk.range();
        if chunk.data.is_empty() || range.start < self.end || self.size.is_some_and(|s| range.end > s) {
            bail!("{}: chunk {}..{} out of order or beyond the image", self.name, range.start, range.end);
        }
        self.end = range.end;
        Ok(Some(chunk))
    }
}

impl Stream for Piped {
    fn next(&mut self) -> Result<Option<Chunk>> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => bail!("{}: the stream already failed", self.name),
            State::Running => {}
        }
        let r = self.receive();
        match &r {
            Ok(None) => self.state = State::Done,
            Err(_) => self.state = State::Failed,
            Ok(Some(_)) => {}
        }
        r
    }

    fn source_bytes(&self) -> u64 {
        self.tally.bytes()
    }
}
