//! Killing a build: nothing at the final path, ever; SIGINT and SIGTERM also remove the temporary file.
//!
//! Every test proves its signals landed mid-build rather than after the build had finished: kiln runs with
//! `--progress json`, whose lines say when the write phase starts and ends, and a trial counts only when the
//! signal went after the write phase had begun and before the image was complete. A build that wins the race
//! is retried (SIGINT and SIGTERM with a larger input, SIGKILL with more trials) or fails the test.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::fixtures;

use crate::util::{kiln_cmd, sha256, store_of};

/// What a build reads: a store directory, and the arguments that name the system in it.
struct Input {
    store: PathBuf,
    args: Vec<OsString>,
    /// The directory holding a copied store, removed with it.
    copy: Option<tempfile::TempDir>,
}

impl Input {
    /// The demo closure, with its closureInfo.
    fn demo() -> Self {
        let fx = fixtures::demo_closure();
        Self {
            store: store_of(&fx),
            args: vec![
                "--system".into(),
                fixtures::toplevel_of(&fx).into(),
                "--closure-info".into(),
                fx.join("closure-info").into(),
            ],
            copy: None,
        }
    }

    /// The demo closure copied with an extra store path of `bytes` pseudo-random bytes (shipped by
    /// `--extra-path`; its closure found by a reference scan), for a longer write phase.
    fn padded(bytes: usize) -> Self {
        let fx = fixtures::demo_closure();
        let dir = tempfile::tempdir().unwrap();
        let store = store_of(dir.path());
        std::fs::create_dir_all(store.parent().unwrap()).unwrap();
        let cp = Command::new("cp").arg("-a").arg(store_of(&fx)).arg(&store).status().unwrap();
        assert!(cp.success(), "copying the demo store: {cp}");
        let mut perms = std::fs::metadata(&store).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&store, perms).unwrap();
        let name = "00000000000000000000000000000000-kiln-test-padding";
        std::fs::create_dir(store.join(name)).unwrap();
        // Random bytes, so the copy writes every one (no holes, nothing to compress).
        let mut file = std::io::BufWriter::new(std::fs::File::create(store.join(name).join("data")).unwrap());
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..bytes / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            file.write_all(&x.to_le_bytes()).unwrap();
        }
        file.flush().unwrap();
        let args = vec![
            "--system".into(),
            fixtures::toplevel_of(&fx).into(),
            "--extra-path".into(),
            format!("/nix/store/{name}").into(),
        ];
        Self { store, args, copy: Some(dir) }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        // The copied store is read-only, as Nix leaves it; make it removable.
        if let Some(dir) = &self.copy {
            let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir.path()).status();
        }
    }
}

/// `kiln build` of `input` as an efi disk into `out`, with progress as JSON lines on stdout.
fn spawn(input: &Input, out: &Path) -> Child {
    let mut args: Vec<OsString> = ["build", "--progress", "json", "--layout", "efi"].map(OsString::from).to_vec();
    args.extend(input.args.iter().cloned());
    args.extend(["--store-dir".into(), input.store.clone().into_os_string(), "--output".into(), out.into()]);
    kiln_cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning kiln")
}

/// Whether `line` is the progress event `kind` (`phase-start`, `phase-end`) of `phase`. (A killed build's
/// last line may be cut short: that is no event.)
fn is_event(line: &str, kind: &str, phase: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["type"] == kind && v["phase"] == phase)
}

/// Whether any of `stdout`'s lines is the event `kind` of `phase`.
fn saw(stdout: &str, kind: &str, phase: &str) -> bool {
    stdout.lines().any(|l| is_event(l, kind, phase))
}

/// The temporary a build with process id `pid` writes `dir/disk.img` under.
fn temporary(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!(".disk.img.kiln-{pid}.tmp"))
}

/// Entries of `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

/// What the SIGKILL trials saw.
#[derive(Debug, Default)]
struct Tally {
    /// Killed before the write phase began.
    before_write: u32,
    /// Killed after the write phase began and before the image was complete: the kills that matter.
    mid_build: u32,
    /// Killed after the image was complete (the format phase had ended), before kiln exited.
    after_format: u32,
    /// Finished before the kill.
    finished: u32,
}

#[test]
fn sigkill_at_random_points_never_leaves_a_file_at_the_output() {
    let input = Input::demo();
    let tmp = tempfile::tempdir().unwrap();
    // Undisturbed builds: the fastest one's duration spreads the kills (a loaded machine only makes the killed
    // builds slower, so more of them die mid-way), and its bytes are what a finished build must hold.
    let reference = tmp.path().join("reference.img");
    let mut full = Duration::MAX;
    for _ in 0..3 {
        let _ = std::fs::remove_file(&reference);
        let start = Instant::now();
        let out = spawn(&input, &reference).wait_with_output().unwrap();
        full = full.min(start.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let want = sha256(&reference);

    // Rounds of trials until enough were killed mid-build: a kill that lands before the write or after the
    // build proves nothing about the output path.
    const ROUND: u32 = 24;
    const NEED: u32 = 10;
    const MOST: u32 = 4 * ROUND;
    let mut tally = Tally::default();
    // A fixed LCG: the same kill points every run, spread over 0..100% of the fastest whole build.
    let mut state = 0x2545_f491_u64;
    let mut trial = 0;
    while tally.mid_build < NEED {
        assert!(
            trial < MOST,
            "only {} of {trial} trials were killed mid-build (need {NEED}): {tally:?}",
            tally.mid_build
        );
        for _ in 0..ROUND {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let fraction = (state >> 40) as f64 / f64::from(1u32 << 24);
            sigkill_trial(&input, tmp.path(), trial, full.mul_f64(fraction), &want, &mut tally);
            trial += 1;
        }
    }
    eprintln!("{trial} SIGKILL trials: {tally:?}");
}

/// One build of `input`, killed `after` its start; checks what is left and counts how far it got.
fn sigkill_trial(input: &Input, tmp: &Path, trial: u32, after: Duration, want: &str, tally: &mut Tally) {
    let dir = tmp.join(format!("trial-{trial}"));
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("disk.img");
    let mut child = spawn(input, &target);
    let pid = child.id();
    std::thread::sleep(after);
    let _ = child.kill(); // SIGKILL; fails only if it already exited
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = format!("trial {trial}, killed after {:.1} ms", after.as_secs_f64() * 1000.0);
    if out.status.success() {
        tally.finished += 1;
        assert_eq!(sha256(&target), want, "{at}: a finished build differs from the reference");
    } else {
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{at}: neither finished nor killed ({}); stderr:\n{stderr}",
            out.status
        );
        // The image is renamed into place only after the format phase ends.
        let complete = saw(&stdout, "phase-end", "format");
        if complete {
            tally.after_format += 1;
            if target.exists() {
                assert_eq!(sha256(&target), want, "{at}: after the rename, the image differs from the reference");
            }
        } else {
            assert!(!target.exists(), "{at}, before the image was complete, yet {} exists", target.display());
            if saw(&stdout, "phase-start", "write") {
                tally.mid_build += 1;
                // The temporary is created before the write phase, and only a signal handler removes it.
                let temp = temporary(&dir, pid);
                assert!(temp.exists(), "{at}: killed mid-build, yet no temporary {}", temp.display());
            } else {
                tally.before_write += 1;
            }
        }
        // Only a temporary may remain after SIGKILL, named so it cannot be mistaken for the image.
        for p in leftovers(&dir) {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let temp = name.starts_with(".disk.img.kiln-") && name.ends_with(".tmp");
            assert!(temp || (complete && p == target), "{at}: left {name}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Builds a larger input each time until `signal` lands mid-write, then checks the aftermath: exit status
/// `code` (128 + the signal), the message naming `name`, and nothing left beside the output. Fails the test if
/// every build won the race.
fn interrupt_with(signal: rustix::process::Signal, code: i32, name: &str) {
    let mut missed = Vec::new();
    for padding in [0, 64 << 20, 256 << 20] {
        let input = if padding == 0 { Input::demo() } else { Input::padded(padding) };
        match interrupt_mid_write(&input, signal, code, name) {
            Ok(()) => {
                if !missed.is_empty() {
                    eprintln!("{name} landed mid-write after {} tries:\n{}", missed.len() + 1, missed.join("\n"));
                }
                return;
            }
            Err(why) => missed.push(format!("with {padding} bytes of padding: {why}")),
        }
    }
    panic!("{name} never landed mid-write:\n{}", missed.join("\n"));
}

/// One build of `input`, sent `signal` as soon as its write phase starts. `Err` says why the signal cannot be
/// shown to have landed mid-write.
fn interrupt_mid_write(input: &Input, signal: rustix::process::Signal, code: i32, name: &str) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("disk.img");
    let mut child = spawn(input, &target);
    let temp = temporary(tmp.path(), child.id());
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map(Result::unwrap);
    let mut before = Vec::new();
    // Progress lines as they come: signal right after the write phase starts.
    loop {
        let Some(line) = lines.next() else {
            let status = child.wait().unwrap();
            panic!(
                "the build ended ({status}) without a write phase:\n{}\n{}",
                before.join("\n"),
                stderr.join().unwrap()
            );
        };
        let started = is_event(&line, "phase-start", "write");
        before.push(line);
        if started {
            break;
        }
    }
    // The temporary is created before the write phase starts; gone already, the build won the race.
    let was_there = temp.exists();
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let after: Vec<String> = lines.collect();
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    if status.success() {
        let shown: Vec<&str> = after.iter().map(|l| l.get(..120).unwrap_or(l)).collect();
        return Err(format!("the build finished first ({status}); after the signal:\n{}", shown.join("\n")));
    }
    assert_eq!(status.code(), Some(code), "exit status after {name}; stderr:\n{stderr}");
    assert!(stderr.contains(&format!("interrupted by {name}")), "{stderr}");
    if !was_there {
        return Err(format!("{} was gone when the write phase was seen to start", temp.display()));
    }
    if after.iter().any(|l| is_event(l, "phase-end", "write")) {
        // The handler may have run after the image was written, even renamed: not a mid-write interrupt.
        return Err(format!("the write phase ended before kiln exited; stderr:\n{stderr}"));
    }
    // The handler ran while the temporary was registered: it removed it, and nothing else was there.
    assert!(!stderr.contains("removed 0 temporary"), "{stderr}");
    assert_eq!(leftovers(tmp.path()), Vec::<PathBuf>::new(), "{name} left files behind");
    Ok(())
}

#[test]
fn sigint_removes_the_temporary() {
    interrupt_with(rustix::process::Signal::INT, 130, "SIGINT");
}

#[test]
fn sigterm_removes_the_temporary() {
    interrupt_with(rustix::process::Signal::TERM, 143, "SIGTERM");
}
