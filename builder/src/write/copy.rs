//! The image's data pass: every store path's files read once, in NAR order, hashed and copied into the image
//! from the same buffers.
//!
//! Store paths go to worker threads largest first, each worker taking the next path when it is done (so the
//! largest paths start first and the small ones fill in at the end). Within a path, the files that lie next to
//! each other in the image (files are planned in NAR order) are read into one buffer and written with one
//! positioned write; all-zero chunks are not written (the image reads as zeros there already).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use kiln_formats::erofs;
use kiln_formats::ext4::{self, BLOCK};
use rayon::prelude::*;

use crate::closure::NarInfo;
use crate::progress::Meter;
use crate::resolve::Resolved;

/// Bytes gathered before a write (and the largest read).
const CHUNK: usize = 512 << 10;
/// A buffer with less room than this left is written out before the next read.
const MIN_ROOM: usize = 64 << 10;

/// What the data pass copies: the resolved closure, the root filesystem's plan and where its file nodes are,
/// and the root filesystem's byte offset in the image.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The closure and its inventory.
    pub r: &'a Resolved,
    /// The tree node of each inventory entry, per store path.
    pub nodes: &'a [Vec<ext4::NodeId>],
    /// The plan of the filesystem that holds the store.
    pub plan: StorePlan<'a>,
    /// The root filesystem's offset in the image.
    pub base: u64,
    /// The compressed files' clusters, staged while planning (a compressed store).
    pub staged: Option<&'a crate::plan::Staged>,
    /// The store's hash tree (a verity store): the data blocks the pass writes whole are hashed from its
    /// buffers, so the tree need not read them back.
    pub verity: Option<&'a kiln_formats::verity::Verity>,
}

/// What the data pass did: every path's NAR hash and size (inventory order), which data jobs it wrote, and the
/// verity digests of the data blocks it wrote whole (runs of consecutive blocks).
#[derive(Debug)]
pub struct Copied {
    /// Per store path, in inventory order.
    pub nar: Vec<NarInfo>,
    /// Per data job of the plan: written by a store path.
    pub claimed: Vec<AtomicBool>,
    /// (first data block of the store filesystem, digests) for a verity store.
    pub leaves: Vec<kiln_formats::verity::Run>,
}

/// The plan of the filesystem the store is copied into: the root filesystem's (ext4), or the store's own
/// (EROFS, `efi-verity`).
#[derive(Debug, Clone, Copy)]
pub enum StorePlan<'a> {
    /// An ext4 root filesystem.
    Ext4(&'a ext4::Plan),
    /// An EROFS store.
    Erofs(&'a erofs::Plan),
}

impl<'a> StorePlan<'a> {
    fn jobs(self) -> usize {
        match self {
            Self::Ext4(p) => p.data.len(),
            Self::Erofs(p) => p.data.len(),
        }
    }

    fn job_of(self, node: ext4::NodeId) -> Option<usize> {
        match self {
            Self::Ext4(p) => p.job_of(node),
            Self::Erofs(p) => p.job_of(node),
        }
    }

    fn file_writer(
        self,
        node: ext4::NodeId,
        sink: &'a dyn kiln_formats::sink::WriteAt,
        base: u64,
    ) -> Option<FileWriter<'a>> {
        match self {
            Self::Ext4(p) => p.file_writer(node, sink, base).map(FileWriter::Ext4),
            Self::Erofs(p) => p.file_writer(node, sink, base).map(FileWriter::Erofs),
        }
    }
}

/// One file's writer, of either filesystem.
#[derive(Debug)]
enum FileWriter<'a> {
    Ext4(ext4::FileWriter<'a>),
    Erofs(erofs::FileWriter<'a>),
}

impl FileWriter<'_> {
    fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        match self {
            Self::Ext4(w) => w.locate(offset),
            Self::Erofs(w) => w.locate(offset),
        }
    }

    /// Whether the file is stored compressed (offsets are then into its clusters).
    fn packed(&self) -> bool {
        matches!(self, Self::Erofs(w) if w.packed())
    }

    fn size(&self) -> u64 {
        match self {
            Self::Ext4(w) => w.size(),
            Self::Erofs(w) => w.size(),
        }
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        match self {
            Self::Ext4(w) => w.write_at(offset, bytes)?,
            Self::Erofs(w) => w.write_at(offset, bytes)?,
        }
        Ok(())
    }

    /// Whether the bytes after the file's end, to the end of its block, are its own (zeros a gathered write may
    /// cover): not for an EROFS tail kept inline, which other inodes follow.
    fn owns_block_slack(&self) -> bool {
        match self {
            Self::Ext4(_) => true,
            Self::Erofs(w) => w.owns_block_slack(),
        }
    }
}

/// Copies the closure's file data into the image, one store path at a time in NAR order (paths in parallel,
/// largest first), hashing what it copies from the same reads; checks each narHash against the registered one
/// when `verify` and one is registered, and always against the one the hash phase took for the paths marked in
/// `self_hashed` (inventory order: the image's database records that hash, so a store path that changed in
/// between must fail the build). A link group (identical files, one inode in the image) is written once, by
/// whichever of its names is read first, and hashed for each.
pub fn copy_and_hash(
    job: &Job<'_>,
    sink: &File,
    verify: bool,
    self_hashed: &[bool],
    meter: &Meter<'_>,
) -> Result<Copied> {
    let Job { r, nodes, plan, base, staged, verity } = *job;
    let claimed: Vec<AtomicBool> = (0..plan.jobs()).map(|_| AtomicBool::new(false)).collect();
    let paths = &r.inventory.paths;
    let mut order: Vec<(u64, usize)> = paths.iter().enumerate().map(|(i, p)| (p.counts().bytes, i)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = rayon::current_num_threads().min(order.len()).max(1);
    let per_worker = (0..workers)
        .into_par_iter()
        .with_max_len(1)
        .map(|_| -> Result<WorkerDone> {
            let mut tee = ImageTee {
                plan,
                sink,
                base,
                claimed: &claimed,
                meter,
                nodes: &[],
                current: None,
                buf: vec![0; CHUNK],
                fill: 0,
                at: 0,
                slack_ok: false,
                pending: None,
                packing: None,
                staged,
                scratch: Vec::new(),
                packed_read: false,
                verity,
                leaves: Vec::new(),
            };
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let Some(&(_, pi)) = order.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                let mut one = || -> Result<NarInfo> {
                    let p = &paths[pi];
                    tee.start(&nodes[pi]);
                    let mut hasher = crate::nar::NarHasher::new();
                    crate::nar::write_path_tee(&r.store.physical(&p.path), p, &mut hasher, &mut tee)?;
                    tee.flush()?;
                    let got = hasher.finish().with_context(|| format!("{}: NAR serialisation", p.path))?;
                    match r.closure.paths[&p.path].nar {
                        // The database in the image records the hash taken before: the copy must be what was
                        // hashed.
                        Some(before) if self_hashed[pi] && before != got => anyhow::bail!(
                            "{}: store path {} changed during the build: hashed as narHash {} narSize {}, copied \
                             as narHash {} narSize {}",
                            r.store.physical(&p.path).display(),
                            p.path,
                            crate::nar::hash_string(&before.hash),
                            before.size,
                            crate::nar::hash_string(&got.hash),
                            got.size
                        ),
                        Some(expected) if verify && !self_hashed[pi] => crate::nar::verify(&expected, &got, &p.path)?,
                        _ => {}
                    }
                    Ok(got)
                };
                match one() {
                    Ok(got) => done.push((pi, got)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok((done, tee.leaves))
        })
        .collect::<Result<Vec<_>>>()?;
    let (done, leaves): (Vec<_>, Vec<_>) = per_worker.into_iter().unzip();
    let mut done: Vec<(usize, NarInfo)> = done.into_iter().flatten().collect();
    done.sort_unstable_by_key(|&(i, _)| i);
    assert_eq!(done.len(), paths.len(), "every store path copied once");
    Ok(Copied {
        nar: done.into_iter().map(|(_, info)| info).collect(),
        claimed,
        leaves: leaves.into_iter().flatten().collect(),
    })
}

/// What one worker of the data pass did: (inventory index, NAR hash and size) of the paths it copied, and the
/// verity digests of the blocks it wrote whole.
type WorkerDone = (Vec<(usize, NarInfo)>, Vec<kiln_formats::verity::Run>);

/// The buffer last handed out for a file this path writes: where it starts in `buf`, the file offset and
/// image offset of its first byte, and how many bytes from there are contiguous in the image.
#[derive(Debug, Clone, Copy)]
struct Pending {
    start: usize,
    offset: u64,
    at: u64,
    contiguous: u64,
}

/// A [`crate::nar::Tee`] that writes what is read into the image, gathering adjacent files into one write.
struct ImageTee<'a> {
    plan: StorePlan<'a>,
    sink: &'a File,
    base: u64,
    claimed: &'a [AtomicBool],
    meter: &'a Meter<'a>,
    /// The tree node of each entry of the current store path.
    nodes: &'a [ext4::NodeId],
    /// (entry, writer) of the file being read; the writer is `None` unless this path writes that file.
    current: Option<(usize, Option<FileWriter<'a>>)>,
    buf: Vec<u8>,
    /// `buf[..fill]` is to be written at image offset `at`.
    fill: usize,
    at: u64,
    /// Whether the bytes after what is gathered, to the end of its block, belong to the file gathered last
    /// (may be covered with zeros to gather the next file after them).
    slack_ok: bool,
    pending: Option<Pending>,
    /// The file being read, when this path writes it and it is stored compressed.
    packing: Option<Packing>,
    /// The compressed files' clusters, made while planning: copied into place once a file's bytes are proven
    /// the same.
    staged: Option<&'a crate::plan::Staged>,
    /// Where a compressed file's reads go.
    scratch: Vec<u8>,
    /// The last buffer handed out was `scratch`.
    packed_read: bool,
    /// The store's hash tree, when the blocks written whole are to be hashed.
    verity: Option<&'a kiln_formats::verity::Verity>,
    /// (first data block, digests) of the blocks written whole.
    leaves: Vec<kiln_formats::verity::Run>,
}

/// A compressed file being read: the digest of its bytes, compared with the staged one at its end.
struct Packing {
    node: ext4::NodeId,
    digest: xxhash_rust::xxh3::Xxh3,
    /// Bytes of the file read.
    fed: u64,
    size: u64,
}

impl<'a> ImageTee<'a> {
    fn start(&mut self, nodes: &'a [ext4::NodeId]) {
        self.nodes = nodes;
        self.current = None;
        self.pending = None;
    }

    /// Writes what is gathered.
    fn flush(&mut self) -> Result<()> {
        if self.fill > 0 {
            self.sink
                .write_all_at(&self.buf[..self.fill], self.at)
                .with_context(|| format!("writing file data at image offset {}", self.at))?;
            let len = std::num::NonZeroU64::new(self.fill as u64);
            // Start writing these pages back now (asynchronously), so the final fsync finds little left; not
            // for an EROFS store, whose tree reads back what was not hashed here (flushed by
            // `super::writing_back` instead).
            if matches!(self.plan, StorePlan::Ext4(_)) {
                let _ = rustix::fs::fadvise(self.sink, self.at, len, rustix::fs::Advice::DontNeed);
            }
            self.hash_whole_blocks(self.at, 0, self.fill);
            self.fill = 0;
        }
        Ok(())
    }
}

impl ImageTee<'_> {
    /// For a verity store: hashes the data blocks that `buf[from..to]`, just written at image offset `at`,
    /// covers whole. Those hold their final bytes: nothing else writes a data block, and each is written once.
    /// (A block written in part is read back by the tree instead.)
    fn hash_whole_blocks(&mut self, at: u64, from: usize, to: usize) {
        let Some(v) = self.verity else { return };
        let rel = at - self.base;
        let (first, end) = (rel.div_ceil(BLOCK), (rel + (to - from) as u64) / BLOCK);
        if first < end {
            let skip = usize::try_from(first * BLOCK - rel).expect("within the buffer");
            let len = usize::try_from((end - first) * BLOCK).expect("within the buffer");
            self.leaves.push((first, v.hash_blocks(&self.buf[from + skip..from + skip + len])));
        }
    }

    /// Takes the next `bytes` of the file being read (stored compressed); at its end, checks they are the bytes
    /// its staged clusters were made from and copies the clusters into place.
    fn pack(&mut self, bytes: &[u8]) -> Result<()> {
        let Some((_, Some(w))) = self.current.as_ref() else { unreachable!("packing a file this path writes") };
        let Some(p) = self.packing.as_mut() else {
            // Done: only the read past the end (which finds nothing) comes after.
            anyhow::ensure!(bytes.is_empty(), "a store file grew while it was copied");
            return Ok(());
        };
        p.fed += bytes.len() as u64;
        p.digest.update(bytes);
        if p.fed < p.size {
            return Ok(());
        }
        let staged = self.staged.expect("a compressed store is planned with its clusters staged");
        let file = &staged.files[p.node as usize];
        anyhow::ensure!(
            p.digest.digest128() == file.digest,
            "a store file is not what it was when the image was planned: it changed during the build"
        );
        let (mut to, _) = w.locate(0).expect("a compressed file has clusters");
        if self.verity.is_some() {
            debug_assert_eq!((to - self.base) % BLOCK, 0, "clusters start at a block");
            self.leaves.push(((to - self.base) / BLOCK, file.leaves.clone()));
        }
        for &(from, len) in &file.runs {
            copy_range(&staged.file, from, self.sink, to, len)?;
            to += len;
        }
        self.packing = None;
        Ok(())
    }
}

/// Copies `len` bytes at `from` in `src` to `to` in `dst`: in the kernel where it can (the staging file is on
/// the output's filesystem), else through a buffer.
fn copy_range(src: &File, mut from: u64, dst: &File, mut to: u64, mut len: u64) -> Result<()> {
    while len > 0 {
        let want = usize::try_from(len.min(1 << 30)).expect("at most 1 GiB");
        match rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
            Ok(0) => anyhow::bail!("the staging file of the compressed store ends early (at byte {from})"),
            Ok(n) => len -= n as u64,
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
                let mut buf = vec![0u8; want.min(1 << 20)];
                src.read_exact_at(&mut buf, from).context("reading the staging file of the compressed store")?;
                dst.write_all_at(&buf, to).with_context(|| format!("writing compressed file data at {to}"))?;
                from += buf.len() as u64;
                to += buf.len() as u64;
                len -= buf.len() as u64;
            }
            Err(e) => {
                return Err(std::io::Error::from(e)).context("copying compressed file data into the image");
            }
        }
    }
    Ok(())
}

impl<'a> ImageTee<'a> {
    /// Makes `entry` the file being read: claims its data job unless another name of its inode (an identical
    /// file of its link group) has, and returns whether this path writes it.
    fn select(&mut self, entry: usize) -> bool {
        if self.current.as_ref().is_none_or(|(e, _)| *e != entry) {
            let node = self.nodes[entry];
            let plan = self.plan;
            let mine = plan.job_of(node).is_some_and(|j| !self.claimed[j].swap(true, Ordering::Relaxed));
            let writer = mine.then(|| plan.file_writer(node, self.sink, self.base)).flatten();
            self.packing = writer.as_ref().filter(|w| w.packed()).map(|w| Packing {
                node,
                digest: xxhash_rust::xxh3::Xxh3::new(),
                fed: 0,
                size: w.size(),
            });
            self.current = Some((entry, writer));
        }
        matches!(self.current, Some((_, Some(_))))
    }
}

impl crate::nar::Tee for ImageTee<'_> {
    fn hole(&mut self, entry: usize, len: u64) -> Result<()> {
        // The image reads as zeros there already; the job is claimed all the same (a file that is one hole is
        // then done), and the bytes count as copied. A compressed file's zeros are digested with the rest.
        if self.select(entry) {
            self.meter.add(len);
            if self.packing.is_some() {
                let zeros = vec![0u8; CHUNK];
                let mut left = len;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    self.pack(&zeros[..n])?;
                    left -= n as u64;
                }
            }
        }
        Ok(())
    }

    fn buffer(&mut self, entry: usize, offset: u64, max: usize) -> Result<&mut [u8]> {
        self.select(entry);
        self.packed_read = matches!(&self.current, Some((_, Some(w))) if w.packed());
        if self.packed_read {
            self.pending = None;
            if self.scratch.len() < CHUNK {
                self.scratch.resize(CHUNK, 0);
            }
            return Ok(&mut self.scratch[..max.min(CHUNK)]);
        }
        let want = max.min(MIN_ROOM);
        let located = match &self.current {
            Some((_, Some(w))) => Some(w.locate(offset).context("read beyond the file's planned blocks")?),
            _ => None,
        };
        let Some((at, contiguous)) = located else {
            // Not written by this path: read into the room after what is gathered.
            if CHUNK - self.fill < want {
                self.flush()?;
            }
            self.pending = None;
            let start = self.fill;
            return Ok(&mut self.buf[start..start + max.min(CHUNK - start)]);
        };
        // Next to what is gathered (in the block after its end, or right at it): gather; else write that first.
        let end = self.at + self.fill as u64;
        let next_block = at == end.next_multiple_of(BLOCK) && (self.slack_ok || at == end);
        let pad = if self.fill > 0 && next_block { Some((at - end) as usize) } else { None };
        let start = match pad {
            Some(pad) if CHUNK - self.fill - pad >= want => {
                self.buf[self.fill..self.fill + pad].fill(0);
                self.fill + pad
            }
            _ => {
                self.flush()?;
                self.at = at;
                0
            }
        };
        self.pending = Some(Pending { start, offset, at, contiguous });
        Ok(&mut self.buf[start..start + max.min(CHUNK - start)])
    }

    fn filled(&mut self, n: usize) -> Result<()> {
        if std::mem::take(&mut self.packed_read) {
            self.meter.add(n as u64);
            let mut scratch = std::mem::take(&mut self.scratch);
            let packed = self.pack(&scratch[..n]);
            std::mem::swap(&mut self.scratch, &mut scratch);
            return packed;
        }
        let Some(p) = self.pending.take() else { return Ok(()) };
        self.meter.add(n as u64);
        let data = &self.buf[p.start..p.start + n];
        if !data.iter().any(|&b| b != 0) {
            // Zeros: the image holds them already. What was gathered before them is written on its own.
            return self.flush();
        }
        if n as u64 > p.contiguous {
            // Runs across a discontinuity of the file's blocks: write what is gathered, then this in pieces.
            let (_, Some(w)) = self.current.as_ref().expect("a file is being read") else {
                unreachable!("pending only for files this path writes")
            };
            w.write_at(p.offset, &self.buf[p.start..p.start + n]).context("writing file data")?;
            let contiguous = usize::try_from(p.contiguous).expect("less than the read");
            self.hash_whole_blocks(p.at, p.start, p.start + contiguous);
            return self.flush();
        }
        if p.start == 0 {
            self.at = p.at;
        }
        self.fill = p.start + n;
        self.slack_ok = matches!(&self.current, Some((_, Some(w))) if w.owns_block_slack());
        Ok(())
    }
}
