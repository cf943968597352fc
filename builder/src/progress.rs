//! Progress events. The library reports to a sink it does not own; the CLI decides how to show them.

use std::time::Duration;

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
    let start = std::time::Instant::now();
    let value = f()?;
    progress.event(&Event::Finished { phase, elapsed: start.elapsed(), summary: summary(&value) });
    Ok(value)
}
