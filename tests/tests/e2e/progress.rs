//! Progress as people and machines see it: bars on a terminal, plain lines in logs, and the summary.

use std::process::Command;

use kiln_tests::{fixtures, tools};

use crate::util::store_of;

/// The demo build's arguments as one shell-quoted string (for `script`, which takes a command line).
fn demo_build_command(out: &std::path::Path, progress: &str) -> String {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    format!(
        "{} build --progress {progress} --layout efi --format qcow2 --system {} --store-dir {} --closure-info {} \
         --output {}",
        q(fixtures::kiln_bin().to_str().unwrap()),
        q(&top),
        q(store_of(&fx).to_str().unwrap()),
        q(fx.join("closure-info").to_str().unwrap()),
        q(out.to_str().unwrap())
    )
}

#[test]
fn a_terminal_gets_bars_and_a_log_gets_lines() {
    let tmp = tempfile::tempdir().unwrap();
    // `script` runs the build on a pseudo-terminal, as a person at a shell would.
    let script = tools::require("script", "util-linux");
    let out = tmp.path().join("tty.qcow2");
    let tty = tools::run_ok(Command::new(&script).args(["-qec", &demo_build_command(&out, "auto"), "/dev/null"]));
    let tty = String::from_utf8_lossy(&tty.stdout).into_owned();
    for phase in ["system", "closure", "plan", "write", "format"] {
        assert!(tty.contains(&format!("✓ {phase}")), "no finished bar for {phase}:\n{tty}");
    }
    assert!(tty.contains("wrote ") && tty.contains("(qcow2, "), "the summary:\n{tty}");
    assert!(tty.contains("phases       system "), "{tty}");
    // Without a terminal, `auto` is plain timestamped lines on stderr and the summary on stdout.
    let out = tmp.path().join("log.qcow2");
    let log = tools::run_ok(Command::new("sh").args(["-c", &demo_build_command(&out, "auto")]));
    let (stdout, stderr) = (String::from_utf8_lossy(&log.stdout), String::from_utf8_lossy(&log.stderr));
    assert!(stderr.lines().any(|l| l.starts_with('[') && l.contains("] format: done in ")), "{stderr}");
    assert!(!stderr.contains('✓'), "no bars in a log:\n{stderr}");
    assert!(stdout.starts_with(&format!("wrote {} (qcow2, ", out.display())), "{stdout}");
    assert!(stdout.contains("allocated"), "{stdout}");
}
