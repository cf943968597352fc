//! `kiln flash`: writes an image to a disk (or a file) safely, fast and verified.
//!
//! 1. [`source`]: the image is opened and streamed (never expanded to a file, never downloaded first); its
//!    first MiB is read before anything is written.
//! 2. [`target`]: the disk is opened exclusively after every refusal (mounted, swap, held, a partition, the
//!    running root's or the source's disk, too small, already partitioned without `--force`).
//! 3. [`fit`]: the image's table is fitted to the disk: backup GPT at its end, `--grow-root`, another sector
//!    size (the FAT boot partitions re-made by [`remake`]).
//! 4. The write: the old signatures at both ends wiped and flushed; the data written in order with periodic
//!    flushes, holes discarded or zeroed; the source's checksums checked by the stream; everything flushed and
//!    read back bypassing the page cache ([`uncached`]) and compared with what was written ([`written`]); then
//!    the partition tables, sector 0 last, flushed and read back. Cut off anywhere before that, the disk holds
//!    no partition table; on an error the tables are wiped again (`--preserve-on-error` keeps them).

mod behind;
pub mod buf;
pub mod fit;
mod io;
pub mod remake;
pub mod report;
pub mod source;
pub mod target;
pub mod uncached;
pub mod written;

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use self::behind::{Behind, ReadBack};
use self::fit::{Fit, HEAD, TargetFacts};
use self::remake::Held;
use self::source::{Chunk, Opened};
use self::target::{Guard, Holes, Kind, Target};
use self::uncached::Uncached;
use self::written::{Recorder, Written};
use crate::progress::{self, Meter, Phase, Progress};
use crate::readback::{Disk, Layout, PartitionType, identify};
use crate::units::human_bytes;

/// Default bytes between flushes.
pub const SYNC_EVERY: u64 = 64 << 20;

/// What to flash where, and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source and its checksums.
    pub source: source::Request,
    /// The disk or file to write.
    pub target: PathBuf,
    /// Write over an existing partition table or filesystem.
    pub force: bool,
    /// Allow a partition as the target.
    pub allow_partition: bool,
    /// Write zeros over holes.
    pub zero_holes: bool,
    /// Read back and compare.
    pub verify: bool,
    /// Keep what was written on an error.
    pub preserve_on_error: bool,
    /// Grow the root partition to the end of the target.
    pub grow_root: bool,
    /// Bytes between flushes.
    pub sync_every: u64,
    /// Decide and report; write nothing.
    pub dry_run: bool,
}

/// What a flash decided (the dry run's answer) and, after writing, what it did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Flashed {
    /// The source as named.
    pub source: String,
    /// Its format.
    pub format: source::SourceFormat,
    /// The block map used.
    pub bmap: Option<String>,
    /// The checksums checked while streaming.
    pub checks: Vec<source::Check>,
    /// The target as named.
    pub target: String,
    /// `block-device` or `file`.
    pub target_kind: &'static str,
    /// The target's size.
    pub target_size: u64,
    /// The raw image's size.
    pub image_size: u64,
    /// Bytes of data the source's map says it holds, when known before writing.
    pub data_bytes: Option<u64>,
    /// The partition table (`gpt`, `dos`, `none`).
    pub table: &'static str,
    /// How it is written.
    pub table_how: fit::Table2,
    /// The image's sector size, and the target's (different: re-targeted).
    pub sectors: Option<(u32, u32)>,
    /// Where the backup GPT header goes (byte offset on the target).
    pub backup_gpt_at: Option<u64>,
    /// FAT partitions re-made for the target's sector size.
    pub remade: Vec<fit::Remake>,
    /// The root partition grown.
    pub grown: Option<fit::Grown>,
    /// How holes are made zeros.
    pub holes: Holes,
    /// Whether written data is read back.
    pub verify: bool,
    /// What the target held before (`--force` was needed).
    pub replaced: Vec<String>,
    /// After the write: bytes of data written (tables included).
    pub written_bytes: u64,
    /// Bytes of holes discarded or zeroed.
    pub hole_bytes: u64,
    /// Bytes read back and compared.
    pub verified_bytes: u64,
    /// Whether the read-back bypassed the page cache with `O_DIRECT`.
    pub verified_direct: bool,
    /// Seconds spent writing, flushes included.
    pub write_secs: f64,
    /// Seconds spent reading back.
    pub verify_secs: f64,
}

/// Flashes as `req` says, reporting to `progress`.
///
/// # Errors
/// Every refusal (before anything is written), and any failure while writing (after which the partition tables
/// are wiped unless `--preserve-on-error`).
pub fn flash(req: &Request, progress: &dyn Progress) -> Result<Flashed> {
    let mut src = source::open(&req.source)?;
    let name = src.name.clone();
    // The first MiB, before anything is written: it decides everything else.
    let (head, head_bytes, pending) = read_head(&mut src)?;
    let image_size = src.size.or_else(|| fit::size_from_head(&head));
    let guard = Guard {
        source: src.local.as_deref(),
        allow_partition: req.allow_partition,
        create_size: image_size.unwrap_or(0),
    };
    let target = Target::open(&req.target, &guard, !req.dry_run)?;
    let facts = TargetFacts { size: target.size, sector: target.sector };
    let last_data = src.map.as_ref().and_then(|m| m.last().map(|r| r.end));
    let fit = match fit::fit(&name, head, image_size, last_data, facts, req.grow_root) {
        Ok(f) => f,
        Err(e) => {
            remove_created(&target);
            return Err(e);
        }
    };
    let replaced = if matches!(target.kind, Kind::File { created: true }) { Vec::new() } else { existing(&target)? };
    if !replaced.is_empty() && !req.force {
        bail!(
            "{} already holds {}; --force writes over it (everything on it is lost)",
            target.shown(),
            replaced.join("; ")
        );
    }
    let mut out = decided(req, &src, &target, &fit, replaced);
    if req.dry_run {
        return Ok(out);
    }
    let result = write(req, &mut src, (head_bytes, pending), &target, &fit, &mut out, progress);
    if let Err(e) = result {
        if !req.preserve_on_error {
            wipe_after_error(&target, &fit);
        }
        return Err(e);
    }
    Ok(out)
}

/// The image's first [`HEAD`] bytes (zeros where the stream has none), how many of them the stream gave, and
/// the first chunk past them.
fn read_head(src: &mut Opened) -> Result<(Vec<u8>, u64, Option<Chunk>)> {
    let mut head = vec![0u8; HEAD as usize];
    let mut got = 0;
    while let Some(mut c) = src.stream.next()? {
        if c.offset >= HEAD {
            return Ok((head, got, Some(c)));
        }
        let end = c.range().end;
        let n = (end.min(HEAD) - c.offset) as usize;
        head[c.offset as usize..c.offset as usize + n].copy_from_slice(&c.data[..n]);
        got += n as u64;
        if end > HEAD {
            c.data.advance(n);
            return Ok((head, got, Some(Chunk { offset: HEAD, data: c.data })));
        }
    }
    Ok((head, got, None))
}

/// What the target holds now, as `wipefs` would list it: its partition table and partitions (a GPT read with the
/// `gpt` crate, a reader independent of kiln's), or the filesystem at its start. Empty for a blank disk.
fn existing(target: &Target) -> Result<Vec<String>> {
    let file = target.file.try_clone().with_context(|| format!("reading {}", target.shown()))?;
    let disk = Disk::new(Arc::new(file), kiln_formats::disk::Bytes(target.size), target.shown());
    let Some(layout) = Layout::read(&disk)? else { return Ok(Vec::new()) };
    let fs_of = |range: kiln_formats::disk::ByteRange| {
        let fs = if range.end.get() <= target.size {
            identify(&disk.window(range)).map(|m| magic_name(&m)).unwrap_or("unknown")
        } else {
            "unknown"
        };
        if fs == "unknown" { String::new() } else { format!(", {fs}") }
    };
    let out = match (&layout.table, &layout.bare, layout.sector) {
        (crate::readback::Table::None, Some(magic), _) => format!("a {} filesystem", magic_name(magic)),
        (crate::readback::Table::Gpt { .. }, _, Some(sector)) => {
            let lb = match sector {
                kiln_formats::disk::SectorSize::S4096 => gpt::disk::LogicalBlockSize::Lb4096,
                _ => gpt::disk::LogicalBlockSize::Lb512,
            };
            let file = target.file.try_clone().with_context(|| format!("reading {}", target.shown()))?;
            let gpt = gpt::GptConfig::new()
                .writable(false)
                .logical_block_size(lb)
                .open_from_device(file)
                .with_context(|| format!("reading the GPT on {}", target.shown()))?;
            let ss = sector.bytes().get();
            let parts: Vec<String> = gpt
                .partitions()
                .iter()
                .filter(|(_, p)| p.is_used())
                .map(|(n, p)| {
                    let kind = kiln_formats::disk::Guid::parse(&p.part_type_guid.guid.to_string().to_uppercase())
                        .map_or_else(|| p.part_type_guid.guid.to_string(), |g| PartitionType::Gpt(g).label());
                    let range = kiln_formats::disk::ByteRange {
                        start: kiln_formats::disk::Bytes(p.first_lba.saturating_mul(ss)),
                        end: kiln_formats::disk::Bytes(p.last_lba.saturating_add(1).saturating_mul(ss)),
                    };
                    let label = if p.name.is_empty() { String::new() } else { format!(" \"{}\"", p.name) };
                    format!("{n}{label} ({kind}{})", fs_of(range))
                })
                .collect();
            format!("a GPT with {} partition(s): {}", parts.len(), parts.join(", "))
        }
        _ => {
            let parts: Vec<String> = layout
                .partitions
                .iter()
                .map(|p| format!("{} ({}{})", p.number, p.kind.label(), fs_of(p.range)))
                .collect();
            format!("a DOS partition table with {} partition(s): {}", parts.len(), parts.join(", "))
        }
    };
    Ok(vec![out])
}

fn magic_name(m: &crate::readback::Magic) -> &'static str {
    use crate::readback::Magic;
    match m {
        Magic::Ext4(_) => "ext4",
        Magic::Fat(_) => "vfat",
        Magic::Other(n) => n,
        Magic::Unknown => "unknown",
    }
}

/// The decisions, before writing.
fn decided(req: &Request, src: &Opened, target: &Target, fit: &Fit, replaced: Vec<String>) -> Flashed {
    Flashed {
        source: src.name.clone(),
        format: src.format,
        bmap: src.bmap.clone(),
        checks: src.checks.clone(),
        target: target.shown(),
        target_kind: if target.is_device() { "block-device" } else { "file" },
        target_size: target.size,
        image_size: fit.image_size,
        data_bytes: src.map.as_ref().map(|m| m.iter().map(|r| r.end - r.start).sum()),
        table: fit.table,
        table_how: fit.how,
        sectors: fit.image_sector.zip(fit.sector).map(|(a, b)| (u32::from(a), u32::from(b))),
        backup_gpt_at: fit.tail.iter().find(|r| r.what == "backup GPT header").map(|r| r.offset.get()),
        remade: fit.remake.clone(),
        grown: fit.grown.clone(),
        holes: target.holes(req.zero_holes),
        verify: req.verify,
        replaced,
        written_bytes: 0,
        hole_bytes: 0,
        verified_bytes: 0,
        verified_direct: false,
        write_secs: 0.0,
        verify_secs: 0.0,
    }
}

/// The write, from the wipe to the tables.
fn write(
    req: &Request,
    src: &mut Opened,
    (head_bytes, pending): (u64, Option<Chunk>),
    target: &Target,
    fit: &Fit,
    out: &mut Flashed,
    progress: &dyn Progress,
) -> Result<()> {
    let started = Instant::now();
    wipe(target).context("wiping the old signatures")?;
    let total = out.data_bytes.unwrap_or(fit.image_size);
    let flip = test_flip_offset()?;
    let holes = out.holes;
    let source = out.source.clone();
    let ((data, hole_bytes), read) = std::thread::scope(|s| -> Result<_> {
        let behind = Behind::start(s, target, req.verify, flip);
        let io = io::Io::start(s, target, uncached::direct_writer(&target.path), STAGE, behind.sender());
        let mut pass = Pass::new(target, fit, holes, req.sync_every, io)?;
        let written = progress::phase(
            progress,
            Phase::Write,
            || {
                let meter = Meter::new(progress, Phase::Write, total);
                meter.add(head_bytes);
                let mut next = pending;
                while let Some(chunk) = next {
                    let len = chunk.data.len() as u64;
                    pass.put(chunk)?;
                    if pass.window.bytes() >= pass.sync_every {
                        pass.hand_window()?;
                    }
                    meter.add(len);
                    next = src.stream.next()?;
                }
                // Only now, with every checksum matched, does anything depend on the source being right.
                pass.finish()?;
                for r in &fit.remake {
                    let sector = fit.sector.unwrap_or(kiln_formats::disk::SectorSize::S512);
                    let rec = Recorder::new(&target.file);
                    let zero = |at: u64, len: u64| target.zero(Holes::Write, at, len);
                    remake::remake(&source, Arc::clone(&pass.held), fit.image_size, r, sector, &rec, &zero)?;
                    pass.window.extend(rec.into_written());
                }
                Ok::<_, anyhow::Error>(pass.total + pass.window.bytes())
            },
            |n| format!("{} of data written", human_bytes(*n)),
        );
        let written = match written {
            Ok(w) => w,
            // A write error stops the writing thread first: its own error says what failed.
            Err(e) => return Err(pass.io.finish().err().unwrap_or(e)),
        };
        pass.hand_window()?;
        let hole_bytes = pass.hole_bytes;
        pass.io.finish()?;
        let summary = |r: &ReadBack| {
            if req.verify { format!("{} read back and compared", human_bytes(r.bytes)) } else { "flushed".to_owned() }
        };
        let read = progress::phase(progress, Phase::Verify, || behind.finish(Vec::new()), summary)?;
        Ok(((written, hole_bytes), read))
    })?;
    out.write_secs = started.elapsed().as_secs_f64();
    out.hole_bytes = hole_bytes;
    out.written_bytes = data;
    if let Some(m) = read.mismatch {
        let reader = Uncached::open(&target.path, &target.file)?;
        let at = first_bad_byte(req, &reader, m).unwrap_or(m.offset);
        bail!(
            "read-back mismatch on {}: the bytes at offset {at} differ from what was written (in the {} bytes from \
             offset {}); the device does not hold what was written to it",
            target.shown(),
            m.len,
            m.offset
        );
    }
    out.verified_bytes = read.bytes;
    out.verified_direct = read.direct;
    out.verify_secs = read.busy.as_secs_f64();
    progress::phase(
        progress,
        Phase::Tables,
        || tables(target, fit, req.verify),
        |()| format!("{} table, sector 0 last", fit.table),
    )?;
    out.written_bytes += fit.head.len() as u64 + fit.tail.iter().map(|r| r.bytes.len() as u64).sum::<u64>();
    Ok(())
}

/// Environment variable naming a byte offset of the target that kiln flips after writing the data and before
/// reading it back: a fault the test suite injects to prove the read-back finds it. Never set it otherwise.
pub const TEST_FLIP_ENV: &str = "KILN_TEST_FLIP_BYTE_BEFORE_VERIFY";

/// The offset [`TEST_FLIP_ENV`] names, if set.
fn test_flip_offset() -> Result<Option<u64>> {
    let Some(at) = std::env::var_os(TEST_FLIP_ENV) else { return Ok(None) };
    let at = at.to_str().and_then(|s| s.parse().ok()).with_context(|| format!("{TEST_FLIP_ENV}: not a number"))?;
    Ok(Some(at))
}

/// Flips the byte at `at`, through a descriptor of its own, flushed.
fn test_hook_flip(target: &Target, at: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&target.path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0xFF;
    f.write_all_at(&b, at)?;
    f.sync_data()?;
    Ok(())
}

/// The exact offset of the first differing byte in `m`, found by reading the source again (local sources).
fn first_bad_byte(req: &Request, reader: &Uncached, m: uncached::Mismatch) -> Option<u64> {
    let mut src = source::open(&req.source).ok()?;
    src.local.as_ref()?;
    let mut want = vec![0u8; m.len as usize];
    let range = m.offset..m.offset + u64::from(m.len);
    while let Ok(Some(c)) = src.stream.next() {
        let r = c.range();
        if r.start >= range.end {
            break;
        }
        let (from, to) = (r.start.max(range.start), r.end.min(range.end));
        if from < to {
            want[(from - range.start) as usize..(to - range.start) as usize]
                .copy_from_slice(&c.data[(from - r.start) as usize..(to - r.start) as usize]);
        }
    }
    let mut have = vec![0u8; m.len as usize];
    let mut buf = buf::AlignedBuf::new(m.len as usize + 8192);
    reader.read(m.offset, &mut have, &mut buf).ok()?;
    want.iter().zip(&have).position(|(a, b)| a != b).map(|i| m.offset + i as u64)
}

/// Zeros over the first and last MiB of the target (written, not discarded: they must read as zeros), flushed.
fn wipe(target: &Target) -> Result<()> {
    let n = HEAD.min(target.size);
    target.zero(Holes::Write, 0, n)?;
    target.zero(Holes::Write, target.size - n, n)?;
    target.sync()
}

/// After an error: the partition tables wiped again, or a file kiln created removed.
fn wipe_after_error(target: &Target, fit: &Fit) {
    if matches!(target.kind, Kind::File { created: true }) {
        remove_created(target);
        return;
    }
    let _ = target.zero(Holes::Write, 0, HEAD.min(target.size));
    for r in &fit.tail {
        let _ = target.zero(Holes::Write, r.offset.get(), r.bytes.len() as u64);
    }
    let _ = target.sync();
}

fn remove_created(target: &Target) {
    if matches!(target.kind, Kind::File { created: true }) && target.size > 0 {
        let _ = std::fs::remove_file(&target.path);
    }
}

/// The partition tables: the backup GPT and the first MiB but for sector 0, flushed; then sector 0, flushed;
/// then read back.
fn tables(target: &Target, fit: &Fit, verify: bool) -> Result<()> {
    let ss = fit.sector.map_or(512, |s| s.bytes().get() as usize);
    let file = &target.file;
    let put = |bytes: &[u8], at: u64, what: &str| {
        file.write_all_at(bytes, at).with_context(|| format!("writing the {what} at byte {at} of {}", target.shown()))
    };
    for r in &fit.tail {
        put(&r.bytes, r.offset.get(), r.what)?;
    }
    put(&fit.head[ss..], ss as u64, "first MiB")?;
    target.sync()?;
    put(&fit.head[..ss], 0, "sector 0")?;
    target.sync()?;
    if verify {
        let reader = Uncached::open(&target.path, file)?;
        let mut buf = buf::AlignedBuf::new(HEAD as usize);
        let mut check = |at: u64, want: &[u8], what: &str| -> Result<()> {
            let mut have = vec![0u8; want.len()];
            reader.read(at, &mut have, &mut buf).with_context(|| format!("reading back the {what}"))?;
            if let Some(i) = want.iter().zip(&have).position(|(a, b)| a != b) {
                bail!("read-back mismatch on {}: the {what} differs at offset {}", target.shown(), at + i as u64);
            }
            Ok(())
        };
        check(0, &fit.head, "first MiB")?;
        for r in &fit.tail {
            check(r.offset.get(), &r.bytes, r.what)?;
        }
    }
    Ok(())
}

/// The data pass: chunks in order, each written where it belongs, the gaps between them made holes.
struct Pass<'a> {
    target: &'a Target,
    /// Image bytes not written at all.
    skip: Option<Range<u64>>,
    /// Partitions held in memory to be re-made.
    remake: Vec<Range<u64>>,
    /// Where the image's data ends on the target (holes are made up to here).
    end: u64,
    holes: Holes,
    sync_every: u64,
    /// Holes are handled up to here.
    cursor: u64,
    /// Written since the last window was handed over.
    window: Written,
    /// Bytes of the windows handed over.
    total: u64,
    held: Arc<Held>,
    hole_bytes: u64,
    /// The writing thread.
    io: io::Io<'a>,
    /// Bytes gathered to be written together, and where they go.
    stage: buf::AlignedBuf,
    staged: Range<u64>,
}

/// Bytes gathered into one write.
const STAGE: usize = 8 << 20;

impl<'a> Pass<'a> {
    fn new(target: &'a Target, fit: &Fit, holes: Holes, sync_every: u64, io: io::Io<'a>) -> Result<Self> {
        let end = fit.skip.as_ref().map_or(fit.image_size, |s| s.start).min(target.size);
        let stage = io.buffer()?;
        Ok(Self {
            target,
            skip: fit.skip.clone(),
            remake: fit.remake.iter().map(|r| r.range.clone()).collect(),
            end,
            holes,
            sync_every: sync_every.max(1 << 20),
            cursor: HEAD,
            window: Written::default(),
            total: 0,
            held: Arc::new(Held::default()),
            hole_bytes: 0,
            io,
            stage,
            staged: 0..0,
        })
    }

    /// Adds `data`, the image's bytes at `at`, to the bytes waiting to be written together.
    fn stage(&mut self, at: u64, data: &[u8]) -> Result<()> {
        for (i, part) in data.chunks(STAGE).enumerate() {
            let at = at + (i * STAGE) as u64;
            if !self.staged.is_empty()
                && (self.staged.end != at || (self.staged.end - self.staged.start) as usize + part.len() > STAGE)
            {
                self.write_staged()?;
            }
            if self.staged.is_empty() {
                self.staged = at..at;
            }
            let from = (self.staged.end - self.staged.start) as usize;
            self.stage.slice(STAGE)[from..from + part.len()].copy_from_slice(part);
            self.staged.end += part.len() as u64;
        }
        Ok(())
    }

    /// Hands the staged bytes to the writing thread (which writes the 4 KiB-aligned part with `O_DIRECT` where
    /// the target takes it: no page cache to fill and flush) and takes a free buffer.
    fn write_staged(&mut self) -> Result<()> {
        let at = self.staged.start;
        let len = (self.staged.end - at) as usize;
        self.staged = 0..0;
        if len == 0 {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.stage, self.io.buffer()?);
        self.io.write(full, at, len)
    }

    /// Writes one chunk (the parts of it that are written at all).
    fn put(&mut self, chunk: Chunk) -> Result<()> {
        let r = chunk.range();
        if r.start < HEAD {
            bail!("internal: chunk at {} inside the first MiB after it was read", r.start);
        }
        // Written as it is, from the buffer it was read into, where it is aligned and wholly written.
        if chunk.data.is_aligned()
            && r.start.is_multiple_of(buf::ALIGN)
            && r.end <= self.end
            && !self.remake.iter().any(|p| p.start < r.end && r.start < p.end)
        {
            self.hole_to(r.start)?;
            self.window.record(r.start, &chunk.data);
            self.cursor = r.end;
            self.write_staged()?;
            return self.io.write_bytes(chunk.data, r.start);
        }
        let mut start = r.start;
        let end = r.end.min(self.end);
        while start < end {
            // The next boundary where what to do changes.
            let remake = self.remake.iter().find(|p| p.contains(&start)).cloned();
            let stop = match &remake {
                Some(p) => p.end.min(end),
                None => self.remake.iter().map(|p| p.start).filter(|&s| s > start).min().unwrap_or(end).min(end),
            };
            let data = &chunk.data[(start - r.start) as usize..(stop - r.start) as usize];
            if remake.is_some() {
                if let Some(held) = Arc::get_mut(&mut self.held) {
                    held.keep(start, data);
                }
            } else {
                self.hole_to(start)?;
                self.stage(start, data)?;
                self.window.record(start, data);
                self.cursor = stop;
            }
            start = stop;
        }
        // Data past the end is an error, but for the image's own backup GPT, which is replaced.
        let data_end = match &self.skip {
            Some(s) if r.start >= s.start => 0,
            Some(s) => r.end.min(s.start),
            None => r.end,
        };
        if data_end > self.end {
            bail!(
                "the image has data at byte {} beyond the end of {} ({} bytes)",
                data_end - 1,
                self.target.shown(),
                self.target.size
            );
        }
        Ok(())
    }

    /// Makes `[cursor, to)` a hole, but for partitions being re-made.
    fn hole_to(&mut self, to: u64) -> Result<()> {
        let mut from = self.cursor;
        while from < to {
            let remake = self.remake.iter().find(|p| p.contains(&from)).cloned();
            let stop = match &remake {
                Some(p) => p.end.min(to),
                None => self.remake.iter().map(|p| p.start).filter(|&s| s > from).min().unwrap_or(to).min(to),
            };
            if remake.is_none() && self.holes != Holes::Leave {
                self.target.zero(self.holes, from, stop - from)?;
                self.hole_bytes += stop - from;
            }
            from = stop;
        }
        self.cursor = self.cursor.max(to);
        Ok(())
    }

    /// The holes after the last chunk.
    fn finish(&mut self) -> Result<()> {
        self.write_staged()?;
        self.hole_to(self.end)
    }

    /// The spans written since the last window, handed to the flusher behind the writes (the staged bytes
    /// first).
    fn hand_window(&mut self) -> Result<()> {
        self.write_staged()?;
        let w = std::mem::take(&mut self.window);
        self.total += w.bytes();
        self.io.window(w.sorted())
    }
}
