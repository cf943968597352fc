//! Output formats from real builds of the demo system: every container shows QEMU the same disk as the raw
//! image, the demo boots from qcow2, VHD and VMDK, bmaptool flashes raw.zst with its block map, the GCE tarball
//! holds exactly a sparse `disk.raw`, and the AMI bundle's metadata matches its files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot::Boot;
use kiln_tests::disk::{qemu_img_check, qemu_img_compare, qemu_img_virtual_size};
use kiln_tests::{fixtures, tools};

use std::ffi::OsString;

use crate::util::{kiln, sha256, store_of};

/// Builds the demo system as an efi disk into `dir/name` (the extension picks the format) with `extra` flags,
/// with the same seed every time, so every format holds the same disk.
fn build(dir: &Path, name: &str, extra: &[&str]) -> (String, PathBuf) {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let out = dir.join(name);
    let mut args: Vec<OsString> =
        ["build", "--progress", "none", "--layout", "efi", "--seed", "formats"].map(OsString::from).to_vec();
    args.extend(["--system".into(), top.into(), "--store-dir".into(), store_of(&fx).into()]);
    args.extend(["--closure-info".into(), fx.join("closure-info").into(), "--output".into(), out.clone().into()]);
    args.extend(extra.iter().map(OsString::from));
    let stdout = kiln(args).ok();
    (stdout, out)
}

fn qemu_info(image: &Path, format: &str) -> serde_json::Value {
    let out = tools::run_ok(
        Command::new(tools::require("qemu-img", "qemu-utils")).args(["info", "--output=json", "-f", format]).arg(image),
    );
    serde_json::from_slice(&out.stdout).expect("qemu-img info JSON")
}

fn boots(image: &Path, format: &str) {
    let marker = std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap();
    let outcome = Boot::new(image, marker)
        .format(format)
        .timeout(Duration::from_secs(180))
        .run()
        .unwrap_or_else(|e| panic!("{} ({format}) did not boot: {e}", image.display()));
    eprintln!("{} booted from {format} in {:.1} s", image.display(), outcome.elapsed.as_secs_f64());
}

#[test]
fn every_container_shows_qemu_the_raw_disk_and_the_demo_boots_from_qcow2_vhd_and_vmdk() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, raw) = build(tmp.path(), "disk.img", &[]);
    let size = std::fs::metadata(&raw).unwrap().len();
    for (name, flags, qemu_format, compression) in [
        ("zstd.qcow2", &[][..], "qcow2", Some("zstd")),
        ("zlib.qcow2", &["--compress", "zlib"][..], "qcow2", Some("zlib")),
        ("plain.qcow2", &["--compress", "none"][..], "qcow2", None),
        ("disk.vhd", &[][..], "vpc", None),
        ("disk.vhdx", &[][..], "vhdx", None),
        ("disk.vmdk", &[][..], "vmdk", None),
    ] {
        let (_, out) = build(tmp.path(), name, flags);
        if qemu_format != "vpc" {
            qemu_img_check(&out, qemu_format).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        qemu_img_compare(&raw, "raw", &out, qemu_format).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(qemu_img_virtual_size(&out, qemu_format), size, "{name}: virtual size");
        let info = qemu_info(&out, qemu_format);
        if let Some(c) = compression {
            assert_eq!(info["format-specific"]["data"]["compression-type"], c, "{name}: {info}");
        }
        if qemu_format == "vmdk" {
            assert_eq!(info["format-specific"]["data"]["create-type"], "streamOptimized", "{info}");
        }
        if name == "zstd.qcow2" {
            assert_eq!(info["cluster-size"], 262_144, "zstd level 1 in 256 KiB clusters: {info}");
            let file = std::fs::metadata(&out).unwrap().len();
            assert!(file * 4 < size, "{name}: {file} bytes for a {size}-byte disk is not compressed");
        }
    }
    // A fixed VHD for Azure: whole MiB, and the raw bytes first.
    assert_eq!(size % (1 << 20), 0);
    for (name, format) in [("zstd.qcow2", "qcow2"), ("disk.vhd", "vpc"), ("disk.vmdk", "vmdk")] {
        boots(&tmp.path().join(name), format);
    }
}

#[test]
fn bmaptool_flashes_raw_zst_with_the_block_map() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, raw) = build(tmp.path(), "disk.img", &["--bmap"]);
    let bmap = tmp.path().join("disk.img.bmap");
    assert!(bmap.is_file(), "--bmap writes {}", bmap.display());
    let (_, zst) = build(tmp.path(), "disk.raw.zst", &["--bmap"]);
    let zst_bmap = tmp.path().join("disk.raw.bmap");
    assert!(zst_bmap.is_file(), "the raw.zst's block map is named where bmaptool looks: {}", zst_bmap.display());
    assert_eq!(std::fs::read(&bmap).unwrap(), std::fs::read(&zst_bmap).unwrap(), "one disk, one block map");
    let bmaptool = tools::require("bmaptool", "bmap-tools");
    for (image, map) in [(&raw, &bmap), (&zst, &zst_bmap)] {
        let dest = tmp.path().join("flashed.img");
        let _ = std::fs::remove_file(&dest);
        tools::run_ok(Command::new(&bmaptool).arg("copy").arg("--bmap").arg(map).arg(image).arg(&dest));
        assert_eq!(sha256(&dest), sha256(&raw), "bmaptool copy of {} reproduces the disk", image.display());
    }
    // zstd itself decompresses the same disk.
    let out = tools::run_ok(Command::new(tools::require("zstd", "zstd")).args(["-dc"]).arg(&zst));
    assert_eq!(out.stdout, std::fs::read(&raw).unwrap());
}

#[test]
fn gce_tarball_holds_exactly_a_sparse_disk_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, raw) = build(tmp.path(), "disk.img", &[]);
    let (_, gce) = build(tmp.path(), "nixos.raw.tar.gz", &[]);
    let listing = tools::run_ok(Command::new("tar").arg("-tvzf").arg(&gce));
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "{listing}");
    assert!(lines[0].ends_with(" disk.raw"), "{listing}");
    let size = std::fs::metadata(&raw).unwrap().len().to_string();
    assert!(lines[0].split_whitespace().any(|f| f == size), "{listing}");
    // gce is a bundle format: its checksum file is on by default and sha256sum accepts it.
    let sums = tmp.path().join("nixos.raw.tar.gz.sha256");
    let check = tools::run_ok(Command::new("sha256sum").arg("-c").arg(&sums).current_dir(tmp.path()));
    assert!(String::from_utf8_lossy(&check.stdout).contains("nixos.raw.tar.gz: OK"));
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    tools::run_ok(Command::new("tar").arg("-xSzf").arg(&gce).arg("-C").arg(&x));
    let disk = x.join("disk.raw");
    assert_eq!(sha256(&disk), sha256(&raw));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&disk).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len() / 4,
        "disk.raw extracts sparse: {} of {} bytes",
        meta.blocks() * 512,
        meta.len()
    );
}

#[test]
fn ami_bundle_metadata_matches_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, raw) = build(tmp.path(), "disk.img", &[]);
    let (_, dir) = build(tmp.path(), "ami", &["--format", "ami"]);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("nix-support/image-info.json")).unwrap()).unwrap();
    let file = PathBuf::from(info["file"].as_str().unwrap());
    assert_eq!(info["disks"]["root"]["file"], info["file"]);
    assert_eq!(info["boot_mode"], "uefi");
    assert_eq!(info["system"], "x86_64-linux");
    assert_eq!(info["label"], "24.11.demo");
    // The build wrote the bundle elsewhere; the file it names sits in the bundle under that name.
    let vhd = dir.join(file.file_name().unwrap());
    assert!(vhd.to_str().unwrap().ends_with("-x86_64-linux.vhd"), "{}", vhd.display());
    let logical: u64 = info["logical_bytes"].as_str().unwrap().parse().unwrap();
    assert_eq!(logical, std::fs::metadata(&raw).unwrap().len());
    assert_eq!(info["disks"]["root"]["logical_bytes"], info["logical_bytes"]);
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), logical + 512, "a fixed VHD: the disk and its footer");
    qemu_img_compare(&raw, "raw", &vhd, "vpc").unwrap();
    let products = std::fs::read_to_string(dir.join("nix-support/hydra-build-products")).unwrap();
    assert_eq!(products, format!("file vpc {}\n", file.display()));
    let check = tools::run_ok(Command::new("sha256sum").args(["-c", "SHA256SUMS"]).current_dir(&dir));
    assert!(String::from_utf8_lossy(&check.stdout).contains(": OK"));
}

#[test]
fn containers_are_deterministic_across_threads_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("1"), tmp.path().join("2"));
    std::fs::create_dir(&d1).unwrap();
    std::fs::create_dir(&d2).unwrap();
    // Same names: a VMDK's descriptor names its own file.
    for name in ["a.qcow2", "a.vmdk", "a.raw.zst", "a.vhdx", "a.raw.tar.gz"] {
        let (_, one) = build(&d1, name, &["--threads", "1"]);
        let (_, two) = build(&d2, name, &["--threads", "2"]);
        assert_eq!(sha256(&one), sha256(&two), "{name}: threads 1 and 2 differ");
    }
}

#[test]
fn json_progress_reports_the_format_phase_and_the_written_files() {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d.qcow2");
    let run = kiln([
        "build".as_ref(),
        "--progress".as_ref(),
        "json".as_ref(),
        "--layout".as_ref(),
        "efi".as_ref(),
        "--checksum".as_ref(),
        "--system".as_ref(),
        std::ffi::OsStr::new(&top),
        "--store-dir".as_ref(),
        store_of(&fx).as_os_str(),
        "--closure-info".as_ref(),
        fx.join("closure-info").as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ])
    .ok();
    let lines: Vec<serde_json::Value> = run.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["type"] == "phase-end" && l["phase"] == "format"), "{run}");
    let last = lines.iter().rfind(|l| l["type"] == "progress" && l["phase"] == "format").expect("progress");
    assert_eq!(last["done"], last["total"], "{last}");
    let built = lines.last().unwrap();
    assert_eq!(built["type"], "built");
    let written = &built["written"];
    assert_eq!(written["format"], "qcow2");
    assert_eq!(written["sha256"].as_str().unwrap(), sha256(&out));
    assert!(written["allocated_bytes"].as_u64().unwrap() < written["disk_bytes"].as_u64().unwrap());
    assert!(built["phase_ms"]["format"].is_u64(), "{built}");
    let files: Vec<&str> = written["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(files, [out.to_str().unwrap(), &format!("{}.sha256", out.display())]);
}
