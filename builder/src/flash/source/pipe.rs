//! The stream's two ends: a reading thread decodes the source and hands the raw image's bytes to an
//! [`Emitter`], which cuts them into [`Chunk`]s around all-zero 4 KiB blocks and sends them through a bounded
//! channel; [`Piped`], the [`Stream`], receives them, checks their order and the block map's range checksums.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Result, anyhow, bail};

use super::bmap::RangeCheck;
use super::tally::Tally;
use super::{Chunk, Stream};
use crate::flash::buf::{Bytes, Pool};

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
    /// The chunks' buffers, back from the consumer once it is done with them.
    pool: Pool,
    /// The chunk being built.
    pending: Bytes,
    pending_off: u64,
    /// The block map's range checksums, checked by threads of their own as chunks leave.
    ranges: Option<Hashers>,
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
        // Enough buffers for the chunks in the channel, the one the consumer holds and those being written.
        let pool = Pool::new(MAX_CHUNK, IN_FLIGHT + 8);
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
            pending: pool.take(),
            pool,
            pending_off: 0,
        }
    }

    /// Checks that `len` bytes at `offset` may come now; their end.
    fn admit(&self, offset: u64, len: usize) -> Result<u64> {
        let end = offset.checked_add(len as u64).ok_or_else(|| anyhow!("{}: offset overflow", self.name))?;
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
        Ok(end)
    }

    /// The image's bytes at `offset`: at or after everything given before.
    ///
    /// # Errors
    /// Bytes out of order or beyond the image, data outside the block map, or the consumer gone.
    pub(super) fn put(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = self.admit(offset, data.len())?;
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

    /// The image's `len` bytes at `offset`, which `fill` reads straight into the chunk being built (no copy
    /// where `offset` is 4 KiB-aligned and they fit a chunk, else through [`Emitter::put`]).
    ///
    /// # Errors
    /// As [`Emitter::put`], and `fill`'s.
    pub(super) fn put_into(
        &mut self,
        offset: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let end = self.admit(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if !self.stage.is_empty() || !offset.is_multiple_of(BLOCK) || len > self.pool.size() {
            let mut bytes = vec![0u8; len];
            fill(&mut bytes)?;
            return self.put(offset, &bytes);
        }
        if !self.pending.is_empty()
            && (self.pending_off + self.pending.len() as u64 != offset || self.pending.room() < len)
        {
            self.flush()?;
        }
        if self.pending.is_empty() {
            self.pending_off = offset;
        }
        let start = self.pending.len();
        fill(self.pending.spare(len))?;
        self.pending.grow(len);
        self.next = end;
        // The runs of non-zero blocks among the new bytes (relative to `start`).
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut i = 0;
        while i < len {
            let n = (len - i).min(BLOCK as usize);
            if !is_zero(&self.pending[start + i..start + i + n]) {
                let at = offset + i as u64;
                self.check_allowed(at, at + n as u64)?;
                match runs.last_mut() {
                    Some(r) if r.end == i => r.end += n,
                    _ => runs.push(i..i + n),
                }
            }
            i += n;
        }
        if let [r] = runs.as_slice()
            && *r == (0..len)
        {
            if self.pending.len() >= MAX_CHUNK {
                self.flush()?;
            }
            return Ok(());
        }
        // Holes among them: the first run stays where it is when it continues the chunk; the others are copied
        // into chunks of their own, the last of them left to be continued.
        let kept = match runs.first() {
            Some(r) if r.start == 0 => {
                let r = runs.remove(0);
                start + r.end
            }
            _ => start,
        };
        let moved: Vec<(u64, Bytes)> = runs
            .iter()
            .map(|r| {
                let mut b = self.pool.take();
                b.extend_from_slice(&self.pending[start + r.start..start + r.end]);
                (offset + r.start as u64, b)
            })
            .collect();
        self.pending.truncate(kept);
        for (at, bytes) in moved {
            self.flush()?;
            self.pending = bytes;
            self.pending_off = at;
        }
        if self.pending.len() >= MAX_CHUNK {
            self.flush()?;
        }
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

    /// Non-zero bytes at `at..end` are an error outside the block map's ranges.
    fn check_allowed(&mut self, at: u64, end: u64) -> Result<()> {
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
        Ok(())
    }

    /// A block (or part of one): left out when all zeros, else added to the chunk.
    fn judge(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        if is_zero(bytes) {
            return self.flush();
        }
        let end = at + bytes.len() as u64;
        self.check_allowed(at, end)?;
        if !self.pending.is_empty()
            && (self.pending_off + self.pending.len() as u64 != at || self.pending.room() < bytes.len())
        {
            self.flush()?;
        }
        if self.pending.is_empty() {
            self.pending_off = at;
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
        let chunk = Chunk { offset: self.pending_off, data: std::mem::replace(&mut self.pending, self.pool.take()) };
        // The block map's checksums are computed by threads of their own, so neither the reading nor the
        // writing waits for them.
        if let Some(r) = &mut self.ranges {
            r.feed(chunk.offset, &chunk.data)?;
        }
        self.tx.send(Ok(Some(chunk))).map_err(|_| anyhow::Error::new(Hangup))
    }
}

/// Threads that check the block map's range checksums, each a share of the ranges, all fed every chunk (its
/// buffer shared, not copied).
struct Hashers {
    feeds: Vec<SyncSender<(u64, Bytes)>>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
    /// Set by a thread that found a mismatch.
    failed: Arc<AtomicBool>,
}

impl Hashers {
    /// One thread per core, at most 4 (sha256 runs at a GB/s or more a core: more is seldom needed).
    fn start(check: RangeCheck, name: &str) -> Result<Self> {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).clamp(1, 4);
        let failed = Arc::new(AtomicBool::new(false));
        let (mut feeds, mut threads) = (Vec::new(), Vec::new());
        for mut part in check.split(n) {
            let (tx, rx) = sync_channel::<(u64, Bytes)>(IN_FLIGHT + 1);
            let failed = Arc::clone(&failed);
            let thread = std::thread::Builder::new()
                .name("flash-bmap-sha256".into())
                .spawn(move || {
                    let mut result = Ok(());
                    for (offset, data) in rx {
                        if result.is_ok() {
                            result = part.feed(offset, &data);
                            if result.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    result.and_then(|()| part.finish())
                })
                .map_err(|e| anyhow!("{name}: starting a checksum thread: {e}"))?;
            feeds.push(tx);
            threads.push(thread);
        }
        Ok(Self { feeds, threads, failed })
    }

    /// Hands the image's bytes at `offset` to every thread; a mismatch found so far is the error.
    fn feed(&mut self, offset: u64, data: &Bytes) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return self.finish();
        }
        for tx in &self.feeds {
            // A thread that has stopped has an error, which finish gives.
            if tx.send((offset, data.share())).is_err() {
                return self.finish();
            }
        }
        Ok(())
    }

    /// Waits for every thread: the first mismatch, in the order of the ranges' threads.
    fn finish(&mut self) -> Result<()> {
        self.feeds.clear();
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().unwrap_or_else(|_| Err(anyhow!("a checksum thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
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
    emitter.ranges = setup.ranges.map(|r| Hashers::start(r, &setup.name)).transpose()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes read straight into chunks: holes among them are cut out (the runs after a hole moved into chunks
    /// of their own), data outside the block map is refused, and the result is the bytes given.
    #[test]
    fn bytes_read_into_chunks_are_cut_at_zero_blocks() {
        let b = BLOCK as usize;
        // Blocks: data, zero, data, data, zero, zero, data (partial at the end).
        let mut piece = vec![0u8; 6 * b + 100];
        for (i, fill) in [(0, 1u8), (2, 2), (3, 3), (6, 4)] {
            let end = ((i + 1) * b).min(piece.len());
            piece[i * b..end].fill(fill);
        }
        let (tx, rx) = sync_channel(64);
        let mut e = Emitter::new(tx, "test".into(), Some(1 << 30), None);
        // A first piece the second continues, then the piece with holes.
        e.put_into(0, 2 * b, |buf| {
            buf.fill(9);
            Ok(())
        })
        .unwrap();
        e.put_into(2 * BLOCK, piece.len(), |buf| {
            buf.copy_from_slice(&piece);
            Ok(())
        })
        .unwrap();
        e.finish().unwrap();
        drop(e);
        let chunks: Vec<(u64, Vec<u8>)> =
            rx.iter().map(|m| m.unwrap().unwrap()).map(|c| (c.offset, c.data.to_vec())).collect();
        let mut first = vec![9u8; 2 * b];
        first.extend_from_slice(&piece[..b]);
        assert_eq!(
            chunks,
            vec![(0, first), (4 * BLOCK, piece[2 * b..4 * b].to_vec()), (8 * BLOCK, piece[6 * b..].to_vec())]
        );
        for (at, data) in &chunks {
            assert!(data.len() <= MAX_CHUNK && !data.is_empty(), "chunk at {at}");
        }

        // The same with a block map that leaves out the last run: an error naming its bytes.
        let (tx, _rx) = sync_channel(64);
        let allowed: Arc<[Range<u64>]> = std::iter::once(0..8 * BLOCK).collect();
        let mut e = Emitter::new(tx, "disk.raw".into(), None, Some((allowed, "disk.raw.bmap".into())));
        let err = e
            .put_into(2 * BLOCK, piece.len(), |buf| {
                buf.copy_from_slice(&piece);
                Ok(())
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("image bytes 32768..32868 hold data but lie outside"), "{err:#}");
    }
}
