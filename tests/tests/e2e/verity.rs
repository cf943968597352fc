//! `--layout efi-verity`: the store as EROFS on its own partition with a dm-verity hash tree beside it. Checked
//! by erofs-utils (`fsck.erofs --extract`, `dump.erofs`), cryptsetup (`veritysetup verify`), e2fsck, the
//! partition table tools and the Linux kernel: a loop mount read file by file, and a boot whose stage 1 opens the
//! store through dm-verity with the root hash from the command line, so every store read is verified; a byte
//! flipped in the store fails the read in the booted system, naming the block `kiln verify` names too.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::disk::{copy_range, fsck_fat_clean, sfdisk_json, sgdisk_verify};
use kiln_tests::ext4::e2fsck_clean;
use kiln_tests::{fixtures, tools};

use crate::util::{build_demo_disk, kiln, sha256, store_of};

const TIMEOUT: Duration = Duration::from_secs(180);
const USR_X86_64: &str = "8484680C-9521-48C6-9C11-B0720656F69E";
const USR_VERITY_X86_64: &str = "77FF5F63-E7B6-4633-ACF4-1565B864C0E6";

/// A partition from sfdisk: (start, size) in bytes, type, GUID, name.
struct Part {
    start: u64,
    size: u64,
    type_guid: String,
    guid: String,
    name: String,
}

fn parts(img: &Path) -> Vec<Part> {
    let json = sfdisk_json(img);
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            start: p["start"].as_u64().unwrap() * 512,
            size: p["size"].as_u64().unwrap() * 512,
            type_guid: p["type"].as_str().unwrap().to_owned(),
            guid: p["uuid"].as_str().unwrap().to_owned(),
            name: p["name"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// The text of a file on the ESP, read with mtools.
fn esp_file(img: &Path, esp: &Part, path: &str) -> String {
    let at = format!("{}@@{}", img.display(), esp.start);
    let out = tools::run_ok(Command::new(tools::require("mcopy", "mtools")).env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &at,
        &format!("::/{path}"),
        "-",
    ]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root hash the default boot entry gives the kernel (`usrhash=`).
fn usrhash(img: &Path, esp: &Part) -> String {
    let entry = esp_file(img, esp, "loader/entries/nixos-generation-1.conf");
    let hash = entry.split_whitespace().find_map(|w| w.strip_prefix("usrhash=")).unwrap_or_else(|| panic!("{entry}"));
    assert_eq!(hash.len(), 64, "{entry}");
    hash.to_owned()
}

/// A GUID as sfdisk prints it from 16 bytes given as 32 hex digits (in text order).
fn guid_of(hex: &str) -> String {
    let h = hex.to_uppercase();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// What a path is: a directory or symlink, or a file's permissions and contents' sha256.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let what = if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", md.permissions().mode() & 0o7777)
            } else if md.is_symlink() {
                format!("symlink {}", String::from_utf8_lossy(std::fs::read_link(&p).unwrap().as_os_str().as_bytes()))
            } else {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                use sha2::Digest;
                let sum: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                format!("file {:o} {}", md.permissions().mode() & 0o7777, kiln_formats::verity::hex(&sum))
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn same_as_fixture_store(found: &Path, who: &str) {
    let fx = fixtures::demo_closure();
    let want = tree(&store_of(&fx));
    let got = tree(found);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    assert!(missing.is_empty(), "{who}: missing {missing:?}");
    let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).take(5).collect();
    assert!(differ.is_empty(), "{who}: differ {differ:?}");
    assert_eq!(got.len(), want.len(), "{who}: extra entries");
}

/// `fsck.erofs --extract` of the store filesystem `store` (into `dir`) succeeds and gives the fixture's store.
fn extracted_is_the_fixture_store(store: &Path, dir: &Path, who: &str) {
    let out = dir.join("extracted");
    let fsck = tools::run(
        Command::new(tools::require("fsck.erofs", "erofs-utils"))
            .arg(format!("--extract={}", out.display()))
            .arg(store),
    );
    assert!(fsck.status.success(), "fsck.erofs: {}", text(&fsck));
    same_as_fixture_store(&out.join("nix/store"), who);
}

#[test]
fn efi_verity_disk_passes_every_checker_and_boots_through_dm_verity() {
    let (tmp, img) = build_demo_disk("efi-verity", &[]);
    sgdisk_verify(&img).unwrap();
    let p = parts(&img);
    let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ESP", "store-verity", "store", "nixos"], "nixpkgs' verity store order and labels");
    assert_eq!((p[1].type_guid.as_str(), p[2].type_guid.as_str()), (USR_VERITY_X86_64, USR_X86_64));
    let hash = usrhash(&img, &p[0]);
    // systemd-repart's rule, which systemd's veritysetup generator relies on: data partition UUID = first 128
    // bits of the root hash, hash partition UUID = last 128 bits.
    assert_eq!(p[2].guid, guid_of(&hash[..32]));
    assert_eq!(p[1].guid, guid_of(&hash[32..]));
    let debug = esp_file(&img, &p[0], "loader/entries/nixos-generation-1-specialisation-debug.conf");
    assert!(debug.contains(&format!(" usrhash={hash}")), "every entry: {debug}");
    fsck_fat_clean(&img, p[0].start, p[0].size).unwrap();
    e2fsck_clean(&img, p[3].start).unwrap();
    let (store, hashes) = (tmp.path().join("store.img"), tmp.path().join("hashes.img"));
    copy_range(&img, p[2].start, p[2].size, &store).unwrap();
    copy_range(&img, p[1].start, p[1].size, &hashes).unwrap();
    let veritysetup = tools::require("veritysetup", "cryptsetup-bin");
    let verify = tools::run(Command::new(&veritysetup).arg("verify").arg(&store).arg(&hashes).arg(&hash));
    assert!(verify.status.success(), "veritysetup verify: {}", text(&verify));
    let dump = tools::run_ok(Command::new(&veritysetup).arg("dump").arg(&hashes));
    let dump = text(&dump);
    assert!(dump.contains("Hash algorithm:  \tsha256") && dump.contains("Hash type:       \t1"), "{dump}");
    extracted_is_the_fixture_store(&store, tmp.path(), "fsck.erofs --extract");
    // kiln verify reads the store from the EROFS partition (every narHash) and checks the tree and root hash.
    let verified = kiln([std::ffi::OsStr::new("verify"), img.as_os_str()]).ok();
    assert!(verified.contains(&format!("and root hash {hash}")), "{verified}");
    assert!(verified.contains("store          8 valid paths; 8 hashed"), "{verified}");
    // kiln inspect names the store filesystem and reads the root hash off the hash partition's tree.
    let shown = kiln([std::ffi::OsStr::new("inspect"), img.as_os_str()]).ok();
    assert!(shown.contains("filesystem     erofs\n    label        store\n"), "{shown}");
    assert!(shown.contains("filesystem     dm-verity hash tree\n"), "{shown}");
    assert!(shown.contains(&format!("    root hash    {hash}\n")), "{shown}");
    let outcome = Boot::new(&img, std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap())
        .firmware(Firmware::Uefi)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot: {e}", img.display()));
    assert!(
        outcome.serial.contains(&format!(
            "demo-stage1: store verified by dm-verity (/dev/vda3, hashes on /dev/vda2, root hash {hash})"
        )),
        "stage 1 did not open the store through dm-verity:\n{}",
        outcome.serial
    );
    eprintln!("efi-verity booted in {:.1} s", outcome.elapsed.as_secs_f64());
}

#[test]
fn a_flipped_store_byte_fails_its_read_in_the_booted_system_and_kiln_verify_names_the_block() {
    let (tmp, img) = build_demo_disk("efi-verity", &[]);
    let p = parts(&img);
    let store = tmp.path().join("store.img");
    copy_range(&img, p[2].start, p[2].size, &store).unwrap();
    // Where erofs-utils says the blob's first byte is.
    let fx = fixtures::demo_closure();
    let checks = std::fs::read_dir(store_of(&fx))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with("-demo-checks"))
        .unwrap();
    let dump = tools::run_ok(
        Command::new(tools::require("dump.erofs", "erofs-utils"))
            .arg(format!("--path=/nix/store/{checks}/share/blob.bin"))
            .arg("-e")
            .arg(&store),
    );
    let dump = text(&dump);
    let physical: u64 = dump
        .lines()
        .find_map(|l| l.trim().strip_prefix("0:")?.split(':').nth(1)?.split("..").next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no first extent in:\n{dump}"));
    let block = physical / 4096;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let at = p[2].start + physical + 100;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x55], at).unwrap();
    drop(f);
    let failure = Boot::new(&img, "KILN-DEMO-BOOT-OK")
        .firmware(Firmware::Uefi)
        .timeout(TIMEOUT)
        .run()
        .expect_err("a tampered store booted to its marker");
    let corrupted = "device-mapper: verity: 254:";
    assert!(
        failure
            .serial
            .lines()
            .any(|l| l.contains(corrupted) && l.contains(&format!("data block {block} is corrupted"))),
        "the kernel did not report data block {block}:\n{failure}"
    );
    assert!(failure.serial.contains("blob.bin': Input/output error"), "{failure}");
    let run = kiln([std::ffi::OsStr::new("verify"), img.as_os_str()]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        !run.status.success(),
        "kiln verify accepted a tampered store:
{said}"
    );
    assert!(said.contains(&format!("data block {block} ")), "kiln verify does not name block {block}:\n{said}");
}

#[test]
fn the_kernel_mounts_the_store_and_one_thread_or_two_give_the_same_bytes() {
    let (_one_dir, one) = build_demo_disk("efi-verity", &["--threads", "1"]);
    let (_two_dir, two) = build_demo_disk("efi-verity", &["--threads", "2"]);
    assert_eq!(sha256(&one), sha256(&two), "--threads 1 and 2 wrote other bytes");
    let p = parts(&one);
    let dir = tempfile::tempdir().unwrap();
    let losetup = tools::run(
        Command::new(tools::require("losetup", "mount"))
            .args(["-f", "--show", "-r", "-o", &p[2].start.to_string(), "--sizelimit", &p[2].size.to_string()])
            .arg(&one),
    );
    assert!(losetup.status.success(), "losetup (the tests run as root): {}", text(&losetup));
    let mut lo = Loop { dev: String::from_utf8_lossy(&losetup.stdout).trim().to_owned(), mnt: None };
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = tools::run(Command::new("mount").args(["-t", "erofs", "-o", "ro", &lo.dev]).arg(&mnt));
    assert!(mount.status.success(), "mount -t erofs: {}", text(&mount));
    lo.mnt = Some(mnt.clone());
    same_as_fixture_store(&mnt.join("nix/store"), "Linux (mount -t erofs)");
    // Identical files are one inode, as in the ext4 root of the other layouts.
    let fx = fixtures::demo_closure();
    let checks = std::fs::read_dir(mnt.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-demo-checks"))
        .unwrap();
    let a = std::fs::metadata(checks.join("share/doc/README")).unwrap();
    let b = std::fs::metadata(checks.join("share/doc/nested/README-hardlink")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    drop((lo, fx));
}

/// Detaches the loop device (unmounting first) when dropped, also when the test fails.
struct Loop {
    dev: String,
    mnt: Option<PathBuf>,
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mnt {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn uki_carries_the_root_hash_in_its_command_line_and_systemd_boot_boots_it() {
    let (tmp, img) = build_demo_disk("efi-verity", &["--uki"]);
    let p = parts(&img);
    let listing = {
        let at = format!("{}@@{}", img.display(), p[0].start);
        let out = tools::run_ok(
            Command::new(tools::require("mdir", "mtools"))
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-/", "-b", "-i", &at, "::/"]),
        );
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    for want in ["::/efi/linux/nixos-generation-1.efi", "::/efi/linux/nixos-generation-1-specialisation-debug.efi"] {
        assert!(listing.contains(want), "ESP lacks {want}:\n{listing}");
    }
    assert!(!listing.contains("loader/entries/"), "UKIs replace the entry files:\n{listing}");
    assert!(!listing.contains("::/efi/nixos/"), "the kernels are inside the UKIs:\n{listing}");
    assert!(esp_file(&img, &p[0], "loader/loader.conf").contains("default nixos-generation-1.efi\n"));
    // binutils reads the UKI's sections; the command line holds the root hash the partitions were named by.
    let uki = tmp.path().join("uki.efi");
    let at = format!("{}@@{}", img.display(), p[0].start);
    tools::run_ok(Command::new("mcopy").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &at,
        "::/EFI/Linux/nixos-generation-1.efi",
        uki.to_str().unwrap(),
    ]));
    let objdump = tools::run_ok(Command::new(tools::require("objdump", "binutils")).arg("-h").arg(&uki));
    let objdump = text(&objdump);
    for s in [".osrel", ".cmdline", ".uname", ".initrd", ".linux"] {
        assert!(objdump.lines().any(|l| l.split_whitespace().nth(1) == Some(s)), "no {s}:\n{objdump}");
    }
    let cmdline = tmp.path().join("cmdline");
    tools::run_ok(
        Command::new(tools::require("objcopy", "binutils"))
            .args(["-O", "binary", "--only-section", ".cmdline"])
            .arg(&uki)
            .arg(&cmdline),
    );
    let cmdline = std::fs::read_to_string(&cmdline).unwrap();
    let hash = cmdline.split_whitespace().find_map(|w| w.strip_prefix("usrhash=")).unwrap().to_owned();
    assert_eq!(p[2].guid, guid_of(&hash[..32]), "{cmdline}");
    let top = fixtures::toplevel_of(&fixtures::demo_closure());
    assert!(cmdline.starts_with(&format!("init={top}/init ")), "{cmdline}");
    let verified = kiln([std::ffi::OsStr::new("verify"), img.as_os_str()]).ok();
    assert!(verified.contains(&format!("and root hash {hash}")), "{verified}");
    let outcome = Boot::new(&img, std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap())
        .firmware(Firmware::Uefi)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot its UKI: {e}", img.display()));
    assert!(outcome.cmdline().contains(&format!("usrhash={hash}")), "{}", outcome.cmdline());
    assert!(outcome.serial.contains("demo-stage1: store verified by dm-verity"), "{}", outcome.serial);
    // UKIs on a plain efi layout too; not on a BIOS one.
    let (_d, plain) = build_demo_disk("efi", &["--uki"]);
    let verified = kiln([std::ffi::OsStr::new("verify"), plain.as_os_str()]).ok();
    assert!(verified.contains("systemd-boot: 5 files"), "{verified}");
    let fx = fixtures::demo_closure();
    let refused = kiln([
        "build",
        "--layout",
        "legacy",
        "--uki",
        "--dry-run",
        "--system",
        &fixtures::toplevel_of(&fx),
        "--store-dir",
        store_of(&fx).to_str().unwrap(),
    ]);
    refused.fails_with(&["--uki", "BIOS only"]);
}

/// `--store-compression lz4`: the store EROFS with LZ4 clusters (the `0padding` feature only compressed
/// filesystems carry), read back by fsck.erofs, veritysetup and kiln verify, the same bytes with 1 and 2
/// threads, and booted through dm-verity by the demo kernel, whose stage 1 reads the compressed store.
#[test]
fn lz4_store_passes_the_checkers_and_boots_through_dm_verity() {
    let (tmp, img) = build_demo_disk("efi-verity", &["--store-compression", "lz4", "--threads", "2"]);
    let (_one_dir, one) = build_demo_disk("efi-verity", &["--store-compression", "lz4", "--threads", "1"]);
    assert_eq!(sha256(&img), sha256(&one), "--threads 1 and 2 wrote other bytes");
    let (_plain_dir, plain) = build_demo_disk("efi-verity", &[]);
    let (p, flat) = (parts(&img), parts(&plain));
    assert!(p[2].size < flat[2].size, "compressed store {} bytes, uncompressed {}", p[2].size, flat[2].size);
    let hash = usrhash(&img, &p[0]);
    let (store, hashes) = (tmp.path().join("store.img"), tmp.path().join("hashes.img"));
    copy_range(&img, p[2].start, p[2].size, &store).unwrap();
    copy_range(&img, p[1].start, p[1].size, &hashes).unwrap();
    let dump = tools::run(Command::new(tools::require("dump.erofs", "erofs-utils")).arg("-s").arg(&store));
    assert!(text(&dump).contains("0padding"), "an LZ4 store: {}", text(&dump));
    extracted_is_the_fixture_store(&store, tmp.path(), "fsck.erofs --extract (lz4)");
    let veritysetup = tools::require("veritysetup", "cryptsetup-bin");
    let verify = tools::run(Command::new(&veritysetup).arg("verify").arg(&store).arg(&hashes).arg(&hash));
    assert!(verify.status.success(), "veritysetup verify: {}", text(&verify));
    let verified = kiln([std::ffi::OsStr::new("verify"), img.as_os_str()]).ok();
    assert!(verified.contains(&format!("and root hash {hash}")), "{verified}");
    assert!(verified.contains("store          8 valid paths; 8 hashed"), "{verified}");
    let outcome = Boot::new(&img, std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap())
        .firmware(Firmware::Uefi)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot: {e}", img.display()));
    assert!(outcome.serial.contains("demo-stage1: store verified by dm-verity"), "{}", outcome.serial);
    eprintln!("efi-verity with an LZ4 store booted in {:.1} s", outcome.elapsed.as_secs_f64());
    // Only the layout with a store filesystem of its own compresses it.
    let fx = fixtures::demo_closure();
    let refused = kiln([
        "build",
        "--system",
        &fixtures::toplevel_of(&fx),
        "--store-dir",
        &store_of(&fx).to_string_lossy(),
        "--layout",
        "efi",
        "--store-compression",
        "lz4",
        "--output",
        &tmp.path().join("no.img").to_string_lossy(),
    ]);
    refused.fails_with(&["--store-compression lz4", "efi-verity"]);
    assert!(!tmp.path().join("no.img").exists());
}

/// Bad input for `kiln verify` and `veritysetup verify`: a hash block changed (the tree no longer leads to the
/// root hash the boot entries give) and a hash partition cut short (its superblock's tree does not fit), each a
/// clear error naming the hash partition.
#[test]
fn a_wrong_root_hash_and_a_truncated_hash_partition_are_clear_errors() {
    let (tmp, img) = build_demo_disk("efi-verity", &[]);
    let p = parts(&img);
    let hash = usrhash(&img, &p[0]);
    let veritysetup = tools::require("veritysetup", "cryptsetup-bin");
    // The top level's first block comes right after the superblock.
    let tampered = tmp.path().join("tampered.img");
    std::fs::copy(&img, &tampered).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&tampered).unwrap();
    let at = p[1].start + 4096 + 3;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
    drop(f);
    let run = kiln([std::ffi::OsStr::new("verify"), tampered.as_os_str()]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(!run.status.success(), "kiln verify accepted a changed hash block:\n{said}");
    assert!(
        said.contains("hash block 1 of the hash device does not match")
            && said.contains(&format!("root hash {hash} the boot entries give")),
        "{said}"
    );
    let (store, hashes) = (tmp.path().join("store.img"), tmp.path().join("hashes.img"));
    copy_range(&tampered, p[2].start, p[2].size, &store).unwrap();
    copy_range(&tampered, p[1].start, p[1].size, &hashes).unwrap();
    let verify = tools::run(Command::new(&veritysetup).arg("verify").arg(&store).arg(&hashes).arg(&hash));
    assert!(!verify.status.success(), "veritysetup accepted a changed hash block");
    // The hash partition cut to one block less than its tree needs (sgdisk recreates it with the same type,
    // GUID and name).
    let truncated = tmp.path().join("truncated.img");
    std::fs::copy(&img, &truncated).unwrap();
    copy_range(&img, p[1].start, p[1].size, &hashes).unwrap();
    let dump = text(&tools::run_ok(Command::new(&veritysetup).arg("dump").arg(&hashes)));
    let data_blocks: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("Data blocks:")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no data block count in:\n{dump}"));
    // The superblock's block, then each level (128 sha256 hashes per 4 KiB block) up to one block.
    let (mut level, mut tree_blocks) = (data_blocks, 1);
    loop {
        level = level.div_ceil(128);
        tree_blocks += level;
        if level == 1 {
            break;
        }
    }
    let first = p[1].start / 512;
    let last = first + tree_blocks * 8 - 1 - 8;
    let sgdisk = tools::require("sgdisk", "gdisk");
    tools::run_ok(
        Command::new(&sgdisk)
            .args(["-d", "2", "-n", &format!("2:{first}:{last}"), "-t", &format!("2:{USR_VERITY_X86_64}")])
            .args(["-u", &format!("2:{}", p[1].guid), "-c", "2:store-verity"])
            .arg(&truncated),
    );
    let run = kiln([std::ffi::OsStr::new("verify"), truncated.as_os_str()]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(!run.status.success(), "kiln verify accepted a truncated hash partition:\n{said}");
    assert!(
        said.contains(&format!("but its superblock's tree of {data_blocks} data blocks needs"))
            && said.contains("truncated"),
        "{said}"
    );
}
