//! Running the real `kiln` binary and checking what it says.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use kiln::inventory::PathInventory;
use kiln::nar;
use kiln::store::{StoreDir, StorePath};
use kiln_tests::fixtures;

/// What one `kiln` run did.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A `kiln` command with the binary under test.
pub fn kiln_cmd() -> Command {
    Command::new(fixtures::kiln_bin())
}

/// Runs `kiln` with `args`.
pub fn kiln<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(kiln_cmd().args(args))
}

/// Runs a prepared command.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert!(self.status.success(), "kiln failed ({}):\n{}\n{}", self.status, self.stdout, self.stderr);
        self.stdout
    }

    /// Asserts exit status 1 with exactly one line on stderr, `kiln: error: …`, containing every `want`.
    pub fn fails_with(&self, want: &[&str]) {
        assert_eq!(self.status.code(), Some(1), "want exit 1; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.starts_with('[')).collect();
        assert_eq!(lines.len(), 1, "want one error line, got:\n{}", self.stderr);
        assert!(lines[0].starts_with("kiln: error: "), "{}", lines[0]);
        for w in want {
            assert!(lines[0].contains(w), "error line lacks {w:?}:\n{}", lines[0]);
        }
    }
}

/// The JSON report of `kiln build --dry-run --progress json`: the last stdout line's `report`.
pub fn dry_run_json(args: &[&OsStr]) -> serde_json::Value {
    let mut full: Vec<&OsStr> =
        vec![OsStr::new("build"), OsStr::new("--dry-run"), OsStr::new("--progress"), OsStr::new("json")];
    full.extend_from_slice(args);
    let stdout = kiln(&full).ok();
    let mut lines = stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"));
    let all: Vec<_> = lines.by_ref().collect();
    for line in &all {
        assert_eq!(line["v"], 1, "every line is versioned: {line}");
    }
    let last = all.last().expect("some output").clone();
    assert_eq!(last["type"], "dry-run");
    assert!(all.iter().any(|l| l["type"] == "phase-end" && l["phase"] == "closure"));
    last["report"].clone()
}

/// The sha256 of a file, from coreutils' `sha256sum` (an implementation independent of kiln's).
pub fn sha256(path: &Path) -> String {
    let out = kiln_tests::tools::run_ok(Command::new(kiln_tests::tools::require("sha256sum", "coreutils")).arg(path));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

/// `--store-dir` for a fixture whose store is `<dir>/nix/store`.
pub fn store_of(dir: &Path) -> PathBuf {
    dir.join("nix/store")
}

/// Builds the demo closure (with its closureInfo) as a disk with `layout` into a temporary directory.
pub fn build_demo_disk(layout: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    build_demo_disk_with(&[&["--layout", layout][..], extra].concat())
}

/// Builds the demo closure (with its closureInfo) into `disk.img` in a temporary directory, with `flags`.
pub fn build_demo_disk_with(flags: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let ci = fx.join("closure-info");
    let store = store_of(&fx);
    let mut args: Vec<&OsStr> = ["build", "--progress", "none", "--system"].map(OsStr::new).to_vec();
    args.extend([OsStr::new(&top), OsStr::new("--store-dir"), store.as_os_str(), OsStr::new("--closure-info")]);
    args.extend([ci.as_os_str(), OsStr::new("--output"), img.as_os_str()]);
    args.extend(flags.iter().map(OsStr::new));
    kiln(args).ok();
    (tmp, img)
}

/// The toplevel of [`MiniStore`]'s system.
pub const MINI_TOP: &str = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-mini";

/// A store holding one minimal system (kernel and init inside its toplevel), world-readable.
pub struct MiniStore {
    pub dir: tempfile::TempDir,
}

impl MiniStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let m = Self { dir };
        std::fs::create_dir_all(m.top()).unwrap();
        std::fs::write(m.top().join("bzImage"), "kernel").unwrap();
        std::fs::write(m.top().join("init"), "#!/bin/sh\n").unwrap();
        let doc = format!(
            r#"{{"org.nixos.bootspec.v1": {{"init": "/nix/store/{MINI_TOP}/init", "kernel": "/nix/store/{MINI_TOP}/bzImage",
            "kernelParams": [], "label": "mini", "system": "x86_64-linux", "toplevel": "/nix/store/{MINI_TOP}"}}}}"#
        );
        std::fs::write(m.top().join("boot.json"), doc).unwrap();
        m
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        store_of(self.dir.path())
    }

    pub fn top(&self) -> PathBuf {
        self.store().join(MINI_TOP)
    }

    /// A closureInfo directory registering the toplevel as it is now (no references).
    pub fn closure_info(&self) -> PathBuf {
        let store = StoreDir::new(&self.store()).unwrap();
        let inv = PathInventory::walk(&store, &StorePath::from_base_name(MINI_TOP).unwrap()).unwrap();
        let info = nar::nar_info(&store, &inv).unwrap();
        let ci = self.dir.path().join("closure-info");
        std::fs::create_dir_all(&ci).unwrap();
        std::fs::write(ci.join("store-paths"), format!("/nix/store/{MINI_TOP}\n")).unwrap();
        let record = format!("/nix/store/{MINI_TOP}\n{}\n{}\n\n0\n", nar::hash_string(&info.hash), info.size);
        std::fs::write(ci.join("registration"), record).unwrap();
        ci
    }

    /// A bare root filesystem (`--layout none`) into `out`, plus `extra`.
    pub fn build(&self, out: &Path, extra: &[&OsStr]) -> Run {
        let mut args: Vec<&OsStr> =
            ["build", "--progress", "none", "--layout", "none", "--system"].map(OsStr::new).to_vec();
        let store = self.store();
        let top = format!("/nix/store/{MINI_TOP}");
        args.extend([OsStr::new(&top), OsStr::new("--store-dir"), store.as_os_str(), OsStr::new("--output")]);
        args.push(out.as_os_str());
        args.extend_from_slice(extra);
        kiln(args)
    }
}

/// Every path below `dir`, sorted, each directory's contents before the directory itself.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for e in entries {
        if std::fs::symlink_metadata(&e).unwrap().is_dir() {
            walk(&e, out);
        }
        out.push(e);
    }
}

/// Unmounts the mount point when dropped (also when the test fails).
#[derive(Debug)]
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
