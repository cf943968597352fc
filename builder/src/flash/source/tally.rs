//! What the stream counts of the source as it is read: its bytes (for progress) and, when a checksum of the
//! whole file is to be checked, their sha256.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// Zeros hashed in place of holes that are not read.
pub(super) static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Source bytes read so far and, when wanted, their running sha256. Shared by the reading thread and the stream.
#[derive(Debug)]
pub(super) struct Tally {
    bytes: AtomicU64,
    hash: Option<Mutex<Sha256>>,
}

impl Tally {
    /// A tally that hashes when `hash`.
    pub(super) fn new(hash: bool) -> Arc<Self> {
        Arc::new(Self { bytes: AtomicU64::new(0), hash: hash.then(|| Mutex::new(Sha256::new())) })
    }

    /// Source bytes read (or passed over, for holes) so far.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the source's bytes are hashed.
    pub(super) fn hashing(&self) -> bool {
        self.hash.is_some()
    }

    /// `data`, the next bytes of the source, were read.
    pub(super) fn read(&self, data: &[u8]) {
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(h) = &self.hash {
            h.lock().unwrap_or_else(PoisonError::into_inner).update(data);
        }
    }

    /// `len` more source bytes were read, not hashed (positioned reads beside a hashing pass).
    pub(super) fn count(&self, len: u64) {
        self.bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// The next `len` bytes of the source are a hole (zeros), passed over without reading.
    pub(super) fn zeros(&self, mut len: u64) {
        self.bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(h) = &self.hash {
            let mut h = h.lock().unwrap_or_else(PoisonError::into_inner);
            while len > 0 {
                let n = len.min(ZEROS.len() as u64);
                h.update(&ZEROS[..n as usize]);
                len -= n;
            }
        }
    }

    /// The sha256 of everything read, in hex (once, at the end).
    pub(super) fn digest(&self) -> Option<String> {
        self.hash.as_ref().map(|h| {
            let h = std::mem::take(&mut *h.lock().unwrap_or_else(PoisonError::into_inner));
            kiln_formats::image::checksum::hex(&h.finalize().into())
        })
    }
}

/// A reader that tallies every byte it passes on.
pub(super) struct Tap<R> {
    inner: R,
    tally: Arc<Tally>,
}

impl<R> Tap<R> {
    pub(super) fn new(inner: R, tally: Arc<Tally>) -> Self {
        Self { inner, tally }
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.read(&buf[..n]);
        Ok(n)
    }
}

/// Reads until `buf` is full or the reader ends; the number of bytes read.
///
/// # Errors
/// What the reader returns (interruptions are retried).
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads `r` to its end, discarding the bytes (they are still tallied by a [`Tap`] below); how many there were.
///
/// # Errors
/// What the reader returns.
pub(super) fn drain(r: &mut impl Read) -> io::Result<u64> {
    io::copy(r, &mut io::sink())
}
