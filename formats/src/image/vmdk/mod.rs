//! Stream-optimized VMDK (VMware, OVA appliances, AWS VM import): a sparse extent whose grains are compressed
//! one by one and written in order behind markers, with the grain tables, the grain directory and a footer at the
//! end, so the file can be written — and read — as a stream.
//!
//! ```text
//! sector 0    header (gdOffset = GD_AT_END)     1..21  descriptor     128  first grain
//! grains      marker {lba, size} + zlib stream, padded to a sector; all-zero grains are left out
//! tables      marker(GT) + grain table, for each table that maps at least one grain (the others are absent:
//!             grain directory entry 0, so VMware allocates grain tables on demand too)
//! directory   marker(GD) + grain directory
//! footer      marker(footer) + header with the real gdOffset;   then the end-of-stream marker
//! ```
//!
//! Grains are 64 KiB, compressed with deflate in the zlib format (RFC 1950), as VMware's and QEMU's readers
//! expect. They are compressed in parallel (rayon) in batches whose results are written in grain order, so the
//! file's bytes do not depend on the number of threads.

mod sparse;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;

use flate2::{Compress, Compression, FlushCompress, Status};
use rayon::prelude::*;

pub use self::sparse::AdapterType;
use self::sparse::{
    GD_AT_END, GRAIN, GRAIN_MARKER_LEN, GRAIN_SECTORS, GT_SECTORS, GTES_PER_GT, Marker, OVERHEAD, SECTOR,
};
use super::copy::{context, ensure_empty, is_zero};
use super::{Container, Progress, RawImage};

/// Grains compressed in one parallel batch (16 MiB of the image).
const BATCH: usize = 256;

/// A stream-optimized VMDK, with the descriptor fields the caller chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmdk {
    /// The content id (`CID`): derive it from a seed. `ffffffff` and `fffffffe` are reserved.
    pub cid: u32,
    /// The storage adapter (`ddb.adapterType`), which also sets the legacy geometry.
    pub adapter: AdapterType,
    /// `ddb.virtualHWVersion`: the oldest VMware virtual hardware that may use the disk.
    pub hw_version: u32,
    /// The file name the descriptor's extent line names: the VMDK file's own name.
    pub extent_name: String,
    /// Deflate level, 0 (store) to 9 (smallest).
    pub compression_level: u32,
}

impl Vmdk {
    /// The virtual hardware version VMware's and QEMU's stream writers record: 4, which every product accepts.
    pub const DEFAULT_HW_VERSION: u32 = 4;

    /// The deflate level used unless set: zlib's default, 6.
    pub const DEFAULT_COMPRESSION_LEVEL: u32 = 6;

    /// A stream-optimized VMDK with this content id, an LSI Logic adapter, hardware version 4, extent name
    /// `disk.vmdk` and deflate level 6.
    #[must_use]
    pub fn new(cid: u32) -> Self {
        Self {
            cid,
            adapter: AdapterType::default(),
            hw_version: Self::DEFAULT_HW_VERSION,
            extent_name: "disk.vmdk".to_owned(),
            compression_level: Self::DEFAULT_COMPRESSION_LEVEL,
        }
    }
}

impl Container for Vmdk {
    fn name(&self) -> &'static str {
        "vmdk"
    }

    /// Rounded up to a whole number of 512-byte sectors.
    fn virtual_size(&self, size: u64) -> u64 {
        size.next_multiple_of(SECTOR)
    }

    fn convert(&self, image: &RawImage<'_>, out: &File, progress: &dyn Progress) -> io::Result<()> {
        ensure_empty(out, "VMDK")?;
        if image.size() == 0 || self.compression_level > 9 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("VMDK of a {}-byte image at deflate level {}", image.size(), self.compression_level),
            ));
        }
        let capacity = image.size().div_ceil(SECTOR);
        let descriptor = sparse::descriptor(self.cid, capacity, &self.extent_name, self.adapter, self.hw_version)?;
        let mut w = Stream::new(out);
        w.put(&sparse::header(capacity, GD_AT_END))?;
        w.put(&descriptor)?;
        w.put(&vec![0; ((OVERHEAD - w.sector) * SECTOR) as usize])?;

        // Grain tables that map at least one grain, by table number.
        let mut tables: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let level = Compression::new(self.compression_level);
        let mut grains = GrainsWithData::new(image.extents());
        let mut done = 0;
        loop {
            let batch: Vec<u64> = grains.by_ref().take(BATCH).collect();
            let Some(&last) = batch.last() else { break };
            let packed: Vec<io::Result<Option<Vec<u8>>>> = batch
                .par_iter()
                .map_init(
                    || (Compress::new(level, true), vec![0; GRAIN as usize]),
                    |(z, buf), &g| pack(image, g, z, buf),
                )
                .collect();
            for (&g, grain) in batch.iter().zip(packed) {
                if let Some(bytes) = grain? {
                    let table = tables.entry(g / GTES_PER_GT).or_insert_with(|| vec![0; GTES_PER_GT as usize]);
                    table[(g % GTES_PER_GT) as usize] = w.sector_u32()?;
                    w.put(&bytes)?;
                }
            }
            let reached = ((last + 1) * GRAIN).min(image.size());
            progress.advance(reached - done);
            done = reached;
        }
        progress.advance(image.size() - done);

        let mut directory = vec![0u32; capacity.div_ceil(GRAIN_SECTORS).div_ceil(GTES_PER_GT) as usize];
        for (&t, table) in &tables {
            w.put(&sparse::marker(Marker::GrainTable, GT_SECTORS))?;
            directory[t as usize] = w.sector_u32()?;
            w.put(&table.iter().flat_map(|e| e.to_le_bytes()).collect::<Vec<_>>())?;
        }
        let gd_sectors = (directory.len() as u64 * 4).div_ceil(SECTOR);
        w.put(&sparse::marker(Marker::GrainDirectory, gd_sectors))?;
        let gd_offset = w.sector;
        let mut gd: Vec<u8> = directory.iter().flat_map(|e| e.to_le_bytes()).collect();
        gd.resize((gd_sectors * SECTOR) as usize, 0);
        w.put(&gd)?;
        w.put(&sparse::marker(Marker::Footer, 1))?;
        w.put(&sparse::header(capacity, gd_offset))?;
        w.put(&sparse::marker(Marker::EndOfStream, 0))?;
        w.out.flush().map_err(|e| context(e, || "writing the end of the VMDK".to_owned()))
    }
}

/// Reads grain `g` (only the image's data ranges) and, unless it is all zeros, returns its marker and
/// zlib-compressed bytes padded to a whole sector. The grain past the image's end reads as zeros.
fn pack(image: &RawImage<'_>, g: u64, z: &mut Compress, buf: &mut [u8]) -> io::Result<Option<Vec<u8>>> {
    let start = g * GRAIN;
    let len = (image.size() - start).min(GRAIN) as usize;
    buf[len..].fill(0);
    image.read_at(&mut buf[..len], start).map_err(|e| context(e, || format!("reading image bytes {start}..")))?;
    if is_zero(&buf[..len]) {
        return Ok(None);
    }
    z.reset();
    let mut out = Vec::with_capacity(GRAIN_MARKER_LEN + GRAIN as usize + GRAIN as usize / 8);
    out.extend((g * GRAIN_SECTORS).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    // Incompressible grains grow (by an eighth at most with fixed Huffman codes): grow the room until done.
    loop {
        let consumed = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
        match z.compress_vec(&buf[consumed..], &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(Status::Ok | Status::BufError) => out.reserve(GRAIN as usize / 8),
            Err(e) => return Err(io::Error::other(format!("compressing grain {g} of the VMDK: {e}"))),
        }
    }
    let size = (out.len() - GRAIN_MARKER_LEN) as u32;
    out[8..12].copy_from_slice(&size.to_le_bytes());
    out.resize(out.len().next_multiple_of(SECTOR as usize), 0);
    Ok(Some(out))
}

/// The output, written front to back, with the sector it has reached.
struct Stream<'a> {
    out: BufWriter<&'a File>,
    sector: u64,
}

impl<'a> Stream<'a> {
    fn new(out: &'a File) -> Self {
        Self { out: BufWriter::with_capacity(4 << 20, out), sector: 0 }
    }

    /// Appends `bytes`, a whole number of sectors.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        debug_assert!((bytes.len() as u64).is_multiple_of(SECTOR));
        let at = self.sector * SECTOR;
        self.out.write_all(bytes).map_err(|e| context(e, || format!("writing the VMDK at {at}")))?;
        self.sector += bytes.len() as u64 / SECTOR;
        Ok(())
    }

    /// The current sector as a grain table or directory entry, which has 32 bits.
    fn sector_u32(&self) -> io::Result<u32> {
        u32::try_from(self.sector).map_err(|_| io::Error::other("the VMDK grows past 2 TiB, beyond its 32-bit offsets"))
    }
}

/// The grains (by number) that overlap the image's data ranges, in order, each once.
struct GrainsWithData<'a> {
    extents: std::slice::Iter<'a, Range<u64>>,
    current: Range<u64>,
}

impl<'a> GrainsWithData<'a> {
    fn new(extents: &'a [Range<u64>]) -> Self {
        Self { extents: extents.iter(), current: 0..0 }
    }
}

impl Iterator for GrainsWithData<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.current.is_empty() {
            let e = self.extents.next()?;
            if e.is_empty() {
                continue;
            }
            // An extent that starts in the grain the previous one ended in does not repeat it.
            let first = (e.start / GRAIN).max(self.current.end);
            self.current = first..e.end.div_ceil(GRAIN).max(first);
        }
        self.current.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn grains_pack_at_every_level_even_incompressible() {
        let f = tempfile::tempfile().unwrap();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..GRAIN + 1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        f.write_all_at(&noise, 0).unwrap();
        let image = RawImage::from_file(&f).unwrap();
        assert_eq!(image.size(), GRAIN + 1000);
        let mut buf = vec![0; GRAIN as usize];
        for level in 0..=9 {
            let mut z = Compress::new(Compression::new(level), true);
            for g in [0, 1] {
                let packed = pack(&image, g, &mut z, &mut buf).unwrap().unwrap();
                assert_eq!(packed.len() % SECTOR as usize, 0);
                assert_eq!(packed[0..8], (g * GRAIN_SECTORS).to_le_bytes());
                let size = u32::from_le_bytes(packed[8..12].try_into().unwrap()) as usize;
                let mut back = Vec::new();
                let mut d = flate2::Decompress::new(true);
                back.reserve(GRAIN as usize);
                let status = d.decompress_vec(&packed[12..12 + size], &mut back, flate2::FlushDecompress::Finish);
                assert_eq!(status.unwrap(), Status::StreamEnd, "level {level}");
                let want = if g == 0 {
                    noise[..GRAIN as usize].to_vec()
                } else {
                    let mut w = noise[GRAIN as usize..].to_vec();
                    w.resize(GRAIN as usize, 0);
                    w
                };
                assert!(back == want, "level {level} grain {g}");
            }
        }
        // A grain of zeros is left out.
        let zeros = RawImage::new(&f, 2 * GRAIN, vec![]).unwrap();
        assert!(pack(&zeros, 1, &mut Compress::new(Compression::default(), true), &mut buf).unwrap().is_none());
    }

    #[test]
    #[expect(clippy::single_range_in_vec_init, reason = "lists of extents that happen to hold one")]
    fn grains_overlapping_extents_once_each() {
        struct Case {
            extents: Vec<Range<u64>>,
            want: Vec<u64>,
        }
        let g = GRAIN;
        let cases = [
            Case { extents: vec![], want: vec![] },
            Case { extents: vec![0..1], want: vec![0] },
            Case { extents: vec![0..g], want: vec![0] },
            Case { extents: vec![0..g + 1], want: vec![0, 1] },
            Case { extents: vec![10..20, 30..40, g - 1..g + 1], want: vec![0, 1] },
            Case { extents: vec![5..5, 3 * g..4 * g, 4 * g + 2..4 * g + 3, 9 * g..9 * g + 1], want: vec![3, 4, 9] },
        ];
        for c in cases {
            assert_eq!(GrainsWithData::new(&c.extents).collect::<Vec<_>>(), c.want, "{:?}", c.extents);
        }
    }
}
