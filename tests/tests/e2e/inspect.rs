//! `kiln inspect` reports exactly what `kiln build` planned. The demo closure is built as `hybrid`, `efi`, `legacy`
//! and `none`, and each report is checked against independent readers: the partition table against
//! `sfdisk --json`, ext4 against `dumpe2fs -h`, FAT against `blkid`, the systemd-boot entries against `mtype`,
//! GRUB's menu against `debugfs`, and the system against the fixture (its toplevel, and its closure's size as the
//! valid-path count). The text output has the key lines; a file that is not an image and a truncated image fail
//! with one line naming the image and the offset.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use kiln_tests::disk::{copy_range, sfdisk_json};
use kiln_tests::ext4::{features, superblock_field};
use kiln_tests::{fixtures, tools};
use serde_json::Value;

use crate::util::{build_demo_disk, kiln};

const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

/// `kiln inspect --json`: exactly one versioned JSON object.
fn inspect_json(img: &Path) -> Value {
    let out = kiln([OsStr::new("inspect"), OsStr::new("--json"), img.as_os_str()]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "want one JSON object:\n{out}");
    let json: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(json["v"], 1, "versioned: {json}");
    assert_eq!(json["type"], "inspect");
    assert_eq!(json["warnings"], serde_json::json!([]), "nothing unreadable in a fresh image");
    json
}

/// `kiln inspect` as text.
fn inspect_text(img: &Path) -> String {
    kiln([OsStr::new("inspect"), img.as_os_str()]).ok()
}

/// Whether `text` has a line `key   value` (keys are indented and padded; the value is the rest of the line).
fn has_line(text: &str, key: &str, value: &str) -> bool {
    text.lines().any(|l| l.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim() == value))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The partitions inspect reports are those sfdisk reads, field by field; and the table's identity.
fn table_matches_sfdisk(img: &Path, json: &Value) {
    let sf = &sfdisk_json(img)["partitiontable"];
    assert_eq!(json["table"]["kind"], sf["label"], "table kind");
    assert_eq!(json["sector_size"], sf["sectorsize"]);
    match str_of(&sf["label"]) {
        "gpt" => assert_eq!(json["table"]["disk_guid"], sf["id"], "disk GUID"),
        "dos" => assert_eq!(json["table"]["disk_signature"], sf["id"], "disk signature"),
        other => panic!("sfdisk label {other}"),
    }
    let ours = json["partitions"].as_array().unwrap();
    let theirs = sf["partitions"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "partition count");
    let sector = u64_of(&sf["sectorsize"]);
    for (p, s) in ours.iter().zip(theirs) {
        let number = u64_of(&p["number"]);
        assert!(str_of(&s["node"]).ends_with(&number.to_string()), "numbering: {p} vs {s}");
        assert_eq!(u64_of(&p["start"]), u64_of(&s["start"]) * sector, "partition {number} start");
        assert_eq!(u64_of(&p["size"]), u64_of(&s["size"]) * sector, "partition {number} size");
        assert_eq!(u64_of(&p["end"]), u64_of(&p["start"]) + u64_of(&p["size"]), "partition {number} end");
        assert_eq!(p["first_lba"], s["start"], "partition {number} first LBA");
        assert_eq!(u64_of(&p["last_lba"]), u64_of(&s["start"]) + u64_of(&s["size"]) - 1);
        assert_eq!(p["type"], s["type"], "partition {number} type");
        if sf["label"] == "gpt" {
            assert_eq!(p["guid"], s["uuid"], "partition {number} GUID");
            assert_eq!(p["name"], s["name"], "partition {number} name");
        } else {
            assert_eq!(p["bootable"], s["bootable"].as_bool().unwrap_or(false), "partition {number} active flag");
        }
    }
}

/// The ext4 filesystem at `offset` is what dumpe2fs reads there.
fn ext4_matches_dumpe2fs(img: &Path, offset: u64, fs: &Value) {
    assert_eq!(fs["kind"], "ext4", "{fs}");
    let field = |name: &str| superblock_field(img, offset, name).unwrap_or_else(|| panic!("dumpe2fs has no {name}"));
    assert_eq!(str_of(&fs["uuid"]), field("Filesystem UUID"));
    assert_eq!(str_of(&fs["label"]), field("Filesystem volume name"));
    assert_eq!(fs["label"], "nixos");
    assert_eq!(u64_of(&fs["block_size"]).to_string(), field("Block size"));
    assert_eq!(u64_of(&fs["blocks"]).to_string(), field("Block count"));
    assert_eq!(u64_of(&fs["free_blocks"]).to_string(), field("Free blocks"));
    assert_eq!(u64_of(&fs["free"]), u64_of(&fs["free_blocks"]) * u64_of(&fs["block_size"]));
    let ours: BTreeSet<String> = fs["features"].as_array().unwrap().iter().map(|f| str_of(f).to_owned()).collect();
    assert_eq!(ours, features(img, offset), "features");
}

/// The FAT filesystem at `offset` is what blkid reads there.
fn fat_matches_blkid(img: &Path, offset: u64, fs: &Value) {
    assert_eq!(fs["kind"], "fat", "{fs}");
    assert_eq!(fs["fat_type"], "FAT32");
    let out = tools::run_ok(
        Command::new(tools::require("blkid", "util-linux"))
            .args(["-p", "-o", "export", "-O"])
            .arg(offset.to_string())
            .arg(img),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("blkid gives no {key}:\n{text}"))
    };
    assert_eq!(value("TYPE"), "vfat");
    assert_eq!(str_of(&fs["label"]), value("LABEL"));
    assert_eq!(fs["label"], "ESP");
    assert_eq!(str_of(&fs["volume_id"]), value("UUID"));
    assert_eq!(fs["cluster_size"], 4096);
}

/// The partition of `json` with type `kind`.
fn partition<'a>(json: &'a Value, kind: &str) -> &'a Value {
    json["partitions"].as_array().unwrap().iter().find(|p| p["type"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// systemd-boot's two entries (the generation and its `debug` specialisation), each as `mtype` reads its file.
fn systemd_boot_matches(img: &Path, json: &Value, top: &str) {
    let esp = partition(json, ESP);
    let sd = &json["bootloaders"]["systemd_boot"];
    assert_eq!(sd["partition"], esp["number"]);
    let paths: Vec<&str> = sd["binaries"].as_array().unwrap().iter().map(|b| str_of(&b["path"])).collect();
    assert_eq!(paths, ["EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI"]);
    for b in sd["binaries"].as_array().unwrap() {
        assert!(str_of(&b["loader"]).starts_with("systemd-boot "), "{b}");
    }
    assert_eq!(sd["default"], "nixos-generation-1.conf");
    assert_eq!(sd["timeout"], "1");
    let entries = sd["entries"].as_array().unwrap();
    let files: Vec<&str> = entries.iter().map(|e| str_of(&e["file"])).collect();
    assert_eq!(files, ["nixos-generation-1-specialisation-debug.conf", "nixos-generation-1.conf"]);
    let defaults: Vec<&str> = entries.iter().filter(|e| e["default"] == true).map(|e| str_of(&e["file"])).collect();
    assert_eq!(defaults, ["nixos-generation-1.conf"]);
    let at = format!("{}@@{}", img.display(), u64_of(&esp["start"]));
    for e in entries {
        assert_eq!(e["missing"], serde_json::json!([]), "{e}");
        assert!(str_of(&e["linux"]).starts_with("/EFI/nixos/") && str_of(&e["linux"]).ends_with("-bzImage.efi"));
        let path = format!("::/loader/entries/{}", str_of(&e["file"]));
        let out = tools::run_ok(
            Command::new(tools::require("mtype", "mtools")).env("MTOOLS_SKIP_CHECK", "1").args(["-i", &at, &path]),
        );
        let conf = String::from_utf8_lossy(&out.stdout);
        for key in ["title", "version", "linux", "options"] {
            let want = format!("{key} {}", str_of(&e[key]));
            assert!(conf.lines().any(|l| l == want), "{path} has no line {want:?}:\n{conf}");
        }
        assert_eq!(e["initrd"].as_array().unwrap().len(), 1);
    }
    assert_eq!(entries[1]["title"], "NixOS");
    assert!(str_of(&entries[1]["options"]).starts_with(&format!("init={top}/init ")));
    assert_eq!(entries[0]["title"], "NixOS (debug)");
    assert!(str_of(&entries[0]["options"]).split(' ').any(|w| w == "debug"));
}

/// GRUB: boot.img in sector 0 pointing at core.img where the layout put it, and the menu of grub.cfg as
/// `debugfs` reads the file.
fn grub_matches(img: &Path, json: &Value, root: &Value, top: &str) {
    let grub = &json["bootloaders"]["grub_bios"];
    let mut s0 = [0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(img).unwrap(), &mut s0, 0).unwrap();
    assert_eq!(&s0[0x180..0x185], b"GRUB ", "boot.img's string");
    assert_eq!(u64_of(&grub["core_lba"]), u64::from_le_bytes(s0[0x5C..0x64].try_into().unwrap()));
    assert_eq!(u64_of(&grub["core_offset"]), u64_of(&grub["core_lba"]) * 512);
    match json["table"]["kind"].as_str() {
        Some("gpt") => assert_eq!(grub["core_partition"], partition(json, BIOS_BOOT)["number"]),
        _ => {
            assert_eq!(grub["core_partition"], Value::Null, "in the gap after the MBR");
            assert!(u64_of(&grub["core_lba"]) < u64_of(&root["first_lba"]));
        }
    }
    assert!(u64_of(&grub["core_sectors"]) > 1, "{grub}");
    let cfg = &grub["config"];
    assert_eq!(cfg["partition"], root["number"]);
    assert_eq!(cfg["path"], "/boot/grub/grub.cfg");
    let spec = format!("{}?offset={}", img.display(), u64_of(&root["start"]));
    let out = tools::run_ok(
        Command::new(tools::require("debugfs", "e2fsprogs")).args(["-R", "cat /boot/grub/grub.cfg"]).arg(&spec),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // kiln single-quotes every word of grub.cfg (the demo's words hold no quote of their own).
    let want_titles: Vec<&str> =
        text.lines().filter_map(|l| l.trim().strip_prefix("menuentry '")?.split('\'').next()).collect();
    let titles: Vec<&str> = cfg["entries"].as_array().unwrap().iter().map(|e| str_of(&e["title"])).collect();
    assert_eq!(titles, want_titles);
    assert_eq!(titles, ["NixOS", "NixOS (debug)"]);
    // What GRUB's linux hands the kernel: the words joined, a word with a space in double quotes.
    let want_linux: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("linux '")?.strip_suffix('\''))
        .map(|words| {
            let words: Vec<String> =
                words.split("' '").map(|w| if w.contains(' ') { format!("\"{w}\"") } else { w.to_owned() }).collect();
            words.join(" ")
        })
        .collect();
    assert!(!want_linux.is_empty(), "{text}");
    let linux: Vec<String> = cfg["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", str_of(&e["linux"]), str_of(&e["options"])))
        .collect();
    assert_eq!(linux, want_linux);
    assert!(str_of(&cfg["entries"][0]["options"]).starts_with(&format!("init={top}/init ")));
}

/// The system profile leads to the fixture's toplevel, and the database registers its whole closure.
fn nixos_matches(json: &Value, root_number: &Value, top: &str) {
    let fx = fixtures::demo_closure();
    let store_paths = std::fs::read_to_string(fx.join("closure-info/store-paths")).unwrap();
    let n = &json["nixos"];
    assert_eq!(&n["partition"], root_number);
    assert_eq!(n["toplevel"], top);
    assert_eq!(n["profile"], "system-1-link");
    assert_eq!(n["generation"], 1);
    assert_eq!(n["generations"], serde_json::json!([{ "number": 1, "toplevel": top }]));
    assert_eq!(u64_of(&n["valid_paths"]), store_paths.lines().count() as u64);
}

/// Everything a partitioned layout plans, checked; returns the JSON report.
fn check_disk(layout: &str, img: &Path, want_types: &[&str]) -> Value {
    let top = fixtures::toplevel_of(&fixtures::demo_closure());
    let json = inspect_json(img);
    assert_eq!(json["image"], img.display().to_string());
    assert_eq!(u64_of(&json["size"]), std::fs::metadata(img).unwrap().len());
    table_matches_sfdisk(img, &json);
    let types: Vec<&str> = json["partitions"].as_array().unwrap().iter().map(|p| str_of(&p["type"])).collect();
    assert_eq!(types, want_types, "{layout}: the planned partitions");
    let root = json["partitions"].as_array().unwrap().last().unwrap().clone();
    ext4_matches_dumpe2fs(img, u64_of(&root["start"]), &root["filesystem"]);
    let has_esp = want_types.contains(&ESP);
    let has_grub = want_types.contains(&BIOS_BOOT) || layout == "legacy";
    if has_esp {
        let esp = partition(&json, ESP);
        assert_eq!((esp["type_name"].as_str(), esp["name"].as_str()), (Some("ESP"), Some("ESP")));
        assert_eq!(u64_of(&esp["size"]), 512 << 20, "default ESP size");
        fat_matches_blkid(img, u64_of(&esp["start"]), &esp["filesystem"]);
        systemd_boot_matches(img, &json, &top);
    } else {
        assert_eq!(json["bootloaders"]["systemd_boot"], Value::Null);
    }
    if has_grub {
        grub_matches(img, &json, &root, &top);
    } else {
        assert_eq!(json["bootloaders"]["grub_bios"], Value::Null);
    }
    nixos_matches(&json, &root["number"], &top);

    let text = inspect_text(img);
    let kind = str_of(&json["table"]["kind"]);
    for (key, value) in [
        ("image", img.display().to_string()),
        ("table", kind.to_owned()),
        ("toplevel", top.clone()),
        ("valid paths", json["nixos"]["valid_paths"].to_string()),
        ("UUID", str_of(&root["filesystem"]["uuid"]).to_owned()),
    ] {
        assert!(has_line(&text, key, &value), "{layout}: no line {key:?} {value:?} in:\n{text}");
    }
    if kind == "gpt" {
        assert!(has_line(&text, "disk GUID", str_of(&json["table"]["disk_guid"])), "{text}");
        assert!(has_line(&text, &format!("partition {}", root["number"]), "nixos"), "{text}");
    }
    if has_esp {
        assert!(has_line(&text, "systemd-boot", &format!("on partition {}", partition(&json, ESP)["number"])));
        assert!(has_line(&text, "entry", "nixos-generation-1.conf (default)"), "{text}");
    }
    if has_grub {
        assert!(has_line(&text, "menuentry", "NixOS (debug)"), "{text}");
    }
    json
}

#[test]
fn hybrid_reports_bios_boot_esp_and_root_with_both_bootloaders() {
    let (_tmp, img) = build_demo_disk("hybrid", &[]);
    let json = check_disk("hybrid", &img, &[BIOS_BOOT, ESP, ROOT_X86_64]);
    let names: Vec<&str> = json["partitions"].as_array().unwrap().iter().map(|p| str_of(&p["type_name"])).collect();
    assert_eq!(names, ["BIOS boot", "ESP", "Linux root (x86-64)"]);
}

#[test]
fn efi_reports_esp_and_root_with_systemd_boot_and_refuses_a_truncated_copy() {
    let (tmp, img) = build_demo_disk("efi", &[]);
    let json = check_disk("efi", &img, &[ESP, ROOT_X86_64]);
    // The first 64 MiB: the primary GPT is whole, the backup header and the root partition are not.
    let cut = tmp.path().join("cut.img");
    copy_range(&img, 0, 64 << 20, &cut).unwrap();
    let run = kiln([OsStr::new("inspect"), cut.as_os_str()]);
    let backup = u64_of(&json["table"]["backup_header_lba"]) * 512;
    run.fails_with(&[&cut.display().to_string(), "truncated", &format!("byte {backup}"), "67108864 bytes"]);
}

#[test]
fn legacy_reports_a_dos_table_and_grub_in_the_mbr_gap() {
    let (_tmp, img) = build_demo_disk("legacy", &[]);
    let json = check_disk("legacy", &img, &["83"]);
    assert_eq!(json["partitions"][0]["bootable"], true);
    assert_eq!(json["partitions"][0]["type_name"], "Linux");
}

#[test]
fn none_reports_a_bare_root_filesystem() {
    let (_tmp, img) = build_demo_disk("none", &[]);
    let top = fixtures::toplevel_of(&fixtures::demo_closure());
    let json = inspect_json(&img);
    assert_eq!(json["table"], serde_json::json!({ "kind": "none" }));
    assert_eq!(json["sector_size"], Value::Null);
    assert_eq!(json["partitions"], serde_json::json!([]));
    ext4_matches_dumpe2fs(&img, 0, &json["filesystem"]);
    assert_eq!(json["bootloaders"], serde_json::json!({ "systemd_boot": null, "grub_bios": null }));
    nixos_matches(&json, &Value::Null, &top);
    let text = inspect_text(&img);
    for (key, value) in [("table", "none (the image is one filesystem)"), ("filesystem", "ext4"), ("toplevel", &top)] {
        assert!(has_line(&text, key, value), "no line {key:?} {value:?} in:\n{text}");
    }
}

#[test]
fn a_file_that_is_not_an_image_is_one_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "not a disk\n".repeat(1000)).unwrap();
    let name = notes.display().to_string();
    kiln([OsStr::new("inspect"), notes.as_os_str()]).fails_with(&[&name, "not a disk image", "byte 512", "byte 510"]);
    let tiny = tmp.path().join("tiny");
    std::fs::write(&tiny, "x").unwrap();
    kiln([OsStr::new("inspect"), OsStr::new("--json"), tiny.as_os_str()]).fails_with(&[
        &tiny.display().to_string(),
        "not a disk image",
        "1 bytes",
    ]);
}
