//! Killing a build: nothing at the final path, ever; SIGINT and SIGTERM also remove the temporary file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::fixtures;

use crate::util::{kiln_cmd, sha256, store_of};

/// `kiln build` of the demo closure as an efi disk into `out`.
fn build_args(out: &Path) -> Vec<OsString> {
    let fx = fixtures::demo_closure();
    let top = fixtures::toplevel_of(&fx);
    let mut args: Vec<OsString> =
        ["build", "--progress", "none", "--layout", "efi", "--system"].map(OsString::from).to_vec();
    args.extend([OsString::from(top), "--store-dir".into(), store_of(&fx).into()]);
    args.extend(["--closure-info".into(), fx.join("closure-info").into(), "--output".into(), out.into()]);
    args
}

fn spawn(out: &Path) -> Child {
    kiln_cmd().args(build_args(out)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawning kiln")
}

/// Entries of `dir` other than `keep`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

#[test]
fn sigkill_at_random_points_never_leaves_a_file_at_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    // Undisturbed builds: the fastest one's duration spreads the kills (a loaded machine only makes the killed
    // builds slower, so more of them die mid-way), and its bytes are what a finished build must hold.
    let reference = tmp.path().join("reference.img");
    let mut full = Duration::MAX;
    for _ in 0..3 {
        let _ = std::fs::remove_file(&reference);
        let start = Instant::now();
        let out = spawn(&reference).wait_with_output().unwrap();
        full = full.min(start.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let want = sha256(&reference);

    let trials = 24u32;
    let (mut killed, mut finished) = (0, 0);
    // A fixed LCG: the same kill points every run, spread over 0..100% of the fastest whole build.
    let mut state = 0x2545_f491_u64;
    for trial in 0..trials {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let fraction = (state >> 40) as f64 / f64::from(1u32 << 24);
        let dir = tmp.path().join(format!("trial-{trial}"));
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("disk.img");
        let mut child = spawn(&target);
        std::thread::sleep(full.mul_f64(fraction));
        let _ = child.kill(); // SIGKILL; fails only if it already exited
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
            assert_eq!(sha256(&target), want, "trial {trial}: a finished build differs from the reference");
        } else {
            killed += 1;
            assert!(
                !target.exists(),
                "trial {trial}: killed after {:.0}% of a build, yet {} exists",
                fraction * 100.0,
                target.display()
            );
            // Only a temporary may remain after SIGKILL, named so it cannot be mistaken for the image.
            for p in leftovers(&dir) {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert!(name.starts_with(".disk.img.kiln-") && name.ends_with(".tmp"), "trial {trial}: left {name}");
            }
        }
    }
    assert!(
        killed >= trials / 2,
        "only {killed} of {trials} trials were killed before finishing ({finished} finished)"
    );
}

/// Starts a build, waits until its temporary output exists, sends `signal`, and checks the aftermath.
fn interrupt_with(signal: rustix::process::Signal, code: i32, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("disk.img");
    let child = spawn(&target);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Signal as soon as the temporary appears: the build is then mid-write.
    while leftovers(tmp.path()).is_empty() {
        assert!(Instant::now() < deadline, "no temporary output appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // The build won the race; it must then be complete. Rare on a 2-core machine, but not an error.
        assert!(target.exists());
        return;
    }
    assert_eq!(out.status.code(), Some(code), "exit status after {name}; stderr:\n{stderr}");
    assert!(stderr.contains(&format!("interrupted by {name}")), "{stderr}");
    assert_eq!(leftovers(tmp.path()), Vec::<PathBuf>::new(), "{name} left files behind");
}

#[test]
fn sigint_removes_the_temporary() {
    interrupt_with(rustix::process::Signal::INT, 130, "SIGINT");
}

#[test]
fn sigterm_removes_the_temporary() {
    interrupt_with(rustix::process::Signal::TERM, 143, "SIGTERM");
}
