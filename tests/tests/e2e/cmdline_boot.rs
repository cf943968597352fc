//! Kernel parameters full of GRUB script syntax (`;`, `$`, `{}`, quotes, spaces inside quoted values) reach the
//! kernel as data, never as GRUB commands: a hybrid disk boots by BIOS (GRUB) and by UEFI (systemd-boot), and
//! the kernel's `/proc/cmdline` holds the same parameters both ways. Parameters GRUB cannot pass unchanged are
//! refused for BIOS layouts, with the parameter named, and pass through systemd-boot unchanged.

use std::time::Duration;

use kernel_params::Cmdline;
use kiln_tests::boot::{Boot, Firmware};
use kiln_tests::fixtures;

use crate::util::build_demo_disk;

const TIMEOUT: Duration = Duration::from_secs(180);

/// Parameters that run GRUB commands when written unquoted into grub.cfg (`halt` ends the boot before the
/// kernel starts), and quoted values with spaces.
const HOSTILE: &[&str] = &[
    "kiln.semicolon=1;halt",
    "kiln.dollar=$root${prefix}",
    "kiln.braces={halt}",
    "kiln.dq=\"a b;halt $x {y}\"",
    "\"kiln.whole=c d\"",
    "kiln.amp=x&&halt||reboot",
    "kiln.hash=#not-a-comment",
];

/// Boots `img` with `firmware` and returns the kernel command line its init printed.
fn boot_cmdline(img: &std::path::Path, firmware: Firmware) -> String {
    let marker = std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap();
    let outcome = Boot::new(img, marker)
        .firmware(firmware)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{} did not boot with {firmware:?}: {e}", img.display()));
    outcome.cmdline()
}

/// The command line without what the loaders add of their own: GRUB's `BOOT_IMAGE=<kernel>`, systemd-boot's
/// `initrd=<file>`.
fn without_loader_params(cmdline: &str) -> Cmdline {
    let mut c = Cmdline::parse(cmdline).unwrap_or_else(|e| panic!("{cmdline}: {e}"));
    c.remove("BOOT_IMAGE");
    c.remove("initrd");
    c
}

#[test]
fn hostile_kernel_params_reach_the_kernel_the_same_by_bios_and_uefi() {
    let mut flags = Vec::new();
    for p in HOSTILE {
        flags.extend(["--kernel-param", p]);
    }
    let (_tmp, img) = build_demo_disk("hybrid", &flags);
    let bios = without_loader_params(&boot_cmdline(&img, Firmware::Bios));
    let uefi = without_loader_params(&boot_cmdline(&img, Firmware::Uefi));
    eprintln!("BIOS: {bios}\nUEFI: {uefi}");
    // systemd-boot passes the entry's options byte for byte.
    for p in HOSTILE {
        assert!(uefi.params().iter().any(|q| q.raw() == *p), "UEFI boot lacks {p}: {uefi}");
    }
    // GRUB passes the same parameters, in the same order, with the same names and values; those without quotes
    // byte for byte (GRUB quotes a parameter with spaces whole: `"k=a b"` for `k="a b"`).
    assert_eq!(bios.params().len(), uefi.params().len(), "BIOS: {bios}\nUEFI: {uefi}");
    for (b, u) in bios.params().iter().zip(uefi.params()) {
        assert!(b.equivalent(u), "BIOS passed {b}, UEFI {u}");
        if !u.raw().contains('"') {
            assert_eq!(b.raw(), u.raw());
        }
    }
    assert_eq!(bios.init_args(), uefi.init_args());
}

/// Runs `kiln build` of the demo closure with `layout` and one `--kernel-param`, into a fresh directory.
fn build_with_param(layout: &str, param: &str) -> (tempfile::TempDir, std::path::PathBuf, crate::util::Run) {
    let fx = fixtures::demo_closure();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("disk.img");
    let top = fixtures::toplevel_of(&fx);
    let store = crate::util::store_of(&fx);
    let ci = fx.join("closure-info");
    let args: [&std::ffi::OsStr; 15] = [
        "build".as_ref(),
        "--progress".as_ref(),
        "none".as_ref(),
        "--layout".as_ref(),
        layout.as_ref(),
        "--system".as_ref(),
        top.as_ref(),
        "--store-dir".as_ref(),
        store.as_os_str(),
        "--closure-info".as_ref(),
        ci.as_os_str(),
        "--kernel-param".as_ref(),
        param.as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
    ];
    let run = crate::util::kiln(args);
    (tmp, out, run)
}

#[test]
fn params_grub_would_change_are_refused_for_bios_and_kept_for_uefi() {
    for (param, why) in [("kiln.bs=a\\b", "backslash"), ("kiln.sq=it's", "single quote")] {
        for layout in ["legacy+gpt", "hybrid", "legacy"] {
            let (tmp, img, run) = build_with_param(layout, param);
            run.fails_with(&["GRUB", param, why, "UEFI"]);
            assert!(!img.exists(), "{layout} with {param} ({why}) was built");
            assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing left behind");
        }
        let (_tmp, img, run) = build_with_param("efi", param);
        run.ok();
        assert!(img.exists(), "efi with {param} ({why}) must build");
    }
}

#[test]
fn a_newline_inside_a_parameter_is_refused_for_every_loader() {
    for layout in ["efi", "legacy+gpt"] {
        let (_tmp, img, run) = build_with_param(layout, "kiln.nl=\"a\nhalt\"");
        run.fails_with(&["kiln.nl", "control byte 0x0a"]);
        assert!(!img.exists(), "{layout}: a newline inside a parameter breaks loader entries and grub.cfg");
    }
}
