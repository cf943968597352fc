//! qcow2 images written by `kiln_formats::image::qcow2`, checked by QEMU's own reader, read-only: `qemu-img check`
//! (no errors, no leaks: refcounts exact), `qemu-img compare` against the raw bytes the image should hold, and
//! `qemu-img info --output=json` (virtual size, compression type). For every compression mode and several cluster
//! sizes, on fixed images and on random sparse ones (proptest). Output is the same with 1 and 2 threads. Missing
//! tools fail the tests with the Debian package to install.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_formats::image::qcow2::{ClusterSize, Compression, Qcow2};
use kiln_formats::image::{Container, Progress, RawImage};
use proptest::prelude::*;
use serde_json::Value;

use crate::common::{run, tool};

const MODES: [Compression; 3] = [Compression::None, Compression::zstd(), Compression::zlib()];

// ---------------------------------------------------------------------------------------------------------------
// Test images

/// How a range of the raw image is filled.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// Pseudo-random bytes: incompressible.
    Random(u64),
    /// Pseudo-random words: compressible like text.
    Text(u64),
    /// One byte repeated: highly compressible (all-zero clusters inside the data extents when 0).
    Repeat(u8),
}

impl Fill {
    fn bytes(self, len: u64) -> Vec<u8> {
        let mut x = match self {
            Fill::Random(seed) | Fill::Text(seed) => seed | 1,
            Fill::Repeat(b) => return vec![b; len as usize],
        };
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::with_capacity(len as usize);
        match self {
            Fill::Random(_) => {
                while out.len() < len as usize {
                    out.extend_from_slice(&next().to_le_bytes());
                }
            }
            _ => {
                const WORDS: [&str; 8] = ["nix ", "store ", "kiln ", "qcow2 ", "cluster ", "zstd ", "\n", "image "];
                while out.len() < len as usize {
                    out.extend_from_slice(WORDS[(next() % 8) as usize].as_bytes());
                }
            }
        }
        out.truncate(len as usize);
        out
    }
}

/// A raw image to convert: its size and what its data ranges hold (later segments win where they overlap).
#[derive(Debug, Clone)]
struct Spec {
    size: u64,
    segments: Vec<(Range<u64>, Fill)>,
    /// Whether the file holds garbage outside the declared data ranges (which must never be read).
    garbage: bool,
}

impl Spec {
    /// The declared data extents: the union of the segments.
    fn extents(&self) -> Vec<Range<u64>> {
        let mut ranges: Vec<Range<u64>> =
            self.segments.iter().map(|(r, _)| r.clone()).filter(|r| !r.is_empty()).collect();
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// Writes the raw file to convert (garbage outside the extents if asked) and the file the image must equal.
    fn write(&self, dir: &Path) -> (File, PathBuf) {
        let input = dir.join("input.raw");
        let expected = dir.join("expected.raw");
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&input).unwrap();
        let e = File::create(&expected).unwrap();
        f.set_len(self.size).unwrap();
        e.set_len(self.size).unwrap();
        if self.garbage {
            // Up to 128 KiB of garbage at either end of every gap between extents (sharing clusters with data).
            const NEAR: u64 = 128 << 10;
            let mut start = 0;
            for r in self.extents().into_iter().chain(std::iter::once(self.size..self.size)) {
                for g in [start..r.start.min(start + NEAR), r.start.saturating_sub(NEAR).max(start)..r.start] {
                    if !g.is_empty() {
                        f.write_all_at(&Fill::Repeat(0xa5).bytes(g.end - g.start), g.start).unwrap();
                    }
                }
                start = r.end;
            }
        }
        for (r, fill) in &self.segments {
            let data = fill.bytes(r.end - r.start);
            f.write_all_at(&data, r.start).unwrap();
            e.write_all_at(&data, r.start).unwrap();
        }
        (f, expected)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Converting and checking

/// Runs qemu-img; its stdout, or a failure with everything it printed.
fn qemu(args: &[&str]) -> String {
    let out = run(Command::new(tool("qemu-img", "qemu-utils")).args(args));
    assert!(out.ok, "qemu-img {args:?} failed:\n{}", out.text);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Converts `image` on a pool of `threads` threads; the qcow2 file's bytes.
fn convert_with(q: &Qcow2, image: &RawImage<'_>, out: &Path, threads: usize) -> Vec<u8> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let file = File::create(out).unwrap();
    pool.install(|| q.convert(image, &file, &())).unwrap();
    std::fs::read(out).unwrap()
}

/// Converts with 1 and 2 threads (same bytes), checks the image with `qemu-img check` and compares it with
/// `expected`; the `qemu-img check` JSON.
fn convert_and_check(q: &Qcow2, image: &RawImage<'_>, expected: &Path, dir: &Path) -> Value {
    let out = dir.join("out.qcow2");
    let one = convert_with(q, image, &dir.join("one-thread.qcow2"), 1);
    let two = convert_with(q, image, &out, 2);
    assert!(one == two, "1 and 2 threads wrote different bytes ({q:?})");
    let out = out.to_str().unwrap();
    let check: Value = serde_json::from_str(&qemu(&["check", "--output=json", "-f", "qcow2", out])).unwrap();
    assert_eq!(check["check-errors"], 0, "{check}");
    for key in ["corruptions", "leaks", "corruptions-fixed", "leaks-fixed"] {
        assert!(check.get(key).is_none_or(|v| v == 0), "qemu-img check: {key} in {check}");
    }
    let compare = qemu(&["compare", "-f", "raw", "-F", "qcow2", expected.to_str().unwrap(), out]);
    assert!(compare.contains("Images are identical"), "{compare}");
    check
}

fn info(path: &Path) -> Value {
    serde_json::from_str(&qemu(&["info", "--output=json", "-f", "qcow2", path.to_str().unwrap()])).unwrap()
}

/// A spec with every kind of cluster, holes between, over `clusters` clusters of `cs` bytes, ending in a partial
/// cluster: (spec, non-zero clusters, of those the compressible ones).
fn mixed(cs: u64, clusters: u64) -> (Spec, u64, u64) {
    let mut segments = Vec::new();
    let (mut data, mut compressible) = (0, 0);
    for i in 0..clusters {
        let r = i * cs..(i + 1) * cs;
        let fill = match i % 6 {
            0 => Fill::Text(i),
            1 => Fill::Random(i),
            2 => continue, // a hole
            3 => Fill::Repeat(0),
            4 => Fill::Repeat(0xff),
            _ => Fill::Text(i * 7),
        };
        if !matches!(fill, Fill::Repeat(0)) {
            data += 1;
            compressible += u64::from(!matches!(fill, Fill::Random(_)));
        }
        segments.push((r, fill));
    }
    // A last, partial cluster of text: the virtual size is not a whole number of clusters (nor of sectors).
    segments.push((clusters * cs..clusters * cs + 300, Fill::Text(99)));
    (Spec { size: clusters * cs + 300, segments, garbage: false }, data + 1, compressible + 1)
}

// ---------------------------------------------------------------------------------------------------------------
// Fixed images

#[test]
fn every_compression_mode() {
    let cs = ClusterSize::DEFAULT.bytes();
    let (spec, data, compressible) = mixed(cs, 40);
    for compression in MODES {
        let dir = tempfile::tempdir().unwrap();
        let (file, expected) = spec.write(dir.path());
        let image = RawImage::new(&file, spec.size, spec.extents()).unwrap();
        let q = Qcow2::new(compression).unwrap();
        let check = convert_and_check(&q, &image, &expected, dir.path());
        assert_eq!(check["allocated-clusters"], data, "{compression:?}: {check}");
        let want_compressed = if compression == Compression::None { 0 } else { compressible };
        let compressed = check.get("compressed-clusters").map_or(0, |v| v.as_u64().unwrap());
        assert_eq!(compressed, want_compressed, "{compression:?}: {check}");

        let info = info(&dir.path().join("out.qcow2"));
        assert_eq!(info["virtual-size"], spec.size.next_multiple_of(512), "{info}");
        assert_eq!(info["cluster-size"], cs, "{info}");
        let specific = &info["format-specific"]["data"];
        assert_eq!(specific["compat"], "1.1", "{info}");
        assert_eq!(specific["refcount-bits"], 16, "{info}");
        let want_type = if matches!(compression, Compression::Zstd { .. }) { "zstd" } else { "zlib" };
        assert_eq!(specific["compression-type"], want_type, "{info}");
    }
}

#[test]
fn cluster_sizes_and_levels() {
    let cases = [
        (512, Compression::zstd()),
        (512, Compression::zlib()),
        (4096, Compression::Zlib { level: 9 }),
        (4096, Compression::None),
        (65536, Compression::Zstd { level: 19 }),
        (2 << 20, Compression::zstd()),
        (2 << 20, Compression::zlib()),
    ];
    for (cs, compression) in cases {
        let clusters = (8 << 20) / cs;
        let (spec, data, _) = mixed(cs, clusters.clamp(7, 40));
        let dir = tempfile::tempdir().unwrap();
        let (file, expected) = spec.write(dir.path());
        let image = RawImage::new(&file, spec.size, spec.extents()).unwrap();
        let q = Qcow2::new(compression).unwrap().with_cluster_size(ClusterSize::new(cs).unwrap());
        let check = convert_and_check(&q, &image, &expected, dir.path());
        assert_eq!(check["allocated-clusters"], data, "{cs} {compression:?}: {check}");
        assert_eq!(info(&dir.path().join("out.qcow2"))["cluster-size"], cs);
    }
}

/// 512-byte clusters over 10 MiB of data: hundreds of L1 clusters, L2 tables and refcount blocks, and (stored
/// uncompressed) a refcount table of two clusters, whose own refcounts must be counted too.
#[test]
fn many_metadata_clusters() {
    let spec = Spec {
        size: 12 << 20,
        segments: vec![(0..6 << 20, Fill::Random(11)), (6 << 20..10 << 20, Fill::Text(12))],
        garbage: false,
    };
    for compression in [Compression::None, Compression::zlib()] {
        let dir = tempfile::tempdir().unwrap();
        let (file, expected) = spec.write(dir.path());
        let image = RawImage::new(&file, spec.size, spec.extents()).unwrap();
        let q = Qcow2::new(compression).unwrap().with_cluster_size(ClusterSize::new(512).unwrap());
        let check = convert_and_check(&q, &image, &expected, dir.path());
        assert_eq!(check["allocated-clusters"], 20480, "{compression:?}: {check}");
        let header = std::fs::read(dir.path().join("out.qcow2")).unwrap();
        let refcount_table_clusters = u32::from_be_bytes(header[56..60].try_into().unwrap());
        if compression == Compression::None {
            assert!(refcount_table_clusters >= 2, "{refcount_table_clusters}");
        }
    }
}

/// Bytes outside the data extents are garbage in the file: they must not reach the image (never read).
#[test]
fn reads_only_the_extents() {
    let cs = ClusterSize::DEFAULT.bytes();
    let spec = Spec {
        size: 5 * cs,
        segments: vec![
            (100..200, Fill::Text(1)),
            (cs + 10..2 * cs + 10, Fill::Random(2)),
            (4 * cs..4 * cs + 7, Fill::Repeat(3)),
        ],
        garbage: true,
    };
    for compression in MODES {
        let dir = tempfile::tempdir().unwrap();
        let (file, expected) = spec.write(dir.path());
        let image = RawImage::new(&file, spec.size, spec.extents()).unwrap();
        convert_and_check(&Qcow2::new(compression).unwrap(), &image, &expected, dir.path());
    }
}

/// A file shorter than the image reads as zeros beyond its end; the data ranges may come from SEEK_DATA.
#[test]
fn short_file_and_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.raw");
    let mut f = File::create(&input).unwrap();
    f.write_all(&Fill::Text(5).bytes(70_000)).unwrap();
    drop(f);
    let f = File::open(&input).unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::copy(&input, &expected).unwrap();
    File::options().write(true).open(&expected).unwrap().set_len(3 << 20).unwrap();
    let image = RawImage::new(&f, 3 << 20, vec![Range { start: 0, end: 3 << 20 }]).unwrap();
    convert_and_check(&Qcow2::new(Compression::zstd()).unwrap(), &image, &expected, dir.path());

    // A sparse file whose data ranges are found with SEEK_DATA/SEEK_HOLE.
    let sparse = dir.path().join("sparse.raw");
    let f = File::options().read(true).write(true).create(true).truncate(true).open(&sparse).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&Fill::Text(6).bytes(300_000), 700 << 20).unwrap();
    f.write_all_at(&Fill::Random(7).bytes(1000), (1 << 30) - 1000).unwrap();
    let image = RawImage::from_file(&f).unwrap();
    assert!(image.allocated_bytes() < 64 << 20, "{:?}", image.extents());
    let check = convert_and_check(&Qcow2::new(Compression::zlib()).unwrap(), &image, &sparse, dir.path());
    assert_eq!(check["allocated-clusters"], 6, "{check}");
}

#[test]
fn tiny_and_empty_images() {
    for (size, segments) in [
        (0, vec![]),
        (512, vec![]),
        (512, vec![(0..512, Fill::Random(1))]),
        (512, vec![(0..1, Fill::Repeat(1))]),
        (1, vec![(0..1, Fill::Repeat(7))]),
        (1000, vec![(0..1000, Fill::Text(3))]),
    ] {
        for compression in MODES {
            let spec = Spec { size, segments: segments.clone(), garbage: false };
            let dir = tempfile::tempdir().unwrap();
            let (file, expected) = spec.write(dir.path());
            let image = RawImage::new(&file, size, spec.extents()).unwrap();
            let q = Qcow2::new(compression).unwrap();
            convert_and_check(&q, &image, &expected, dir.path());
            assert_eq!(info(&dir.path().join("out.qcow2"))["virtual-size"], q.virtual_size(size), "{size}");
        }
    }
}

#[test]
fn progress_reaches_the_image_size() {
    #[derive(Default)]
    struct Sum(AtomicU64);
    impl Progress for Sum {
        fn advance(&self, bytes: u64) {
            self.0.fetch_add(bytes, Ordering::Relaxed);
        }
    }
    let (spec, _, _) = mixed(65536, 300);
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = spec.write(dir.path());
    let image = RawImage::new(&file, spec.size, spec.extents()).unwrap();
    let sum = Sum::default();
    let out = File::create(dir.path().join("out.qcow2")).unwrap();
    Qcow2::new(Compression::zstd()).unwrap().convert(&image, &out, &sum).unwrap();
    assert_eq!(sum.0.load(Ordering::Relaxed), spec.size);
}

// ---------------------------------------------------------------------------------------------------------------
// Random sparse images

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![
        any::<u64>().prop_map(Fill::Random),
        any::<u64>().prop_map(Fill::Text),
        prop_oneof![Just(0u8), any::<u8>()].prop_map(Fill::Repeat),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    // Tiny, small and large (sparse, several L2 tables) virtual sizes, not always whole sectors or clusters.
    let size = prop_oneof![1u64..=4096, 1u64..=(1 << 20), 1u64..=(3 << 30)];
    (size, any::<bool>()).prop_flat_map(|(size, garbage)| {
        let segment = (0..size, 1u64..=(300 << 10), fill())
            .prop_map(move |(start, len, fill)| (start..(start + len).min(size), fill));
        proptest::collection::vec(segment, 0..8).prop_map(move |segments| Spec { size, segments, garbage })
    })
}

fn options() -> impl Strategy<Value = Qcow2> {
    let compression = prop_oneof![
        Just(Compression::None),
        (1..=6i32).prop_map(|level| Compression::Zstd { level }),
        (1..=9u32).prop_map(|level| Compression::Zlib { level }),
    ];
    let cluster_size = prop_oneof![Just(512u64), Just(4096), Just(65536), Just(1 << 20)];
    (compression, cluster_size)
        .prop_map(|(c, cs)| Qcow2::new(c).unwrap().with_cluster_size(ClusterSize::new(cs).unwrap()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_sparse_images_round_trip(spec in spec(), q in options()) {
        let dir = tempfile::tempdir().unwrap();
        let (file, expected) = spec.write(dir.path());
        let image = RawImage::new(&file, spec.size, spec.extents()).unwrap();
        convert_and_check(&q, &image, &expected, dir.path());
    }
}
