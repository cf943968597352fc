//! What runs behind the writer, on threads of its own: a flusher that makes each written window durable
//! (`fdatasync`) while the next one is being written, and a read-back that compares each window once it is
//! durable, bypassing the page cache. The writer hands over a window every `--sync-every` bytes and waits only
//! when two are still unflushed, so a slow USB stick bounds the dirty data instead of stalling at the end, and
//! flushing and reading back overlap writing.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::target::Target;
use super::uncached::{Mismatch, Uncached};
use super::written::Span;
use crate::progress::{Meter, Silent};

/// Windows written but not yet flushed that the writer may run ahead by.
const AHEAD: usize = 2;

/// What the read-back found.
#[derive(Debug, Default)]
pub struct ReadBack {
    /// The first piece that differs, if any.
    pub mismatch: Option<Mismatch>,
    /// Bytes compared.
    pub bytes: u64,
    /// Whether reads bypassed the page cache with `O_DIRECT`.
    pub direct: bool,
    /// Time spent reading back and comparing.
    pub busy: Duration,
}

/// The flusher and the read-back, running.
pub struct Behind<'scope> {
    to_flush: Option<SyncSender<Vec<Span>>>,
    flusher: ScopedJoinHandle<'scope, Result<()>>,
    reader: Option<ScopedJoinHandle<'scope, Result<ReadBack>>>,
}

impl std::fmt::Debug for Behind<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behind").finish_non_exhaustive()
    }
}

impl<'scope> Behind<'scope> {
    /// Starts the threads in `scope`; `verify` adds the read-back; `flip` is the test hook's offset.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        target: &'env Target,
        verify: bool,
        flip: Option<u64>,
    ) -> Self {
        let (to_flush, flushed_rx) = sync_channel::<Vec<Span>>(AHEAD);
        let (to_read, read_rx) = if verify {
            let (tx, rx) = sync_channel::<Vec<Span>>(AHEAD);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let flusher = scope.spawn(move || flush(target, &flushed_rx, to_read));
        let reader = read_rx.map(|rx| scope.spawn(move || read_back(target, &rx, flip)));
        Self { to_flush: Some(to_flush), flusher, reader }
    }

    /// A sender of windows for another thread (dropped before [`Behind::finish`]).
    ///
    /// # Panics
    /// Never: the sender is there until `finish`.
    #[must_use]
    pub fn sender(&self) -> SyncSender<Vec<Span>> {
        self.to_flush.clone().expect("the flusher's sender lives until finish")
    }

    /// Hands over a window of written spans: flushed, then read back. Blocks while [`AHEAD`] windows wait.
    ///
    /// # Errors
    /// When the flusher has stopped on an error (which [`Behind::finish`] then returns).
    pub fn window(&self, spans: Vec<Span>) -> Result<()> {
        let Some(tx) = &self.to_flush else { return Ok(()) };
        tx.send(spans).map_err(|_| anyhow::anyhow!("flushing the target stopped"))
    }

    /// Flushes the last window, waits for the read-back, and says what it found.
    ///
    /// # Errors
    /// A write error the flush reported, or a read error of the read-back.
    pub fn finish(mut self, last: Vec<Span>) -> Result<ReadBack> {
        let sent = self.window(last);
        drop(self.to_flush.take());
        let flushed = self.flusher.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the flusher panicked")));
        let read = match self.reader.take() {
            Some(r) => r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the read-back panicked")))?,
            None => ReadBack::default(),
        };
        flushed?;
        sent?;
        Ok(read)
    }
}

fn flush(target: &Target, rx: &Receiver<Vec<Span>>, to_read: Option<SyncSender<Vec<Span>>>) -> Result<()> {
    for spans in rx {
        target.sync()?;
        if let Some(tx) = &to_read {
            // A read-back that stopped has its reason in its own result.
            let _ = tx.send(spans);
        }
    }
    Ok(())
}

fn read_back(target: &Target, rx: &Receiver<Vec<Span>>, mut flip: Option<u64>) -> Result<ReadBack> {
    let reader = Uncached::open(&target.path, &target.file)?;
    let mut out = ReadBack { direct: reader.is_direct(), ..ReadBack::default() };
    let silent = Silent;
    let meter = Meter::new(&silent, crate::progress::Phase::Verify, u64::MAX);
    for mut spans in rx {
        if out.mismatch.is_some() {
            continue;
        }
        let start = Instant::now();
        spans.sort_unstable_by_key(|s| s.offset);
        if let Some(at) = flip
            && spans.iter().any(|s| (s.offset..s.offset + u64::from(s.len)).contains(&at))
        {
            super::test_hook_flip(target, at)?;
            flip = None;
        }
        out.mismatch = reader.compare(&spans, &meter).with_context(|| format!("reading back {}", target.shown()))?;
        out.bytes += spans.iter().map(|s| u64::from(s.len)).sum::<u64>();
        out.busy += start.elapsed();
    }
    Ok(out)
}
