//! NAR serialisation, for the narHash and narSize a Nix database records for every store path.
//!
//! The stream (Nix's `nix-archive-1`) is produced from a [`PathInventory`], never from a second directory walk:
//! the inventory already lists every entry in NAR order. [`NarWriter`] is a state machine fed in that order —
//! [`entry`](NarWriter::entry) for each entry, then, for a regular file, its contents as they are read
//! ([`file_chunk`](NarWriter::file_chunk), [`file_zeros`](NarWriter::file_zeros) for holes) and
//! [`end_file`](NarWriter::end_file). So a writer that reads every file once anyway (the image's data pass) can
//! hash in that same pass; [`nar_info`] and [`hash_closure`] read the files themselves.
//!
//! Format: `str(s)` is the length as u64 little-endian, the bytes, and zero padding to a multiple of 8. The
//! archive is `str("nix-archive-1")` and one node: `( type regular [executable ""] contents <bytes> )`,
//! `( type symlink target <t> )` or `( type directory [entry ( name <n> node <node> )]… )` with entries sorted
//! bytewise by name. `executable` is present iff the owner may execute the file.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln_formats::sparse::DataRanges;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::closure::NarInfo;
use crate::inventory::{Kind, PathInventory};
use crate::store::{StoreDir, StoreFiles, StorePath, nix32};

/// Largest single read of file data.
const CHUNK: usize = 1 << 20;

/// Framing bytes (and small file contents) are gathered up to this many bytes before they reach the sink.
const HEAD: usize = 8 << 10;

/// What holes are hashed from.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

thread_local! {
    /// One read buffer per thread, reused for every file.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where a NAR stream goes.
pub trait NarSink {
    /// Appends bytes to the stream.
    fn put(&mut self, bytes: &[u8]);
}

impl NarSink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl NarSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A call that does not fit the NAR stream being written: entries out of NAR order, or a file fed more or
/// fewer bytes than its inventory size (it changed since it was listed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    /// An entry that cannot come next in NAR order.
    #[error("{}: not the next entry in NAR order ({why})", rel.display())]
    Order {
        /// The entry, relative to the store path.
        rel: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A regular file whose contents are longer or shorter than its size.
    #[error("regular file of {expected} bytes was fed {fed} bytes (it changed since the inventory?)")]
    FileLength {
        /// Size the entry declared.
        expected: u64,
        /// Bytes fed so far (at least; a chunk that overflows counts whole).
        fed: u64,
    },
    /// A call that the writer's state does not allow.
    #[error("{call}: {why}")]
    State {
        /// The method called.
        call: &'static str,
        /// Why it cannot be called now.
        why: &'static str,
    },
}

/// One open directory: its name (empty for the root) and its last child so far.
#[derive(Debug, Default)]
struct Frame {
    name: Vec<u8>,
    last: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing written yet: the next entry is the root.
    Start,
    /// Between entries.
    Ready,
    /// Inside a regular file's contents.
    File { size: u64, fed: u64, child: bool },
    /// The root was a file or symlink and is complete: nothing may follow.
    Done,
}

/// A NAR serialiser fed entry by entry in NAR order, with file contents as the caller reads them.
///
/// For each inventory entry call [`entry`](Self::entry); after a regular file's entry feed exactly its size in
/// [`file_chunk`](Self::file_chunk) / [`file_zeros`](Self::file_zeros) calls and then call
/// [`end_file`](Self::end_file). Directories close by themselves when an entry outside them arrives, or at the
/// end. Every call checks the order, so a caller that skips, repeats or reorders entries gets an error, never a
/// wrong hash.
#[derive(Debug)]
pub struct NarWriter<S: NarSink> {
    sink: S,
    size: u64,
    head: Vec<u8>,
    /// Open directories; `frames[0]` is the root, `frames[i]` the directory named by the first `i` components.
    frames: Vec<Frame>,
    state: State,
}

/// A [`NarWriter`] into SHA-256: gives the narHash and narSize.
pub type NarHasher = NarWriter<Sha256>;

impl NarHasher {
    /// A hasher at the start of a stream.
    #[must_use]
    pub fn new() -> Self {
        Self::with_sink(Sha256::new())
    }

    /// Closes what is open and returns the narHash and narSize.
    pub fn finish(self) -> Result<NarInfo, NarError> {
        let (sha, size) = self.into_sink()?;
        Ok(NarInfo { hash: sha.finalize().into(), size })
    }
}

impl Default for NarHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: NarSink> NarWriter<S> {
    /// A writer at the start of a stream into `sink`.
    pub fn with_sink(sink: S) -> Self {
        Self { sink, size: 0, head: Vec::with_capacity(HEAD), frames: Vec::new(), state: State::Start }
    }

    /// Bytes of the stream so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Starts the next entry: `rel` is its path relative to the store path (empty for the store path itself).
    /// For a regular file, its contents come next.
    pub fn entry(&mut self, rel: &Path, kind: &Kind) -> Result<(), NarError> {
        let order = |why| NarError::Order { rel: rel.to_path_buf(), why };
        let child = match self.state {
            State::Start if rel.as_os_str().is_empty() => {
                self.str(b"nix-archive-1");
                false
            }
            State::Start => return Err(order("the first entry must be the store path itself")),
            State::Ready => {
                let name = self.open_child(rel).map_err(order)?;
                self.strs(&[b"entry", b"(", b"name"]);
                self.str(name);
                self.str(b"node");
                true
            }
            State::File { .. } => return Err(NarError::State { call: "entry", why: "the previous file is not ended" }),
            State::Done => return Err(order("the store path is a single file or symlink")),
        };
        self.strs(&[b"(", b"type"]);
        match kind {
            Kind::File { size, executable, .. } => {
                self.str(b"regular");
                if *executable {
                    self.strs(&[b"executable", b""]);
                }
                self.str(b"contents");
                self.raw(&size.to_le_bytes());
                self.state = State::File { size: *size, fed: 0, child };
            }
            Kind::Symlink { target } => {
                self.strs(&[b"symlink", b"target"]);
                self.str(target.as_os_str().as_bytes());
                self.close_node(child);
            }
            Kind::Dir => {
                self.str(b"directory");
                let name = if child { rel.file_name().map_or(&[][..], |n| n.as_bytes()).to_vec() } else { Vec::new() };
                self.frames.push(Frame { name, last: None });
                self.state = State::Ready;
            }
        }
        Ok(())
    }

    /// Feeds the next bytes of the current regular file.
    pub fn file_chunk(&mut self, data: &[u8]) -> Result<(), NarError> {
        self.take(data.len() as u64, "file_chunk")?;
        if self.head.len() + data.len() <= HEAD {
            self.head.extend_from_slice(data);
        } else {
            self.flush();
            self.sink.put(data);
        }
        self.size += data.len() as u64;
        Ok(())
    }

    /// Feeds `len` zero bytes of the current regular file (a hole: nothing to read).
    pub fn file_zeros(&mut self, len: u64) -> Result<(), NarError> {
        self.take(len, "file_zeros")?;
        self.flush();
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.sink.put(&ZEROS[..n as usize]);
            left -= n;
        }
        self.size += len;
        Ok(())
    }

    /// Ends the current regular file, which must have been fed exactly its size.
    pub fn end_file(&mut self) -> Result<(), NarError> {
        let State::File { size, fed, child } = self.state else {
            return Err(NarError::State { call: "end_file", why: "no regular file is open" });
        };
        if fed != size {
            return Err(NarError::FileLength { expected: size, fed });
        }
        self.pad(size);
        self.close_node(child);
        Ok(())
    }

    /// Closes every open directory and returns the sink and the stream's length.
    pub fn into_sink(mut self) -> Result<(S, u64), NarError> {
        match self.state {
            State::Start => return Err(NarError::State { call: "finish", why: "no entry was written" }),
            State::File { .. } => return Err(NarError::State { call: "finish", why: "a file is not ended" }),
            State::Ready | State::Done => {}
        }
        self.close_dirs(0);
        self.flush();
        Ok((self.sink, self.size))
    }

    /// Checks that `rel` is a child of an open directory that sorts after its previous sibling, closes the
    /// directories it is not in, and returns its name.
    fn open_child<'r>(&mut self, rel: &'r Path) -> Result<&'r [u8], &'static str> {
        let mut components = rel.components();
        let Some(Component::Normal(name)) = components.next_back() else {
            return Err("not a relative path ending in a name");
        };
        let mut depth = 1;
        for c in components {
            let Component::Normal(c) = c else { return Err("not a plain relative path") };
            if self.frames.get(depth).is_none_or(|f| f.name != c.as_bytes()) {
                return Err("its parent directory is not open");
            }
            depth += 1;
        }
        self.close_dirs(depth);
        let parent = self.frames.last_mut().expect("a directory is open in the Ready state");
        let name = name.as_bytes();
        if parent.last.as_deref().is_some_and(|last| last >= name) {
            return Err("names must be unique and sorted bytewise");
        }
        match &mut parent.last {
            Some(last) => {
                last.clear();
                last.extend_from_slice(name);
            }
            None => parent.last = Some(name.to_vec()),
        }
        Ok(name)
    }

    /// Closes open directories until `keep` remain.
    fn close_dirs(&mut self, keep: usize) {
        while self.frames.len() > keep {
            self.frames.pop();
            self.close_node(!self.frames.is_empty());
        }
    }

    /// Ends a node (and the `entry` around it, for a child).
    fn close_node(&mut self, child: bool) {
        self.str(b")");
        if child {
            self.str(b")");
            self.state = State::Ready;
        } else {
            self.state = State::Done;
        }
    }

    fn take(&mut self, len: u64, call: &'static str) -> Result<(), NarError> {
        let State::File { size, fed, .. } = &mut self.state else {
            return Err(NarError::State { call, why: "no regular file is open" });
        };
        if *fed + len > *size {
            return Err(NarError::FileLength { expected: *size, fed: *fed + len });
        }
        *fed += len;
        Ok(())
    }

    fn raw(&mut self, bytes: &[u8]) {
        if self.head.len() + bytes.len() > HEAD {
            self.flush();
        }
        self.head.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
    }

    fn pad(&mut self, len: u64) {
        let rem = (len % 8) as usize;
        if rem != 0 {
            self.raw(&[0; 8][rem..]);
        }
    }

    fn str(&mut self, s: &[u8]) {
        self.raw(&(s.len() as u64).to_le_bytes());
        self.raw(s);
        self.pad(s.len() as u64);
    }

    fn strs(&mut self, ss: &[&[u8]]) {
        for s in ss {
            self.str(s);
        }
    }

    fn flush(&mut self) {
        if !self.head.is_empty() {
            self.sink.put(&self.head);
            self.head.clear();
        }
    }
}

/// `sha256:<nix32>`, the form closureInfo registrations and Nix's messages use.
#[must_use]
pub fn hash_string(hash: &[u8; 32]) -> String {
    format!("sha256:{}", nix32::encode(hash))
}

/// Where the file data a NAR serialisation reads goes: a caller that copies the files in the same pass (the
/// image's data pass) hands out the buffers that the files are read into, and is told what was read into them.
pub trait Tee {
    /// A buffer of 1 to `max` bytes for the next read of entry `entry`'s data at byte `offset`. A read may
    /// fill less; what it filled is passed to [`filled`](Self::filled) before the next call. `max` may exceed
    /// what is left of the file by one byte (a read past the end proves the file did not grow).
    fn buffer(&mut self, entry: usize, offset: u64, max: usize) -> Result<&mut [u8]>;
    /// The first `n` bytes of the last buffer hold the data just read (already hashed).
    fn filled(&mut self, n: usize) -> Result<()>;
    /// Entry `entry` has a hole of `len` bytes: zeros that are not read (already hashed).
    fn hole(&mut self, entry: usize, len: u64) -> Result<()> {
        let _ = (entry, len);
        Ok(())
    }
}

/// A [`Tee`] that only reads: one buffer, reused.
struct ReadOnly<'b>(&'b mut Vec<u8>);

impl Tee for ReadOnly<'_> {
    fn buffer(&mut self, _: usize, _: u64, max: usize) -> Result<&mut [u8]> {
        if self.0.len() < CHUNK {
            self.0.resize(CHUNK, 0);
        }
        Ok(&mut self.0[..max.min(CHUNK)])
    }

    fn filled(&mut self, _: usize) -> Result<()> {
        Ok(())
    }
}

/// Serialises one store path into `writer`, reading its files from `root` (its physical location).
pub fn write_path<S: NarSink>(root: &Path, inv: &PathInventory, writer: &mut NarWriter<S>) -> Result<()> {
    BUF.with_borrow_mut(|buf| write_path_tee(root, inv, writer, &mut ReadOnly(buf)))
}

/// As [`write_path`], reading every chunk of file data into the buffers `tee` hands out, so a caller can copy
/// the files in the same pass (holes are not read and not handed over: they are zeros).
///
/// Each file costs an `openat` relative to the store path, its reads and a `close`: the inventory's size and
/// sparseness stand in for a `fstat`, and the last read asks for one byte more than is left, so a file that
/// changed since the inventory (grew or shrank) is an error.
pub fn write_path_tee<S: NarSink>(
    root: &Path,
    inv: &PathInventory,
    writer: &mut NarWriter<S>,
    tee: &mut dyn Tee,
) -> Result<()> {
    let files = StoreFiles::new(root)?;
    for (i, e) in inv.entries.iter().enumerate() {
        let physical = || crate::store::entry_path(root, &e.rel);
        writer.entry(&e.rel, &e.kind).with_context(|| format!("{}: NAR serialisation", physical().display()))?;
        if let Kind::File { size, sparse, .. } = e.kind {
            files
                .open(&e.rel)
                .and_then(|file| feed_file(writer, &file, size, sparse, &mut Entry { index: i, tee }))
                .with_context(|| format!("{}: reading its contents", physical().display()))?;
        }
    }
    Ok(())
}

/// A [`Tee`] and the entry being read.
struct Entry<'t> {
    index: usize,
    tee: &'t mut dyn Tee,
}

/// Reads one regular file of `size` bytes into `writer` (whose current entry it is) and ends it. Holes are not
/// read: they are fed as zeros.
fn feed_file<S: NarSink>(
    writer: &mut NarWriter<S>,
    file: &File,
    size: u64,
    sparse: bool,
    tee: &mut Entry<'_>,
) -> Result<()> {
    // Fewer allocated blocks than the length means holes (or inline data): ask where the data is.
    let meta = if sparse { Some(file.metadata().context("cannot stat")?) } else { None };
    if let Some(meta) = &meta
        && meta.len() != size
    {
        bail!("changed since the inventory: {size} bytes then, {} now", meta.len());
    }
    if let Some(meta) = meta.filter(|m| m.blocks() * 512 < size) {
        let mut pos = 0;
        for range in DataRanges::new(file).context("cannot find its data ranges")? {
            let range = range.context("cannot find its data ranges")?;
            let end = range.end.min(size);
            if range.start >= end {
                continue;
            }
            feed_hole(writer, range.start - pos, tee)?;
            read_into(writer, file, size, range.start..end, false, tee)?;
            pos = end;
        }
        feed_hole(writer, size - pos, tee)?;
        writer.end_file()?;
        // A file that grew while it was read is caught here (one that shrank, while reading).
        let after = file.metadata().context("cannot stat")?.len();
        if after != meta.len() {
            bail!("changed while being read: {size} bytes then, {after} now");
        }
        return Ok(());
    }
    read_into(writer, file, size, 0..size, true, tee)?;
    writer.end_file()?;
    Ok(())
}

/// Feeds a hole of `len` bytes as zeros, telling the tee piece by piece (hashing a large hole takes a while, and
/// progress counts it).
fn feed_hole<S: NarSink>(writer: &mut NarWriter<S>, len: u64, tee: &mut Entry<'_>) -> Result<()> {
    const STEP: u64 = 16 << 20;
    let mut left = len;
    while left > 0 {
        let n = left.min(STEP);
        writer.file_zeros(n)?;
        tee.tee.hole(tee.index, n)?;
        left -= n;
    }
    Ok(())
}

/// Reads `range` of a file of `size` bytes. With `to_end` (`range` ends at `size`), proves the file ends
/// there: the last read asks for a byte more, or one more read finds nothing.
fn read_into<S: NarSink>(
    writer: &mut NarWriter<S>,
    file: &File,
    size: u64,
    range: std::ops::Range<u64>,
    to_end: bool,
    tee: &mut Entry<'_>,
) -> Result<()> {
    let changed =
        |now: &dyn std::fmt::Display| anyhow::anyhow!("changed since the inventory: {size} bytes then, {now} now");
    let mut pos = range.start;
    let mut at_end = !to_end;
    while pos < range.end {
        let left = range.end - pos;
        let max = if to_end && left < CHUNK as u64 { left as usize + 1 } else { left.min(CHUNK as u64) as usize };
        let buf = tee.tee.buffer(tee.index, pos, max)?;
        let want = buf.len() as u64;
        match file.read_at(buf, pos) {
            Ok(0) => return Err(changed(&pos)),
            Ok(n) if n as u64 > left => return Err(changed(&"more")),
            Ok(n) => {
                writer.file_chunk(&buf[..n])?;
                at_end |= want > left && n as u64 == left;
                tee.tee.filled(n)?;
                pos += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read at offset {pos}")),
        }
    }
    if !at_end {
        let mut probe = [0u8; 1];
        loop {
            match file.read_at(&mut probe, range.end) {
                Ok(0) => break,
                Ok(_) => return Err(changed(&"more")),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read at offset {}", range.end)),
            }
        }
    }
    Ok(())
}

/// The narHash and narSize of one store path, reading its files from the store directory.
pub fn nar_info(store: &StoreDir, inv: &PathInventory) -> Result<NarInfo> {
    let mut hasher = NarHasher::new();
    write_path(&store.physical(&inv.path), inv, &mut hasher)?;
    hasher.finish().with_context(|| format!("{}: NAR serialisation", inv.path))
}

/// The narHash and narSize of every store path, in the order given, hashed in parallel (in the current rayon
/// pool). The largest paths start first, so one big path does not end up alone at the end.
pub fn hash_closure<P: std::borrow::Borrow<PathInventory> + Sync>(
    store: &StoreDir,
    paths: &[P],
) -> Result<Vec<NarInfo>> {
    let mut order: Vec<(u64, usize)> = paths.iter().enumerate().map(|(i, p)| (p.borrow().counts().bytes, i)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let mut done: Vec<(usize, NarInfo)> = order
        .par_iter()
        .with_max_len(1)
        .map(|&(_, i)| nar_info(store, paths[i].borrow()).map(|info| (i, info)))
        .collect::<Result<_>>()?;
    done.sort_unstable_by_key(|&(i, _)| i);
    Ok(done.into_iter().map(|(_, info)| info).collect())
}

/// Checks a computed NAR hash and size against the registered ones.
pub fn verify(expected: &NarInfo, got: &NarInfo, path: &StorePath) -> Result<()> {
    if expected == got {
        return Ok(());
    }
    bail!(
        "{path}: contents differ from its registration: registered narHash {} narSize {}, but the store \
         directory's copy has narHash {} narSize {}",
        hash_string(&expected.hash),
        expected.size,
        hash_string(&got.hash),
        got.size
    )
}

#[cfg(test)]
mod tests;
