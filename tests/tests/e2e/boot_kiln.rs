//! Disks kiln builds boot: the demo closure to its marker under OVMF (systemd-boot) and SeaBIOS (GRUB), for
//! every layout, hybrid both ways, and a specialisation chosen as the default. The partition table, the ESP
//! and GRUB's view of the root filesystem are checked by independent tools.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::disk::{fsck_fat_clean, partitions, sfdisk_json, sgdisk_verify};
use kiln_tests::ext4::e2fsck_clean;
use kiln_tests::{fixtures, tools};

use crate::util::{build_demo_disk, kiln, store_of};

const TIMEOUT: Duration = Duration::from_secs(180);

fn marker(specialisation: &str) -> String {
    let fx = fixtures::demo_closure();
    let default = std::fs::read_to_string(fx.join("marker")).unwrap();
    default.replace("specialisation=none", &format!("specialisation={specialisation}"))
}

fn boots(img: &Path, firmware: Firmware, specialisation: &str) {
    let outcome = Boot::new(img, marker(specialisation))
        .firmware(firmware)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot with {firmware:?}: {e}", img.display()));
    eprintln!("{} booted ({firmware:?}) in {:.1} s", img.display(), outcome.elapsed.as_secs_f64());
}

#[test]
fn efi_boots_under_ovmf_and_its_esp_is_clean() {
    let (_tmp, img) = build_demo_disk("efi", &[]);
    sgdisk_verify(&img).unwrap();
    let parts = partitions(&img);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].2, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0].1, 512 << 20, "default ESP size");
    assert_eq!(parts[1].2, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "root x86-64 from the Discoverable Partitions Spec");
    fsck_fat_clean(&img, parts[0].0, parts[0].1).unwrap();
    e2fsck_clean(&img, parts[1].0).unwrap();
    // mtools, independently, sees systemd-boot where firmware looks for it, and the entry.
    let esp = format!("{}@@{}", img.display(), parts[0].0);
    let env = [("MTOOLS_SKIP_CHECK", "1")];
    let listing = mdir_listing(&img, parts[0].0);
    for want in [
        "efi/boot/bootx64.efi",
        "efi/systemd/systemd-bootx64.efi",
        "loader/loader.conf",
        "loader/entries/nixos-generation-1.conf",
        "loader/entries/nixos-generation-1-specialisation-debug.conf",
    ] {
        assert!(listing.contains(want), "ESP lacks {want}:\n{listing}");
    }
    let entry = tools::run_ok(Command::new("mcopy").envs(env).args([
        "-i",
        &esp,
        "::/loader/entries/nixos-generation-1.conf",
        "-",
    ]));
    let entry = String::from_utf8_lossy(&entry.stdout).into_owned();
    let top = fixtures::toplevel_of(&fixtures::demo_closure());
    assert!(entry.contains(&format!("options init={top}/init ")), "{entry}");
    assert!(entry.lines().any(|l| l.starts_with("linux /EFI/nixos/") && l.ends_with("-bzImage.efi")), "{entry}");
    esp_reads_back_with_fatfs(&img, parts[0].0, parts[0].1);
    boots(&img, Firmware::Uefi, "none");
}

/// The fatfs crate (an independent FAT implementation, used read-only on a copy) finds every file the ESP
/// should hold, byte for byte: systemd-boot at both paths, each kernel and initrd.
fn esp_reads_back_with_fatfs(img: &Path, start: u64, len: u64) {
    use std::io::Read;
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("esp.img");
    kiln_tests::disk::copy_range(img, start, len, &part).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&part).unwrap();
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).expect("fatfs opens the ESP");
    let read = |path: &str| {
        let mut f = fs.root_dir().open_file(path).unwrap_or_else(|e| panic!("fatfs: {path}: {e}"));
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    };
    let top = fixtures::toplevel_of(&fx);
    let host = |logical: &str| fx.join(logical.trim_start_matches('/'));
    let resolve = |link: &str| {
        let target = std::fs::read_link(host(&format!("{top}/{link}"))).unwrap();
        target.to_str().unwrap().to_owned()
    };
    let systemd = resolve("systemd");
    let boot = std::fs::read(host(&format!("{systemd}/lib/systemd/boot/efi/systemd-bootx64.efi"))).unwrap();
    assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), boot);
    assert_eq!(read("EFI/systemd/systemd-bootx64.efi"), boot);
    for link in ["kernel", "initrd"] {
        let logical = resolve(link);
        let p = Path::new(&logical);
        let base = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(read(&format!("EFI/nixos/{base}-{name}.efi")), std::fs::read(host(&logical)).unwrap(), "{link}");
    }
    let names: Vec<String> =
        fs.root_dir().open_dir("loader/entries").unwrap().iter().map(|e| e.unwrap().file_name()).collect();
    assert!(names.contains(&"nixos-generation-1.conf".to_owned()), "{names:?}");
}

#[test]
fn legacy_gpt_boots_under_seabios_and_grub_reads_the_kernel() {
    let (_tmp, img) = build_demo_disk("legacy+gpt", &[]);
    sgdisk_verify(&img).unwrap();
    let parts = partitions(&img);
    assert_eq!(parts[0].2, "21686148-6449-6E6F-744E-656564454649", "BIOS boot partition first");
    // GRUB's own ext2 driver reads the kernel from kiln's ext4, byte for byte.
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let kernel_link = std::fs::read_link(fx.join(format!("{}/kernel", top.trim_start_matches('/')))).unwrap();
    let host_kernel = fx.join(kernel_link.to_str().unwrap().trim_start_matches('/'));
    let out = tools::run_ok(
        Command::new(tools::require("grub-fstest", "grub-common"))
            .arg(&img)
            .args(["cmp", &format!("(loop0,gpt2){}", kernel_link.display())])
            .arg(&host_kernel),
    );
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    boots(&img, Firmware::Bios, "none");
}

#[test]
fn legacy_mbr_boots_under_seabios() {
    let (_tmp, img) = build_demo_disk("legacy", &[]);
    let json = sfdisk_json(&img);
    assert_eq!(json["partitiontable"]["label"], "dos");
    boots(&img, Firmware::Bios, "none");
}

#[test]
fn hybrid_boots_both_ways() {
    let (_tmp, img) = build_demo_disk("hybrid", &[]);
    sgdisk_verify(&img).unwrap();
    assert_eq!(partitions(&img).len(), 3);
    boots(&img, Firmware::Bios, "none");
    boots(&img, Firmware::Uefi, "none");
}

#[test]
fn a_specialisation_can_be_the_default_entry() {
    let (_tmp, img) = build_demo_disk("hybrid", &["--default-specialisation", "debug"]);
    boots(&img, Firmware::Uefi, "debug");
    boots(&img, Firmware::Bios, "debug");
}

#[test]
fn two_builds_are_the_same_bytes() {
    let (_a, one) = build_demo_disk("hybrid", &[]);
    let (_b, two) = build_demo_disk("hybrid", &["--threads", "1"]);
    assert_eq!(crate::util::sha256(&one), crate::util::sha256(&two));
}

#[test]
fn bootloader_inputs_are_checked_before_writing() {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.img");
    let store = store_of(&fx);
    let run = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = ["build", "--progress", "none", "--system"].map(OsStr::new).to_vec();
        args.extend([
            OsStr::new(&top),
            OsStr::new("--store-dir"),
            store.as_os_str(),
            OsStr::new("--output"),
            img.as_os_str(),
        ]);
        args.extend(extra.iter().map(OsStr::new));
        kiln(args)
    };
    run(&["--layout", "efi", "--esp-size", "8M"]).fails_with(&["the ESP is too small for the kernels and initrds"]);
    run(&["--layout", "hybrid", "--sector-size", "4096"]).fails_with(&["--sector-size 4096", "GRUB", "512-byte"]);
    run(&["--layout", "legacy", "--sector-size", "4096"]).fails_with(&["--sector-size 4096", "--layout efi"]);
    run(&["--layout", "hybrid", "--default-specialisation", "nope"]).fails_with(&["nope", "debug"]);
    let empty = tmp.path().join("empty-grub");
    std::fs::create_dir_all(&empty).unwrap();
    run(&["--layout", "legacy+gpt", "--grub", empty.to_str().unwrap()]).fails_with(&["no lib/grub/i386-pc/boot.img"]);
    assert!(!img.exists(), "nothing may be left at the output path");
}

#[test]
fn efi_with_4096_byte_sectors_boots_from_a_4kn_disk() {
    let (_tmp, img) = build_demo_disk("efi", &["--sector-size", "4096"]);
    // fdisk, told the sector size, reads the GPT at LBA 1 of 4096 bytes (sfdisk and sgdisk cannot be told).
    let out = tools::run_ok(
        Command::new(tools::require("fdisk", "fdisk"))
            .args(["-l", "-b", "4096", "-o", "Start,Sectors,Type-UUID"])
            .arg(&img),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("Sector size (logical/physical): 4096 bytes"), "{text}");
    assert!(text.contains("Disklabel type: gpt"), "{text}");
    let rows: Vec<(u64, u64, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [start, sectors, guid] if start.parse::<u64>().is_ok() => Some((
                    start.parse::<u64>().unwrap() * 4096,
                    sectors.parse::<u64>().unwrap() * 4096,
                    guid.to_owned(),
                )),
                _ => None,
            }
        })
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[0].2, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "{text}");
    assert_eq!(rows[0].0, 1 << 20, "1 MiB aligned: LBA 256");
    let (esp_start, esp_len) = (rows[0].0, rows[0].1);
    // The ESP is FAT32 with 4096-byte sectors, and its hidden sectors count 4096-byte sectors.
    let mut bpb = [0u8; 512];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&img).unwrap().read_exact_at(&mut bpb, esp_start).unwrap();
    assert_eq!(u16::from_le_bytes([bpb[11], bpb[12]]), 4096, "bytes per sector");
    assert_eq!(u32::from_le_bytes(bpb[28..32].try_into().unwrap()), 256, "hidden sectors = partition start LBA");
    fsck_fat_clean(&img, esp_start, esp_len).unwrap();
    esp_reads_back_with_fatfs(&img, esp_start, esp_len);
    e2fsck_clean(&img, rows[1].0).unwrap();
    let outcome = Boot::new(&img, marker("none"))
        .sector_size(4096)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot from a 4Kn disk: {e}", img.display()));
    eprintln!("4Kn disk booted (OVMF) in {:.1} s", outcome.elapsed.as_secs_f64());
}

/// Every file on the FAT filesystem at `start` of `img`, lower-cased, as mtools lists them.
fn mdir_listing(img: &Path, start: u64) -> String {
    let part = format!("{}@@{start}", img.display());
    let out = tools::run_ok(
        Command::new(tools::require("mdir", "mtools"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-/", "-b", "-i", &part, "::/"]),
    );
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

#[test]
fn efixbootldr_keeps_entries_and_kernels_on_xbootldr_and_boots() {
    let (_tmp, img) = build_demo_disk("efixbootldr", &[]);
    sgdisk_verify(&img).unwrap();
    let parts = partitions(&img);
    let types: Vec<&str> = parts.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(
        types,
        [
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "BC13C2FF-59E6-4262-A352-B275FD6F7172",
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
        ],
        "ESP, XBOOTLDR, root"
    );
    assert_eq!(parts[0].1, 128 << 20, "a small ESP: the kernels live on XBOOTLDR");
    fsck_fat_clean(&img, parts[0].0, parts[0].1).unwrap();
    fsck_fat_clean(&img, parts[1].0, parts[1].1).unwrap();
    e2fsck_clean(&img, parts[2].0).unwrap();
    let esp = mdir_listing(&img, parts[0].0);
    let xbootldr = mdir_listing(&img, parts[1].0);
    for want in ["efi/boot/bootx64.efi", "efi/systemd/systemd-bootx64.efi", "loader/loader.conf"] {
        assert!(esp.contains(want), "ESP lacks {want}:\n{esp}");
        assert!(!xbootldr.contains(want), "XBOOTLDR has {want}:\n{xbootldr}");
    }
    for want in
        ["loader/entries/nixos-generation-1.conf", "loader/entries/nixos-generation-1-specialisation-debug.conf"]
    {
        assert!(xbootldr.contains(want), "XBOOTLDR lacks {want}:\n{xbootldr}");
        assert!(!esp.contains(want), "ESP has {want}:\n{esp}");
    }
    assert!(xbootldr.contains("efi/nixos/") && xbootldr.contains("-bzimage.efi"), "{xbootldr}");
    assert!(!esp.contains("efi/nixos/"), "the ESP holds no kernels:\n{esp}");
    // systemd-boot finds the entries on XBOOTLDR by its partition type and boots the kernel from there.
    boots(&img, Firmware::Uefi, "none");
}

#[test]
fn the_qemu_and_usb_profiles_build_bootable_raw_disks() {
    for (profile, firmware) in
        [("qemu-efi", Firmware::Uefi), ("qemu-bios", Firmware::Bios), ("usb-hybrid", Firmware::Bios)]
    {
        let (_tmp, img) = crate::util::build_demo_disk_with(&["--profile", profile, "--format", "raw"]);
        if profile == "usb-hybrid" {
            let bmap = img.with_file_name("disk.img.bmap");
            assert!(bmap.is_file(), "usb-hybrid writes a block map for flashing");
        }
        boots(&img, firmware, "none");
    }
}
