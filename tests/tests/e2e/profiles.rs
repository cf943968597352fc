//! Image profiles: `kiln profiles`, and `kiln build --profile` with built-in and user profiles.

use std::ffi::OsStr;
use std::path::Path;

use kiln_tests::disk::{sfdisk_json, sgdisk_verify};
use kiln_tests::fixtures;
use serde_json::Value;

use crate::util::{build_demo_disk, build_demo_disk_with, dry_run_json, kiln, store_of};

const BUILTINS: [&str; 8] = ["amazon", "gce", "azure", "openstack", "qemu-efi", "qemu-bios", "usb-hybrid", "metal-efi"];

#[test]
fn kiln_profiles_lists_every_builtin_with_its_description() {
    let out = kiln(["profiles"]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), BUILTINS.len(), "{out}");
    for (line, name) in lines.iter().zip(BUILTINS) {
        let (first, description) = line.split_once("  ").unwrap_or_else(|| panic!("no description: {line:?}"));
        assert_eq!(first, name);
        assert!(!description.trim().is_empty(), "{line:?}");
    }
    let json: Value = serde_json::from_str(&kiln(["profiles", "--json"]).ok()).unwrap();
    assert_eq!((json["v"].as_u64(), json["type"].as_str()), (Some(1), Some("profiles")));
    let listed: Vec<&str> = json["profiles"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(listed, BUILTINS);
    for p in json["profiles"].as_array().unwrap() {
        assert_eq!(p["file"], format!("images/{}.toml", p["name"].as_str().unwrap()));
        assert!(lines.iter().any(|l| l.ends_with(p["description"].as_str().unwrap())), "{p}");
    }
}

#[test]
fn kiln_profiles_show_resolves_extends() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("mine.toml");
    std::fs::write(&file, "extends = \"qemu-bios\"\nformat = \"raw\"\n[grub]\nterminal = [\"serial\"]\n").unwrap();
    let out = kiln([OsStr::new("profiles"), OsStr::new("show"), file.as_os_str()]).ok();
    assert!(
        out.starts_with(&format!(
            "# kiln profile {}, resolved from {}, images/qemu-bios.toml\n",
            file.display(),
            file.display()
        )),
        "{out}"
    );
    for want in [
        "layout = \"legacy+gpt\"\n",
        "bootloader = \"grub\"\n",
        "format = \"raw\"\n",
        "terminal = [\"serial\"]\n",
        "serial = \"--unit=0 --speed=115200\"\n",
    ] {
        assert!(out.contains(want), "lacks {want:?}:\n{out}");
    }
    assert!(!out.contains("extends"), "{out}");
    // What show prints is a profile file that reads back to itself.
    let shown = tmp.path().join("shown.toml");
    std::fs::write(&shown, &out).unwrap();
    let again = kiln([OsStr::new("profiles"), OsStr::new("show"), shown.as_os_str()]).ok();
    assert_eq!(again.lines().skip(1).collect::<Vec<_>>(), out.lines().skip(1).collect::<Vec<_>>());
    let json: Value = serde_json::from_str(&kiln(["profiles", "show", "amazon", "--json"]).ok()).unwrap();
    assert_eq!(json["type"], "profile");
    assert_eq!(json["files"], serde_json::json!(["images/amazon.toml"]));
    assert_eq!(json["profile"]["format"], "ami");
    assert_eq!(json["profile"]["esp-size"], "256M");
    assert_eq!(
        json["profile"]["kernel-params"]["add"],
        serde_json::json!(["console=ttyS0,115200n8", "random.trust_cpu=on", "nvme_core.io_timeout=4294967295"])
    );
}

#[test]
fn a_bad_profile_file_is_refused_with_its_position_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, "# a typo\nextends = \"amazon\"\nlayot = \"efi\"\n").unwrap();
    let out = tmp.path().join("out.img");
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let store = store_of(&fx);
    let r = kiln([
        OsStr::new("build"),
        OsStr::new("--system"),
        OsStr::new(&top),
        OsStr::new("--store-dir"),
        store.as_os_str(),
        OsStr::new("--output"),
        out.as_os_str(),
        OsStr::new("--profile"),
        file.as_os_str(),
    ]);
    r.fails_with(&[&format!(
        "{}:3:1: unknown field `layot`, expected one of `description`, `extends`, `layout`",
        file.display()
    )]);
    assert!(!out.exists(), "nothing may be left at the output path");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "no temporary file either");
    kiln([OsStr::new("profiles"), OsStr::new("show"), file.as_os_str()])
        .fails_with(&[&format!("{}:3:1: unknown field `layot`", file.display())]);
    kiln(["profiles", "show", "amzon"])
        .fails_with(&["no built-in profile is called \"amzon\" (the built-ins: amazon, gce,"]);
}

/// `--dry-run --progress json` of the demo closure with `extra` flags.
fn demo_dry_run(extra: &[&OsStr]) -> Value {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let store = store_of(&fx);
    let ci = fx.join("closure-info");
    let mut args: Vec<&OsStr> = vec![OsStr::new("--system"), OsStr::new(&top), OsStr::new("--store-dir")];
    args.extend([store.as_os_str(), OsStr::new("--closure-info"), ci.as_os_str()]);
    args.extend_from_slice(extra);
    dry_run_json(&args)
}

#[test]
fn dry_run_with_a_user_profile_applies_its_kernel_params_before_the_users() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ec2-raw.toml");
    std::fs::write(
        &file,
        "# Amazon's settings, as a raw disk.\nextends = \"amazon\"\nformat = \"raw\"\n\n\
         [kernel-params]\nremove = [\"loglevel\"]\nadd = [\"quiet\"]\n",
    )
    .unwrap();
    let report = demo_dry_run(&[
        OsStr::new("--profile"),
        file.as_os_str(),
        OsStr::new("--kernel-param"),
        OsStr::new("console=tty1"),
        OsStr::new("--remove-kernel-param"),
        OsStr::new("random.trust_cpu"),
    ]);
    let top = fixtures::toplevel_of(&fixtures::demo_closure());
    let lines: Vec<&str> =
        report["entries"].as_array().unwrap().iter().map(|e| e["command_line"].as_str().unwrap()).collect();
    // The bootspec's `console=ttyS0 panic=-1 loglevel=4`; then the profile's layer (amazon's additions and the
    // file's, less loglevel); then the user's (less random.trust_cpu, which amazon added; console=tty1 last).
    let profile_then_user = "console=ttyS0,115200n8 nvme_core.io_timeout=4294967295 quiet console=tty1";
    assert_eq!(lines[0], format!("init={top}/init console=ttyS0 panic=-1 {profile_then_user}"));
    assert_eq!(lines.len(), 2, "the system and its specialisation");
    assert_eq!(
        lines[1].split_once(" console=ttyS0 panic=-1 debug ").map(|(_, rest)| rest),
        Some(profile_then_user),
        "{}",
        lines[1]
    );
    // The profile's other settings reached the plan: amazon's layout and its 256 MiB ESP.
    let image = &report["image"];
    assert_eq!((image["layout"].as_str(), image["format"].as_str()), (Some("efi"), Some("raw")));
    let esp = image["partitions"].as_array().unwrap().iter().find(|p| p["name"] == "ESP").expect("an ESP");
    assert_eq!(esp["size"], 256 << 20);
    assert_eq!(image["bootloaders"], serde_json::json!(["systemd-boot"]));
}

#[test]
fn every_builtin_profile_plans_the_demo_system() {
    for (name, layout, format) in [
        ("amazon", "efi", "ami"),
        ("gce", "efi", "gce"),
        ("azure", "efi", "vhd"),
        ("openstack", "efi", "qcow2"),
        ("qemu-efi", "efi", "qcow2"),
        ("qemu-bios", "legacy+gpt", "qcow2"),
        ("usb-hybrid", "hybrid", "raw"),
        ("metal-efi", "efi", "raw"),
    ] {
        let report = demo_dry_run(&[OsStr::new("--profile"), OsStr::new(name)]);
        let image = &report["image"];
        assert_eq!((image["layout"].as_str(), image["format"].as_str()), (Some(layout), Some(format)), "{name}");
        if format == "vhd" || format == "ami" {
            assert_eq!(image["size_bytes"].as_u64().unwrap() % (1 << 20), 0, "{name}: VHDs are whole MiB");
        }
    }
}

/// (size, type GUID) of each partition, from sfdisk.
fn partitions(img: &Path) -> Vec<(u64, String)> {
    let json = sfdisk_json(img);
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["size"].as_u64().unwrap() * 512, p["type"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_build_takes_what_the_command_line_leaves_to_the_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("vm.toml");
    std::fs::write(&file, "extends = \"qemu-efi\"\nformat = \"raw\"\nlayout = \"legacy+gpt\"\nesp-size = \"300M\"\n")
        .unwrap();
    let profile = file.display().to_string();
    // The profile's ESP size; the command line's layout wins over the profile's.
    let (_t, img) = build_demo_disk("efi", &["--profile", &profile]);
    sgdisk_verify(&img).unwrap();
    let parts = partitions(&img);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0], (300 << 20, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".to_owned()), "the profile's ESP size");
    let (_t, img) = build_demo_disk("efi", &["--profile", &profile, "--esp-size", "200M"]);
    assert_eq!(partitions(&img)[0].0, 200 << 20, "--esp-size wins over the profile");
}

#[test]
fn a_profiles_own_partition_list_builds_and_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("parts.toml");
    std::fs::write(
        &file,
        "extends = \"qemu-efi\"\nformat = \"raw\"\n\n\
         [kernel-params]\nadd = [\"root=LABEL=sysroot\"]\n\n\
         [[partitions]]\nrole = \"esp\"\nsize = \"300M\"\n\n\
         [[partitions]]\nrole = \"swap\"\nsize = \"64M\"\nlabel = \"swap0\"\n\n\
         [[partitions]]\nrole = \"empty\"\nsize = \"16M\"\n\n\
         [[partitions]]\nrole = \"root\"\nname = \"system\"\nlabel = \"sysroot\"\nsize = \"fill\"\n",
    )
    .unwrap();
    let report = demo_dry_run(&[OsStr::new("--profile"), file.as_os_str()]);
    assert_eq!(report["image"]["layout"], "custom");
    let (_t, img) = build_demo_disk_with(&["--profile", file.to_str().unwrap()]);
    sgdisk_verify(&img).unwrap();
    let json = sfdisk_json(&img);
    let parts = json["partitiontable"]["partitions"].as_array().unwrap();
    let rows: Vec<(u64, u64, &str, &str)> = parts
        .iter()
        .map(|p| {
            let (start, size) = (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512);
            (start, size, p["type"].as_str().unwrap(), p["name"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(rows.len(), 3, "the empty entry has no partition: {rows:?}");
    assert_eq!((rows[0].1, rows[0].2), (300 << 20, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"));
    assert_eq!((rows[1].1, rows[1].2), (64 << 20, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"));
    assert_eq!(rows[2].0, rows[1].0 + rows[1].1 + (16 << 20), "16 MiB left empty before the root");
    assert_eq!((rows[2].2, rows[2].3), ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "system"));
    // util-linux recognises the swap signature and its label.
    let probe = kiln_tests::tools::run_ok(
        std::process::Command::new(kiln_tests::tools::require("blkid", "util-linux"))
            .args(["-p", "-o", "export", "-O", &rows[1].0.to_string(), "--size", &rows[1].1.to_string()])
            .arg(&img),
    );
    let probe = String::from_utf8_lossy(&probe.stdout).into_owned();
    assert!(probe.contains("TYPE=swap") && probe.contains("LABEL=swap0"), "{probe}");
    kiln_tests::ext4::e2fsck_clean(&img, rows[2].0).unwrap();
    let probe = kiln_tests::tools::run_ok(
        std::process::Command::new(kiln_tests::tools::require("blkid", "util-linux"))
            .args(["-p", "-o", "export", "-O", &rows[2].0.to_string()])
            .arg(&img),
    );
    let probe = String::from_utf8_lossy(&probe.stdout).into_owned();
    assert!(probe.contains("TYPE=ext4") && probe.contains("LABEL=sysroot"), "the profile's root label: {probe}");
    let marker = std::fs::read_to_string(fixtures::demo_closure().join("marker")).unwrap();
    kiln_tests::boot::Boot::new(&img, marker)
        .timeout(std::time::Duration::from_secs(180))
        .run()
        .unwrap_or_else(|e| panic!("the custom layout did not boot: {e}"));
}
