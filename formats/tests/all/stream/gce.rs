//! `gce`: GNU tar lists exactly `disk.raw` and extracts (`-xS`) a sparse file equal to the image; Python's
//! tarfile reads the same sparse map and data; `gzip -t` passes; the bytes do not depend on the thread count.

use std::process::Command;

use kiln_formats::image::gce::Gce;

use super::util::{allocated, convert, noise, run, same_bytes, sparse_file, tar_list, untar};
use crate::common::tool;

/// Python's tarfile: prints the member's type, size and sparse data regions; with a raw image path, also
/// checks that the member reads back as exactly that image.
const PY_READ: &str = r#"
import sys, tarfile
with tarfile.open(sys.argv[1], "r:gz") as t:
    assert t.getnames() == ["disk.raw"], t.getnames()
    m = t.getmember("disk.raw")
    regions = [(o, n) for (o, n) in (m.sparse or []) if n > 0]
    if len(sys.argv) > 2:
        data = t.extractfile(m).read()
        with open(sys.argv[2], "rb") as f:
            assert data == f.read(), "tarfile reads other bytes than the image"
    print(m.type.decode(), m.size, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime, regions)
"#;

fn python(args: &[&std::path::Path]) -> String {
    run(Command::new(tool("python3", "python3")).arg("-c").arg(PY_READ).args(args))
}

#[test]
fn lists_exactly_disk_raw() {
    let dir = tempfile::tempdir().unwrap();
    let (src, tgz) = (dir.path().join("d.raw"), dir.path().join("d.raw.tar.gz"));
    let size = (5 << 20) + 100;
    sparse_file(&src, size, &[(4096, noise(1, 10_000))]);
    convert(&Gce::new(1_700_000_000, 6), &src, &tgz, 2);
    let lines = tar_list(&tgz);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields, ["-rw-r--r--", "root/root", &size.to_string(), "2023-11-14", "22:13:20", "disk.raw"]);
    let py = python(&[&tgz]);
    assert_eq!(py.trim(), format!("S {size} 420 0 0 root root 1700000000 [(4096, 12288)]"));
    assert!(Gce::default().mtime == 0 && Gce::SUFFIX == ".raw.tar.gz");
}

#[test]
fn extracts_the_image_sparse() {
    struct Case {
        name: &'static str,
        size: u64,
        writes: Vec<(u64, Vec<u8>)>,
        regions: usize,
    }
    // 100 single data blocks 64 KiB apart, with written zero blocks between some: far more than the 4 map
    // entries of the main header, so extension headers are needed.
    let many: Vec<(u64, Vec<u8>)> =
        (0..100u64).flat_map(|i| [(i * 65536, noise(i, 4096)), (i * 65536 + 8192, vec![0; 8192])]).collect();
    let cases = [
        Case { name: "empty", size: 0, writes: vec![], regions: 0 },
        Case { name: "no data", size: 16 << 20, writes: vec![], regions: 0 },
        Case {
            name: "three regions, odd size, zero blocks",
            size: (12 << 20) + 333,
            writes: vec![
                (0, noise(2, 5000)),
                (8192, vec![0; 1 << 20]),
                (4 << 20, noise(3, 1 << 20)),
                ((12 << 20) + 300, vec![9; 33]),
            ],
            regions: 3,
        },
        Case { name: "exactly four, to the end", size: 4 * 8192, writes: four_blocks(), regions: 4 },
        Case { name: "100 regions", size: 100 * 65536, writes: many, regions: 100 },
    ];
    for c in cases {
        let dir = tempfile::tempdir().unwrap();
        let (src, tgz) = (dir.path().join("d.raw"), dir.path().join("d.raw.tar.gz"));
        sparse_file(&src, c.size, &c.writes);
        convert(&Gce::default(), &src, &tgz, 2);
        let out = untar(&tgz, &dir.path().join("x"));
        same_bytes(&src, &out);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), c.size, "{}", c.name);
        if c.size > 0 {
            assert!(allocated(&out) < c.size, "{}: extracted file is not sparse", c.name);
        }
        let py = python(&[&tgz, &src]);
        let regions = py.matches("), (").count() + usize::from(py.contains("[("));
        assert_eq!(regions, c.regions, "{}: {py}", c.name);
    }
}

/// Four 4 KiB data blocks 8 KiB apart, the last ending 4 KiB before the end.
fn four_blocks() -> Vec<(u64, Vec<u8>)> {
    (0..4u64).map(|i| (i * 8192 + 4096, noise(10 + i, 4096))).collect()
}

#[test]
fn beyond_8_gib_uses_base_256_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (src, tgz) = (dir.path().join("d.raw"), dir.path().join("d.raw.tar.gz"));
    let size = (8 << 30) + 3 * 4096;
    let tail = 8u64 << 30;
    sparse_file(&src, size, &[(0, noise(1, 4096)), (tail + 4096, noise(2, 4096))]);
    convert(&Gce::default(), &src, &tgz, 2);
    let fields: Vec<String> = tar_list(&tgz)[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(fields[2], size.to_string());
    let py = python(&[&tgz]);
    assert!(py.starts_with(&format!("S {size} ")), "{py}");
    assert!(py.contains(&format!("[(0, 4096), ({}, 4096)]", tail + 4096)), "{py}");
    let out = untar(&tgz, &dir.path().join("x"));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    assert!(allocated(&out) < 1 << 20);
    let cmp = tool("cmp", "diffutils");
    run(Command::new(&cmp).args(["-n", "8192"]).arg(&src).arg(&out));
    run(Command::new(&cmp).args(["-i", &tail.to_string(), "-n", "12288"]).arg(&src).arg(&out));
}

#[test]
fn same_bytes_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    sparse_file(&src, 40 << 20, &[(0, noise(5, 9 << 20)), (20 << 20, noise(6, 7 << 20)), (39 << 20, vec![1; 100])]);
    let outs: Vec<Vec<u8>> = [1, 2, 3]
        .iter()
        .map(|&threads| {
            let out = dir.path().join(format!("t{threads}.tar.gz"));
            convert(&Gce::default(), &src, &out, threads);
            std::fs::read(&out).unwrap()
        })
        .collect();
    assert!(outs[0] == outs[1], "1 and 2 threads differ");
    assert!(outs[0] == outs[2], "1 and 3 threads differ");
    let out = untar(&dir.path().join("t1.tar.gz"), &dir.path().join("x"));
    same_bytes(&src, &out);
}
