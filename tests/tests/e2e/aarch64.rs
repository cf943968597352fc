//! aarch64: kiln's images of the demo closure built for aarch64-linux (`fixtures::demo_closure_aarch64`) boot
//! to the marker under AAVMF on QEMU's virt machine (TCG), raw and qcow2, with a specialisation as the default
//! entry and from a 4Kn disk; the partition table, the ESP and the root filesystem pass independent checkers
//! and `kiln verify`; the AMI bundle says aarch64-linux. A BIOS layout and an x86-64 systemd-boot in an aarch64
//! closure are refused before anything is written.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln::inventory::PathInventory;
use kiln::nar;
use kiln::store::{StoreDir, StorePath};
use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::disk::{fsck_fat_clean, partitions, sgdisk_verify};
use kiln_tests::ext4::e2fsck_clean;
use kiln_tests::{fixtures, tools};

use crate::util::{Run, kiln, store_of};

/// Boots under TCG take about 15 s here (2 cores, shared); the limit leaves room for slow CI machines.
const TIMEOUT: Duration = Duration::from_secs(240);

/// Root partition type for ARM64 in the Discoverable Partitions Specification.
const ROOT_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The systemd-boot file inside the closure's systemd store path.
const SD_BOOT: &str = "lib/systemd/boot/efi/systemd-bootaa64.efi";

/// `kiln build` arguments for the closure in `fx` (its store and closureInfo) into `out`, plus `extra`.
fn build_args(fx: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["build", "--progress", "none"].map(OsString::from).to_vec();
    args.extend(["--system".into(), fixtures::toplevel_of(fx).into(), "--store-dir".into(), store_of(fx).into()]);
    args.extend(["--closure-info".into(), fx.join("closure-info").into(), "--output".into(), out.into()]);
    args.extend(extra.iter().map(OsString::from));
    args
}

/// Builds the aarch64 demo closure with the qemu-efi profile into `name` in a temporary directory.
fn build(name: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let fx = fixtures::demo_closure_aarch64();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(name);
    kiln(build_args(&fx, &out, &[&["--profile", "qemu-efi"][..], extra].concat())).ok();
    (tmp, out)
}

fn marker(specialisation: &str) -> String {
    let text = std::fs::read_to_string(fixtures::demo_closure_aarch64().join("marker")).unwrap();
    text.replace("specialisation=none", &format!("specialisation={specialisation}"))
}

fn boots(img: &Path, format: &str, sector_size: u32, specialisation: &str) {
    let outcome = Boot::new(img, marker(specialisation))
        .firmware(Firmware::Aavmf)
        .format(format)
        .sector_size(sector_size)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| {
            panic!("{} ({format}, {sector_size}-byte sectors) did not boot under AAVMF: {e}", img.display())
        });
    eprintln!(
        "{} ({format}, {sector_size}-byte sectors, {specialisation}) booted under AAVMF in {:.1} s",
        img.display(),
        outcome.elapsed.as_secs_f64()
    );
}

/// The host path of the file a logical store path names, in the fixture `fx`.
fn host(fx: &Path, logical: &str) -> PathBuf {
    fx.join(logical.trim_start_matches('/'))
}

/// The systemd store path of the fixture's toplevel (logical).
fn systemd_of(fx: &Path) -> String {
    let top = fixtures::toplevel_of(fx);
    let link = std::fs::read_link(host(fx, &format!("{top}/systemd"))).unwrap();
    link.to_str().unwrap().to_owned()
}

#[test]
fn aarch64_fixture_is_an_aarch64_nixos_system() {
    let fx = fixtures::demo_closure_aarch64();
    let top = fixtures::toplevel_of(&fx);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host(&fx, &format!("{top}/boot.json"))).unwrap()).unwrap();
    let v1 = &spec["org.nixos.bootspec.v1"];
    assert_eq!(v1["system"], "aarch64-linux");
    assert!(v1["kernelParams"].as_array().unwrap().iter().any(|p| p == "console=ttyAMA0"), "{v1}");
    let kernel = v1["kernel"].as_str().unwrap();
    assert!(kernel.ends_with("/Image"), "{kernel}");
    // systemd-boot starts the kernel as an EFI program: an arm64 PE (machine 0xaa64).
    let image = std::fs::read(host(&fx, kernel)).unwrap();
    assert_eq!(pe_machine(&image), Some(0xaa64), "{kernel} is not an arm64 PE image");
    let sd_boot = std::fs::read(host(&fx, &format!("{}/{SD_BOOT}", systemd_of(&fx)))).unwrap();
    assert_eq!(pe_machine(&sd_boot), Some(0xaa64), "systemd-bootaa64.efi is not an arm64 PE image");
    let names: Vec<String> = std::fs::read_dir(store_of(&fx))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("-grub-")), "no GRUB in an aarch64 closure: {names:?}");
}

/// The COFF machine of a PE file (`MZ`, then `PE\0\0` at the offset in 0x3c).
fn pe_machine(bytes: &[u8]) -> Option<u16> {
    if bytes.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32::from_le_bytes(bytes.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if bytes.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    Some(u16::from_le_bytes(bytes.get(pe + 4..pe + 6)?.try_into().ok()?))
}

#[test]
fn aarch64_qemu_efi_raw_boots_under_aavmf_and_passes_the_checkers() {
    let (_tmp, img) = build("disk.img", &["--format", "raw"]);
    sgdisk_verify(&img).unwrap();
    let parts = partitions(&img);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].2, ESP);
    assert_eq!(parts[1].2, ROOT_ARM64, "root ARM64 from the Discoverable Partitions Spec");
    // sgdisk, independently of sfdisk, names the type.
    let info = tools::run_ok(Command::new(tools::require("sgdisk", "gdisk")).args(["-i", "2"]).arg(&img));
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains(&format!("Partition GUID code: {ROOT_ARM64}")), "{info}");
    fsck_fat_clean(&img, parts[0].0, parts[0].1).unwrap();
    e2fsck_clean(&img, parts[1].0).unwrap();
    // mtools finds the closure's systemd-bootaa64.efi where AAVMF looks for it, byte for byte.
    let fx = fixtures::demo_closure_aarch64();
    let want = std::fs::read(host(&fx, &format!("{}/{SD_BOOT}", systemd_of(&fx)))).unwrap();
    let esp = format!("{}@@{}", img.display(), parts[0].0);
    for path in ["::/EFI/BOOT/BOOTAA64.EFI", "::/EFI/systemd/systemd-bootaa64.efi"] {
        let out = tools::run_ok(
            Command::new(tools::require("mcopy", "mtools")).env("MTOOLS_SKIP_CHECK", "1").args(["-i", &esp, path, "-"]),
        );
        assert!(out.stdout == want, "{path} on the ESP is not the closure's systemd-bootaa64.efi");
    }
    let verify = kiln([OsStr::new("verify"), img.as_os_str()]).ok();
    assert!(!verify.contains("problem"), "{verify}");
    assert!(verify.contains("Linux root (ARM64)"), "{verify}");
    boots(&img, "raw", 512, "none");
}

#[test]
fn aarch64_qemu_efi_qcow2_boots_under_aavmf() {
    let (_tmp, img) = build("disk.qcow2", &["--format", "qcow2"]);
    kiln_tests::disk::qemu_img_check(&img, "qcow2").unwrap();
    boots(&img, "qcow2", 512, "none");
}

#[test]
fn aarch64_specialisation_as_default_entry_boots_under_aavmf() {
    let (_tmp, img) = build("disk.img", &["--format", "raw", "--default-specialisation", "debug"]);
    boots(&img, "raw", 512, "debug");
}

#[test]
fn aarch64_4096_byte_sectors_boot_from_a_4kn_disk_under_aavmf() {
    let (_tmp, img) = build("disk.img", &["--format", "raw", "--sector-size", "4096"]);
    // fdisk, told the sector size, reads the GPT at LBA 1 of 4096 bytes and sees the ARM64 root.
    let out = tools::run_ok(
        Command::new(tools::require("fdisk", "fdisk")).args(["-l", "-b", "4096", "-o", "Start,Type-UUID"]).arg(&img),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("Disklabel type: gpt"), "{text}");
    assert!(text.contains(ROOT_ARM64), "{text}");
    boots(&img, "raw", 4096, "none");
}

#[test]
fn aarch64_ami_bundle_says_aarch64_linux_and_uefi() {
    let (_tmp, dir) = build("ami", &["--format", "ami"]);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("nix-support/image-info.json")).unwrap()).unwrap();
    assert_eq!(info["system"], "aarch64-linux", "{info}");
    assert_eq!(info["boot_mode"], "uefi", "{info}");
    let file = info["file"].as_str().unwrap();
    assert!(file.ends_with("-aarch64-linux.vhd"), "{file}");
    let check = tools::run_ok(Command::new("sha256sum").args(["-c", "SHA256SUMS"]).current_dir(&dir));
    assert!(String::from_utf8_lossy(&check.stdout).contains(": OK"));
}

/// Asserts a refused build: exit 1, one `kiln: error:` line with every `want`, and nothing in `dir` (no output, no
/// temporary file beside it).
fn refused(run: &Run, dir: &Path, want: &[&str]) {
    run.fails_with(want);
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "the refused build left {left:?}");
}

#[test]
fn aarch64_bios_layouts_are_refused() {
    let fx = fixtures::demo_closure_aarch64();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let img = out.join("disk.img");
    // Also with an i386-pc GRUB at hand (the host's), so the refusal is about the architecture, not a missing GRUB.
    let host_grub = Path::new("/usr/lib/grub/i386-pc/boot.img").is_file();
    for extra in [
        &["--layout", "hybrid"][..],
        &["--layout", "legacy"][..],
        &["--layout", "legacy+gpt"][..],
        &["--profile", "qemu-bios"][..],
        &["--profile", "usb-hybrid"][..],
        &["--layout", "hybrid", "--grub", "/usr"][..],
    ] {
        if extra.contains(&"--grub") && !host_grub {
            panic!("no /usr/lib/grub/i386-pc: install the Debian package `grub-pc-bin`");
        }
        let run = kiln(build_args(&fx, &img, extra));
        refused(&run, &out, &["aarch64", "BIOS"]);
    }
}

#[test]
fn aarch64_closure_with_an_x86_64_systemd_boot_is_refused_naming_the_file() {
    let fx = fixtures::demo_closure_aarch64();
    let x64 = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    assert!(x64.is_file(), "no {}: install the Debian package `systemd-boot-efi`", x64.display());
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("fx");
    let _writable = Writable(tmp.path().to_path_buf());
    tools::run_ok(Command::new("cp").arg("-a").arg(&fx).arg(&copy));
    // Swap the bytes of systemd-bootaa64.efi for the x86-64 PE, keeping the store's modes and mtime.
    let systemd = systemd_of(&copy);
    let base = systemd.trim_start_matches("/nix/store/");
    let store = store_of(&copy);
    let target = store.join(base).join(SD_BOOT);
    tools::run_ok(Command::new("chmod").arg("-R").arg("u+w").arg(&store));
    std::fs::write(&target, std::fs::read(x64).unwrap()).unwrap();
    tools::run_ok(Command::new("chmod").arg("-R").arg("a-w").arg(&store));
    tools::run_ok(Command::new("touch").args(["-h", "-d", "@1"]).arg(&target).arg(target.parent().unwrap()));
    // The closureInfo registration must describe the changed path (narHash, narSize), or kiln stops there.
    reregister(&copy.join("closure-info/registration"), &store, base);

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let run = kiln(build_args(&copy, &out.join("disk.img"), &["--profile", "qemu-efi", "--format", "raw"]));
    refused(&run, &out, &["systemd-bootaa64.efi"]);
    assert!(run.stderr.contains("x86"), "the error says what the file is: {}", run.stderr);
}

/// Rewrites the narHash and narSize of `base`'s record in a closureInfo `registration` from the store as it is.
fn reregister(registration: &Path, store: &Path, base: &str) {
    let dir = StoreDir::new(store).unwrap();
    let inv = PathInventory::walk(&dir, &StorePath::from_base_name(base).unwrap()).unwrap();
    let info = nar::nar_info(&dir, &inv).unwrap();
    let text = std::fs::read_to_string(registration).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Records: path, narHash, narSize, deriver, reference count, the references.
    let mut at = 0;
    while lines[at] != format!("/nix/store/{base}") {
        let refs: usize = lines[at + 4].parse().unwrap();
        at += 5 + refs;
        assert!(at < lines.len(), "{base} has no record in {}", registration.display());
    }
    lines[at + 1] = nar::hash_string(&info.hash);
    lines[at + 2] = info.size.to_string();
    tools::run_ok(Command::new("chmod").arg("u+w").arg(registration));
    std::fs::write(registration, lines.join("\n") + "\n").unwrap();
}

/// Makes a copied store removable again when the test ends (store directories are 0555).
struct Writable(PathBuf);

impl Drop for Writable {
    fn drop(&mut self) {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(&self.0).status();
    }
}
