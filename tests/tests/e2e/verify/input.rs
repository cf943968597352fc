//! What is not a whole image: a truncated disk fails naming the partition and the byte range that is missing, a
//! read past the end of a truncated filesystem names the file, the offset and what was read, containers and
//! compressed streams are named with what to do, a FIFO is refused without hanging. And the deepest tree the
//! build accepts verifies, while one level deeper is refused at build time.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::disk::sfdisk_json;
use kiln_tests::tools;

use super::{build_nix_image, fails_naming, verify};
use crate::util::{Run, build_demo_disk, kiln, kiln_cmd};

fn set_len(img: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(img).unwrap().set_len(len).unwrap();
}

/// A disk cut short inside its root partition (past everything the store uses, in the filesystem's free space):
/// each thing missing is named with its byte range, though every file verify reads is still there.
#[test]
fn a_truncated_disk_fails_naming_the_partition_and_the_missing_range() {
    let (_tmp, img) = build_demo_disk("efi", &[]);
    let table = sfdisk_json(&img);
    let root = &table["partitiontable"]["partitions"][1];
    let start = root["start"].as_u64().unwrap() * 512;
    let end = start + root["size"].as_u64().unwrap() * 512;
    let cut = std::fs::metadata(&img).unwrap().len() - (64 << 20);
    set_len(&img, cut);
    let r = verify(&img, &[]);
    fails_naming(
        &r,
        &[
            &format!(
                "partition 2 (Linux root (x86-64)): lies at bytes {start}..{end}, but the image ends at byte {cut}: \
                 bytes {cut}..{end} are missing (truncated)"
            ),
            &format!("partition 2 (Linux root (x86-64)): its ext4 filesystem is {} bytes", end - start),
            "the GPT's backup header: belongs at byte",
        ],
    );
    assert!(r.stdout.contains("profile        system -> "), "the rest was still checked:\n{}", r.stdout);
}

/// A bare filesystem cut short where its files are: what could not be read says which file, which byte and
/// what it was reading, not "failed to fill whole buffer".
#[test]
fn a_read_past_the_end_names_the_image_the_offset_and_what() {
    let b = build_nix_image();
    set_len(&b.img, 8 << 20);
    let r = verify(&b.img, &[]);
    let name = b.img.display().to_string();
    fails_naming(
        &r,
        &[
            "the root filesystem: its ext4 filesystem is",
            "but the image ends at byte 8388608",
            &format!("{name}: truncated: ext4 block ("),
            "lies past the end of the image (8388608 bytes)",
        ],
    );
    assert!(!r.stdout.contains("failed to fill whole buffer"), "{}", r.stdout);
}

/// Containers and streams kiln writes are named, with the command that turns them into a raw disk; random bytes
/// are "not a disk image".
#[test]
fn containers_and_streams_are_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("disk.raw");
    std::fs::write(&raw, vec![0u8; 4 << 20]).unwrap();
    let qemu_img = tools::require("qemu-img", "qemu-utils");
    let mut cases: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for (format, name, flag) in [("qcow2", "qcow2", "qcow2"), ("vmdk", "VMDK", "vmdk"), ("vhdx", "VHDX", "vhdx")]
        .into_iter()
        .chain([("vpc", "dynamic VHD", "vpc")])
    {
        let out = tmp.path().join(format!("disk.{format}"));
        tools::run_ok(Command::new(&qemu_img).args(["convert", "-f", "raw", "-O", format]).arg(&raw).arg(&out));
        let shown = out.display();
        cases.push((
            out.clone(),
            vec![
                format!("{shown}: a {name} image, not a raw disk"),
                format!("qemu-img convert -f {flag} -O raw {shown} disk.raw"),
            ],
        ));
    }
    tools::run_ok(Command::new(tools::require("zstd", "zstd")).args(["-q", "-k"]).arg(&raw));
    let zst = tmp.path().join("disk.raw.zst");
    cases.push((zst.clone(), vec![format!("{}: zstd-compressed, not a raw disk", zst.display()), "zstd -d".into()]));
    tools::run_ok(Command::new(tools::require("gzip", "gzip")).arg("-k").arg(&raw));
    let gz = tmp.path().join("disk.raw.gz");
    cases.push((gz.clone(), vec![format!("{}: gzip-compressed, not a raw disk", gz.display()), "tar -xSzf".into()]));
    let random = tmp.path().join("random.img");
    let bytes: Vec<u8> = (0u32..1 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&random, bytes).unwrap();
    cases.push((random.clone(), vec![format!("{}: not a disk image: no ext4 superblock", random.display())]));
    for (file, want) in cases {
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        verify(&file, &[]).fails_with(&want);
    }
}

/// Runs `kiln verify path`, killed if it has not finished within 60 seconds.
fn verify_with_deadline(path: &Path) -> Run {
    let mut child = kiln_cmd()
        .arg("verify")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("kiln verify {} still ran after 60 seconds: it hangs", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A FIFO nobody writes to is refused at once (opening it for reading would block), and so is a directory.
#[test]
fn a_fifo_is_refused_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("disk.img");
    tools::run_ok(Command::new(tools::require("mkfifo", "coreutils")).arg(&fifo));
    let name = fifo.display().to_string();
    verify_with_deadline(&fifo).fails_with(&[&name, "a FIFO (named pipe), not a disk image"]);
    verify_with_deadline(tmp.path()).fails_with(&["a directory, not a disk image"]);
}

const TOP: &str = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-deep";

/// A store holding one minimal system whose toplevel holds a file `components` path components below it, in
/// directories named `d`: its logical path has 3 + `components` components.
fn deep_store(components: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("nix/store").join(TOP);
    let deepest = (1..components).fold(top.clone(), |p, _| p.join("d"));
    std::fs::create_dir_all(&deepest).unwrap();
    std::fs::write(deepest.join("f"), "at the bottom\n").unwrap();
    std::fs::write(top.join("bzImage"), "kernel").unwrap();
    std::fs::write(top.join("init"), "#!/bin/sh\n").unwrap();
    let doc = format!(
        r#"{{"org.nixos.bootspec.v1": {{"init": "/nix/store/{TOP}/init", "kernel": "/nix/store/{TOP}/bzImage",
        "kernelParams": [], "label": "deep", "system": "x86_64-linux", "toplevel": "/nix/store/{TOP}"}}}}"#
    );
    std::fs::write(top.join("boot.json"), doc).unwrap();
    dir
}

fn build_deep(store: &Path, out: &Path) -> Run {
    let store = store.join("nix/store");
    let top = format!("/nix/store/{TOP}");
    let mut args: Vec<&OsStr> =
        ["build", "--progress", "none", "--layout", "none", "--extra-space", "16M"].map(OsStr::new).to_vec();
    args.extend([OsStr::new("--system"), OsStr::new(&top), OsStr::new("--store-dir"), store.as_os_str()]);
    args.extend([OsStr::new("--output"), out.as_os_str()]);
    kiln(args)
}

/// The deepest tree the build accepts (a file 997 levels below its store path: 1,000 path components from `/`,
/// as deep as `ext4-view` resolves) builds and verifies.
#[test]
fn the_deepest_tree_the_build_accepts_verifies() {
    let store = deep_store(997);
    let img = store.path().join("deep.img");
    build_deep(store.path(), &img).ok();
    let out = verify(&img, &[]).ok();
    assert!(out.contains(&format!("profile        system -> /nix/store/{TOP}")), "{out}");
}

/// One level deeper is refused before anything is written, naming the store path, the length and the limit.
#[test]
fn a_deeper_tree_is_refused_at_build_time() {
    let store = deep_store(998);
    let img = store.path().join("deep.img");
    build_deep(store.path(), &img).fails_with(&[
        &format!("store path /nix/store/{TOP}: /nix/store/{TOP}/d/d/"),
        "(998 levels below its store path)",
        "1001 path components long",
        "more than 4096 bytes or 1000 components",
        "kiln verify",
    ]);
    assert!(!img.exists(), "nothing written");
}
