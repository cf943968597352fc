//! Positioned sinks: what writers write into. Writes at planned offsets need no shared cursor, so worker
//! threads write in parallel without locks.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Something that accepts writes at byte offsets from several threads at once.
pub trait WriteAt: Sync {
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl WriteAt for std::fs::File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
}

/// An in-memory image, for tests.
#[derive(Debug, Default)]
pub struct MemSink {
    data: Mutex<Vec<u8>>,
}

impl MemSink {
    /// An all-zero image of `len` bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        Self { data: Mutex::new(vec![0; len]) }
    }

    /// The bytes written.
    #[must_use]
    pub fn into_inner(self) -> Vec<u8> {
        self.data.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl WriteAt for MemSink {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset beyond memory"))?;
        let end = start + buf.len();
        if end > data.len() {
            return Err(io::Error::other(format!("write at {start}..{end} beyond the {}-byte image", data.len())));
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }
}
