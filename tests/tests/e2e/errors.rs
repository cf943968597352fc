//! Bad input: each case is refused with one clear line naming what is wrong, and exit status 1.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use kiln_tests::tools;

use crate::util::{Run, kiln, kiln_cmd, run};

const TOP: &str = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-mini";
const OTHER: &str = "1123456789abcdfghijklmnpqrsvwxyz-linux";
const GONE: &str = "2123456789abcdfghijklmnpqrsvwxyz-gone";
const HASH: &str = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

/// A minimal valid system whose closure is just its toplevel (kernel and init live inside it).
struct Mini {
    dir: tempfile::TempDir,
}

impl Mini {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("nix/store").join(TOP);
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(top.join("bzImage"), "kernel").unwrap();
        std::fs::write(top.join("init"), "#!/bin/sh\n").unwrap();
        let mini = Self { dir };
        mini.write_boot_json(&format!("/nix/store/{TOP}/bzImage"));
        mini
    }

    fn write_boot_json(&self, kernel: &str) {
        let doc = format!(
            r#"{{"org.nixos.bootspec.v1": {{"init": "/nix/store/{TOP}/init", "kernel": "{kernel}",
            "kernelParams": ["quiet"], "label": "mini", "system": "x86_64-linux", "toplevel": "/nix/store/{TOP}"}}}}"#
        );
        std::fs::write(self.top().join("boot.json"), doc).unwrap();
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("nix/store")
    }

    fn top(&self) -> PathBuf {
        self.store().join(TOP)
    }

    fn closure_info(&self, store_paths: &str, registration: &str) -> PathBuf {
        let ci = self.dir.path().join("closure-info");
        std::fs::create_dir_all(&ci).unwrap();
        std::fs::write(ci.join("store-paths"), store_paths).unwrap();
        std::fs::write(ci.join("registration"), registration).unwrap();
        ci
    }

    fn args(&self, extra: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = ["build", "--dry-run", "--progress", "none", "--store-dir"].map(Into::into).to_vec();
        v.push(self.store().into());
        v.push("--system".into());
        v.push(format!("/nix/store/{TOP}").into());
        v.extend(extra.iter().map(Into::into));
        v
    }

    fn dry_run(&self, extra: &[&str]) -> Run {
        kiln(self.args(extra))
    }
}

fn record(path: &str, refs: &[&str]) -> String {
    let mut s = format!("/nix/store/{path}\n{HASH}\n100\n\n{}\n", refs.len());
    for r in refs {
        s.push_str(&format!("/nix/store/{r}\n"));
    }
    s
}

#[test]
fn the_valid_minimal_system_passes() {
    // The baseline the bad cases below start from.
    let m = Mini::new();
    let out = m.dry_run(&[]).ok();
    assert!(out.contains("closure        1 store paths from reference scan"), "{out}");
}

#[test]
fn missing_toplevel() {
    let m = Mini::new();
    let mut args = m.args(&[]);
    let last = args.len() - 1;
    args[last] = format!("/nix/store/{GONE}").into();
    kiln(args).fails_with(&[GONE, "not found in store directory", m.store().to_str().unwrap()]);
}

#[test]
fn toplevel_not_a_store_path() {
    let m = Mini::new();
    let mut args = m.args(&[]);
    let last = args.len() - 1;
    args[last] = m.dir.path().into();
    kiln(args).fails_with(&["not a store path", m.dir.path().to_str().unwrap()]);
}

#[test]
fn toplevel_link_out_of_the_store() {
    let m = Mini::new();
    let link = m.dir.path().join("result");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let mut args = m.args(&[]);
    let last = args.len() - 1;
    args[last] = link.clone().into();
    kiln(args).fails_with(&["not a store path", link.to_str().unwrap()]);
}

#[test]
fn store_dir_missing() {
    let m = Mini::new();
    let gone = m.dir.path().join("no-such-store");
    let mut args = m.args(&[]);
    let i = args.iter().position(|a| a == "--store-dir").unwrap();
    args[i + 1] = gone.clone().into();
    kiln(args).fails_with(&["store directory", gone.to_str().unwrap(), "No such file"]);
}

#[test]
fn no_boot_json() {
    let m = Mini::new();
    std::fs::remove_file(m.top().join("boot.json")).unwrap();
    m.dry_run(&[]).fails_with(&[&format!("{TOP}/boot.json: missing"), "bootspec"]);
}

#[test]
fn boot_json_not_json() {
    let m = Mini::new();
    std::fs::write(m.top().join("boot.json"), "{ not json").unwrap();
    m.dry_run(&[]).fails_with(&[&format!("{TOP}/boot.json: invalid bootspec"), "line 1"]);
}

#[test]
fn boot_json_missing_field() {
    let m = Mini::new();
    std::fs::write(m.top().join("boot.json"), r#"{"org.nixos.bootspec.v1": {"label": "x"}}"#).unwrap();
    m.dry_run(&[]).fails_with(&["boot.json: invalid bootspec", "missing field"]);
}

#[test]
fn closure_path_missing_from_store() {
    let m = Mini::new();
    let ci =
        m.closure_info(&format!("/nix/store/{GONE}\n/nix/store/{TOP}\n"), &(record(GONE, &[]) + &record(TOP, &[GONE])));
    m.dry_run(&["--closure-info", ci.to_str().unwrap()])
        .fails_with(&[&format!("/nix/store/{GONE}: in the closure"), "missing from store directory"]);
}

#[test]
fn fifo_in_store() {
    let m = Mini::new();
    let fifo = m.top().join("pipe");
    tools::run_ok(Command::new("mkfifo").arg(&fifo));
    m.dry_run(&[]).fails_with(&[&format!("{}: unsupported file type fifo", fifo.display())]);
}

#[test]
fn socket_in_store() {
    let m = Mini::new();
    let sock = m.top().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    m.dry_run(&[]).fails_with(&[&format!("{}: unsupported file type socket", sock.display())]);
}

#[test]
fn device_in_store() {
    let m = Mini::new();
    let dev = m.top().join("null");
    tools::run_ok(Command::new("mknod").arg(&dev).args(["c", "1", "3"]));
    m.dry_run(&[]).fails_with(&[&format!("{}: unsupported file type character device", dev.display())]);
}

#[test]
fn unreadable_file_as_unprivileged_user() {
    // Root reads everything, so run kiln as `nobody`, from a copy of the binary it can execute.
    let m = Mini::new();
    let secret = m.top().join("secret");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = m.dir.path().join("kiln");
    std::fs::copy(kiln_cmd().get_program(), &bin).unwrap();
    let mut cmd = Command::new(tools::require("setpriv", "util-linux"));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&bin).args(m.args(&[]));
    run(&mut cmd).fails_with(&[&format!("{}: cannot read", secret.display()), "Permission denied"]);
}

#[test]
fn registration_truncated() {
    let m = Mini::new();
    let full = record(TOP, &[TOP]);
    let ci = m.closure_info(&format!("/nix/store/{TOP}\n"), &full[..full.len() - 40]);
    m.dry_run(&["--closure-info", ci.to_str().unwrap()]).fails_with(&["registration", "truncated"]);
}

#[test]
fn registration_bad_hash() {
    let m = Mini::new();
    let reg = record(TOP, &[]).replace(HASH, "sha256:xyz");
    let ci = m.closure_info(&format!("/nix/store/{TOP}\n"), &reg);
    m.dry_run(&["--closure-info", ci.to_str().unwrap()]).fails_with(&["registration line 2: NAR hash", TOP]);
}

#[test]
fn registration_reference_outside_closure() {
    let m = Mini::new();
    let ci = m.closure_info(&format!("/nix/store/{TOP}\n"), &record(TOP, &[GONE]));
    m.dry_run(&["--closure-info", ci.to_str().unwrap()]).fails_with(&[GONE, "outside the closure"]);
}

#[test]
fn store_paths_and_registration_disagree() {
    let m = Mini::new();
    let ci = m.closure_info(&format!("/nix/store/{GONE}\n/nix/store/{TOP}\n"), &record(TOP, &[]));
    m.dry_run(&["--closure-info", ci.to_str().unwrap()]).fails_with(&[GONE, "has no registration record"]);
}

#[test]
fn kernel_outside_the_closure() {
    let m = Mini::new();
    std::fs::create_dir_all(m.store().join(OTHER)).unwrap();
    std::fs::write(m.store().join(OTHER).join("bzImage"), "k").unwrap();
    m.write_boot_json(&format!("/nix/store/{OTHER}/bzImage"));
    let ci = m.closure_info(&format!("/nix/store/{TOP}\n"), &record(TOP, &[]));
    m.dry_run(&["--closure-info", ci.to_str().unwrap()])
        .fails_with(&[&format!("kernel /nix/store/{OTHER}/bzImage named by the bootspec is not in the closure")]);
}

#[test]
fn threads_zero_is_refused_by_the_parser() {
    let m = Mini::new();
    let r = m.dry_run(&["--threads", "0"]);
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert!(r.stderr.contains("invalid value '0' for '--threads <N>'"), "{}", r.stderr);
}

#[test]
fn unimplemented_option_values_are_refused() {
    let m = Mini::new();
    for (flags, want) in [
        (&["--format", "vhd", "--compress", "zlib"][..], "--compress applies to --format qcow2, not vhd"),
        (&["--format", "qcow2", "--bmap"][..], "--bmap goes with --format raw or raw.zst"),
        (&["--layout", "efixbootldr"][..], "has no systemd-boot binary"),
        (&["--sector-size", "4096"][..], "--sector-size describes an image: give --layout"),
        (&["--bootloader", "grub"][..], "--bootloader describes an image: give --layout"),
        (&["--layout", "efi", "--bootloader", "grub"][..], "--bootloader grub does not fit --layout efi"),
        (&["--layout", "efi"][..], "has no systemd-boot binary"),
        (&["--layout", "legacy+gpt"][..], "needs GRUB for i386-pc, and the closure has none"),
        (&["--profile", "amazon"][..], "has no systemd-boot binary"),
        (&["--size", "8G"][..], "--size describes an image: give --layout"),
    ] {
        m.dry_run(flags).fails_with(&[want]);
    }
    let out = m.dir.path().join("out.img");
    let mut args: Vec<OsString> = m.args(&[]).into_iter().filter(|a| a != "--dry-run").collect();
    args.extend(["--output".into(), out.clone().into()]);
    kiln(args).fails_with(&["choose a disk layout: --layout efi"]);
    assert!(!out.exists(), "nothing may be left at the output path");
    kiln(["inspect", "x.img"]).fails_with(&["x.img"]);
}

#[test]
fn help_and_version_work() {
    let r = run(kiln_cmd().arg("--help"));
    assert!(r.status.success() && r.stdout.contains("build"), "{r:?}");
    let r = run(kiln_cmd().args(["build", "--help"]));
    for flag in ["--system", "--store-dir", "--closure-info", "--dry-run", "--progress", "--kernel-param"] {
        assert!(r.stdout.contains(flag), "build --help lacks {flag}");
    }
}

#[test]
fn invalid_kernel_params_are_refused() {
    let m = Mini::new();
    m.dry_run(&["--kernel-param", "a\"b"]).fails_with(&["--kernel-param", "unbalanced double quote", "a\\\"b"]);
    m.dry_run(&["--kernel-param", "two words"]).fails_with(&["--kernel-param"]);
    let long = format!("x={}", "y".repeat(2100));
    m.dry_run(&["--kernel-param", &long]).fails_with(&["kernel command line of", "2048"]);
}

#[test]
fn bad_closure_inputs_leave_nothing_at_the_output_path() {
    let m = Mini::new();
    let out = m.dir.path().join("out.img");
    let cases = [
        (
            format!("/nix/store/{GONE}\n/nix/store/{TOP}\n"),
            record(GONE, &[]) + &record(TOP, &[GONE]),
            "missing from store directory",
        ),
        (format!("/nix/store/{TOP}\n"), record(TOP, &[TOP])[..20].to_owned(), "truncated"),
        (format!("/nix/store/{TOP}\n"), record(TOP, &[GONE]), "outside the closure"),
        (format!("/nix/store/{TOP}\n"), record(TOP, &[]), "contents differ from its registration"),
    ];
    for (paths, reg, want) in cases {
        let ci = m.closure_info(&paths, &reg);
        let mut args: Vec<OsString> = m.args(&["--closure-info", ci.to_str().unwrap(), "--layout", "none"]);
        args.retain(|a| a != "--dry-run");
        args.extend(["--output".into(), out.clone().into()]);
        kiln(args).fails_with(&[want]);
        assert!(!out.exists(), "{want}: nothing may be left at the output path");
        let left: Vec<_> = std::fs::read_dir(m.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().contains("kiln-")), "{want}: temporary left: {left:?}");
    }
}
