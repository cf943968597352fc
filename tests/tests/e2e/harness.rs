//! The disk-level checkers are not vacuous: on a reference image built with standard tools they pass, and on
//! a damaged copy they fail.

use std::path::Path;
use std::process::Command;

use kiln_tests::disk::{fsck_fat_clean, qemu_img_check, qemu_img_compare, sfdisk_json, sgdisk_verify};
use kiln_tests::ext4::{e2fsck_clean, extract};
use kiln_tests::{fixtures, tools};

/// (start, size) in bytes of each partition, from sfdisk.
fn partitions(image: &Path) -> Vec<(u64, u64, String)> {
    let json = sfdisk_json(image);
    let table = &json["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
                p["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn flip_byte(image: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn disk_checkers_pass_on_a_reference_image_and_catch_damage() {
    let demo = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("reference.img");
    tools::run_ok(
        Command::new("bash")
            .arg(fixtures::scripts_dir().join("reference-image.gen.sh"))
            .arg(&demo)
            .arg(&img)
            .arg("uefi"),
    );

    sgdisk_verify(&img).unwrap();
    let parts = partitions(&img);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].2, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "the ESP first");
    let (esp_start, esp_len, _) = parts[0].clone();
    let (root_start, _, _) = parts[1].clone();
    fsck_fat_clean(&img, esp_start, esp_len).unwrap();
    e2fsck_clean(&img, root_start).unwrap();
    let out = tmp.path().join("root");
    extract(&img, root_start, &out).unwrap();
    assert!(out.join("nix/store").read_dir().unwrap().count() > 3, "debugfs extracted the store at an offset");

    // A qcow2 conversion by qemu-img itself checks clean and compares equal.
    let qcow = tmp.path().join("reference.qcow2");
    tools::run_ok(
        Command::new(tools::require("qemu-img", "qemu-utils")).args(["convert", "-O", "qcow2"]).arg(&img).arg(&qcow),
    );
    qemu_img_check(&qcow, "qcow2").unwrap();
    qemu_img_compare(&img, "raw", &qcow, "qcow2").unwrap();

    // Damage: each checker must notice.
    let bad = tmp.path().join("bad.img");
    tools::run_ok(Command::new("cp").arg("--sparse=always").arg(&img).arg(&bad));
    qemu_img_compare(&img, "raw", &bad, "raw").unwrap();
    flip_byte(&bad, esp_start + 512 + 488); // FSInfo free-cluster count
    assert!(fsck_fat_clean(&bad, esp_start, esp_len).is_err(), "fsck.fat must notice a wrong FSInfo count");
    assert!(qemu_img_compare(&img, "raw", &bad, "raw").is_err(), "qemu-img compare must notice a changed byte");
    flip_byte(&bad, 512 + 16); // primary GPT header CRC
    assert!(sgdisk_verify(&bad).is_err(), "sgdisk -v must notice a broken GPT header");
    let qbad = tmp.path().join("bad.qcow2");
    tools::run_ok(
        Command::new(tools::require("qemu-img", "qemu-utils")).args(["convert", "-O", "qcow2"]).arg(&img).arg(&qbad),
    );
    // The L1 table's first entry points at an L2 table: pointing it elsewhere is a corruption check finds.
    flip_byte(&qbad, 0x30 + 5);
    assert!(qemu_img_check(&qbad, "qcow2").is_err(), "qemu-img check must notice a broken header");
}
