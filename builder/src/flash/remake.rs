//! A FAT boot partition re-made for the target's sector size: its files read from the image's FAT (the bytes
//! streamed for that partition, held in memory) and written by kiln's own FAT32 writer with the target's
//! sector size and the partition's start in the target's sectors, keeping the volume id, the label and the
//! timestamp, so the ESP is what kiln would have built for that disk.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kiln_formats::disk::{ByteRange, Bytes, SectorSize};
use kiln_formats::fat::{self, NodeId, Source, Tree};
use kiln_formats::sink::WriteAt;

use super::fit::Remake;
use crate::readback::{Disk, FatBootSector, FatIo, ReadAt, open_fat};

/// Image bytes held in memory, by offset; zeros elsewhere.
#[derive(Debug, Default)]
pub struct Held {
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl Held {
    /// Keeps `data`, the image's bytes at `offset`.
    pub fn keep(&mut self, offset: u64, data: &[u8]) {
        if !data.is_empty() {
            self.chunks.insert(offset, data.to_vec());
        }
    }
}

impl ReadAt for Held {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        // Chunks never overlap and are at most a few MiB: start from the last one beginning before `offset`.
        let first = self.chunks.range(..=offset).next_back().map_or(offset, |(k, _)| *k);
        for (&at, data) in self.chunks.range(first..end) {
            let (from, to) = (at.max(offset), (at + data.len() as u64).min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            }
        }
        Ok(())
    }
}

/// What a re-made partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remade {
    /// Files.
    pub files: usize,
    /// Bytes of file data.
    pub bytes: u64,
}

/// Re-makes partition `r` (whose image bytes are in `held`, an image of `image_size` bytes) for `sector`-byte
/// sectors into `sink` at the same byte offset. The new filesystem's metadata area (boot sectors and FATs) is
/// made zeros with `zero(offset, len)` first: the writer writes only the used start of each FAT.
///
/// # Errors
/// When the image's FAT cannot be read or its files do not fit a FAT of the new sector size.
pub fn remake(
    name: &str,
    held: Arc<Held>,
    image_size: u64,
    r: &Remake,
    sector: SectorSize,
    sink: &dyn WriteAt,
    zero: &dyn Fn(u64, u64) -> Result<()>,
) -> Result<Remade> {
    let disk = Disk::new(held, Bytes(image_size), name.to_owned());
    let window = disk.window(ByteRange { start: Bytes(r.range.start), end: Bytes(r.range.end) });
    let Some(boot) = FatBootSector::read(&window)?.filter(FatBootSector::is_fat) else {
        bail!("{name}: partition {} holds no FAT filesystem to re-make for {sector}-byte sectors", r.number);
    };
    let fs = open_fat(&window)?;
    let mut tree = Tree::new();
    let mut stamp = None;
    let mut out = Remade::default();
    let root = tree.root();
    copy_dir(&fs.root_dir(), &mut tree, root, "", &mut stamp, &mut out)
        .with_context(|| format!("{name}: reading the files of partition {}", r.number))?;
    let label = if boot.label == "NO NAME" { String::new() } else { boot.label.clone() };
    let opts = fat::Options {
        size_bytes: r.range.end - r.range.start,
        sector_size: sector,
        hidden_sectors: u32::try_from(r.start_lba).context("the partition starts beyond 2^32 sectors")?,
        volume_id: boot.volume_id,
        label,
        timestamp: stamp.unwrap_or(0),
    };
    let plan = fat::plan(&tree, &opts)
        .with_context(|| format!("{name}: planning partition {} for {sector}-byte sectors", r.number))?;
    let g = &plan.geometry;
    zero(r.range.start, g.cluster_offset(fat::Cluster(2)))?;
    plan.write(&tree, sink, r.range.start)
        .with_context(|| format!("writing partition {} for {sector}-byte sectors", r.number))?;
    Ok(out)
}

/// Copies directory `dir` of the image's FAT into `tree` under `node`.
fn copy_dir(
    dir: &fatfs::Dir<'_, FatIo>,
    tree: &mut Tree,
    node: NodeId,
    path: &str,
    stamp: &mut Option<i64>,
    out: &mut Remade,
) -> Result<()> {
    for entry in dir.iter() {
        let entry = entry.with_context(|| format!("listing /{path}"))?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        if stamp.is_none() {
            *stamp = Some(unix(entry.modified()));
        }
        let sub = format!("{path}{name}");
        if entry.is_dir() {
            let child = tree.mkdir(node, &name)?;
            copy_dir(&entry.to_dir(), tree, child, &format!("{sub}/"), stamp, out)?;
        } else {
            let mut bytes = Vec::with_capacity(usize::try_from(entry.len()).unwrap_or(0));
            entry.to_file().read_to_end(&mut bytes).with_context(|| format!("reading /{sub}"))?;
            out.files += 1;
            out.bytes += bytes.len() as u64;
            let len = bytes.len() as u64;
            tree.file(node, &name, len, Source::Bytes(Arc::from(bytes)))?;
        }
    }
    Ok(())
}

/// Seconds since the epoch of a FAT timestamp (taken as UTC, as kiln writes them).
fn unix(t: fatfs::DateTime) -> i64 {
    let (y, m, d) = (i64::from(t.date.year), i64::from(t.date.month), i64::from(t.date.day));
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(t.time.hour) * 3600 + i64::from(t.time.min) * 60 + i64::from(t.time.sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_times_are_unix_seconds() {
        let t = |year, month, day, hour, min, sec| fatfs::DateTime {
            date: fatfs::Date { year, month, day },
            time: fatfs::Time { hour, min, sec, millis: 0 },
        };
        assert_eq!(unix(t(1980, 1, 1, 0, 0, 0)), 315_532_800);
        assert_eq!(unix(t(2000, 3, 1, 12, 30, 10)), 951_913_810);
        assert_eq!(unix(t(2024, 2, 29, 23, 59, 58)), 1_709_251_198);
    }
}
