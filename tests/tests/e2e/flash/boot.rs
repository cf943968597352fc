//! Flashed devices boot: the hybrid image onto a device twice its size with `--grow-root`, by UEFI and by BIOS,
//! the booted system seeing the grown root partition (and the root filesystem grown on the host afterwards,
//! clean and full size); the 512-byte efi image onto a 4Kn device and the 4Kn image onto a 512-byte device,
//! re-targeted, checked by the independent tools and booted with the device's sector size.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::{fixtures, tools};

use super::{Images, Loop, assert_filesystems_clean, assert_table_fits, blank, dirty, e2fsck_clean, flash, partitions};

const TIMEOUT: Duration = Duration::from_secs(180);

fn marker() -> String {
    std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap()
}

/// Boots `dev` and returns the serial log.
fn boots(dev: &Path, firmware: Firmware, sector: u32) -> String {
    let outcome = Boot::new(dev, marker())
        .firmware(firmware)
        .sector_size(sector)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot with {firmware:?}: {e}", dev.display()));
    eprintln!(
        "{} booted ({firmware:?}, {sector}-byte sectors) in {:.1} s",
        dev.display(),
        outcome.elapsed.as_secs_f64()
    );
    outcome.serial
}

/// The root partition's size in 512-byte sectors as the booted system's initrd saw it.
fn seen_root_sectors(serial: &str) -> u64 {
    let line = serial
        .lines()
        .find(|l| l.contains("demo-stage1: root ") && l.contains("512-byte sectors"))
        .unwrap_or_else(|| panic!("the initrd did not say the root's size:\n{serial}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "has").unwrap();
    words[at + 1].parse().unwrap()
}

#[test]
fn a_hybrid_image_flashed_with_grow_root_boots_both_ways_and_its_root_grows() {
    let images = Images::get();
    let raw = images.raw("hybrid");
    let image_size = std::fs::metadata(&raw).unwrap().len();
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 2 * image_size);
    dirty(&backing);
    let dev = Loop::new(&backing, 512);
    flash(&[raw.as_os_str(), dev.dev.as_os_str(), "--grow-root".as_ref()]).ok();
    assert_table_fits(&dev.dev, 512);
    assert_filesystems_clean(&dev.dev, 512);
    let parts = partitions(&dev.dev);
    let (root_start, root_len, _) = parts.last().unwrap().clone();
    assert!(root_start + root_len > image_size, "the root partition did not grow: {parts:?}");
    assert!(2 * image_size - (root_start + root_len) < 2 << 20, "the root partition does not reach the end: {parts:?}");
    for firmware in [Firmware::Uefi, Firmware::Bios] {
        let serial = boots(&dev.dev, firmware, 512);
        assert_eq!(seen_root_sectors(&serial), root_len / 512, "{firmware:?}: the booted system's root partition");
    }
    // The filesystem grows into the partition (what NixOS' autoResize does at boot), here on the host.
    let part = Loop::part_rw(&dev.dev, root_start, root_len);
    let fsck = tools::run(Command::new("e2fsck").args(["-f", "-p"]).arg(&part.dev));
    assert!(fsck.status.success(), "e2fsck -f -p: {}", String::from_utf8_lossy(&fsck.stderr));
    tools::run_ok(Command::new(tools::require("resize2fs", "e2fsprogs")).arg(&part.dev));
    e2fsck_clean(&part.dev);
    let sb = tools::run_ok(Command::new("dumpe2fs").arg("-h").arg(&part.dev));
    let sb = String::from_utf8_lossy(&sb.stdout);
    let field = |name: &str| -> u64 {
        sb.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim_start_matches(':').trim().parse().unwrap()
    };
    assert_eq!(field("Block count") * field("Block size"), root_len, "the grown filesystem fills its partition");
    drop(part);
    boots(&dev.dev, Firmware::Uefi, 512);
}

#[test]
fn a_512_byte_image_is_retargeted_onto_a_4kn_device_and_boots() {
    let images = Images::get();
    let raw = images.raw("efi");
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 1 << 30);
    dirty(&backing);
    let dev = Loop::new(&backing, 4096);
    let plan = flash(&[raw.as_os_str(), dev.dev.as_os_str(), "--dry-run".as_ref()]).ok();
    assert!(plan.contains("re-targeted from 512 to 4096 bytes"), "{plan}");
    flash(&[raw.as_os_str(), dev.dev.as_os_str()]).ok();
    assert_table_fits(&dev.dev, 4096);
    assert_filesystems_clean(&dev.dev, 4096);
    boots(&dev.dev, Firmware::Uefi, 4096);
}

#[test]
fn a_4kn_image_is_retargeted_onto_a_512_byte_device_and_boots() {
    let images = Images::get();
    let raw = images.raw("efi4k");
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 1 << 30);
    let dev = Loop::new(&backing, 512);
    flash(&[raw.as_os_str(), dev.dev.as_os_str()]).ok();
    assert_table_fits(&dev.dev, 512);
    assert_filesystems_clean(&dev.dev, 512);
    boots(&dev.dev, Firmware::Uefi, 512);
}
