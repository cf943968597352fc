//! A flash killed with SIGKILL at ten points of its data pass (after N MiB, read from the kernel's count of the
//! process' written bytes, `/proc/PID/io`) leaves a device with no partition table (blkid finds none, no GPT
//! header or MBR signature at either end); flashing again then succeeds and the disk boots.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::fixtures;

use super::{Images, Loop, blank, flash, has_partition_table, partitions};
use crate::util::kiln_cmd;

/// The efi image with its root partition filled with pseudo-random bytes: a source with 300 MiB of data, so a
/// flash lasts long enough to be killed at many points (its root is no filesystem; it is never booted).
fn big_source(dir: &Path) -> std::path::PathBuf {
    let images = Images::get();
    let raw = images.raw("efi");
    let big = dir.join("big.img");
    let size = std::fs::metadata(&raw).unwrap().len();
    let (src, dst) = (std::fs::File::open(&raw).unwrap(), std::fs::File::create(&big).unwrap());
    dst.set_len(size).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for r in super::data_ranges(&raw) {
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(1 << 20) as usize;
            src.read_exact_at(&mut buf[..n], at).unwrap();
            dst.write_all_at(&buf[..n], at).unwrap();
            at += n as u64;
        }
    }
    let (root, len, _) = partitions(&raw).last().unwrap().clone();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut at = root;
    while at < root + len {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = (root + len - at).min(1 << 20) as usize;
        dst.write_all_at(&buf[..n], at).unwrap();
        at += n as u64;
    }
    dst.sync_all().unwrap();
    big
}

/// Bytes the process has written so far (`wchar`: every write and pwrite).
fn written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_flash_killed_anywhere_leaves_no_partition_table_and_a_rerun_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let big = big_source(tmp.path());
    let backing = blank(tmp.path(), "disk", 1 << 30);
    let dev = Loop::new(&backing, 512);
    // The device starts out holding a bootable disk: the killed flashes must not leave its table behind.
    let images = Images::get();
    flash(&[images.raw("efi").as_os_str(), dev.dev.as_os_str()]).ok();
    assert!(has_partition_table(&dev.dev));
    let mut points = Vec::new();
    for i in 0..10u64 {
        let at = (8 + 28 * i) << 20;
        let mut child = kiln_cmd()
            .args(["flash", "--progress", "none", "--force", "--sync-every", "1M"])
            .arg(&big)
            .arg(&dev.dev)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut killed_at = None;
        while start.elapsed() < Duration::from_secs(120) {
            if let Some(n) = written(child.id())
                && n >= at
            {
                child.kill().unwrap();
                killed_at = Some(n);
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let status = child.wait().unwrap();
        let Some(n) = killed_at else {
            panic!("the flash ended ({status}) before writing {} MiB: too fast to kill at this point", at >> 20);
        };
        assert!(!has_partition_table(&dev.dev), "killed after {n} bytes written, the device holds a partition table");
        points.push(n >> 20);
    }
    eprintln!("killed after these MiB written, each leaving no partition table: {points:?}");
    let _ = std::io::stderr().flush();
    // Flashing again (no --force needed: nothing reads as a table or filesystem) succeeds and boots.
    flash(&[images.raw("efi").as_os_str(), dev.dev.as_os_str()]).ok();
    let marker = std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap();
    Boot::new(&dev.dev, marker)
        .firmware(Firmware::Uefi)
        .timeout(Duration::from_secs(180))
        .run()
        .unwrap_or_else(|e| panic!("the re-flashed device did not boot: {e}"));
}
