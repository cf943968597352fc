//! Where an image may go: the output path is checked before anything is read (a trailing slash, a directory,
//! a directory that takes no files), and an output never replaces, lands in or holds what the build reads
//! (the store directory, the closure-info directory and its files, a profile). Also the other messages a
//! careless command line gets, and a store file that is one large hole.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::util::{MINI_TOP as TOP, MiniStore, Run, kiln};

/// A store with one minimal system and a closure-info directory for it, in a temporary directory.
struct Mini {
    m: MiniStore,
    ci: PathBuf,
}

impl Mini {
    fn new() -> Self {
        let m = MiniStore::new();
        let ci = m.closure_info();
        Self { m, ci }
    }

    fn root(&self) -> &Path {
        self.m.root()
    }

    fn store(&self) -> PathBuf {
        self.m.store()
    }

    fn top(&self) -> PathBuf {
        self.m.top()
    }

    fn closure_info(&self) -> PathBuf {
        self.ci.clone()
    }

    /// `kiln build` of the system with `extra`, writing `out` when given.
    fn args(&self, extra: &[&str], out: Option<&Path>) -> Vec<OsString> {
        let mut v: Vec<OsString> = ["build", "--system"].map(OsString::from).to_vec();
        v.extend([format!("/nix/store/{TOP}").into(), "--store-dir".into(), self.store().into()]);
        v.extend(extra.iter().map(OsString::from));
        if let Some(out) = out {
            v.extend(["--output".into(), out.into()]);
        }
        v
    }

    /// A build of a bare filesystem with the closure-info directory into `out`, progress as JSON lines.
    fn build(&self, out: &Path, extra: &[&str]) -> Run {
        let ci = self.closure_info();
        let mut flags = vec!["--progress", "json", "--layout", "none", "--closure-info", ci.to_str().unwrap()];
        flags.extend_from_slice(extra);
        kiln(self.args(&flags, Some(out)))
    }
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p);
            } else if meta.is_file() {
                all.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    all.sort();
    all
}

/// Asserts the run failed before reading anything: the one error line holds every `want`, and no phase started
/// (progress is JSON lines on stdout, ending in the error event).
fn refused_before_reading(r: &Run, want: &[&str]) {
    r.fails_with(want);
    let lines: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines.iter().all(|l| l["type"] != "phase-start"),
        "a phase started before the output was checked:\n{}",
        r.stdout
    );
    let last = lines.last().unwrap_or_else(|| panic!("no JSON error event on stdout; stderr:\n{}", r.stderr));
    assert_eq!((&last["v"], &last["type"]), (&serde_json::json!(1), &serde_json::json!("error")), "{last}");
    let message = last["message"].as_str().unwrap();
    assert!(r.stderr.contains(message), "the JSON error is the stderr error: {message}\n{}", r.stderr);
}

#[test]
fn an_output_never_replaces_enters_or_holds_an_input() {
    let m = Mini::new();
    let before = snapshot(m.root());
    let boot_json = m.top().join("boot.json");
    refused_before_reading(
        &m.build(&boot_json, &["--force"]),
        &["output", "boot.json is inside the store directory", "which the build reads"],
    );
    let registration = m.closure_info().join("registration");
    refused_before_reading(
        &m.build(&registration, &["--force"]),
        &["registration is inside the closure-info directory"],
    );
    // Another name for an input file (a hard link) is that file.
    let out = tempfile::tempdir_in(m.root()).unwrap();
    let link = out.path().join("registration-link.img");
    std::fs::hard_link(&registration, &link).unwrap();
    refused_before_reading(&m.build(&link, &["--force"]), &["registration-link.img is the closure-info file"]);
    std::fs::remove_file(&link).unwrap();
    drop(out);
    // A bundle replaced with --force would take the inputs inside it along.
    let r = m.build(m.root(), &["--force", "--format", "ami"]);
    refused_before_reading(&r, &["holds the store directory"]);
    // A profile file.
    let profile = m.root().join("mine.toml");
    std::fs::write(&profile, "description = \"mine\"\nlayout = \"none\"\n").unwrap();
    let before_profile = snapshot(m.root());
    let r = m.build(&profile, &["--force", "--profile", profile.to_str().unwrap()]);
    refused_before_reading(&r, &["mine.toml is the profile"]);
    assert_eq!(snapshot(m.root()), before_profile, "an input changed");
    std::fs::remove_file(&profile).unwrap();
    assert_eq!(snapshot(m.root()), before, "an input changed");
}

#[test]
fn output_path_mistakes_are_refused_before_reading_anything() {
    let m = Mini::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("existing-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep"), "kept").unwrap();
    refused_before_reading(&m.build(&dir, &["--force"]), &["existing-dir is a directory", "give a file name"]);
    assert_eq!(std::fs::read(dir.join("keep")).unwrap(), b"kept");
    let slash = PathBuf::from(format!("{}/", dir.display()));
    refused_before_reading(&m.build(&slash, &[]), &["ends with a slash"]);
    let missing = tmp.path().join("missing/disk.img");
    refused_before_reading(&m.build(&missing, &[]), &["missing does not exist"]);
    // A side file's path is checked too: the block map's place is a directory.
    std::fs::create_dir(tmp.path().join("disk.img.bmap")).unwrap();
    let bmap = m.build(&tmp.path().join("disk.img"), &["--bmap", "--force"]);
    refused_before_reading(&bmap, &["disk.img.bmap is a directory"]);
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "nothing left behind: {names:?}");
    // And a good output builds (so the refusals above were about the output, not the inputs).
    m.build(&tmp.path().join("ok.img"), &[]).ok();
}

#[test]
fn an_output_directory_on_a_read_only_filesystem_is_refused_before_reading() {
    let m = Mini::new();
    let unshare = kiln_tests::tools::require("unshare", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.img");
    // A read-only tmpfs over the output directory, in a user and mount namespace of its own.
    let script = r#"dir=$1; shift; mount -t tmpfs -o ro none "$dir" || exit 99; exec "$@""#;
    let mut cmd = std::process::Command::new(unshare);
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]).arg(dir.path());
    cmd.arg(kiln_tests::fixtures::kiln_bin());
    let ci = m.closure_info();
    cmd.args(m.args(&["--progress", "json", "--layout", "none", "--closure-info", ci.to_str().unwrap()], Some(&out)));
    let r = crate::util::run(&mut cmd);
    assert_ne!(r.status.code(), Some(99), "cannot mount a tmpfs in a user namespace: {}", r.stderr);
    refused_before_reading(&r, &[&format!("output {}: cannot create files in", out.display()), "Read-only"]);
}

#[test]
fn careless_options_get_messages_that_say_what_and_where() {
    let m = Mini::new();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("huge.img");
    // Larger than any file this filesystem takes.
    m.build(&out, &["--size", "100T"]).fails_with(&[
        &format!("output {}: cannot make a", out.display()),
        "(100.0 TiB) image file",
        "cannot hold a file that large",
    ]);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing left behind");
    let none = m.build(&tmp.path().join("x.img"), &["--sector-size", "4096"]);
    none.fails_with(&["--sector-size 4096 does not fit --layout none"]);
    let r = kiln(m.args(&["--progress", "none"], Some(&tmp.path().join("x.img"))));
    r.fails_with(&["choose a disk layout", "efi, efixbootldr, legacy+gpt, legacy, hybrid"]);
    let help = kiln(["build", "--help"]).ok();
    assert!(help.contains("IMAGE.sha256") && help.contains("SHA256SUMS"), "{help}");
}

#[test]
fn a_store_file_that_is_one_large_hole_builds_and_counts_as_it_is_read() {
    let m = Mini::new();
    // 2 GiB of nothing: no data to read, and no block for the copy to claim by reading it.
    // (Named to come first in NAR order, so the write phase reads it first.)
    let f = std::fs::File::create(m.top().join("a-hole")).unwrap();
    f.set_len(2 << 30).unwrap();
    drop(f);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("root.img");
    // Without closure-info, so the store path is hashed as it is now.
    let stdout = kiln(m.args(&["--progress", "json", "--layout", "none"], Some(&out))).ok();
    kiln_tests::ext4::e2fsck_clean(&out, 0).unwrap();
    // The write phase counts the hole as it goes: its first count is a piece of the hole, not the few bytes
    // of the other files after it.
    let first = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["phase"] == "write" && l.get("done").is_some())
        .unwrap_or_else(|| panic!("no write progress:\n{stdout}"));
    assert!(first["done"].as_u64().unwrap() >= 1 << 20, "the first count of the write phase: {first}");
}
