//! Every format kiln writes, flashed onto a loop device that held an old disk's leftovers: the device holds the
//! raw image in every data range, the backup GPT sits in its last sector (`sgdisk -v` clean), and the ESP and
//! root filesystems read through the device are clean (`fsck.fat -n`, `e2fsck -fn`).

use super::{Images, Loop, assert_filesystems_clean, assert_holds, assert_table_fits, blank, dirty, flash};

/// The backup GPT of a 512-byte-sector image: header and 32 sectors of entries.
const BACKUP_512: u64 = 33 * 512;

#[test]
fn every_source_format_flashes_to_a_device_holding_the_image() {
    let images = Images::get();
    let raw = images.raw("efi");
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 1200 << 20);
    dirty(&backing);
    let dev = Loop::new(&backing, 512);
    let sources = [
        raw.clone(),
        images.efi_as("raw.zst"),
        images.efi_as("qcow2"),
        images.efi_as("vhd"),
        images.efi_as("vmdk"),
        images.efi_as("gce"),
    ];
    for (i, src) in sources.iter().enumerate() {
        let mut args = vec![src.as_os_str().to_owned(), dev.dev.as_os_str().to_owned()];
        if i > 0 {
            // From the second on, the device holds the previous flash's table.
            args.push("--force".into());
        }
        let out = flash(&args).ok();
        assert!(out.contains("flashed"), "{out}");
        assert_holds(&dev.dev, &raw, BACKUP_512);
        assert_table_fits(&dev.dev, 512);
        assert_filesystems_clean(&dev.dev, 512);
        eprintln!("{} flashed and checked", src.display());
    }
}

#[test]
fn a_raw_image_flashes_onto_a_regular_file_of_its_own_size() {
    let images = Images::get();
    let raw = images.raw("efi");
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("new.img");
    flash(&[raw.as_os_str(), target.as_os_str()]).ok();
    assert_eq!(std::fs::metadata(&target).unwrap().len(), std::fs::metadata(&raw).unwrap().len());
    kiln_tests::disk::sgdisk_verify(&target).unwrap();
    assert_holds(&target, &raw, 0);
}
