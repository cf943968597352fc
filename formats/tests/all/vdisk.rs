//! The virtual-disk containers — fixed VHD, VHDX, stream-optimized VMDK — read back by QEMU, an independent
//! implementation: `qemu-img check` (VHDX and VMDK; QEMU cannot check VHD), `qemu-img compare` against the raw
//! image, `qemu-img info` for format and virtual size, and `qemu-img convert -O raw` back to bytes. Inputs are
//! sparse raw images with holes, zero blocks inside data ranges, incompressible data and odd sizes; bytes outside
//! the declared data ranges are garbage in the source file, so a read outside them shows up as a difference.
//! A missing qemu-img fails the tests.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kiln_formats::disk::Guid;
use kiln_formats::image::{Container, Progress, RawImage, Vhd, Vhdx, Vmdk, vhd};
use kiln_formats::sparse::DataRanges;
use proptest::prelude::*;
use serde_json::Value;

use crate::common::{run, tool};

// ---------------------------------------------------------------------------------------------------------------
// Tools

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = run(Command::new(tool("qemu-img", "qemu-utils")).args(args));
    (out.ok, out.text)
}

fn qemu_ok(args: &[&str]) -> String {
    let (ok, text) = qemu_img(args);
    assert!(ok, "qemu-img {args:?} failed:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// qemu-img's name for each container.
fn qemu_format(c: &dyn Container) -> &'static str {
    match c.name() {
        "vhd" => "vpc",
        "vhdx" => "vhdx",
        "vmdk" => "vmdk",
        other => panic!("no qemu-img format for {other}"),
    }
}

/// The containers under test, with their ids derived from a fixed seed.
fn containers(vhdx_block: u32, vmdk_level: u32) -> Vec<Box<dyn Container>> {
    let id = |n: u128| Guid::v4_from_bytes((0x5EED_0000_0000_0000_0000_0000_0000_0000 | n).to_be_bytes());
    vec![
        Box::new(Vhd::new(id(1))),
        Box::new(Vhdx { block_size: vhdx_block, ..Vhdx::new(id(2), id(3), id(4)) }),
        Box::new(Vmdk { compression_level: vmdk_level, ..Vmdk::new(0x1234_5678) }),
    ]
}

#[derive(Default)]
struct Count(AtomicU64);

impl Progress for Count {
    fn advance(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn create(path: &Path) -> File {
    File::options().read(true).write(true).create(true).truncate(true).open(path).unwrap()
}

/// Converts `image` with `c` into `path`; checks progress adds up to the image size.
fn convert(c: &dyn Container, image: &RawImage<'_>, path: &Path) {
    let out = create(path);
    let count = Count::default();
    c.convert(image, &out, &count).unwrap_or_else(|e| panic!("{} conversion: {e}", c.name()));
    assert_eq!(count.0.load(Ordering::Relaxed), image.size(), "{} progress", c.name());
}

/// Everything QEMU can say about `path` as container `c` of a raw image `expected` (already at the container's
/// virtual size): it checks clean, compares identical, reports the format and size, and converts back to exactly
/// the expected bytes. `qemu-img compare` reads every byte of a raw image, holes too, so images over 2 GiB are
/// only converted back (QEMU skips what its block status reports as zero) and compared by data ranges here.
fn verify(c: &dyn Container, path: &Path, expected: &Path) {
    let fmt = qemu_format(c);
    let (checked, text) = qemu_img(&["check", "-f", fmt, s(path)]);
    if fmt == "vpc" {
        assert!(text.contains("does not support checks"), "qemu-img learnt to check VHD, use it:\n{text}");
    } else {
        assert!(checked && text.contains("No errors were found"), "qemu-img check {fmt}:\n{text}");
    }
    let info: Value = serde_json::from_str(&qemu_ok(&["info", "--output=json", "-f", fmt, s(path)])).unwrap();
    let size = std::fs::metadata(expected).unwrap().len();
    assert_eq!(info["format"], fmt);
    assert_eq!(info["virtual-size"], size, "{fmt} virtual size");
    if fmt == "vmdk" {
        assert_eq!(info["format-specific"]["data"]["create-type"], "streamOptimized", "{info}");
        assert_eq!(info["format-specific"]["data"]["extents"][0]["compressed"], true, "{info}");
    }
    if size <= 2 << 30 {
        // Not `-s`: strict mode also compares allocation, which differs by design (zero data is not stored).
        let compared = qemu_ok(&["compare", "-f", "raw", "-F", fmt, s(expected), s(path)]);
        assert!(compared.contains("Images are identical") && !compared.contains("size mismatch"), "{compared}");
    }
    let back = path.with_extension("back.raw");
    qemu_ok(&["convert", "-f", fmt, "-O", "raw", s(path), s(&back)]);
    assert!(same_content(&back, expected), "{fmt} round trip differs");
    std::fs::remove_file(back).unwrap();
}

/// Whether two files have the same length and bytes, reading only where either has data (holes are zeros).
fn same_content(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    if len != fb.metadata().unwrap().len() {
        return false;
    }
    let mut ranges: Vec<Range<u64>> = [&fa, &fb]
        .into_iter()
        .flat_map(|f| DataRanges::new(f).unwrap().map(Result::unwrap).collect::<Vec<_>>())
        .collect();
    ranges.sort_by_key(|r| r.start);
    let (mut x, mut y) = (vec![0; 8 << 20], vec![0; 8 << 20]);
    let mut done = 0;
    for r in ranges {
        let mut pos = r.start.max(done);
        while pos < r.end {
            let n = (r.end - pos).min(8 << 20) as usize;
            fa.read_exact_at(&mut x[..n], pos).unwrap();
            fb.read_exact_at(&mut y[..n], pos).unwrap();
            if x[..n] != y[..n] {
                return false;
            }
            pos += n as u64;
        }
        done = done.max(r.end);
    }
    true
}

// ---------------------------------------------------------------------------------------------------------------
// Inputs

/// A piece of a test image.
#[derive(Debug, Clone)]
enum Piece {
    /// Outside the data ranges: garbage in the source file, zeros in the image.
    Hole(u64),
    /// Inside a data range but all zeros (allocated in the source file).
    Zeros(u64),
    /// Incompressible bytes from this seed.
    Noise(u64, u64),
    /// One repeated byte (compressible, never zero).
    Fill(u64, u8),
}

/// Writes the source file (`src`) and the raw image it stands for (`expected`, at `virtual_size`), and returns
/// the source's declared data ranges and the image size.
fn build(
    pieces: &[Piece],
    tail: u64,
    src: &Path,
    expected: &Path,
    c: Option<&dyn Container>,
) -> (Vec<Range<u64>>, u64) {
    let (sf, ef) = (create(src), create(expected));
    let mut extents: Vec<Range<u64>> = Vec::new();
    let mut pos = 0;
    for p in pieces {
        let (len, bytes, data) = match *p {
            Piece::Hole(n) => {
                // Garbage at both ends of the hole (all of it if small): next to the data ranges, where an
                // off-by-one read would land.
                let edge = n.min(256 << 10);
                sf.write_all_at(&vec![0xA5; edge as usize], pos).unwrap();
                sf.write_all_at(&vec![0x5A; edge as usize], pos + n - edge).unwrap();
                (n, Vec::new(), false)
            }
            Piece::Zeros(n) => (n, vec![0; n as usize], true),
            Piece::Noise(n, seed) => (n, noise(n as usize, seed), true),
            Piece::Fill(n, b) => (n, vec![b; n as usize], true),
        };
        if data {
            sf.write_all_at(&bytes, pos).unwrap();
            if bytes.iter().any(|&b| b != 0) {
                ef.write_all_at(&bytes, pos).unwrap();
            }
            match extents.last_mut() {
                Some(last) if last.end == pos => last.end += len,
                _ => extents.push(pos..pos + len),
            }
        }
        pos += len;
    }
    let size = pos + tail;
    // The source file may be shorter than the image: the rest reads as zeros.
    ef.set_len(c.map_or(size, |c| c.virtual_size(size))).unwrap();
    (extents, size)
}

/// Bytes from a xorshift generator: no structure for deflate to find.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    crate::common::xorshift_bytes(seed, len).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_format_reads_back_as_the_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let pieces = [
        Piece::Noise(300_000, 1),
        Piece::Zeros(200_000),
        Piece::Hole(1_500_000),
        Piece::Fill(70_000, 0x42),
        Piece::Hole(3 << 20),
        Piece::Noise(123_457, 2),
    ];
    for c in containers(Vhdx::DEFAULT_BLOCK_SIZE, Vmdk::DEFAULT_COMPRESSION_LEVEL) {
        let (src, expected, out) = (dir.path().join("src"), dir.path().join("expected"), dir.path().join("out"));
        let (extents, size) = build(&pieces, 4321, &src, &expected, Some(c.as_ref()));
        let f = File::open(&src).unwrap();
        let image = RawImage::new(&f, size, extents).unwrap();
        convert(c.as_ref(), &image, &out);
        verify(c.as_ref(), &out, &expected);
        // The same input gives the same bytes.
        convert(c.as_ref(), &image, &dir.path().join("again"));
        assert!(std::fs::read(&out).unwrap() == std::fs::read(dir.path().join("again")).unwrap(), "{}", c.name());
    }
}

#[test]
fn vhd_virtual_size_is_whole_mib_and_exact_for_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = Vhd { timestamp: Vhd::timestamp_from_unix(1_700_000_000), ..Vhd::new(Guid::from_u128(7)) };
    // 1 GiB + 1 byte: the CHS geometry covers less than the MiB-rounded size, so QEMU must use current_size.
    let (src, expected, out) = (dir.path().join("src"), dir.path().join("expected"), dir.path().join("out.vhd"));
    let pieces = [Piece::Noise(5000, 3), Piece::Hole((1 << 30) - 5000)];
    let (extents, size) = build(&pieces, 1, &src, &expected, Some(&vhd));
    assert_eq!(size, (1 << 30) + 1);
    let f = File::open(&src).unwrap();
    convert(&vhd, &RawImage::new(&f, size, extents).unwrap(), &out);
    verify(&vhd, &out, &expected);
    let footer: [u8; 512] = std::fs::read(&out).unwrap()[(1 << 30) + (1 << 20)..].try_into().unwrap();
    let chs = vhd::Chs::for_sectors(((1 << 30) + (1 << 20)) / 512);
    assert!(chs.sectors() * 512 < (1 << 30) + (1 << 20), "CHS alone would lose the tail");
    assert_eq!(&footer[28..32], b"win ");
    assert_eq!(u32::from_be_bytes(footer[24..28].try_into().unwrap()), 1_700_000_000 - 946_684_800);
}

#[test]
fn vhd_finishes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = Vhd::new(Guid::from_u128(8));
    assert!(vhd.in_place());
    let size = (3 << 20) + 17;
    let (src, expected) = (dir.path().join("out.vhd"), dir.path().join("expected"));
    build(
        &[Piece::Noise(1 << 20, 4), Piece::Zeros(10), Piece::Fill(1 << 20, 9)],
        size - (2 << 20) - 10,
        &src,
        &expected,
        Some(&vhd),
    );
    // build() filled the holes of src with garbage; here the output file is the raw image itself.
    std::fs::copy(&expected, &src).unwrap();
    let out = File::options().read(true).write(true).open(&src).unwrap();
    out.set_len(size).unwrap();
    vhd.finish_in_place(&out, size).unwrap();
    assert_eq!(out.metadata().unwrap().len(), (4 << 20) + 512);
    verify(&vhd, &src, &expected);
    // Finishing twice is refused: the file is no longer just the raw image.
    assert!(vhd.finish_in_place(&out, size).is_err());
}

#[test]
fn vhdx_bat_interleaves_past_the_first_chunk() {
    // With 512-byte sectors a chunk covers 4 GiB whatever the block size; data in the second and third chunks
    // lands behind sector-bitmap entries in the BAT.
    let dir = tempfile::tempdir().unwrap();
    let pieces = [
        Piece::Noise(4096, 5),
        Piece::Hole((4 << 30) - 4096 - 1000),
        Piece::Noise(3000, 6),
        Piece::Hole(4 << 30),
        Piece::Fill(1 << 20, 1),
    ];
    for block in [1 << 20, 32 << 20, 256 << 20] {
        let c = Vhdx { block_size: block, ..Vhdx::new(Guid::from_u128(1), Guid::from_u128(2), Guid::from_u128(3)) };
        let (src, expected, out) = (dir.path().join("src"), dir.path().join("expected"), dir.path().join("out.vhdx"));
        let (extents, size) = build(&pieces, 777, &src, &expected, Some(&c));
        let f = File::open(&src).unwrap();
        convert(&c, &RawImage::new(&f, size, extents).unwrap(), &out);
        verify(&c, &out, &expected);
        // At most five blocks stored (the data at 4 GiB and at 8 GiB may straddle two), the rest ZERO.
        assert!(std::fs::metadata(&out).unwrap().len() <= (4 << 20) + 5 * u64::from(block));
    }
}

#[test]
fn vmdk_bytes_do_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<Piece> =
        (0..40).map(|i| if i % 3 == 0 { Piece::Hole(100_000 + i) } else { Piece::Noise(150_000 + i, i) }).collect();
    let (src, expected) = (dir.path().join("src"), dir.path().join("expected"));
    let vmdk = Vmdk::new(0xCAFE_F00D);
    let (extents, size) = build(&pieces, 99, &src, &expected, Some(&vmdk));
    let f = File::open(&src).unwrap();
    let image = RawImage::new(&f, size, extents).unwrap();
    let mut outputs = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let out = dir.path().join(format!("out{threads}.vmdk"));
        pool.install(|| convert(&vmdk, &image, &out));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "VMDK bytes differ between thread counts");
    verify(&vmdk, &dir.path().join("out2.vmdk"), &expected);
}

#[test]
fn our_checksums_agree_with_qemu() {
    let dir = tempfile::tempdir().unwrap();
    // VHD: the footer QEMU writes carries the checksum our rule computes.
    let vpc = dir.path().join("q.vhd");
    qemu_ok(&["create", "-q", "-f", "vpc", "-o", "subformat=fixed", s(&vpc), "20M"]);
    let bytes = std::fs::read(&vpc).unwrap();
    let footer: [u8; 512] = bytes[bytes.len() - 512..].try_into().unwrap();
    assert_eq!(vhd::checksum(&footer), u32::from_be_bytes(footer[64..68].try_into().unwrap()));
    // QEMU's own geometry for the size it chose matches the specification's algorithm here.
    let current = u64::from_be_bytes(footer[48..56].try_into().unwrap());
    let chs = vhd::Chs::for_sectors(current / 512);
    assert_eq!(footer[56..60], [(chs.cylinders >> 8) as u8, chs.cylinders as u8, chs.heads, chs.sectors_per_track]);
    // VHDX: headers and region tables carry the CRC-32C of themselves with the checksum field zero.
    let vhdx = dir.path().join("q.vhdx");
    qemu_ok(&["create", "-q", "-f", "vhdx", s(&vhdx), "1G"]);
    let f = File::open(&vhdx).unwrap();
    for (offset, len) in [(64 << 10, 4096), (128 << 10, 4096), (192 << 10, 65536), (256 << 10, 65536)] {
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        buf[4..8].fill(0);
        assert_eq!(crc32c::crc32c(&buf), stored, "structure at {offset}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_sparse_images_round_trip(
        pieces in proptest::collection::vec(piece(), 1..12),
        tail in 0u64..200_000,
        vhdx_block_mib in 1u32..=2,
        vmdk_level in 0u32..=9,
    ) {
        let dir = tempfile::tempdir().unwrap();
        for c in containers(vhdx_block_mib << 20, vmdk_level) {
            let (src, expected, out) = (dir.path().join("src"), dir.path().join("expected"), dir.path().join("out"));
            let (extents, size) = build(&pieces, tail, &src, &expected, Some(c.as_ref()));
            let f = File::open(&src).unwrap();
            convert(c.as_ref(), &RawImage::new(&f, size, extents).unwrap(), &out);
            verify(c.as_ref(), &out, &expected);
        }
    }
}

fn piece() -> impl Strategy<Value = Piece> {
    let len = 1u64..600_000;
    prop_oneof![
        len.clone().prop_map(Piece::Hole),
        len.clone().prop_map(Piece::Zeros),
        (len.clone(), any::<u64>()).prop_map(|(n, seed)| Piece::Noise(n, seed)),
        (len, 1u8..).prop_map(|(n, b)| Piece::Fill(n, b)),
    ]
}

/// The real image: `/var/tmp/kiln-bench/large.raw` (or `KILN_LARGE_RAW`) into each format, checked, and timed
/// against `qemu-img convert` to the same format. Scratch files go to `KILN_SCRATCH` (default `/var/tmp`);
/// `KILN_FORMATS` (e.g. `vmdk,vhdx`) picks formats, `KILN_VMDK_LEVEL` the deflate level, `KILN_NO_QEMU` skips
/// timing qemu-img. Run with
/// `cargo test -p kiln-formats --release --test all vdisk::large_image_converts -- --ignored --nocapture`.
#[test]
#[ignore = "needs the 1.27 GB benchmark image and a few GB of scratch space"]
fn large_image_converts() {
    let raw = PathBuf::from(std::env::var("KILN_LARGE_RAW").unwrap_or("/var/tmp/kiln-bench/large.raw".into()));
    let scratch = std::env::var("KILN_SCRATCH").unwrap_or("/var/tmp".into());
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let f = File::open(&raw).unwrap();
    let image = RawImage::from_file(&f).unwrap();
    println!("{}: {} bytes, {} in data ranges", raw.display(), image.size(), image.allocated_bytes());
    let env = |name: &str| std::env::var(name).ok();
    let wanted = env("KILN_FORMATS").unwrap_or("vhd,vhdx,vmdk".into());
    let level = env("KILN_VMDK_LEVEL").map_or(Vmdk::DEFAULT_COMPRESSION_LEVEL, |l| l.parse().unwrap());
    for c in
        containers(Vhdx::DEFAULT_BLOCK_SIZE, level).into_iter().filter(|c| wanted.split(',').any(|w| w == c.name()))
    {
        let fmt = qemu_format(c.as_ref());
        let ours = dir.path().join(format!("ours.{}", c.name()));
        let t = Instant::now();
        convert(c.as_ref(), &image, &ours);
        let ours_time = t.elapsed();
        let theirs = dir.path().join(format!("qemu.{}", c.name()));
        let opts = match fmt {
            "vmdk" => "subformat=streamOptimized",
            "vpc" => "subformat=fixed,force_size=on",
            _ => "subformat=dynamic",
        };
        let t = Instant::now();
        if env("KILN_NO_QEMU").is_none() {
            qemu_ok(&["convert", "-f", "raw", "-O", fmt, "-o", opts, s(&raw), s(&theirs)]);
        } else {
            create(&theirs);
        }
        let qemu_time = t.elapsed();
        let (_, check) = qemu_img(&["check", "-f", fmt, s(&ours)]);
        qemu_ok(&["compare", "-f", "raw", "-F", fmt, s(&raw), s(&ours)]);
        let size = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).unwrap();
            format!("{:>11} bytes ({:>11} allocated)", m.len(), m.blocks() * 512)
        };
        println!(
            "{fmt:5} ours {ours_time:>8.2?} {} | qemu-img {qemu_time:>8.2?} {} | check: {}",
            size(&ours),
            size(&theirs),
            check.lines().next().unwrap_or(""),
        );
        std::fs::remove_file(ours).unwrap();
        std::fs::remove_file(theirs).unwrap();
    }
}
