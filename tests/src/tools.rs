//! Locating and running outside tools.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Finds `name` on `PATH` (and the sbin directories, which a non-login root shell may lack).
///
/// Panics with the Debian package to install when the tool is missing: a test that cannot run its
/// checker must fail, not pass silently.
pub fn require(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("required tool `{name}` not found: install the Debian package `{package}` (see .ci/run)")
}

/// Runs a command and returns its output, panicking with the command line if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics, with its stdout and stderr, unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
