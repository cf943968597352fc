//! Progress events. The library reports to a sink it does not own; the CLI decides how to show them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A pipeline phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Reading the toplevel and its bootspec.
    System,
    /// Finding the closure and inventorying its files.
    Closure,
    /// Hashing store paths that have no registered narHash.
    Hash,
    /// Planning the image: every offset, inode and block.
    Plan,
    /// Writing the image.
    Write,
    /// Hashing the store partition into its dm-verity tree (`efi-verity`).
    Verity,
    /// Turning the raw image into the output format.
    Format,
    /// Checksums and block maps of the outputs.
    Checksum,
    /// Reading written data back and comparing it (`kiln flash`).
    Verify,
    /// Writing the partition tables, last (`kiln flash`).
    Tables,
}

impl Phase {
    /// The phase's name as shown to people and machines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Closure => "closure",
            Self::Hash => "hash",
            Self::Plan => "plan",
            Self::Write => "write",
            Self::Verity => "verity",
            Self::Format => "format",
            Self::Checksum => "checksum",
            Self::Verify => "verify",
            Self::Tables => "tables",
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A phase began.
    Started {
        /// Which.
        phase: Phase,
    },
    /// A phase ended.
    Finished {
        /// Which.
        phase: Phase,
        /// How long it took.
        elapsed: Duration,
        /// One line saying what it found.
        summary: String,
    },
    /// Bytes processed within a phase (at most about ten a second, and always the last).
    Advance {
        /// Which.
        phase: Phase,
        /// Bytes done so far.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
}

/// Receives progress events; shared by worker threads.
pub trait Progress: Sync {
    /// Handles one event.
    fn event(&self, event: &Event);
}

/// Discards events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: &Event) {}
}

/// Runs `f` as `phase`, reporting its start and end; `summary` describes the result.
pub fn phase<T, E>(
    progress: &dyn Progress,
    phase: Phase,
    f: impl FnOnce() -> Result<T, E>,
    summary: impl FnOnce(&T) -> String,
) -> Result<T, E> {
    progress.event(&Event::Started { phase });
    let start = Instant::now();
    let value = f()?;
    progress.event(&Event::Finished { phase, elapsed: start.elapsed(), summary: summary(&value) });
    Ok(value)
}

/// Counts bytes done in a phase from any thread and reports them as [`Event::Advance`], at most every 100 ms
/// (and when the total is reached), so a sink sees a few events a second however small the steps are.
pub struct Meter<'a> {
    sink: &'a dyn Progress,
    phase: Phase,
    total: u64,
    done: AtomicU64,
    /// Milliseconds after `start` of the last report, plus one (0: none yet).
    last: AtomicU64,
    start: Instant,
}

impl std::fmt::Debug for Meter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("phase", &self.phase)
            .field("total", &self.total)
            .field("done", &self.done)
            .finish()
    }
}

impl<'a> Meter<'a> {
    /// A meter for `total` bytes of `phase`.
    #[must_use]
    pub fn new(sink: &'a dyn Progress, phase: Phase, total: u64) -> Self {
        Self { sink, phase, total, done: AtomicU64::new(0), last: AtomicU64::new(0), start: Instant::now() }
    }

    /// `bytes` more are done.
    pub fn add(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + 100 || (done >= self.total && bytes > 0);
        if due && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.sink.event(&Event::Advance { phase: self.phase, done: done.min(self.total), total: self.total });
        }
    }
}

impl kiln_formats::image::Progress for Meter<'_> {
    fn advance(&self, bytes: u64) {
        self.add(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Record(Mutex<Vec<Event>>);

    impl Progress for Record {
        fn event(&self, event: &Event) {
            self.0.lock().unwrap().push(event.clone());
        }
    }

    #[test]
    fn meter_reports_few_events_and_always_the_end() {
        let rec = Record::default();
        let meter = Meter::new(&rec, Phase::Write, 1_000_000);
        for _ in 0..1000 {
            meter.add(1000);
        }
        let events = rec.0.lock().unwrap();
        assert!(events.len() <= 3, "{} events for a fast phase", events.len());
        assert_eq!(events.last(), Some(&Event::Advance { phase: Phase::Write, done: 1_000_000, total: 1_000_000 }));
    }
}
