//! Helpers shared by the formats crate's integration tests.

use std::path::PathBuf;
use std::process::Command;

/// The path of `tool`, or a failure naming the Debian package that has it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install the Debian package {package} (apt-get install {package})"))
}

/// What a command printed, and whether it succeeded.
pub struct Output {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard output then its standard error, as text.
    pub text: String,
}

/// Runs `cmd` in the C locale (unless it sets `LC_ALL` itself) and collects what it printed; a command that
/// cannot be started fails the test.
pub fn run(cmd: &mut Command) -> Output {
    if !cmd.get_envs().any(|(k, _)| k == "LC_ALL") {
        cmd.env("LC_ALL", "C");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Output { ok: out.status.success(), stdout: out.stdout, text }
}

/// Deterministic pseudo-random bytes from `seed` (xorshift64), `len` of them: test data no reader gets right
/// by accident.
pub fn xorshift_bytes(seed: u64, len: usize) -> impl Iterator<Item = u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 56) as u8
    })
}
