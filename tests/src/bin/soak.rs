//! The reliability soak (`scripts/soak N`): N random trees (`kiln_tests::trees`: names of any bytes, all sizes,
//! holes, hard links, fast and slow symlinks, deep and wide directories, odd modes), each made a store path of
//! its own and built into an image by the `kiln` binary (`kiln build --layout none`, one and two threads in
//! turn), each image checked by three independent judges: `e2fsck -fn`, a read-back of the store path through
//! the ext4-view crate against the tree (in Nix's canonical form), and `kiln verify` (every narHash recomputed
//! from the image against the registration kiln wrote).
//!
//! It stops at the first failure, keeps that tree and its image, and writes the seed and the command that
//! replays it to `<dir>/FAILED` (`<dir>` is `target/soak`, or `--dir`). A run that passes removes its trees as
//! it goes and prints the time it took.
//!
//! ```text
//! soak N [--from SEED] [--large] [--dir DIR]     N trees, seeds SEED.. (default 0..)
//! soak --seed SEED [--large] [--dir DIR]         replay one tree
//! ```
//!
//! `KILN_BIN` names the `kiln` binary to test (`scripts/soak` builds it with this program, in one cargo run).
//! `KILN_SOAK_BREAK=SEED` changes one byte of that seed's tree after its image is built: the run must then stop
//! there (the end-to-end tests check that the soak catches what it should).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kiln_tests::ext4::{Expect, e2fsck_clean, ext4_view_compare};
use kiln_tests::trees::{TreeSize, TreeStats, random_system};
use kiln_tests::{fixtures, tools};

#[derive(Debug)]
struct Args {
    first: u64,
    count: u64,
    size: TreeSize,
    dir: PathBuf,
}

const USAGE: &str = "usage: soak N [--from SEED] [--large] [--dir DIR] | soak --seed SEED [--large] [--dir DIR]";

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args> {
    let mut args =
        Args { first: 0, count: 0, size: TreeSize::Small, dir: fixtures::workspace_root().join("target/soak") };
    let mut count = None;
    let number = |flag: &str, v: Option<String>| -> Result<u64> {
        let v = v.with_context(|| format!("{flag} needs a number\n{USAGE}"))?;
        v.parse().with_context(|| format!("{flag} {v:?}: not a number\n{USAGE}"))
    };
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--from" => args.first = number("--from", argv.next())?,
            "--seed" => {
                args.first = number("--seed", argv.next())?;
                count = Some(1);
            }
            "--large" => args.size = TreeSize::Large,
            "--dir" => args.dir = PathBuf::from(argv.next().context("--dir needs a directory")?),
            "-h" | "--help" => bail!("{USAGE}"),
            n if count.is_none() && !n.starts_with('-') => count = Some(number("N", Some(a))?),
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    args.count = count.context(USAGE)?;
    Ok(args)
}

/// The `kiln` binary: `$KILN_BIN` (what `scripts/soak` built with this program), else built by cargo.
fn kiln_bin() -> PathBuf {
    std::env::var_os("KILN_BIN").map_or_else(fixtures::kiln_bin, PathBuf::from)
}

/// Runs `kiln` with `args`; an error with its output when it fails.
fn kiln(args: &[OsString]) -> Result<()> {
    let out = tools::run(Command::new(kiln_bin()).args(args));
    if !out.status.success() {
        bail!(
            "kiln {} exited {}:\n{}{}",
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Makes, builds and checks the tree of `seed` in `work`.
fn one(seed: u64, size: TreeSize, work: &Path) -> Result<TreeStats> {
    let store = work.join("store");
    let sys = random_system(seed, &store, size);
    let img = work.join("root.img");
    let threads = if seed.is_multiple_of(2) { "1" } else { "2" };
    let build: Vec<OsString> = vec![
        "build".into(),
        "--layout".into(),
        "none".into(),
        "--format".into(),
        "raw".into(),
        "--progress".into(),
        "none".into(),
        "--threads".into(),
        threads.into(),
        "--system".into(),
        sys.toplevel.clone().into(),
        "--store-dir".into(),
        store.clone().into(),
        "--output".into(),
        img.clone().into(),
    ];
    kiln(&build).context("building the image")?;
    if std::env::var("KILN_SOAK_BREAK").ok().and_then(|v| v.parse::<u64>().ok()) == Some(seed) {
        break_tree(&sys.src)?;
    }
    e2fsck_clean(&img, 0).map_err(|e| anyhow::anyhow!("e2fsck -fn:\n{e}"))?;
    ext4_view_compare(&img, 0, sys.tree.as_bytes(), &sys.src, Expect::NIX)
        .map_err(|d| anyhow::anyhow!("ext4-view read-back differs from the tree:\n{}", d.join("\n")))?;
    kiln(&["verify".into(), img.into(), "--system".into(), sys.toplevel.into()]).context("kiln verify")?;
    Ok(sys.stats)
}

/// Appends a byte to the tree's first regular file (depth first, sorted), or adds a file where it has none.
fn break_tree(root: &Path) -> Result<()> {
    fn first_file(dir: &Path) -> Option<PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).ok()?;
            if m.is_file() {
                return Some(p);
            }
            if m.is_dir()
                && let Some(f) = first_file(&p)
            {
                return Some(f);
            }
        }
        None
    }
    let target = first_file(root).unwrap_or_else(|| root.join("added-by-KILN_SOAK_BREAK"));
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&target)?;
    std::io::Write::write_all(&mut f, b"!")?;
    eprintln!("soak: KILN_SOAK_BREAK: changed {}", target.display());
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let failed = args.dir.join("FAILED");
    let _ = std::fs::remove_file(&failed);
    let started = Instant::now();
    let mut total = TreeStats::default();
    let large = if args.size == TreeSize::Large { " --large" } else { "" };
    for seed in args.first..args.first + args.count {
        let work = args.dir.join(format!("seed-{seed}"));
        if work.exists() {
            remove(&work)?;
        }
        std::fs::create_dir_all(&work)?;
        match one(seed, args.size, &work) {
            Ok(s) => {
                total.entries += s.entries;
                total.hardlinks += s.hardlinks;
                total.symlinks += s.symlinks;
                total.bytes += s.bytes;
                remove(&work)?;
            }
            Err(e) => {
                let replay = format!("scripts/soak --seed {seed}{large}");
                let record = format!("seed {seed}\nreplay: {replay}\nkept: {}\n\n{e:#}\n", work.display());
                std::fs::write(&failed, &record).with_context(|| format!("writing {}", failed.display()))?;
                bail!(
                    "seed {seed} failed after {} good tree(s) ({:.1} s); its tree and image are kept in {}, the seed \
                     is in {}; replay with `{replay}`:\n{e:#}",
                    seed - args.first,
                    started.elapsed().as_secs_f64(),
                    work.display(),
                    failed.display()
                );
            }
        }
        let done = seed - args.first + 1;
        if done.is_multiple_of(50) || done == args.count {
            eprintln!("soak: {done}/{} trees clean ({:.1} s)", args.count, started.elapsed().as_secs_f64());
        }
    }
    println!(
        "soak: {} tree(s) from seed {}{}: all clean (e2fsck -fn, ext4-view read-back, kiln verify) in {:.1} s; \
         {} entries, {} hard links, {} symlinks, {} bytes",
        args.count,
        args.first,
        large,
        started.elapsed().as_secs_f64(),
        total.entries,
        total.hardlinks,
        total.symlinks,
        total.bytes
    );
    Ok(())
}

/// Removes a tree the generator made (it makes read-only directories).
fn remove(dir: &Path) -> Result<()> {
    let _ = Command::new("chmod").arg("-R").arg("u+rwx").arg(dir).status();
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

fn main() -> ExitCode {
    let result = parse(std::env::args().skip(1)).and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}
