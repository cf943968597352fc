//! `raw.zst`: `zstd -d` gives back the raw image, the frame records its size, and the bytes do not depend on
//! the number of zstd workers.

use std::process::Command;

use kiln_formats::image::zst::RawZst;

use super::util::{convert, noise, run, same_bytes, sparse_file, unzstd};
use crate::common::tool;

#[test]
fn zstd_gives_back_the_image() {
    struct Case {
        name: &'static str,
        size: u64,
        writes: Vec<(u64, Vec<u8>)>,
    }
    let cases = [
        Case { name: "empty", size: 0, writes: vec![] },
        Case { name: "all holes", size: 10 << 20, writes: vec![] },
        Case {
            name: "data, holes, zero blocks, odd size",
            size: (20 << 20) + 777,
            writes: vec![
                (0, noise(1, 100_000)),
                (3 << 20, vec![0; 1 << 20]),
                (9 << 20, noise(2, 2 << 20)),
                ((20 << 20) + 700, vec![7; 77]),
            ],
        },
    ];
    for c in cases {
        let dir = tempfile::tempdir().unwrap();
        let (src, zst, back) = (dir.path().join("d.raw"), dir.path().join("d.raw.zst"), dir.path().join("back.raw"));
        sparse_file(&src, c.size, &c.writes);
        convert(&RawZst::new(3, 2), &src, &zst, 2);
        unzstd(&zst, &back);
        same_bytes(&src, &back);
        // The content size is in the frame header.
        let list = run(Command::new(tool("zstd", "zstd")).args(["-l", "-v"]).arg(&zst));
        let decompressed = list.lines().find(|l| l.starts_with("Decompressed Size:"));
        assert!(
            decompressed.is_some_and(|l| l.ends_with(&format!("({} B)", c.size))),
            "{}: content size {} in\n{list}",
            c.name,
            c.size
        );
        assert!(list.contains("Check: XXH64"), "{}: content checksum in\n{list}", c.name);
        assert!(list.contains("# Zstandard Frames: 1\n"), "{}: one frame in\n{list}", c.name);
    }
}

#[test]
fn same_bytes_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    // Several 8 MiB jobs at level 3, with holes between them.
    sparse_file(&src, 60 << 20, &[(0, noise(3, 20 << 20)), (30 << 20, noise(4, 12 << 20)), ((59 << 20) + 3, vec![1])]);
    let outs: Vec<Vec<u8>> = [1, 2, 3]
        .iter()
        .map(|&threads| {
            let out = dir.path().join(format!("t{threads}.zst"));
            convert(&RawZst::new(3, threads), &src, &out, 1);
            std::fs::read(&out).unwrap()
        })
        .collect();
    assert!(outs[0] == outs[1], "1 and 2 zstd workers differ");
    assert!(outs[0] == outs[2], "1 and 3 zstd workers differ");
    // 0 is taken as 1, not zstd's single-threaded mode.
    let zero = dir.path().join("t0.zst");
    convert(&RawZst::new(3, 0), &src, &zero, 1);
    assert!(std::fs::read(&zero).unwrap() == outs[0], "0 workers differs from 1");
}
