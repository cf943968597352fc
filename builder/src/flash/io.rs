//! The writing thread: staged buffers are written while the next one is filled, so the source's checksums and
//! the record of what was written are computed while the device works. Windows go through the same thread to
//! the flusher, after every write before them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use anyhow::{Context, Result, anyhow};

use super::buf::{ALIGN, AlignedBuf, Bytes};
use super::target::Target;
use super::written::Span;

/// Buffers in the rotation: one being filled, one being written, one waiting.
const BUFFERS: usize = 3;

enum Job {
    Write { buf: AlignedBuf, at: u64, len: usize },
    Bytes { data: Bytes, at: u64 },
    Window(Vec<Span>),
}

/// The writing thread, running.
pub struct Io<'scope> {
    tx: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    handle: ScopedJoinHandle<'scope, Result<()>>,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").finish_non_exhaustive()
    }
}

impl<'scope> Io<'scope> {
    /// Starts it: buffers of `size` bytes; writes with `O_DIRECT` through `direct` where aligned, through the
    /// target's own descriptor otherwise; windows go to `windows`.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        target: &'env Target,
        direct: Option<File>,
        size: usize,
        windows: SyncSender<Vec<Span>>,
    ) -> Self {
        let (tx, rx) = sync_channel::<Job>(1);
        let (free_tx, free) = sync_channel::<AlignedBuf>(BUFFERS);
        for _ in 1..BUFFERS {
            let _ = free_tx.send(AlignedBuf::new(size));
        }
        let handle = scope.spawn(move || run(target, direct, &rx, &free_tx, &windows));
        Self { tx: Some(tx), free, handle }
    }

    /// A buffer to fill (waits while all are being written).
    ///
    /// # Errors
    /// When the writing thread has stopped.
    pub fn buffer(&self) -> Result<AlignedBuf> {
        self.free.recv().map_err(|_| anyhow!("the writing thread stopped"))
    }

    /// Writes `len` bytes of `buf` at `at`, behind the caller.
    ///
    /// # Errors
    /// When the writing thread has stopped (its error comes from [`Io::finish`]).
    pub fn write(&self, buf: AlignedBuf, at: u64, len: usize) -> Result<()> {
        self.send(Job::Write { buf, at, len })
    }

    /// Writes `data` at `at`, behind the caller; its buffer goes back to its pool once written.
    ///
    /// # Errors
    /// When the writing thread has stopped (its error comes from [`Io::finish`]).
    pub fn write_bytes(&self, data: Bytes, at: u64) -> Result<()> {
        self.send(Job::Bytes { data, at })
    }

    /// Hands a window to the flusher once everything before it is written.
    ///
    /// # Errors
    /// When the writing thread has stopped.
    pub fn window(&self, spans: Vec<Span>) -> Result<()> {
        self.send(Job::Window(spans))
    }

    fn send(&self, job: Job) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("the writing thread is finished"))?;
        tx.send(job).map_err(|_| anyhow!("the writing thread stopped"))
    }

    /// Waits for every write.
    ///
    /// # Errors
    /// The first write error.
    pub fn finish(mut self) -> Result<()> {
        drop(self.tx.take());
        self.handle.join().unwrap_or_else(|_| Err(anyhow!("the writing thread panicked")))
    }
}

fn run(
    target: &Target,
    mut direct: Option<File>,
    rx: &Receiver<Job>,
    free: &SyncSender<AlignedBuf>,
    windows: &SyncSender<Vec<Span>>,
) -> Result<()> {
    for job in rx {
        match job {
            Job::Window(spans) => windows.send(spans).map_err(|_| anyhow!("flushing the target stopped"))?,
            Job::Write { mut buf, at, len } => {
                write_at(target, &mut direct, &buf.slice(len)[..len], at)?;
                // The filler may have finished already.
                let _ = free.send(buf);
            }
            Job::Bytes { data, at } => write_at(target, &mut direct, &data, at)?,
        }
    }
    Ok(())
}

/// Writes `data` at `at`: the 4 KiB-aligned part with `O_DIRECT` where it can be, the rest through the target's
/// own descriptor.
fn write_at(target: &Target, direct: &mut Option<File>, data: &[u8], at: u64) -> Result<()> {
    let len = data.len();
    let aligned = if at.is_multiple_of(ALIGN) && (data.as_ptr() as u64).is_multiple_of(ALIGN) {
        len / ALIGN as usize * ALIGN as usize
    } else {
        0
    };
    let shown = || format!("writing {len} bytes at byte {at} of {}", target.shown());
    let mut done = 0;
    if aligned > 0
        && let Some(d) = direct
    {
        match d.write_all_at(&data[..aligned], at) {
            Ok(()) => done = aligned,
            // A filesystem that refuses direct writes after all: the page cache it is.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => *direct = None,
            Err(e) => return Err(e).with_context(shown),
        }
    }
    target.file.write_all_at(&data[done..], at + done as u64).with_context(shown)
}
