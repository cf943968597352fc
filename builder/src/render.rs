//! How the command line shows progress: bars on a terminal, plain lines for logs, versioned JSON lines for
//! machines. The library only emits [`Event`]s; everything about presentation is here.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::progress::{Event, Phase, Progress};
use crate::report::REPORT_VERSION;
use crate::units::human_bytes;

/// Passes events on to a sink and remembers how long each phase took, for the summary at the end.
pub struct Timed {
    inner: Box<dyn Progress>,
    timings: Mutex<Vec<(Phase, Duration)>>,
}

impl std::fmt::Debug for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed").field("timings", &self.timings).finish_non_exhaustive()
    }
}

impl Timed {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: Box<dyn Progress>) -> Self {
        Self { inner, timings: Mutex::new(Vec::new()) }
    }

    /// The phases that ended and their times, in order.
    #[must_use]
    pub fn timings(&self) -> Vec<(Phase, Duration)> {
        self.timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Progress for Timed {
    fn event(&self, event: &Event) {
        if let Event::Finished { phase, elapsed, .. } = event {
            self.timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((*phase, *elapsed));
        }
        self.inner.event(event);
    }
}

/// Plain progress lines on stderr, for logs (CI, journald): phase starts and ends, and byte counts with the
/// rate and the time left at most once a second.
#[derive(Debug)]
pub struct Plain {
    start: Instant,
    /// When the last byte count was printed, and when the current phase started.
    state: Mutex<(Option<Instant>, Instant)>,
}

impl Plain {
    /// Starts the clock.
    #[must_use]
    pub fn new() -> Self {
        Self { start: Instant::now(), state: Mutex::new((None, Instant::now())) }
    }
}

impl Default for Plain {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Plain {
    fn event(&self, event: &Event) {
        let Ok(mut state) = self.state.lock() else { return };
        let (last, phase_start) = &mut *state;
        let t = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not fail the build.
        let _ = match event {
            Event::Started { phase } => {
                *phase_start = Instant::now();
                writeln!(err, "[{t:7.2}s] {}: started", phase.name())
            }
            Event::Finished { phase, elapsed, summary } => {
                *last = None;
                writeln!(err, "[{t:7.2}s] {}: done in {:.2}s: {summary}", phase.name(), elapsed.as_secs_f64())
            }
            Event::Advance { phase, done, total } => {
                let now = Instant::now();
                if last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(1)) && done < total {
                    return;
                }
                *last = Some(now);
                let pct = if *total == 0 { 100.0 } else { *done as f64 * 100.0 / *total as f64 };
                let secs = now.duration_since(*phase_start).as_secs_f64();
                let rate = if secs > 0.0 { *done as f64 / secs } else { 0.0 };
                let left = if rate > 0.0 && done < total {
                    format!(", {:.0}s left", (*total - *done) as f64 / rate)
                } else {
                    String::new()
                };
                writeln!(
                    err,
                    "[{t:7.2}s] {}: {} of {} ({pct:.0}%), {}/s{left}",
                    phase.name(),
                    human_bytes(*done),
                    human_bytes(*total),
                    human_bytes(rate as u64)
                )
            }
        };
    }
}

/// Versioned JSON lines on stdout, for machines; byte counts at most once a second (and the last one).
#[derive(Debug, Default)]
pub struct JsonLines {
    last: Mutex<Option<Instant>>,
}

impl Progress for JsonLines {
    fn event(&self, event: &Event) {
        let v = REPORT_VERSION;
        let line = match event {
            Event::Started { phase } => serde_json::json!({ "v": v, "type": "phase-start", "phase": phase }),
            Event::Finished { phase, elapsed, summary } => serde_json::json!({
                "v": v, "type": "phase-end", "phase": phase,
                "elapsed_ms": elapsed.as_millis() as u64, "summary": summary,
            }),
            Event::Advance { phase, done, total } => {
                let Ok(mut last) = self.last.lock() else { return };
                let now = Instant::now();
                if last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(1)) && done < total {
                    return;
                }
                *last = Some(now);
                serde_json::json!({ "v": v, "type": "progress", "phase": phase, "done": done, "total": total })
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

/// Bars on a terminal (stderr): a spinner per phase, a byte bar with rate and ETA where the phase counts bytes,
/// and one finished line per phase.
#[derive(Debug)]
pub struct Bars {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Bars {
    /// Bars on stderr.
    #[must_use]
    pub fn new() -> Self {
        Self { bar: Mutex::new(None) }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bars {
    fn event(&self, event: &Event) {
        use indicatif::{ProgressBar, ProgressStyle};
        let Ok(mut slot) = self.bar.lock() else { return };
        match event {
            Event::Started { phase } => {
                let bar = ProgressBar::new_spinner().with_message(phase.name());
                if let Ok(style) = ProgressStyle::with_template("{spinner} {msg:8} {elapsed}") {
                    bar.set_style(style);
                }
                bar.enable_steady_tick(Duration::from_millis(120));
                *slot = Some(bar);
            }
            Event::Advance { done, total, .. } => {
                if let Some(bar) = slot.as_ref() {
                    if bar.length() != Some(*total) {
                        let template = "{msg:8} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";
                        if let Ok(style) = ProgressStyle::with_template(template) {
                            bar.set_style(style.progress_chars("=> "));
                        }
                        bar.set_length(*total);
                    }
                    bar.set_position(*done);
                }
            }
            Event::Finished { phase, elapsed, summary } => {
                if let Some(bar) = slot.take() {
                    bar.finish_and_clear();
                }
                let _ = writeln!(std::io::stderr(), "✓ {:8} {:6.2}s  {summary}", phase.name(), elapsed.as_secs_f64());
            }
        }
    }
}
