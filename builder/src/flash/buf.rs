//! Buffers the data travels in: 4 KiB-aligned, so a chunk read from the source can be written to the target
//! with `O_DIRECT` as it is, and reused through a [`Pool`], so the memory is mapped once, not once per chunk.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

/// Alignment of direct reads and writes (the largest logical sector size).
pub const ALIGN: u64 = 4096;

/// A buffer whose usable part starts on a 4 KiB boundary, as `O_DIRECT` needs.
#[derive(Debug, Clone)]
pub struct AlignedBuf {
    raw: Vec<u8>,
}

impl AlignedBuf {
    /// Room for `len` aligned bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        Self { raw: vec![0; len + ALIGN as usize] }
    }

    /// How many aligned bytes it holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.raw.len() - self.skip()
    }

    fn skip(&self) -> usize {
        self.raw.as_ptr().align_offset(ALIGN as usize)
    }

    /// The aligned bytes, `len` of them (grown when needed).
    pub fn slice(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < len + ALIGN as usize {
            self.raw = vec![0; len + ALIGN as usize];
        }
        let skip = self.skip();
        &mut self.raw[skip..skip + len]
    }

    /// The first `len` aligned bytes.
    ///
    /// # Panics
    /// When it holds fewer.
    #[must_use]
    pub fn get(&self, len: usize) -> &[u8] {
        let skip = self.skip();
        &self.raw[skip..skip + len]
    }

    /// All its aligned bytes, never grown.
    pub fn all_mut(&mut self) -> &mut [u8] {
        let skip = self.skip();
        &mut self.raw[skip..]
    }
}

/// Buffers of one size, kept for reuse when the [`Bytes`] holding them are dropped.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    size: usize,
    keep: usize,
    free: Mutex<Vec<AlignedBuf>>,
}

impl Pool {
    /// Buffers of `size` aligned bytes; at most `keep` are kept when unused.
    #[must_use]
    pub fn new(size: usize, keep: usize) -> Self {
        Self { inner: Arc::new(Shared { size, keep, free: Mutex::new(Vec::new()) }) }
    }

    /// The size of its buffers.
    #[must_use]
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// An empty [`Bytes`] over a free buffer (a new one when none is free).
    #[must_use]
    pub fn take(&self) -> Bytes {
        let free = self.inner.free.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let buf = free.unwrap_or_else(|| AlignedBuf::new(self.inner.size));
        Bytes { buf: Some(Arc::new(buf)), start: 0, end: 0, pool: Some(self.clone()) }
    }

    fn give(&self, buf: AlignedBuf) {
        let mut free = self.inner.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.inner.keep {
            free.push(buf);
        }
    }
}

/// Bytes in an aligned buffer, from `start` to `end` of it, which [`Bytes::share`] lets several threads read;
/// the buffer goes back to its pool when the last of them is dropped.
#[derive(Debug)]
pub struct Bytes {
    buf: Option<Arc<AlignedBuf>>,
    start: usize,
    end: usize,
    pool: Option<Pool>,
}

impl Bytes {
    /// `data` copied into a buffer of its own (no pool).
    #[must_use]
    pub fn copy_of(data: &[u8]) -> Self {
        let mut buf = AlignedBuf::new(data.len());
        buf.slice(data.len()).copy_from_slice(data);
        Self { buf: Some(Arc::new(buf)), start: 0, end: data.len(), pool: None }
    }

    /// The same bytes, sharing the buffer (no copy).
    #[must_use]
    pub fn share(&self) -> Self {
        Self { buf: self.buf.clone(), start: self.start, end: self.end, pool: self.pool.clone() }
    }

    /// Room left after the bytes, in the buffer.
    #[must_use]
    pub fn room(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.capacity() - self.end)
    }

    /// The `n` bytes after the current ones, to fill; [`Bytes::grow`] then makes them part of them.
    ///
    /// # Panics
    /// When there is less [`Bytes::room`].
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        let end = self.end;
        match &mut self.buf {
            // Copied first should the buffer be shared (it is not while bytes are added).
            Some(b) => &mut Arc::make_mut(b).all_mut()[end..end + n],
            None => &mut [],
        }
    }

    /// Makes the next `n` bytes of the buffer (filled through [`Bytes::spare`]) part of them.
    pub fn grow(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.buf.as_ref().is_some_and(|b| b.capacity() >= self.end));
    }

    /// Appends `data` (which must fit in the [`Bytes::room`]).
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.spare(data.len()).copy_from_slice(data);
        self.grow(data.len());
    }

    /// Keeps the first `n` bytes only.
    pub fn truncate(&mut self, n: usize) {
        self.end = self.end.min(self.start + n);
    }

    /// Drops the first `n` bytes.
    pub fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Whether the bytes start on a 4 KiB boundary in memory (they can be written with `O_DIRECT`).
    #[must_use]
    pub fn is_aligned(&self) -> bool {
        (self.start as u64).is_multiple_of(ALIGN)
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b.get(self.end)[self.start..])
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

impl Clone for Bytes {
    fn clone(&self) -> Self {
        Self::copy_of(self)
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let (Some(pool), Some(buf)) = (&self.pool, self.buf.take())
            && let Some(buf) = Arc::into_inner(buf)
        {
            pool.give(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_fill_trim_and_return_to_their_pool() {
        let pool = Pool::new(3 * ALIGN as usize, 1);
        let mut b = pool.take();
        assert!(b.is_empty() && b.room() >= 3 * ALIGN as usize);
        b.spare(5).copy_from_slice(b"hello");
        b.grow(5);
        b.extend_from_slice(b" world");
        assert_eq!(&*b, b"hello world");
        assert_eq!(b.as_ptr() as usize % ALIGN as usize, 0);
        b.advance(6);
        assert_eq!(&*b, b"world");
        assert!(!b.is_aligned());
        b.truncate(3);
        assert_eq!(&*b, b"wor");
        let at = b.buf.as_ref().map(|x| x.get(1).as_ptr());
        // Not back while shared.
        let shared = b.share();
        drop(b);
        assert_eq!(&*shared, b"wor");
        assert_eq!(pool.inner.free.lock().map(|f| f.len()).ok(), Some(0));
        drop(shared);
        // The buffer comes back; a second one is not kept.
        let (c, d) = (pool.take(), pool.take());
        assert_eq!(Some(c.buf.as_ref().map(|x| x.get(1).as_ptr())), Some(at));
        assert!(c.is_empty() && d.is_empty());
        drop((c, d));
        assert_eq!(pool.inner.free.lock().map(|f| f.len()).ok(), Some(1));
        assert_eq!(Bytes::copy_of(b"abc").clone(), Bytes::copy_of(b"abc"));
    }
}
