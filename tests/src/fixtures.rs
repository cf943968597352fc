//! Fixtures, generated on demand by the scripts in `tests/fixtures/` and cached under
//! `target/kiln-fixtures/<name>-<script hash>/`, so a changed script regenerates its fixture. Generation runs
//! under a file lock: concurrent test processes (nextest) wait for one generator instead of racing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::tools;

/// The workspace root (the parent of this crate).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The directory holding the generator scripts.
#[must_use]
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// A directory for files that the tests of one process share, `target/kiln-test-scratch/<name>-<pid>`, empty.
/// A `TempDir` held by a static would never be removed (statics are not dropped), so instead the directories
/// of processes that have exited are removed here, before this one's is made.
pub fn process_scratch(name: &str) -> PathBuf {
    let base = target_dir().join("kiln-test-scratch");
    std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("creating {}: {e}", base.display()));
    let prefix = format!("{name}-");
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// FNV-1a over the script, so the cache key changes when the script does.
fn content_key(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Runs `tests/fixtures/<script> OUT` once per script version and returns OUT.
pub fn generated(script: &str) -> PathBuf {
    generated_variant(script, None, &[])
}

/// Runs `<vars> tests/fixtures/<script> OUT` once per script version and environment, and returns OUT,
/// `<name>-<variant>-<hash>` in the cache (a variant of a script is a fixture of its own).
pub fn generated_variant(script: &str, variant: Option<&str>, vars: &[(&str, &str)]) -> PathBuf {
    let path = scripts_dir().join(script);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (k, v) in vars {
        bytes.extend_from_slice(format!("\0{k}={v}").as_bytes());
    }
    let base = script.trim_end_matches(".gen.sh");
    let name = variant.map_or_else(|| base.to_owned(), |v| format!("{base}-{v}"));
    let cache = target_dir().join("kiln-fixtures");
    std::fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
    let out = cache.join(format!("{name}-{}", content_key(&bytes)));
    let lock_path = cache.join(format!("{name}.lock"));
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
    lock.lock().unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    if !out.exists() {
        tools::run_ok(Command::new("bash").arg(&path).arg(&out).envs(vars.iter().copied()));
        assert!(out.exists(), "{} did not create {}", path.display(), out.display());
    }
    out
}

/// A fixture's `toplevel` file: the logical toplevel path.
#[must_use]
pub fn toplevel_of(fixture: &Path) -> String {
    let file = fixture.join("toplevel");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    text.trim_end().to_owned()
}

/// The bootable demo closure assembled from Debian packages (`demo-closure.gen.sh`).
pub fn demo_closure() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        for (tool, package) in [
            ("busybox", "busybox-static"),
            ("cpio", "cpio"),
            ("modprobe", "kmod"),
            ("grub-mkimage", "grub-common"),
            ("nix-hash", "nix-bin"),
        ] {
            tools::require(tool, package);
        }
        generated("demo-closure.gen.sh")
    })
    .clone()
}

/// The demo closure for aarch64-linux (`ARCH=aarch64 demo-closure.gen.sh`): the same system built from
/// Debian arm64 packages the script downloads (kernel `Image` with its EFI stub, console ttyAMA0,
/// systemd-bootaa64.efi, no GRUB). The .debs stay in `target/kiln-fixtures/debian-arm64/`.
pub fn demo_closure_aarch64() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        for (tool, package) in [
            ("cpio", "cpio"),
            ("modprobe", "kmod"),
            ("depmod", "kmod"),
            ("apt-get", "apt"),
            ("dpkg-deb", "dpkg"),
            ("nix-hash", "nix-bin"),
        ] {
            tools::require(tool, package);
        }
        generated_variant("demo-closure.gen.sh", Some("aarch64"), &[("ARCH", "aarch64")])
    })
    .clone()
}

/// The real Nix closure built offline with nix-bin (`nix-closure.gen.sh`).
pub fn nix_closure() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        crate::nix::init_default_store();
        generated("nix-closure.gen.sh")
    })
    .clone()
}

/// The synthetic edge-case store (`synthetic-store.gen.sh`).
pub fn synthetic_store() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| generated("synthetic-store.gen.sh")).clone()
}

/// The `kiln` binary, built once per test process with the same cargo and profile as the tests.
pub fn kiln_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args(["build", "--quiet", "-p", "kiln", "--bin", "kiln"]);
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        if profile == "release" {
            cmd.arg("--release");
        }
        tools::run_ok(&mut cmd);
        target_dir().join(profile).join("kiln")
    })
    .clone()
}

/// A statically linked `kiln` (`-C target-feature=+crt-static`), as Nix builds run it: alone in a directory
/// `<dir>/bin/kiln` that `builtins.path` can add to a store. Built once per test process into
/// `target/static/` (its own target directory, so the tests' build is not invalidated).
pub fn static_kiln() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let static_target = target_dir().join("static");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "--locked", "-p", "kiln", "--bin", "kiln", "--target", &triple])
            .arg("--target-dir")
            .arg(&static_target)
            // No debug info: the binary is hashed into the store by every evaluation (150 MB with it, ~20 without).
            .env("RUSTFLAGS", "-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols")
            .env_remove("CARGO_TARGET_DIR");
        tools::run_ok(&mut cmd);
        let built = static_target.join(&triple).join("debug").join("kiln");
        let pkg = target_dir().join("kiln-static");
        let bin = pkg.join("bin");
        std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("creating {}: {e}", bin.display()));
        // Replaced only when it changed, so `builtins.path` gives the same store path for the same binary.
        let dest = bin.join("kiln");
        let new = std::fs::read(&built).unwrap_or_else(|e| panic!("reading {}: {e}", built.display()));
        if std::fs::read(&dest).ok().as_ref() != Some(&new) {
            let tmp = bin.join(format!(".kiln.tmp.{}", std::process::id()));
            std::fs::write(&tmp, &new).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
            std::fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("renaming to {}: {e}", dest.display()));
        }
        pkg
    })
    .clone()
}
