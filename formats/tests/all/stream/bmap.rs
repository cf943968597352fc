//! The block map: `bmaptool copy` with it reproduces the raw image from the raw file and from `raw.zst`,
//! verifying every range's checksum and the map's own; a wrong checksum makes it fail. SHA256SUMS files are
//! accepted by `sha256sum -c`, and rejected when a file changed.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use kiln_formats::image::RawImage;
use kiln_formats::image::bmap;
use kiln_formats::image::checksum::{Sha256Sums, sha256_path};
use kiln_formats::image::zst::RawZst;

use super::util::{convert, noise, run, same_bytes, sparse_file, try_run};
use crate::common::tool;

fn generate(image: &Path, threads: usize) -> String {
    let f = File::open(image).unwrap();
    let img = RawImage::from_file(&f).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| bmap::generate(&img, &())).unwrap()
}

fn bmaptool_copy(image: &Path, map: &Path, dest: &Path) -> (bool, String) {
    try_run(Command::new(tool("bmaptool", "bmap-tools")).arg("copy").arg("--bmap").arg(map).arg(image).arg(dest))
}

/// An image with data across several 8 MiB pieces, holes, written zero blocks and a short last block.
fn image(path: &Path) -> u64 {
    let size = (30 << 20) + 1234;
    sparse_file(
        path,
        size,
        &[
            (0, noise(1, 70_000)),
            (1 << 20, vec![0; 1 << 20]),
            ((7 << 20) + 5, noise(2, 3 << 20)),
            ((20 << 20) + 4096 * 3, noise(3, 4096)),
            (size - 34, vec![5; 34]),
        ],
    );
    size
}

#[test]
fn bmaptool_copies_raw_and_zst() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (raw, zst, map) = (d.join("disk.raw"), d.join("disk.raw.zst"), d.join("disk.bmap"));
    let size = image(&raw);
    let xml = generate(&raw, 2);
    std::fs::write(&map, &xml).unwrap();
    assert!(xml.contains(&format!("<ImageSize> {size} </ImageSize>")));
    convert(&RawZst::default(), &raw, &zst, 1);
    for (src, dest) in [(&raw, d.join("from-raw")), (&zst, d.join("from-zst"))] {
        let (ok, out) = bmaptool_copy(src, &map, &dest);
        assert!(ok, "bmaptool copy {}:\n{out}", src.display());
        same_bytes(&raw, &dest);
    }
    // Fewer blocks are mapped than bmaptool itself maps from the file's extents (written zero blocks are not).
    let own = d.join("own.bmap");
    run(Command::new(tool("bmaptool", "bmap-tools")).arg("create").arg("-o").arg(&own).arg(&raw));
    let count = |x: &str| {
        let s = x.rsplit("<MappedBlocksCount>").next().unwrap();
        s[..s.find('<').unwrap()].trim().parse::<u64>().unwrap()
    };
    assert!(count(&xml) < count(&std::fs::read_to_string(&own).unwrap()));
}

#[test]
fn bmaptool_copies_an_image_without_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (raw, map, dest) = (d.join("disk.raw"), d.join("disk.bmap"), d.join("dest"));
    sparse_file(&raw, (10 << 20) + 5, &[]);
    let xml = generate(&raw, 2);
    assert!(xml.contains("<MappedBlocksCount> 0 </MappedBlocksCount>"), "{xml}");
    std::fs::write(&map, &xml).unwrap();
    let (ok, out) = bmaptool_copy(&raw, &map, &dest);
    assert!(ok, "{out}");
    same_bytes(&raw, &dest);
}

#[test]
fn bmaptool_rejects_wrong_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (raw, map) = (d.join("disk.raw"), d.join("disk.bmap"));
    image(&raw);
    let xml = generate(&raw, 2);
    // A range checksum changed, and the map's own checksum made right again: the copy's verification fails.
    let at = xml.find("chksum=\"").unwrap() + 8;
    let flipped = if &xml[at..=at] == "0" { "1" } else { "0" };
    let bad_range = format!("{}{flipped}{}", &xml[..at], &xml[at + 1..]);
    std::fs::write(&map, resum(&bad_range)).unwrap();
    let (ok, out) = bmaptool_copy(&raw, &map, &d.join("a"));
    assert!(!ok && out.contains("checksum mismatch"), "{out}");
    // The map edited (a comment) without fixing its checksum: refused before copying.
    std::fs::write(&map, xml.replacen("<!-- Size of a block", "<!-- size of a block", 1)).unwrap();
    let (ok, out) = bmaptool_copy(&raw, &map, &d.join("b"));
    assert!(!ok && out.contains("checksum mismatch for bmap file"), "{out}");
}

/// `xml` with its BmapFileChecksum recomputed, with Python's hashlib as bmaptool does.
fn resum(xml: &str) -> String {
    let start = xml.find("<BmapFileChecksum> ").unwrap() + 19;
    let zeroed = format!("{}{}{}", &xml[..start], "0".repeat(64), &xml[start + 64..]);
    let script = "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())";
    let mut child = Command::new(tool("python3", "python3"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), zeroed.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let sum = String::from_utf8(out.stdout).unwrap();
    format!("{}{}{}", &xml[..start], sum.trim(), &xml[start + 64..])
}

#[test]
fn same_map_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    image(&raw);
    let one = generate(&raw, 1);
    assert_eq!(one, generate(&raw, 2));
    assert_eq!(one, generate(&raw, 3));
}

#[test]
fn sha256sum_checks_the_sums() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (raw, zst, odd) = (d.join("disk.raw"), d.join("disk.raw.zst"), d.join("odd \\name"));
    image(&raw);
    convert(&RawZst::default(), &raw, &zst, 1);
    std::fs::write(&odd, b"x").unwrap();
    let mut sums = Sha256Sums::new();
    for name in ["disk.raw", "disk.raw.zst", "odd \\name"] {
        sums.push(name, &sha256_path(&d.join(name)).unwrap()).unwrap();
    }
    std::fs::write(d.join("SHA256SUMS"), sums.to_string()).unwrap();
    let sha256sum = tool("sha256sum", "coreutils");
    let out = run(Command::new(&sha256sum).args(["--strict", "-c", "SHA256SUMS"]).current_dir(d));
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.ends_with(": OK")), "{out}");
    // The same lines sha256sum itself prints.
    let own = run(Command::new(&sha256sum).args(["disk.raw", "disk.raw.zst", "odd \\name"]).current_dir(d));
    assert_eq!(own, sums.to_string());
    std::fs::write(&odd, b"y").unwrap();
    let (ok, out) = try_run(Command::new(&sha256sum).args(["-c", "SHA256SUMS"]).current_dir(d));
    assert!(!ok && out.contains("FAILED"), "{out}");
}
