//! Pinned bytes: images of deterministic inputs (the synthetic store, and a small system this test writes) must
//! keep their sha256 across changes that mean to change nothing (refactors of the pipeline). A change that
//! means to change the bytes updates the table: `KILN_PRINT_PINS=1 cargo test -p kiln-tests --test e2e pinned
//! -- --nocapture` prints it.
//!
//! Only inputs that are the same on every machine are pinned: no Debian kernel, systemd-boot or GRUB (BIOS
//! layouts embed the host's GRUB modules, whose bytes follow Debian's updates).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kiln_tests::fixtures;

use crate::util::{kiln, sha256, store_of};

pub const TOP: &str = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-pinned-24.11";
const KERNEL: &str = "1123456789abcdfghijklmnpqrsvwxyz-linux-6.1";
const SYSTEMD: &str = "2123456789abcdfghijklmnpqrsvwxyz-systemd-256";
const DEBUG: &str = "3123456789abcdfghijklmnpqrsvwxyz-nixos-system-pinned-24.11-debug";

/// A small NixOS-shaped system with a specialisation, its kernel, initrd and systemd-boot stand-ins written by
/// this test (same bytes everywhere).
pub fn pinned_system(root: &Path) -> PathBuf {
    let store = root.join("nix/store");
    let write = |rel: &str, bytes: &[u8]| {
        let p = store.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    let pattern = |n: usize, salt: u8| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect() };
    write(&format!("{KERNEL}/bzImage"), &pattern(3 << 20, 7));
    write(&format!("{KERNEL}/initrd"), &pattern(1 << 20, 11));
    write(&format!("{SYSTEMD}/lib/systemd/boot/efi/systemd-bootx64.efi"), &pattern(90_000, 13));
    for (top, label, params) in
        [(TOP, "24.11 (pinned)", r#"["console=ttyS0", "quiet"]"#), (DEBUG, "24.11 (debug)", r#"["debug"]"#)]
    {
        write(&format!("{top}/init"), b"#!/bin/sh\n");
        let spec = if top == TOP {
            format!(
                r#", "org.nixos.specialisation.v1": {{"debug": {{"org.nixos.bootspec.v1": {{"init": "/nix/store/{DEBUG}/init",
                "initrd": "/nix/store/{KERNEL}/initrd", "kernel": "/nix/store/{KERNEL}/bzImage", "kernelParams": ["debug"],
                "label": "24.11 (debug)", "system": "x86_64-linux", "toplevel": "/nix/store/{DEBUG}"}}}}}}"#
            )
        } else {
            String::new()
        };
        write(
            &format!("{top}/boot.json"),
            format!(
                r#"{{"org.nixos.bootspec.v1": {{"init": "/nix/store/{top}/init", "initrd": "/nix/store/{KERNEL}/initrd",
                "kernel": "/nix/store/{KERNEL}/bzImage", "kernelParams": {params}, "label": "{label}",
                "system": "x86_64-linux", "toplevel": "/nix/store/{top}"}}{spec}}}"#
            )
            .as_bytes(),
        );
        std::os::unix::fs::symlink(format!("/nix/store/{SYSTEMD}"), store.join(top).join("systemd")).unwrap();
    }
    std::fs::create_dir_all(store.join(TOP).join("specialisation")).unwrap();
    std::os::unix::fs::symlink(format!("/nix/store/{DEBUG}"), store.join(TOP).join("specialisation/debug")).unwrap();
    store
}

/// (output name, its sha256) for every build of [`builds`], in order.
const PINS: &[(&str, &str)] = &[
    ("synthetic-none.img", "9356b289d9d95834d67ed7766c7cfa5d9d0af41673a48602bbda37da85c51f1c"),
    ("efi.img", "b2626b992092125fb8dabb10af39a70dae4970ba8f2d02c2a3d2f670ea312763"),
    ("efi-4kn.img", "be1b1f4d660d81204b691c973a72d920f576f91d017b0d02ce23edb04f13ab14"),
    ("efixbootldr.img", "3d9db9775ef2779729b60c0303bbe1dbe1370a1cbcf1c610d6ba45f7ab7a512f"),
    ("efi.qcow2", "d2796c3df394a4756813301bf3748f57f148609d83a3d53e15a93d1b2c92bc14"),
    ("efi.vhd", "b82187a57fc0719bd14382815364c9378201368cd3795c7e964e5e914727bd22"),
    ("efi.vmdk", "e612df2448b3144967fb8bf3143c0749fe2e458a7e03af379e3267f1856b83ae"),
    ("efi.raw.zst", "3b46c94566a56670fcc82c12b3dad1564dda0ef23342d318142117ad800db46b"),
    ("efi.raw.tar.gz", "f59d0c05d5a35fdd3fde54a5648aca62b39816ec5851414699ac84b53ce6b1c9"),
];

fn builds(pinned_store: &Path, synthetic: &Path) -> Vec<(&'static str, Vec<OsString>, &'static str)> {
    let sys = |extra: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = ["--system", &format!("/nix/store/{TOP}"), "--store-dir"].map(Into::into).to_vec();
        v.push(pinned_store.into());
        v.extend(extra.iter().map(Into::into));
        v
    };
    let syn = |extra: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--system".into(), fixtures::toplevel_of(synthetic).into()];
        v.extend(["--store-dir".into(), store_of(synthetic).into()]);
        v.extend(extra.iter().map(Into::into));
        v
    };
    vec![
        ("synthetic-none.img", syn(&["--layout", "none"]), "raw"),
        ("efi.img", sys(&["--layout", "efi"]), "raw"),
        ("efi-4kn.img", sys(&["--layout", "efi", "--sector-size", "4096", "--seed", "4kn"]), "raw"),
        ("efixbootldr.img", sys(&["--layout", "efixbootldr", "--kernel-param", "kiln.pin=\"a b\""]), "raw"),
        ("efi.qcow2", sys(&["--layout", "efi", "--default-specialisation", "debug"]), "qcow2"),
        ("efi.vhd", sys(&["--layout", "efi", "--size", "1G"]), "vhd"),
        ("efi.vmdk", sys(&["--layout", "efi", "--registration-file"]), "vmdk"),
        ("efi.raw.zst", sys(&["--layout", "efi", "--bmap"]), "raw.zst"),
        ("efi.raw.tar.gz", sys(&["--layout", "efi"]), "gce"),
    ]
}

#[test]
fn images_of_deterministic_inputs_keep_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = pinned_system(&tmp.path().join("sys"));
    let synthetic = fixtures::synthetic_store();
    let print = std::env::var_os("KILN_PRINT_PINS").is_some();
    let mut got = Vec::new();
    for (name, args, format) in builds(&store, &synthetic) {
        let out = tmp.path().join(name);
        let mut full: Vec<OsString> = ["build", "--progress", "none", "--format", format].map(Into::into).to_vec();
        full.extend(args);
        full.extend(["--output".into(), out.clone().into_os_string()]);
        kiln(&full).ok();
        got.push((name, sha256(&out)));
        std::fs::remove_file(&out).unwrap();
    }
    if print {
        for (name, sum) in &got {
            println!("    (\"{name}\", \"{sum}\"),");
        }
    }
    let want: Vec<(&str, String)> = PINS.iter().map(|(n, s)| (*n, (*s).to_owned())).collect();
    assert_eq!(got, want, "pinned image bytes changed (KILN_PRINT_PINS=1 prints the new table)");
}
