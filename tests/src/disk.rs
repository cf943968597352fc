//! Independent checkers for whole disk images: the partition table (`sgdisk -v`, `sfdisk --json`), FAT
//! filesystems (`fsck.fat -n`), and image containers (`qemu-img check`, `qemu-img compare`). All read-only.

use std::path::Path;
use std::process::Command;

use crate::tools::{self, run};

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `sgdisk -v`: Ok only when it finds no problems *and* prints no caution or warning. It exits 0 and says
/// "No problems found" even when the primary GPT header is corrupt (it silently falls back to the backup
/// header and only warns), so its words are read, not its status.
pub fn sgdisk_verify(image: &Path) -> Result<(), String> {
    let out = run(Command::new(tools::require("sgdisk", "gdisk")).arg("-v").arg(image));
    let text = output_text(&out);
    let alarming = ["Caution", "Warning", "ERROR", "Problem", "corrupt", "Invalid", "don't match"]
        .iter()
        .any(|w| text.contains(w));
    if out.status.success() && text.contains("No problems found") && !alarming {
        Ok(())
    } else {
        Err(format!("sgdisk -v {}:\n{text}", image.display()))
    }
}

/// The partition table as `sfdisk --json` reads it.
pub fn sfdisk_json(image: &Path) -> serde_json::Value {
    let out = tools::run_ok(Command::new(tools::require("sfdisk", "fdisk")).arg("--json").arg(image));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("sfdisk --json {}: {e}", image.display()))
}

/// (start, size, type) of each partition, in bytes (of 512-byte sectors), from sfdisk.
pub fn partitions(image: &Path) -> Vec<(u64, u64, String)> {
    let json = sfdisk_json(image);
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
                p["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `fsck.fat -n` on the FAT filesystem of `len` bytes at byte `offset` of `image`. fsck.fat cannot read at
/// an offset, so the range is copied to a temporary file first (the image itself is never written).
pub fn fsck_fat_clean(image: &Path, offset: u64, len: u64) -> Result<(), String> {
    let fsck = tools::require("fsck.fat", "dosfstools");
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let part = tmp.path().join("part.img");
    copy_range(image, offset, len, &part)?;
    let out = run(Command::new(fsck).args(["-n", "-v"]).arg(&part));
    let text = output_text(&out);
    // fsck.fat -n exits 0 only when it found nothing to fix; it also prints what it would have done.
    let alarming = text.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("wrong") || l.contains("bad") || l.contains("invalid") || l.contains("differ") || l.contains("fix")
    });
    if out.status.success() && !alarming { Ok(()) } else { Err(format!("fsck.fat -n:\n{text}")) }
}

/// Copies `len` bytes at `offset` of `image` into a new file `dest`, keeping holes.
pub fn copy_range(image: &Path, offset: u64, len: u64, dest: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let dst = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    dst.set_len(len).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset + done)
            .map_err(|e| format!("{} at {}: {e}", image.display(), offset + done))?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], done).map_err(|e| e.to_string())?;
        }
        done += n as u64;
    }
    Ok(())
}

/// `qemu-img check` of an image in `format` (qcow2, vhdx, …): Ok when it reports no errors or leaks.
pub fn qemu_img_check(image: &Path, format: &str) -> Result<(), String> {
    let out = run(Command::new(tools::require("qemu-img", "qemu-utils")).args(["check", "-f", format]).arg(image));
    let text = output_text(&out);
    if out.status.success() { Ok(()) } else { Err(format!("qemu-img check -f {format} {}:\n{text}", image.display())) }
}

/// The virtual (guest-visible) size of an image, from `qemu-img info`.
pub fn qemu_img_virtual_size(image: &Path, format: &str) -> u64 {
    let out = tools::run_ok(
        Command::new(tools::require("qemu-img", "qemu-utils")).args(["info", "--output=json", "-f", format]).arg(image),
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img info JSON");
    info["virtual-size"].as_u64().unwrap_or_else(|| panic!("no virtual-size in {info}"))
}

/// `qemu-img compare`, plus equal virtual sizes: Ok when the two images show the guest the same disk.
/// (Strict mode is not used: it also compares which clusters are allocated, which differs legitimately
/// between, say, a raw file's holes and a qcow2's unallocated clusters.)
pub fn qemu_img_compare(a: &Path, a_format: &str, b: &Path, b_format: &str) -> Result<(), String> {
    let (sa, sb) = (qemu_img_virtual_size(a, a_format), qemu_img_virtual_size(b, b_format));
    if sa != sb {
        return Err(format!("virtual sizes differ: {} is {sa} bytes, {} is {sb}", a.display(), b.display()));
    }
    let out = run(Command::new(tools::require("qemu-img", "qemu-utils"))
        .args(["compare", "-f", a_format, "-F", b_format])
        .arg(a)
        .arg(b));
    let text = output_text(&out);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("qemu-img compare {} {}:\n{text}", a.display(), b.display()))
    }
}
