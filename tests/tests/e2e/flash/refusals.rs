//! Every refusal, each with a clear error and nothing written: a mounted device, a device used as swap, a device
//! held open exclusively, a target too small, a BIOS image onto a 4Kn device, an existing partition table
//! without `--force`, the source itself as the target, a partition (unless `--allow-partition`: then the image is
//! written inside it and nowhere else), a disk whose partition is mounted; and a read-back mismatch (a byte flipped on the device
//! between write and verify, through kiln's test hook) reported with its offset, the tables wiped.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use kiln_tests::tools;

use super::{Images, Loop, blank, flash, has_partition_table};
use crate::util::Unmount;

/// The first `n` bytes of `dev` are all `byte`.
fn starts_with_only(dev: &Path, n: usize, byte: u8) -> bool {
    let mut b = vec![0u8; n];
    std::fs::File::open(dev).unwrap().read_exact_at(&mut b, 0).unwrap();
    b.iter().all(|&x| x == byte)
}

/// A device whose first MiB is a marker pattern, so "nothing written" can be checked.
fn marked(dir: &Path, size: u64, sector: u32) -> Loop {
    let backing = blank(dir, "disk", size);
    std::fs::OpenOptions::new().write(true).open(&backing).unwrap().write_all_at(&vec![0x5Au8; 1 << 20], 0).unwrap();
    Loop::new(&backing, sector)
}

#[test]
fn a_mounted_device_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "fs", 64 << 20);
    tools::run_ok(Command::new(tools::require("mkfs.ext4", "e2fsprogs")).args(["-q", "-F"]).arg(&backing));
    let dev = Loop::new(&backing, 512);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    tools::run_ok(Command::new("mount").arg(&dev.dev).arg(&mnt));
    let _u = Unmount(mnt.clone());
    let raw = Images::get().raw("efi");
    flash(&[raw.as_os_str(), dev.dev.as_os_str(), "--force".as_ref()])
        .fails_with(&["is mounted", &mnt.display().to_string()]);
}

#[test]
fn a_device_used_as_swap_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "swap", 64 << 20);
    let dev = Loop::new(&backing, 512);
    tools::run_ok(Command::new(tools::require("mkswap", "util-linux")).arg(&dev.dev));
    tools::run_ok(Command::new(tools::require("swapon", "mount")).arg(&dev.dev));
    struct Swapoff<'a>(&'a Path);
    impl Drop for Swapoff<'_> {
        fn drop(&mut self) {
            let _ = Command::new("swapoff").arg(self.0).status();
        }
    }
    let _s = Swapoff(&dev.dev);
    let raw = Images::get().raw("efi");
    flash(&[raw.as_os_str(), dev.dev.as_os_str(), "--force".as_ref()]).fails_with(&["swap"]);
}

#[test]
fn a_device_held_open_exclusively_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = marked(tmp.path(), 1 << 30, 512);
    // O_EXCL on a block device is the kernel's exclusive claim, as a mounted filesystem holds it.
    let _held = std::fs::OpenOptions::new().read(true).custom_flags(libc_o_excl()).open(&dev.dev).unwrap();
    let raw = Images::get().raw("efi");
    flash(&[raw.as_os_str(), dev.dev.as_os_str(), "--force".as_ref()]).fails_with(&["in use", "exclusively"]);
    assert!(starts_with_only(&dev.dev, 1 << 20, 0x5A), "something was written");
}

fn libc_o_excl() -> i32 {
    0o200
}

#[test]
fn a_target_too_small_is_refused_with_both_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = marked(tmp.path(), 256 << 20, 512);
    let raw = Images::get().raw("efi");
    flash(&[raw.as_os_str(), dev.dev.as_os_str()]).fails_with(&["too small", "268435456"]);
    assert!(starts_with_only(&dev.dev, 1 << 20, 0x5A), "something was written");
}

#[test]
fn a_bios_image_onto_a_4kn_device_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = marked(tmp.path(), 1 << 30, 4096);
    let raw = Images::get().raw("hybrid");
    flash(&[raw.as_os_str(), dev.dev.as_os_str()]).fails_with(&["BIOS", "512-byte sectors", "4096"]);
    assert!(starts_with_only(&dev.dev, 1 << 20, 0x5A), "something was written");
}

#[test]
fn an_existing_partition_table_needs_force_and_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 1 << 30);
    let dev = Loop::new(&backing, 512);
    let images = Images::get();
    flash(&[images.raw("hybrid").as_os_str(), dev.dev.as_os_str()]).ok();
    let ends = |f: &Path| {
        let file = std::fs::File::open(f).unwrap();
        let mut b = vec![0u8; 2 << 20];
        file.read_exact_at(&mut b[..1 << 20], 0).unwrap();
        file.read_exact_at(&mut b[1 << 20..], (1 << 30) - (1 << 20)).unwrap();
        b
    };
    let before = ends(&backing);
    flash(&[images.raw("efi").as_os_str(), dev.dev.as_os_str()]).fails_with(&[
        "already holds a GPT with 3 partition(s)",
        "\"ESP\" (ESP, vfat)",
        "\"nixos\" (Linux root (x86-64), ext4)",
        "--force",
    ]);
    assert!(ends(&backing) == before, "the refused flash wrote something");
    flash(&[images.raw("efi").as_os_str(), dev.dev.as_os_str(), "--force".as_ref()]).ok();
}

#[test]
fn the_source_itself_is_refused_as_target() {
    let images = Images::get();
    let raw = images.raw("efi");
    let before = super::data_ranges(&raw);
    flash(&[raw.as_os_str(), raw.as_os_str(), "--force".as_ref()]).fails_with(&["is the source image itself"]);
    assert_eq!(super::data_ranges(&raw), before);
}

#[test]
fn a_read_back_mismatch_names_the_offset_and_wipes_the_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 1 << 30);
    let dev = Loop::new(&backing, 512);
    let raw = Images::get().raw("efi");
    // The first non-zero byte past the first MiB (written data, never a hole), flipped on the device after the
    // write and before the read-back.
    let file = std::fs::File::open(&raw).unwrap();
    let mut block = vec![0u8; 4096];
    let at = super::data_ranges(&raw)
        .into_iter()
        .flat_map(|r| (r.start.max(1 << 20)..r.end).step_by(4096))
        .find_map(|b| {
            file.read_exact_at(&mut block, b).unwrap();
            block.iter().position(|&x| x != 0).map(|i| b + i as u64)
        })
        .unwrap();
    let run = crate::util::run(
        crate::util::kiln_cmd()
            .args(["flash", "--progress", "none"])
            .arg(&raw)
            .arg(&dev.dev)
            .env(kiln::flash::TEST_FLIP_ENV, at.to_string()),
    );
    run.fails_with(&["read-back mismatch", &format!("at offset {at} differ")]);
    assert!(!has_partition_table(&dev.dev), "a device that failed its read-back keeps a partition table");
}

#[test]
fn the_disk_of_the_running_root_is_refused() {
    use std::os::unix::fs::MetadataExt;
    // The block device "/" is mounted from (this machine's own disk): only ever a dry run, so a bug here
    // cannot cost the machine its root.
    let dev = std::fs::metadata("/").unwrap().dev();
    let sys =
        std::fs::canonicalize(format!("/sys/dev/block/{}:{}", dev >> 8 & 0xfff, (dev & 0xff) | (dev >> 12 & 0xfff00)))
            .unwrap_or_else(|e| panic!("the root filesystem is on no block device this test can name: {e}"));
    let name = sys.file_name().unwrap().to_string_lossy().into_owned();
    let disk = Path::new("/dev").join(&name);
    let raw = Images::get().raw("efi");
    flash(&[raw.as_os_str(), disk.as_os_str(), "--force".as_ref(), "--dry-run".as_ref()])
        .fails_with(&["holds the running system's root filesystem"]);
}

/// The bytes of `file` at `at`, `len` of them.
fn bytes_at(file: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(file).unwrap().read_exact_at(&mut b, at).unwrap();
    b
}

#[test]
fn a_partition_is_refused_unless_allowed_and_then_only_it_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    // A disk with one partition from 1 MiB to 1 MiB before its end; the disk is marked everywhere the flash
    // into the partition must not write: its first MiB and its last.
    let (size, start) = ((1u64 << 30) + (2 << 20), 1u64 << 20);
    let len = size - 2 * start;
    let backing = blank(tmp.path(), "disk", size);
    let f = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
    let mark = vec![0x5Au8; 2 << 20];
    f.write_all_at(&mark, 0).unwrap();
    f.write_all_at(&mark[..1 << 20], size - (1 << 20)).unwrap();
    drop(f);
    let disk = Loop::partitionable(&backing);
    let part = disk.add_partition(1, start, len);
    let raw = Images::get().raw("efi");
    flash(&[raw.as_os_str(), part.as_os_str(), "--force".as_ref()]).fails_with(&[
        "is a partition",
        &format!("of {}", disk.dev.display()),
        "--allow-partition",
    ]);
    assert!(starts_with_only(&part, 1 << 20, 0x5A), "the refused flash wrote into the partition");

    let out = flash(&[raw.as_os_str(), part.as_os_str(), "--force".as_ref(), "--allow-partition".as_ref()]).ok();
    assert!(out.contains("flashed"), "{out}");
    // The partition holds the image, its backup GPT moved to the partition's end; the disk around it is as it was.
    super::assert_holds(&part, &raw, 33 * 512);
    super::assert_table_fits(&part, 512);
    assert!(bytes_at(&backing, 0, 1 << 20).iter().all(|&b| b == 0x5A), "the disk's first MiB was written");
    assert!(
        bytes_at(&backing, size - (1 << 20), 1 << 20).iter().all(|&b| b == 0x5A),
        "the disk's last MiB was written"
    );
}

#[test]
fn a_disk_whose_partition_is_mounted_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = blank(tmp.path(), "disk", 1 << 30);
    let disk = Loop::partitionable(&backing);
    let part = disk.add_partition(1, 1 << 20, 64 << 20);
    tools::run_ok(Command::new(tools::require("mkfs.ext4", "e2fsprogs")).args(["-q", "-F"]).arg(&part));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    tools::run_ok(Command::new("mount").arg(&part).arg(&mnt));
    let _u = Unmount(mnt.clone());
    let before = bytes_at(&backing, 0, 1 << 20);
    let raw = Images::get().raw("efi");
    flash(&[raw.as_os_str(), disk.dev.as_os_str(), "--force".as_ref()]).fails_with(&[
        "is mounted",
        &part.display().to_string(),
        &mnt.display().to_string(),
    ]);
    assert!(bytes_at(&backing, 0, 1 << 20) == before, "the refused flash wrote something");
}
