//! Every format kiln writes, made by kiln's own writers from one small raw image, opened and streamed back.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_formats::image::{self, Container, RawImage};
use sha2::{Digest, Sha256};

use super::pipe::{BLOCK, is_zero};
use super::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 6 * MIB;

/// Noise that does not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A 6 MiB raw disk: a boot sector, incompressible data, a compressible run, zeros written as data, an
/// unaligned scrap, a hole, and bytes at the very end.
fn raw_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut want = vec![0u8; SIZE as usize];
    let mut put = |at: u64, data: &[u8]| want[at as usize..at as usize + data.len()].copy_from_slice(data);
    let mut boot = noise(446, 1);
    boot.extend_from_slice(&[0; 64]);
    boot.extend_from_slice(&[0x55, 0xAA]);
    put(0, &boot);
    put(MIB, &noise(100 << 10, 2));
    put(2 * MIB, &[0; 64 << 10]);
    put(3 * MIB + 512, b"scrap of data, unaligned");
    put(4 * MIB, &b"compressible ".repeat(40_000));
    put(SIZE - 10, b"the end..!");
    let path = dir.join("disk.raw");
    let f = File::create(&path).unwrap();
    f.set_len(SIZE).unwrap();
    // Write the non-zero 4 KiB blocks and the explicit zeros; leave the rest a hole.
    for (i, block) in want.chunks(BLOCK as usize).enumerate() {
        let at = i as u64 * BLOCK;
        if !is_zero(block) || (2 * MIB..2 * MIB + (64 << 10)).contains(&at) {
            f.write_all_at(block, at).unwrap();
        }
    }
    (path, want)
}

fn convert(raw: &Path, container: &dyn Container, out: &Path) {
    let f = File::open(raw).unwrap();
    let img = RawImage::from_file(&f).unwrap();
    let o = File::options().read(true).write(true).create(true).truncate(true).open(out).unwrap();
    container.convert(&img, &o, &()).unwrap();
}

fn bmap_of(raw: &Path) -> String {
    let f = File::open(raw).unwrap();
    image::bmap::generate(&RawImage::from_file(&f).unwrap(), &()).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    image::checksum::hex(&Sha256::digest(bytes).into())
}

/// Streams everything, checking the stream's promises, and returns the image and the chunks' ranges.
fn drain(opened: &mut Opened, size: u64) -> Result<(Vec<u8>, Vec<Range<u64>>)> {
    let mut image = vec![0u8; size as usize];
    let mut ranges = Vec::new();
    let mut end = 0;
    while let Some(c) = opened.stream.next()? {
        let r = c.range();
        assert!(!c.data.is_empty() && r.start >= end && r.end <= size, "chunk {r:?} after {end}");
        assert!(c.data.len() <= pipe::MAX_CHUNK);
        // No whole aligned 4 KiB block of zeros inside a chunk.
        let first = r.start.next_multiple_of(BLOCK);
        let mut b = first;
        while b + BLOCK <= r.end {
            let s = (b - r.start) as usize;
            assert!(!is_zero(&c.data[s..s + BLOCK as usize]), "zero block at {b} in chunk {r:?}");
            b += BLOCK;
        }
        image[r.start as usize..r.end as usize].copy_from_slice(&c.data);
        end = r.end;
        ranges.push(r);
    }
    assert!(opened.stream.next()?.is_none());
    Ok((image, ranges))
}

fn req(source: &Path) -> Request {
    Request { source: source.display().to_string(), ..Request::default() }
}

fn open_ok(r: &Request) -> Opened {
    open(r).unwrap_or_else(|e| panic!("{}: {e:#}", r.source))
}

#[test]
fn every_format_streams_back_to_the_raw_image() {
    use image::qcow2::{ClusterSize, Compression, Qcow2};
    let dir = tempfile::tempdir().unwrap();
    let (raw, want) = raw_image(dir.path());
    let vhd = image::vhd::Vhd::new(kiln_formats::disk::Guid::v4_from_bytes([7; 16]));
    let cases: Vec<(&str, Box<dyn Container>, SourceFormat)> = vec![
        ("disk.raw.zst", Box::new(image::zst::RawZst::new(3, 1)), SourceFormat::RawZst),
        ("zstd.qcow2", Box::new(Qcow2::new(Compression::zstd()).unwrap()), SourceFormat::Qcow2),
        (
            "zstd256k.qcow2",
            Box::new(
                Qcow2::new(Compression::Zstd { level: 1 })
                    .unwrap()
                    .with_cluster_size(ClusterSize::new(256 << 10).unwrap()),
            ),
            SourceFormat::Qcow2,
        ),
        ("zlib.qcow2", Box::new(Qcow2::new(Compression::zlib()).unwrap()), SourceFormat::Qcow2),
        ("plain.qcow2", Box::new(Qcow2::new(Compression::None).unwrap()), SourceFormat::Qcow2),
        ("disk.vhd", Box::new(vhd), SourceFormat::Vhd),
        ("disk.vmdk", Box::new(image::vmdk::Vmdk::new(1)), SourceFormat::Vmdk),
        ("disk.raw.tar.gz", Box::new(image::gce::Gce::new(0, 6)), SourceFormat::Gce),
    ];
    let mut all = vec![(raw.clone(), SourceFormat::Raw)];
    for (file, container, format) in cases {
        let out = dir.path().join(file);
        convert(&raw, container.as_ref(), &out);
        all.push((out, format));
    }
    for (path, format) in all {
        let mut o = open_ok(&req(&path));
        assert_eq!(o.format, format, "{}", path.display());
        assert_eq!(o.local.as_deref(), Some(path.as_path()));
        let size = o.size.unwrap_or(SIZE);
        assert_eq!(size, SIZE, "{}", path.display());
        let map = o.map.clone();
        let (got, ranges) = drain(&mut o, size).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(got == want, "{}: the image differs", path.display());
        assert!(o.checks.is_empty(), "{:?}", o.checks);
        assert!(o.stream.source_bytes() > 0);
        // Every chunk lies in the map, when there is one; the explicit zeros are a hole.
        if let Some(map) = map {
            assert!(map.windows(2).all(|w| w[0].end <= w[1].start), "{map:?}");
            for r in &ranges {
                assert!(
                    map.iter().any(|m| m.start <= r.start && r.end <= m.end),
                    "{}: {r:?} not in {map:?}",
                    path.display()
                );
            }
        }
        assert!(!ranges.iter().any(|r| r.start < 2 * MIB + 4096 && r.end > 2 * MIB), "{ranges:?}");
    }
}

/// A raw image with its block map and checksum beside it, as kiln writes them.
fn with_sides(dir: &Path, zst: bool) -> (PathBuf, Vec<u8>) {
    let (raw, want) = raw_image(dir);
    std::fs::write(dir.join("disk.raw.bmap"), bmap_of(&raw)).unwrap();
    let source = if zst {
        let out = dir.join("disk.raw.zst");
        convert(&raw, &image::zst::RawZst::new(3, 1), &out);
        out
    } else {
        raw
    };
    let sum = sha256_hex(&std::fs::read(&source).unwrap());
    let name = source.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(dir.join(format!("{name}.sha256")), format!("{sum}  {name}\n")).unwrap();
    (source, want)
}

#[test]
fn side_files_are_found_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (zst, want) = with_sides(dir.path(), true);
    let mut o = open_ok(&req(&zst));
    assert_eq!(o.bmap.as_deref(), Some(dir.path().join("disk.raw.bmap").to_str().unwrap()));
    let whats: Vec<&str> = o.checks.iter().map(|c| c.what.as_str()).collect();
    assert_eq!(whats, ["sha256 of the source", "bmap range checksums"]);
    assert!(o.checks[0].from.ends_with("disk.raw.zst.sha256"));
    assert_eq!(o.size, Some(SIZE));
    assert_eq!(drain(&mut o, SIZE).unwrap().0, want);

    // A local raw image with a bmap: the bmap's ranges are read and checked, the whole-file sum skipped…
    let raw = dir.path().join("disk.raw");
    let sum = sha256_hex(&want);
    std::fs::write(dir.path().join("disk.raw.sha256"), format!("{sum}  disk.raw\n")).unwrap();
    let mut o = open_ok(&req(&raw));
    let whats: Vec<&str> = o.checks.iter().map(|c| c.what.as_str()).collect();
    assert_eq!(whats, ["bmap range checksums"]);
    assert_eq!(drain(&mut o, SIZE).unwrap().0, want);
    // … unless --sha256 is given.
    let mut o = open_ok(&Request { sha256: Some(sum.to_uppercase()), ..req(&raw) });
    assert_eq!(o.checks[0], Check { what: "sha256 of the source".into(), from: "--sha256".into() });
    assert_eq!(o.checks.len(), 2);
    assert_eq!(drain(&mut o, SIZE).unwrap().0, want);
    // --no-bmap: the .sha256 beside is used.
    let mut o = open_ok(&Request { no_bmap: true, ..req(&raw) });
    assert!(o.bmap.is_none());
    assert_eq!(o.checks.len(), 1);
    assert!(o.checks[0].from.ends_with("disk.raw.sha256"));
    assert_eq!(drain(&mut o, SIZE).unwrap().0, want);
}

/// Opens and streams everything: the error, if any.
fn stream_result(r: &Request) -> Option<String> {
    match open(r) {
        Err(e) => Some(format!("{e:#}")),
        Ok(mut o) => {
            let size = o.size.unwrap_or(SIZE);
            drain(&mut o, size).err().map(|e| format!("{e:#}"))
        }
    }
}

fn stream_err(r: &Request) -> String {
    stream_result(r).unwrap_or_else(|| panic!("{}: the stream should fail", r.source))
}

#[test]
fn checksum_mismatches_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (zst, _) = with_sides(dir.path(), true);
    let name = zst.display().to_string();

    let wrong = "ab".repeat(32);
    let err = stream_err(&Request { sha256: Some(wrong.clone()), ..req(&zst) });
    assert!(err.contains(&name) && err.contains(&wrong) && err.contains("--sha256"), "{err}");
    let err = stream_err(&Request { sha256: Some("xyz".into()), ..req(&zst) });
    assert!(err.contains("--sha256") && err.contains("not a sha256"), "{err}");

    // A wrong .sha256 beside.
    let sums = dir.path().join("disk.raw.zst.sha256");
    let good = std::fs::read_to_string(&sums).unwrap();
    std::fs::write(&sums, format!("{wrong}  disk.raw.zst\n")).unwrap();
    let err = stream_err(&req(&zst));
    assert!(err.contains("sha256 mismatch") && err.contains("disk.raw.zst.sha256"), "{err}");
    std::fs::write(&sums, "not a checksum file\n").unwrap();
    let err = stream_err(&req(&zst));
    assert!(err.contains("disk.raw.zst.sha256") && err.contains("not a sha256"), "{err}");
    std::fs::write(&sums, good).unwrap();

    // A bmap range checksum changed, the file checksum redone: the range is named.
    let bmap_path = dir.path().join("disk.raw.bmap");
    let bmap = std::fs::read_to_string(&bmap_path).unwrap();
    let first = bmap.find("chksum=\"").unwrap() + 8;
    let mut tampered = bmap.clone();
    tampered.replace_range(first..first + 64, &"0".repeat(63).chars().chain("1".chars()).collect::<String>());
    let own_at = tampered.find("<BmapFileChecksum> ").unwrap() + 19;
    let own = tampered[own_at..own_at + 64].to_owned();
    let zeroed = tampered.replace(&own, &"0".repeat(64));
    let tampered = zeroed.replacen(&"0".repeat(64), &sha256_hex(zeroed.as_bytes()), 1);
    std::fs::write(&bmap_path, &tampered).unwrap();
    let err = stream_err(&Request { no_bmap: false, ..req(&zst) });
    assert!(err.contains("blocks 0-") && err.contains("disk.raw.bmap") && err.contains(&"0".repeat(63)), "{err}");
    // The same on a local raw image read by the bmap.
    let err = stream_err(&req(&dir.path().join("disk.raw")));
    assert!(err.contains("blocks 0-") && err.contains("hash to sha256"), "{err}");

    // A corrupt bmap: its own checksum fails.
    std::fs::write(&bmap_path, bmap.replacen("<ImageSize>", "<ImageSize> ", 1)).unwrap();
    let err = stream_err(&req(&zst));
    assert!(err.contains("disk.raw.bmap") && err.contains("checksum is wrong"), "{err}");
    // --no-bmap ignores it.
    open_ok(&Request { no_bmap: true, ..req(&zst) });
}

#[test]
fn truncated_and_garbage_sources_are_clean_errors() {
    use image::qcow2::{Compression, Qcow2};
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = raw_image(dir.path());
    let files: Vec<(&str, Box<dyn Container>)> = vec![
        ("d.raw.zst", Box::new(image::zst::RawZst::new(3, 1))),
        ("d.qcow2", Box::new(Qcow2::new(Compression::zstd()).unwrap())),
        ("z.qcow2", Box::new(Qcow2::new(Compression::zlib()).unwrap())),
        ("d.vmdk", Box::new(image::vmdk::Vmdk::new(1))),
        ("d.raw.tar.gz", Box::new(image::gce::Gce::new(0, 6))),
    ];
    for (name, c) in files {
        let path = dir.path().join(name);
        convert(&raw, c.as_ref(), &path);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [3, 100, 600, bytes.len() / 3, bytes.len() / 2, bytes.len() - 700, bytes.len() - 1] {
            let t = dir.path().join(format!("t-{name}"));
            std::fs::write(&t, &bytes[..cut]).unwrap();
            // A qcow2 cut in its refcount tables (at the end) still has all its data.
            let Some(err) = stream_result(&req(&t)) else {
                assert!(name.ends_with("qcow2") && cut > bytes.len() / 2, "{name} cut at {cut}: no error");
                continue;
            };
            assert!(err.contains(t.to_str().unwrap()), "{name} cut at {cut}: {err}");
        }
        // Garbage in the middle: an error or, where the format has no checksum, some image; never a panic.
        for seed in 0..8u64 {
            let mut g = bytes.clone();
            let at = (seed as usize * 7919 * 131) % g.len();
            let junk = noise(64.min(g.len() - at), seed + 10);
            g[at..at + junk.len()].copy_from_slice(&junk);
            let t = dir.path().join(format!("g-{name}"));
            std::fs::write(&t, &g).unwrap();
            if let Ok(mut o) = open(&req(&t)) {
                let size = o.size.unwrap_or(SIZE).min(64 * MIB);
                let _ = drain(&mut o, size);
            }
        }
    }
    let junk = dir.path().join("junk");
    std::fs::write(&junk, noise(4096, 3)).unwrap();
    let err = stream_err(&req(&junk));
    assert!(err.contains("not a disk image"), "{err}");
    std::fs::write(&junk, b"\xfd7zXZ\0 more").unwrap();
    assert!(stream_err(&req(&junk)).contains("xz"));
}

/// Serves the files of `dir` over HTTP/1.1 on 127.0.0.1 (404 for missing ones), one connection at a time.
fn serve(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
            let _ = match std::fs::read(dir.join(&path)) {
                Ok(body) => conn
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .as_bytes(),
                    )
                    .and_then(|()| conn.write_all(&body)),
                Err(_) => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            };
        }
    });
    format!("http://{addr}")
}

#[test]
fn urls_stream_with_their_side_files() {
    let dir = tempfile::tempdir().unwrap();
    let (zst, want) = with_sides(dir.path(), true);
    let base = serve(dir.path().to_path_buf());
    let url = format!("{base}/disk.raw.zst");
    let mut o = open_ok(&Request { source: url.clone(), ..Request::default() });
    assert_eq!(o.format, SourceFormat::RawZst);
    assert!(o.local.is_none());
    assert_eq!(o.bmap.as_deref(), Some(format!("{base}/disk.raw.bmap").as_str()));
    assert_eq!(o.checks.len(), 2);
    assert_eq!(o.checks[0].from, format!("{url}.sha256"));
    assert_eq!(drain(&mut o, SIZE).unwrap().0, want);
    assert_eq!(o.stream.source_bytes(), std::fs::metadata(&zst).unwrap().len());

    // A raw image over HTTP, no side files; and a fixed VHD, whose footer is left out.
    let vhd = image::vhd::Vhd::new(kiln_formats::disk::Guid::v4_from_bytes([7; 16]));
    convert(&dir.path().join("disk.raw"), &vhd, &dir.path().join("disk.vhd"));
    for name in ["disk.raw", "disk.vhd"] {
        let mut o = open_ok(&Request { source: format!("{base}/{name}"), no_bmap: true, ..Request::default() });
        assert_eq!(drain(&mut o, SIZE).unwrap().0, want, "{name}");
    }

    // A corrupted body: the stream fails naming the URL.
    let mut bytes = std::fs::read(&zst).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(dir.path().join("bad.raw.zst"), &bytes).unwrap();
    let sum = sha256_hex(&std::fs::read(&zst).unwrap());
    std::fs::write(dir.path().join("bad.raw.zst.sha256"), format!("{sum}  bad.raw.zst\n")).unwrap();
    let err = stream_err(&Request { source: format!("{base}/bad.raw.zst"), no_bmap: true, ..Request::default() });
    assert!(err.contains("bad.raw.zst"), "{err}");

    // Missing: 404 named.
    let err = stream_err(&Request { source: format!("{base}/nothing.raw"), ..Request::default() });
    assert!(err.contains("404") && err.contains("nothing.raw"), "{err}");

    // qcow2 needs random access.
    use image::qcow2::{Compression, Qcow2};
    convert(&dir.path().join("disk.raw"), &Qcow2::new(Compression::zstd()).unwrap(), &dir.path().join("d.qcow2"));
    let err = stream_err(&Request { source: format!("{base}/d.qcow2"), ..Request::default() });
    assert!(err.contains("random access") && err.contains("raw.zst"), "{err}");
}

#[test]
fn dropping_a_stream_midway_stops_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (zst, _) = with_sides(dir.path(), true);
    let mut o = open_ok(&req(&zst));
    assert!(o.stream.next().unwrap().is_some());
    drop(o);
}

#[test]
fn sha256_files_and_bmap_ranges_parse() {
    let d = "a".repeat(64);
    assert_eq!(sums::lookup(format!("{d}  disk.raw\n").as_bytes(), "disk.raw", "f").unwrap(), d);
    assert_eq!(sums::lookup(format!("{d} *other\n").as_bytes(), "disk.raw", "f").unwrap(), d);
    let two = format!("{}  a\n{d}  dir/disk.raw\n", "b".repeat(64));
    assert_eq!(sums::lookup(two.as_bytes(), "disk.raw", "f").unwrap(), d);
    assert!(sums::lookup(format!("{}  a\n{d}  b\n", "c".repeat(64)).as_bytes(), "disk.raw", "f").is_err());
    assert!(sums::lookup(b"", "disk.raw", "f").is_err());

    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = raw_image(dir.path());
    let text = bmap_of(&raw);
    let b = bmap::parse(text.as_bytes(), "x.bmap").unwrap();
    assert_eq!(b.image_size, SIZE);
    assert!(b.has_checksums());
    assert_eq!(b.map().first().map(|r| r.start), Some(0));
    assert_eq!(b.map().last().map(|r| r.end), Some(SIZE));
    assert!(bmap::parse(b"<bmap version=\"1.2\">", "x").is_err());
    assert!(bmap::parse(&text.as_bytes()[..text.len() / 2], "x").is_err());
}

#[test]
fn data_outside_the_block_map_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (zst, want) = with_sides(dir.path(), true);
    // The block map of another image of the same size, with the same first block and nothing else.
    let other = dir.path().join("other.raw");
    let f = File::create(&other).unwrap();
    f.set_len(SIZE).unwrap();
    f.write_all_at(&want[..4096], 0).unwrap();
    std::fs::write(dir.path().join("disk.raw.bmap"), bmap_of(&other)).unwrap();
    let err = stream_err(&req(&zst));
    assert!(err.contains("outside every range of the block map") && err.contains("disk.raw.bmap"), "{err}");
}
