//! Helpers: sparse image files, conversions on a pool of a given size, and the independent tools.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_formats::image::{Container, RawImage};

use crate::common::tool;

/// Writes a sparse file at `path`: `size` bytes of holes with `writes` (offset, bytes) on top. Written zeros
/// are allocated zero blocks, not holes.
pub fn sparse_file(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, data) in writes {
        assert!(off + data.len() as u64 <= size, "write beyond {size}");
        f.write_all_at(data, *off).unwrap();
    }
}

/// `len` bytes that compress a little, from `seed` (xorshift, low bits masked).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    crate::common::xorshift_bytes(seed, len).map(|b| b & 0x3f).collect()
}

/// Converts the raw image at `image` with `container` into `out`, on a rayon pool of `threads` threads.
pub fn convert(container: &dyn Container, image: &Path, out: &Path, threads: usize) {
    let src = File::open(image).unwrap();
    let img = RawImage::from_file(&src).unwrap();
    let dst = File::create(out).unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| container.convert(&img, &dst, &()))
        .unwrap_or_else(|e| panic!("{} of {}: {e}", container.name(), image.display()));
}

/// Runs `cmd` (LC_ALL=C) and returns its stdout then stderr; panics with them if it fails.
pub fn run(cmd: &mut Command) -> String {
    let (ok, text) = try_run(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

/// Runs `cmd` (LC_ALL=C): whether it succeeded, and its stdout then stderr.
pub fn try_run(cmd: &mut Command) -> (bool, String) {
    let out = crate::common::run(cmd);
    (out.ok, out.text)
}

/// Asserts with `cmp` that two files have the same bytes.
pub fn same_bytes(a: &Path, b: &Path) {
    run(Command::new(tool("cmp", "diffutils")).arg(a).arg(b));
}

/// Bytes allocated on disk for `path`.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `zstd -d` of `zst` into `out` (after `zstd -t`).
pub fn unzstd(zst: &Path, out: &Path) {
    let zstd = tool("zstd", "zstd");
    run(Command::new(&zstd).args(["-q", "-t"]).arg(zst));
    run(Command::new(&zstd).args(["-q", "-d", "-f", "-o"]).arg(out).arg(zst));
}

/// `gzip -t`, then `tar -xSzf` of `tgz` into a fresh `dir`; the path of the extracted `disk.raw`.
pub fn untar(tgz: &Path, dir: &Path) -> PathBuf {
    run(Command::new(tool("gzip", "gzip")).arg("-t").arg(tgz));
    std::fs::create_dir_all(dir).unwrap();
    run(Command::new(tool("tar", "tar")).arg("-xSzf").arg(tgz).arg("-C").arg(dir));
    let names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["disk.raw"], "the archive holds exactly disk.raw");
    dir.join("disk.raw")
}

/// The lines of `tar -tvf` (UTC, full times) of `tgz`.
pub fn tar_list(tgz: &Path) -> Vec<String> {
    run(Command::new(tool("tar", "tar")).args(["--utc", "--full-time", "-tvzf"]).arg(tgz))
        .lines()
        .map(str::to_owned)
        .collect()
}
