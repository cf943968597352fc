//! `kiln build --dry-run`: the inventory and closure it reports, compared with independent counts (`find`)
//! and with Nix's own view (`nix-store -qR`, registrations written by Nix).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use kiln_tests::{fixtures, identical, tools};
use serde_json::Value;

use crate::util::{dry_run_json, kiln, store_of};

/// Entry counts as `find` sees them (it does not follow symlinks), and the hard links kiln makes: identical
/// regular files (same contents and executable bit, as `nix-store --optimise` links them) are one inode.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    hardlink_groups: u64,
    hardlink_extra: u64,
}

fn find_counts(store_dir: &Path, paths: &[String]) -> Counts {
    let mut cmd = Command::new(tools::require("find", "findutils"));
    for p in paths {
        cmd.arg(store_dir.join(p.strip_prefix("/nix/store/").expect("logical path")));
    }
    cmd.args(["-printf", "%y %s\\n"]);
    let out = tools::run_ok(&mut cmd);
    let mut c = Counts::default();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "f" => {
                c.files += 1;
                c.bytes += f[1].parse::<u64>().unwrap();
            }
            "d" => c.dirs += 1,
            "l" => c.symlinks += 1,
            other => panic!("find reports type {other} in a store"),
        }
    }
    let mut files = Vec::new();
    for p in paths {
        let physical = store_dir.join(p.strip_prefix("/nix/store/").expect("logical path"));
        files.extend(identical::regular_files(&physical).unwrap_or_else(|e| panic!("{e}")));
    }
    let keys = identical::content_keys(&files).unwrap_or_else(|e| panic!("{e}"));
    (c.hardlink_groups, c.hardlink_extra) = identical::link_counts(&keys);
    c
}

fn reported_counts(report: &Value) -> Counts {
    let t = &report["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("totals.{k} in {t}"));
    Counts {
        files: n("files"),
        dirs: n("dirs"),
        symlinks: n("symlinks"),
        bytes: n("bytes"),
        hardlink_groups: n("hardlink_groups"),
        hardlink_extra: n("hardlink_extra"),
    }
}

fn reported_paths(report: &Value) -> Vec<String> {
    report["paths"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap().to_owned()).collect()
}

fn refs(v: &[std::ffi::OsString]) -> Vec<&OsStr> {
    v.iter().map(std::ffi::OsString::as_os_str).collect()
}

fn lines_of(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines().map(str::to_owned).collect()
}

/// `<path> <value>` lines, as in the Nix fixture's `expected/` files.
fn pairs_of(file: &Path) -> BTreeMap<String, String> {
    lines_of(file)
        .into_iter()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn check_inventory(report: &Value, store_dir: &Path, want_paths: &[String], want_source: &str) {
    let paths = reported_paths(report);
    assert_eq!(paths, want_paths, "closure differs from the independent list");
    assert_eq!(report["closure_source"]["kind"], want_source);
    assert_eq!(reported_counts(report), find_counts(store_dir, &paths), "totals differ from find");
    assert_eq!(report["totals"]["paths"].as_u64().unwrap(), paths.len() as u64);
    // Per path too: a total can hide compensating errors.
    for p in report["paths"].as_array().unwrap() {
        let one = find_counts(store_dir, &[p["path"].as_str().unwrap().to_owned()]);
        assert_eq!((p["files"].as_u64(), p["dirs"].as_u64()), (Some(one.files), Some(one.dirs)), "{p}");
        assert_eq!((p["symlinks"].as_u64(), p["bytes"].as_u64()), (Some(one.symlinks), Some(one.bytes)), "{p}");
    }
}

#[test]
fn nix_closure_from_closure_info_db_and_scan_agree_with_nix() {
    let fx = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fx);
    let store_root = fx.join("store-root");
    let store = store_of(&store_root);
    let requisites = lines_of(&fx.join("expected/requisites"));
    let sizes = pairs_of(&fx.join("expected/nar-sizes"));
    let os = |s: &str| OsStr::new(s).to_owned();

    let ci = fx.join("closure-info");
    let args = |extra: &[&Path]| -> Vec<std::ffi::OsString> {
        let mut v = vec![os("--system"), os(&top), os("--store-dir"), store.clone().into_os_string()];
        for p in extra {
            v.push(os("--closure-info"));
            v.push(p.as_os_str().to_owned());
        }
        v
    };

    // 1. closureInfo.
    let a = args(&[&ci]);
    let report = dry_run_json(&refs(&a));
    check_inventory(&report, &store, &requisites, "closure-info");
    for p in report["paths"].as_array().unwrap() {
        let path = p["path"].as_str().unwrap();
        assert_eq!(p["nar_size"].as_u64().unwrap().to_string(), sizes[path], "narSize of {path}");
    }

    // 2. The chroot store's own Nix database (found from --store-dir).
    let a = args(&[]);
    let report = dry_run_json(&refs(&a));
    check_inventory(&report, &store, &requisites, "nix-db");
    assert!(report["closure_source"]["db"].as_str().unwrap().ends_with("store-root/nix/var/nix/db/db.sqlite"));
    for p in report["paths"].as_array().unwrap() {
        let path = p["path"].as_str().unwrap();
        assert_eq!(p["nar_size"].as_u64().unwrap().to_string(), sizes[path], "narSize of {path}");
    }

    // 3. The host store and database, where nix-build put the closure.
    let report = dry_run_json(&[OsStr::new("--system"), OsStr::new(&top)]);
    check_inventory(&report, Path::new("/nix/store"), &requisites, "nix-db");

    // 4. A copy of the store without any database: references found by scanning, as Nix found them.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("nix/store");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(&store).arg(&copy));
    let report = dry_run_json(&[OsStr::new("--system"), OsStr::new(&top), OsStr::new("--store-dir"), copy.as_os_str()]);
    check_inventory(&report, &copy, &requisites, "scan");
    tools::run(Command::new("chmod").arg("-R").arg("u+w").arg(tmp.path()));

    // The bootspec's specialisation is reported.
    let entries = report["entries"].as_array().unwrap();
    assert!(entries.len() >= 2, "{entries:?}");
    assert!(entries[0]["specialisation"].is_null());
    assert!(entries[0]["command_line"].as_str().unwrap().starts_with(&format!("init={top}/init")));
}

#[test]
fn nix_closure_scan_finds_the_references_nix_recorded() {
    // Per-path references: the scan must find exactly what Nix recorded at build time.
    let fx = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fx);
    let store = store_of(&fx.join("store-root"));
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("nix/store");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(&store).arg(&copy));
    let scan = dry_run_json(&[OsStr::new("--system"), OsStr::new(&top), OsStr::new("--store-dir"), copy.as_os_str()]);
    let db = dry_run_json(&[OsStr::new("--system"), OsStr::new(&top), OsStr::new("--store-dir"), store.as_os_str()]);
    let refs = |r: &Value| -> BTreeMap<String, u64> {
        r["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["path"].as_str().unwrap().to_owned(), p["references"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(refs(&scan), refs(&db));
    tools::run(Command::new("chmod").arg("-R").arg("u+w").arg(tmp.path()));
}

#[test]
fn demo_closure_inventory_matches_find_and_closure_info() {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let store = store_of(&fx);
    let listed = lines_of(&fx.join("closure-info/store-paths"));
    let ci = fx.join("closure-info");
    let with_ci = dry_run_json(&[
        OsStr::new("--system"),
        OsStr::new(&top),
        OsStr::new("--store-dir"),
        store.as_os_str(),
        OsStr::new("--closure-info"),
        ci.as_os_str(),
    ]);
    check_inventory(&with_ci, &store, &listed, "closure-info");
    let scanned =
        dry_run_json(&[OsStr::new("--system"), OsStr::new(&top), OsStr::new("--store-dir"), store.as_os_str()]);
    check_inventory(&scanned, &store, &listed, "scan");
    let names: BTreeSet<_> = scanned["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["specialisation"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, BTreeSet::from([None, Some("debug".to_owned())]));
}

#[test]
fn synthetic_store_edge_cases_are_inventoried() {
    let fx = fixtures::synthetic_store();
    let top = fixtures::toplevel_of(&fx);
    let store = store_of(&fx);
    let report =
        dry_run_json(&[OsStr::new("--system"), OsStr::new(&top), OsStr::new("--store-dir"), store.as_os_str()]);
    let mut every: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| format!("/nix/store/{}", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    every.sort();
    check_inventory(&report, &store, &every, "scan");
    let t = &report["totals"];
    assert!(t["bytes"].as_u64().unwrap() > 5 << 30, "the sparse > 4 GiB file is counted at its size");
    // Identical files, one inode each: `shared content` (4 names), the executable `tool` (2) and the empty
    // files (19,997 in bigdir, 2 in `empty`). The symlink the host hard-links is two inodes: only files link.
    assert_eq!((t["hardlink_groups"].as_u64(), t["hardlink_extra"].as_u64()), (Some(3), Some(3 + 1 + 19_998)));
}

#[test]
fn text_report_names_what_matters() {
    let fx = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fx);
    let store = store_of(&fx.join("store-root"));
    let ci = fx.join("closure-info");
    let out = kiln([
        OsStr::new("build"),
        OsStr::new("--dry-run"),
        OsStr::new("--progress"),
        OsStr::new("none"),
        OsStr::new("--system"),
        OsStr::new(&top),
        OsStr::new("--store-dir"),
        store.as_os_str(),
        OsStr::new("--closure-info"),
        ci.as_os_str(),
        OsStr::new("--kernel-param"),
        OsStr::new("console=ttyS1"),
        OsStr::new("--remove-kernel-param"),
        OsStr::new("loglevel"),
    ])
    .ok();
    let n = lines_of(&fx.join("expected/requisites")).len();
    for want in [
        format!("system         {top}"),
        format!("closure        {n} store paths from closure-info {}", ci.display()),
        "  kernel       /nix/store/".to_owned(),
        "  initrd       /nix/store/".to_owned(),
        format!("  init         {top}/init"),
        "specialisations ".to_owned(),
        "hard links     ".to_owned(),
    ] {
        assert!(out.contains(&want), "text report lacks {want:?}:\n{out}");
    }
    let cmdlines: Vec<&str> = out.lines().filter(|l| l.starts_with("  command line ")).collect();
    assert_eq!(cmdlines.len(), 2, "the system and its specialisation:\n{out}");
    for l in cmdlines {
        // The bootspec's own `console=ttyS0 panic=-1 loglevel=4`, minus loglevel, plus console=ttyS1.
        assert!(l.contains(" console=ttyS0 panic=-1 ") && l.ends_with(" console=ttyS1"), "{out}");
        assert!(!l.contains("loglevel"), "--remove-kernel-param loglevel left it in: {l}");
    }
}
