//! sha256 of output files, and `SHA256SUMS` files that `sha256sum -c` checks.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::sparse::read_full;

/// Bytes read at a time.
const BUF: usize = 4 << 20;

/// The sha256 of all of `file`'s bytes (holes read as zeros), as lowercase hex. Reads with positioned reads
/// from offset 0, so the file's cursor does not matter; reading and hashing overlap on two threads.
///
/// # Errors
/// If reading fails.
pub fn sha256_file(file: &File) -> io::Result<String> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        empty_tx.send(vec![0; BUF]).map_err(io::Error::other)?;
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for (buf, n) in full_rx {
                h.update(&buf[..n]);
                // The reader may have stopped already; then the buffer is not needed.
                let _ = empty_tx.send(buf);
            }
            hex(&h.finalize().into())
        });
        let mut off = 0u64;
        let read = (|| {
            let len = file.metadata()?.len();
            while let Ok(mut buf) = empty_rx.recv() {
                let n = buf.len().min(len.saturating_sub(off) as usize);
                if !read_full(file, &mut buf[..n], off)? {
                    return Err(io::Error::other(format!("file shrank while reading {off}..{}", off + n as u64)));
                }
                if n == 0 {
                    break;
                }
                off += n as u64;
                if full_tx.send((buf, n)).is_err() {
                    break;
                }
            }
            Ok::<_, io::Error>(())
        })();
        drop(full_tx);
        let sum = hasher.join().map_err(|_| io::Error::other("the sha256 thread panicked"))?;
        read.map(|()| sum)
    })
}

/// The sha256 of the file at `path`, as lowercase hex.
///
/// # Errors
/// If the file cannot be opened or read; the message names the path.
pub fn sha256_path(path: &Path) -> io::Result<String> {
    File::open(path)
        .and_then(|f| sha256_file(&f))
        .map_err(|e| io::Error::new(e.kind(), format!("hashing {}: {e}", path.display())))
}

/// Lowercase hex of a sha256.
#[must_use]
pub fn hex(sum: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in sum {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The lines of a `SHA256SUMS` file, in the order added, exactly as `sha256sum` prints them (`<hex>  <name>`;
/// names with a backslash, newline or carriage return escaped and the line marked with a leading backslash),
/// so `sha256sum -c SHA256SUMS` checks them. [`fmt::Display`] gives the file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sha256Sums {
    entries: Vec<(String, String)>,
}

impl Sha256Sums {
    /// No entries.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name` (a path relative to where `sha256sum -c` will run) with its sha256 `digest` in hex.
    ///
    /// # Errors
    /// If `digest` is not 64 hex digits, or `name` is empty.
    pub fn push(&mut self, name: &str, digest: &str) -> io::Result<()> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::other(format!("{digest:?} is not a sha256 in hex (for {name:?})")));
        }
        if name.is_empty() {
            return Err(io::Error::other("a SHA256SUMS entry needs a file name"));
        }
        self.entries.push((name.to_owned(), digest.to_ascii_lowercase()));
        Ok(())
    }

    /// The entries, (name, digest), in order.
    #[must_use]
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}

impl fmt::Display for Sha256Sums {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, digest) in &self.entries {
            if name.contains(['\\', '\n', '\r']) {
                let escaped = name.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r");
                writeln!(f, "\\{digest}  {escaped}")?;
            } else {
                writeln!(f, "{digest}  {name}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn hashes_files_with_holes() {
        struct Case {
            name: &'static str,
            len: u64,
            writes: &'static [(u64, &'static [u8])],
        }
        let cases = [
            Case { name: "empty", len: 0, writes: &[] },
            Case { name: "abc", len: 3, writes: &[(0, b"abc")] },
            Case { name: "holes across buffers", len: 3 * BUF as u64 + 17, writes: &[(BUF as u64 - 1, b"xy")] },
        ];
        for c in cases {
            let f = tempfile::tempfile().unwrap();
            f.set_len(c.len).unwrap();
            let mut want = vec![0u8; c.len as usize];
            for &(off, data) in c.writes {
                f.write_all_at(data, off).unwrap();
                want[off as usize..off as usize + data.len()].copy_from_slice(data);
            }
            assert_eq!(sha256_file(&f).unwrap(), hex(&Sha256::digest(&want).into()), "{}", c.name);
        }
    }

    #[test]
    fn known_digest() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        assert_eq!(sha256_file(&f).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn sums_lines() {
        let d = "a".repeat(64);
        let mut s = Sha256Sums::new();
        s.push("disk.raw.zst", &d).unwrap();
        s.push("odd\\name\nx\r", &d.to_uppercase()).unwrap();
        assert_eq!(s.to_string(), format!("{d}  disk.raw.zst\n\\{d}  odd\\\\name\\nx\\r\n"));
        assert!(s.push("x", "abc").is_err());
        assert!(s.push("", &d).is_err());
    }
}
