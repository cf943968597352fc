//! Copying one file's bytes into an image at the places a plan gave them: the loop the ext4 and FAT writers
//! share. The sink must read as zeros where nothing is written, so holes in a host file are never read and
//! all-zero chunks are never written. A host file must hold the planned number of bytes when it is opened and
//! still when it has been copied; a file that changed size is refused, naming it.

use std::cell::RefCell;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::sink::WriteAt;
use crate::sparse::{DataRanges, read_full};

/// Largest single read or write of file data.
pub(crate) const CHUNK: usize = 1 << 20;

thread_local! {
    /// Each worker thread's read buffer, reused from file to file.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where a file's bytes come from: a view of a writer's own source type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    /// A file on the build host, read now.
    Host(&'a Path),
    /// Bytes in memory (as many as the file's size).
    Bytes(&'a [u8]),
}

/// One contiguous piece of a file in the sink: the file's next `len` bytes go at sink offset `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Byte offset in the sink.
    pub(crate) at: u64,
    /// Bytes of the file it holds.
    pub(crate) len: u64,
}

/// What can go wrong copying a file's bytes into an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A source file whose size changed between planning and writing.
    #[error("{}: changed while the image was written: planned {expected} bytes, found {found}", .path.display())]
    SourceChanged {
        /// The file.
        path: PathBuf,
        /// Size planned.
        expected: u64,
        /// Size found.
        found: u64,
    },
    /// Reading a source file failed.
    #[error("reading {} at offset {offset}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the file's bytes into the image failed.
    #[error("writing file data at image offset {offset}")]
    Write {
        /// Byte offset in the sink.
        offset: u64,
        /// Why.
        source: std::io::Error,
    },
}

/// Copies the `size` bytes of `data` into `sink`, in order into `pieces` (which cover the file: their lengths
/// add up to `size`), leaving out holes of a host file and chunks of zeros.
pub(crate) fn copy_file(
    data: Data<'_>,
    size: u64,
    pieces: impl IntoIterator<Item = Piece>,
    sink: &dyn WriteAt,
) -> Result<(), Error> {
    match data {
        Data::Bytes(bytes) => {
            debug_assert_eq!(bytes.len() as u64, size, "in-memory contents of the planned size");
            let mut logical = 0usize;
            for piece in pieces {
                let len = piece.len as usize;
                for (i, chunk) in bytes[logical..logical + len].chunks(CHUNK).enumerate() {
                    write_nonzero(sink, chunk, piece.at + (i * CHUNK) as u64)?;
                }
                logical += len;
            }
            Ok(())
        }
        Data::Host(path) => copy_host(path, size, pieces, sink),
    }
}

/// Writes `chunk` at `offset` unless it is all zeros (which the sink already reads there).
fn write_nonzero(sink: &dyn WriteAt, chunk: &[u8], offset: u64) -> Result<(), Error> {
    if chunk.iter().all(|&b| b == 0) {
        return Ok(());
    }
    sink.write_all_at(chunk, offset).map_err(|source| Error::Write { offset, source })
}

fn copy_host(path: &Path, size: u64, pieces: impl IntoIterator<Item = Piece>, sink: &dyn WriteAt) -> Result<(), Error> {
    let read_err = |offset: u64, source: std::io::Error| Error::Read { path: path.to_owned(), offset, source };
    let changed = |found: u64| Error::SourceChanged { path: path.to_owned(), expected: size, found };
    let file = File::open(path).map_err(|e| read_err(0, e))?;
    let meta = file.metadata().map_err(|e| read_err(0, e))?;
    if meta.len() != size {
        return Err(changed(meta.len()));
    }
    // Only a file with fewer blocks than bytes can have holes: ask for data ranges only then.
    let data: Vec<Range<u64>> = if meta.blocks() * 512 < size {
        DataRanges::new(&file).map_err(|e| read_err(0, e))?.collect::<Result<_, _>>().map_err(|e| read_err(0, e))?
    } else {
        std::iter::once(0..size).collect()
    };
    BUF.with_borrow_mut(|buf| -> Result<(), Error> {
        let mut logical = 0u64;
        for piece in pieces {
            let end = logical + piece.len;
            let mut pos = logical;
            while pos < end {
                let len = (end - pos).min(CHUNK as u64);
                let window = pos..pos + len;
                let at = piece.at + (pos - logical);
                pos += len;
                if !data.iter().any(|d| d.start < window.end && window.start < d.end) {
                    continue; // a hole in the source: zeros, already there
                }
                buf.resize(len as usize, 0);
                if !read_full(&file, buf, window.start).map_err(|e| read_err(window.start, e))? {
                    return Err(changed(window.start));
                }
                write_nonzero(sink, buf, at)?;
            }
            logical = end;
        }
        Ok(())
    })?;
    let after = file.metadata().map_err(|e| read_err(0, e))?.len();
    if after != size {
        return Err(changed(after));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemSink;

    /// A file of `len` bytes, none zero, and where `pieces` of `(at, len)` put it in a 16 MiB sink.
    fn copied(data: Data<'_>, size: u64, pieces: &[(u64, u64)]) -> Result<Vec<u8>, Error> {
        let sink = MemSink::new(16 << 20);
        copy_file(data, size, pieces.iter().map(|&(at, len)| Piece { at, len }), &sink)?;
        Ok(sink.into_inner())
    }

    #[test]
    fn pieces_get_the_file_in_order_from_memory_and_host() {
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let pieces = [(8 << 20, 1_000_000), (100, 1_000_000 - 5), (4 << 20, 1_000_005)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &bytes).unwrap();
        for data in [Data::Bytes(&bytes), Data::Host(&path)] {
            let img = copied(data, bytes.len() as u64, &pieces).unwrap();
            let mut logical = 0;
            for (at, len) in pieces {
                let (at, len) = (at as usize, len as usize);
                assert_eq!(img[at..at + len], bytes[logical..logical + len], "{data:?} at {at}");
                logical += len;
            }
            assert_eq!(img.iter().filter(|&&b| b != 0).count(), bytes.len(), "{data:?}: nothing else written");
        }
    }

    #[test]
    fn host_files_of_another_size_are_refused_and_read_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let err = copied(Data::Host(&path), 9, &[(0, 9)]).unwrap_err();
        assert!(matches!(err, Error::SourceChanged { expected: 9, found: 5, .. }), "{err}");
        assert!(err.to_string().starts_with(&format!("{}: changed while", path.display())), "{err}");
        let missing = dir.path().join("missing");
        let err = copied(Data::Host(&missing), 9, &[(0, 9)]).unwrap_err();
        assert!(matches!(err, Error::Read { offset: 0, .. }), "{err}");
        assert_eq!(err.to_string(), format!("reading {} at offset 0", missing.display()));
        let err = copied(Data::Bytes(b"x"), 1, &[(16 << 20, 1)]).unwrap_err();
        assert!(matches!(err, Error::Write { offset, .. } if offset == 16 << 20), "{err}");
    }
}
