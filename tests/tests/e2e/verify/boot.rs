//! `kiln verify` beyond the store: the boot files are checked against the closure they are derived from, and
//! nothing outside `/nix/store` (or on a boot partition) may be something kiln did not put there. Fresh disks of
//! every layout pass, with build options the image does not record; a flipped byte in the ESP's kernel, a changed
//! entry or grub.cfg, and files added anywhere fail, naming them. Damage is done with mtools and debugfs.

use std::path::Path;
use std::process::Command;

use kiln_tests::disk::sfdisk_json;
use kiln_tests::tools;

use super::{debugfs, fails_naming, verify};
use crate::util::build_demo_disk;

/// Byte offset of partition `n` (from 1), as sfdisk reads the table.
fn partition_start(img: &Path, n: usize) -> u64 {
    sfdisk_json(img)["partitiontable"]["partitions"][n - 1]["start"].as_u64().unwrap() * 512
}

/// Runs an mtools command on the FAT volume at byte `offset` of `img` (`::` names its root).
fn mtools(tool: &str, img: &Path, offset: u64, args: &[&str]) -> String {
    let at = format!("{}@@{offset}", img.display());
    let out = tools::run_ok(
        Command::new(tools::require(tool, "mtools")).env("MTOOLS_SKIP_CHECK", "1").args(["-i", &at]).args(args),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// debugfs on the ext4 filesystem at byte `offset` of `img`.
fn debugfs_at(img: &Path, offset: u64, write: bool, request: &str) -> String {
    debugfs(Path::new(&format!("{}?offset={offset}", img.display())), write, request)
}

/// Replaces the file at `path` on the FAT volume at `offset` by `edit` of its contents.
fn edit_fat_file(img: &Path, offset: u64, path: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("file");
    let local_str = local.to_str().unwrap();
    mtools("mcopy", img, offset, &["-n", &format!("::{path}"), local_str]);
    let mut bytes = std::fs::read(&local).unwrap();
    edit(&mut bytes);
    std::fs::write(&local, bytes).unwrap();
    mtools("mcopy", img, offset, &["-o", local_str, &format!("::{path}")]);
}

/// Replaces the file at `path` on the ext4 filesystem at `offset` by `edit` of its text.
fn edit_ext4_file(img: &Path, offset: u64, path: &str, edit: impl FnOnce(&str) -> String) {
    let text = edit(&debugfs_at(img, offset, false, &format!("cat {path}")));
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("file");
    std::fs::write(&local, text).unwrap();
    debugfs_at(img, offset, true, &format!("rm {path}"));
    debugfs_at(img, offset, true, &format!("write {} {path}", local.display()));
}

/// Fresh disks of every layout verify, with their boot files checked: including options the image does not
/// record (kernel parameters changed, another default entry, the registration file).
#[test]
fn every_layout_verifies_with_its_boot_files_checked() {
    let hybrid = [
        "--kernel-param",
        "console=ttyS1",
        "--remove-kernel-param",
        "loglevel",
        "--default-specialisation",
        "debug",
        "--registration-file",
    ];
    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("efi", &[], &["systemd-boot: 7 files on partition 1 (ESP), 2 entries"]),
        (
            "hybrid",
            &hybrid,
            &["systemd-boot: 7 files on partition 2 (ESP), 2 entries", "GRUB: /boot/grub/grub.cfg, 2 menu entries"],
        ),
        (
            "efixbootldr",
            &[],
            &["systemd-boot: 3 files on partition 1 (ESP), 4 files on partition 2 (XBOOTLDR), 2 entries"],
        ),
        ("legacy", &[], &["GRUB: /boot/grub/grub.cfg, 2 menu entries"]),
    ];
    for (layout, extra, want) in cases {
        let (_tmp, img) = build_demo_disk(layout, extra);
        let out = verify(&img, &[]).ok();
        for w in want {
            assert!(out.contains(&format!("boot           {w}\n")), "{layout}: no boot line {w:?}:\n{out}");
        }
    }
}

/// The case: one byte of the kernel on the ESP flipped. The store is intact; the copy is not.
#[test]
fn a_flipped_byte_in_the_esp_kernel_fails_naming_it() {
    let (_tmp, img) = build_demo_disk("efi", &[]);
    let esp = partition_start(&img, 1);
    let listing = mtools("mdir", &img, esp, &["-b", "::/EFI/nixos"]);
    let kernel = listing.lines().find(|l| l.ends_with("-bzImage.efi")).expect("a kernel on the ESP").to_owned();
    let kernel = kernel.trim_start_matches("::");
    edit_fat_file(&img, esp, kernel, |b| b[4096] ^= 0x01);
    let r = verify(&img, &[]);
    fails_naming(
        &r,
        &[&format!("{kernel} on partition 1 (ESP): differs from /nix/store/"), "they differ from byte 4096 on"],
    );
    assert_eq!(r.stdout.matches("problem: ").count(), 1, "only the kernel:\n{}", r.stdout);
}

/// Files added outside the store, and on the ESP, were not put there by kiln.
#[test]
fn files_kiln_did_not_write_fail_naming_them() {
    let (tmp, img) = build_demo_disk("efi", &[]);
    let (esp, root) = (partition_start(&img, 1), partition_start(&img, 2));
    let evil = tmp.path().join("evil");
    std::fs::write(&evil, "#!/bin/sh\n").unwrap();
    debugfs_at(&img, root, true, &format!("write {} /etc/evil", evil.display()));
    debugfs_at(&img, root, true, "mkdir /home");
    debugfs_at(&img, root, true, "symlink /nix/var/nix/gcroots/x /nix/store");
    mtools("mcopy", &img, esp, &[evil.to_str().unwrap(), "::/EFI/BOOT/evil.efi"]);
    fails_naming(
        &verify(&img, &[]),
        &[
            "/etc/evil: a regular file not put there by kiln",
            "/home: a directory not put there by kiln",
            "/nix/var/nix/gcroots/x: a symlink not put there by kiln",
            "/EFI/BOOT/evil.efi on partition 1 (ESP): a file not put there by kiln",
        ],
    );
}

/// An entry on the XBOOTLDR partition that is not what kiln writes, and one that boots another init, fail.
#[test]
fn changed_loader_entries_fail_naming_them() {
    let (_tmp, img) = build_demo_disk("efixbootldr", &[]);
    let xbootldr = partition_start(&img, 2);
    edit_fat_file(&img, xbootldr, "/loader/entries/nixos-generation-1.conf", |b| {
        *b = String::from_utf8_lossy(b).replace("title NixOS\n", "title Evil\n").into_bytes();
    });
    edit_fat_file(&img, xbootldr, "/loader/entries/nixos-generation-1-specialisation-debug.conf", |b| {
        let text = String::from_utf8_lossy(b).into_owned();
        let options = text.lines().find(|l| l.starts_with("options ")).unwrap().to_owned();
        let init = options.split(' ').find(|w| w.starts_with("init=")).unwrap();
        *b = text.replace(init, "init=/bin/sh").into_bytes();
    });
    fails_naming(
        &verify(&img, &[]),
        &[
            "/loader/entries/nixos-generation-1.conf on partition 2 (XBOOTLDR): not what kiln writes for /nix/store/",
            "line 1 is \"title Evil\", kiln writes \"title NixOS\"",
            "/loader/entries/nixos-generation-1-specialisation-debug.conf on partition 2 (XBOOTLDR): its command \
             line does not boot /nix/store/",
        ],
    );
}

/// A grub.cfg whose entry boots another init, or with a line kiln does not write, fails.
#[test]
fn a_changed_grub_cfg_fails_naming_it() {
    let (_tmp, img) = build_demo_disk("legacy", &[]);
    let root = sfdisk_json(&img)["partitiontable"]["partitions"][0]["start"].as_u64().unwrap() * 512;
    edit_ext4_file(&img, root, "/boot/grub/grub.cfg", |cfg| {
        // Every word is single-quoted: 'init=/nix/store/…/init'.
        let init = cfg.split_whitespace().find(|w| w.starts_with("'init=")).unwrap();
        cfg.replacen(init, "'init=/bin/sh'", 1)
    });
    fails_naming(&verify(&img, &[]), &["/boot/grub/grub.cfg: menu entry \"NixOS\": its command line does not boot"]);
    edit_ext4_file(&img, root, "/boot/grub/grub.cfg", |cfg| format!("{cfg}insmod evil\n"));
    fails_naming(&verify(&img, &[]), &["/boot/grub/grub.cfg: not what kiln writes for /nix/store/"]);
}
