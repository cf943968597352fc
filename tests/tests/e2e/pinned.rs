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
    ("synthetic-none.img", "9619bd696d8c40d994d7d489a99ec0a24f2dbc80bc39e85603b4df7b0eca47dc"),
    ("efi.img", "855bedcabd9923669b4161675fae7737c8895bb73f30375b56ff4237b23de163"),
    ("efi-4kn.img", "22cfcf5be563b6c67d93af9b2992548a231853f1d1fe8a1ce2a22e15e5f7693c"),
    ("efixbootldr.img", "93551544c9ff85c4f16d3d5595ac7ac825510f428c3244486bcf037fb16c4687"),
    ("efi.qcow2", "9b384bd614860b5a11f40e21ab3484162f4974afb444a732b94a954eb8f45921"),
    ("efi.vhd", "f4f8405259450c333dc801ecfe29789219a03f3cf3371369b4e33d6a20e59f0c"),
    ("efi.vmdk", "0b1d267cd2591538eaf0c1b8a76cf44a75b6f7a47e436555b199e372f7fa0126"),
    ("efi.raw.zst", "a6e2d587d0a670b480128c5cfc83640d0ab913e17803edc8f4f014282cc74630"),
    ("efi.raw.tar.gz", "11a21497af734e59ecc623427cc317e876d5e658dbf2d47c328a0210bd8b0c86"),
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
