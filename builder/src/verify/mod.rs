//! `kiln verify`: reads an image back with an independent ext4 reader and checks that its Nix store is what its
//! Nix database says, the way Nix itself would find it on first boot; that its boot files are what kiln derives
//! from the closure; and that nothing else was added. README.md's "What `kiln verify` guarantees" says exactly
//! what is checked and what is not.
//!
//! 1. [`readback`](crate::readback) reads the layout (a bare filesystem, a GPT or an MBR; a container or stream
//!    is named) and finds the root filesystem; `extent` checks that every partition and filesystem lies inside
//!    the file (truncation).
//! 2. `db` reads `nix/var/nix/db/db.sqlite` (and the `schema` file, which must be exactly `10`).
//! 3. `image` re-derives every valid path's NAR serialisation from the image's own files (in parallel, one
//!    reader per worker) and compares narHash and narSize; references must be valid paths. Every entry under
//!    `/nix/store` must be registered, and every store file must have Nix's canonical metadata.
//! 4. `profile` follows `nix/var/nix/profiles/system` to a valid toplevel; with `--system` it must be that one,
//!    and the database must hold exactly its closure. With `--store-dir`, `host` compares that closure with the
//!    host store directory.
//! 5. `boot` checks the ESP, XBOOTLDR partition and `grub.cfg` against what kiln's own functions write for the
//!    toplevel's bootspec; `foreign` reports what lies outside the store (or on those partitions) that kiln does
//!    not write.
//!
//! Problems are collected, not raised: one run lists everything wrong (see [`Report`]).

mod boot;
mod db;
mod extent;
mod foreign;
mod host;
mod image;
mod profile;
mod verity;

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kiln_formats::disk::{ByteRange, Bytes};
use serde::Serialize;

pub use crate::readback::{Location, RootFs};
pub use host::HostCheck;

use crate::cli::VerifyArgs;
use crate::closure::NarInfo;
use crate::nar::hash_string;
use crate::readback::{Disk, Layout, Table, Window, not_a_disk_image};
use crate::store::{StoreDir, StorePath};
use crate::units::human_bytes;

/// Where the database and its schema file are in the image.
const DB_DIR: &str = "/nix/var/nix/db";
/// The closureInfo registration kiln copies into the image when asked.
const REGISTRATION: &str = "/nix-path-registration";
/// Stack of a hashing worker: the walk recurses once per directory level, up to the 997 levels a store path may
/// nest (see [`crate::inventory::MAX_PATH_COMPONENTS`]), a few KiB each.
const WORKER_STACK: usize = 32 << 20;
/// Problems printed before the rest are only counted.
const LISTED_PROBLEMS: usize = 20;
/// Non-canonical store entries listed across the image (the rest are counted).
const LISTED_METADATA: usize = 5;

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The image file.
    pub image: PathBuf,
    /// The toplevel the image should boot (`--system`).
    pub system: Option<PathBuf>,
    /// The host store directory (`--store-dir`): resolves `--system` and is compared with the image.
    pub store_dir: Option<PathBuf>,
    /// Worker threads for hashing; 0 for one per core.
    pub threads: usize,
}

/// What kind of thing is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// The database or its schema file.
    Database,
    /// A valid path missing from the image's store.
    Missing,
    /// A store path whose contents are not what its registration says, or cannot be read.
    Contents,
    /// Store entries with non-canonical owner, mode or mtime.
    Metadata,
    /// Something in `/nix/store` that is not a valid path.
    Stray,
    /// The system profile, or the toplevel `--system` names.
    Profile,
    /// A difference from the host store directory.
    Host,
    /// A partition or filesystem that runs past the end of the image (or of its partition).
    Truncated,
    /// A boot file (kernel, initrd, systemd-boot binary, loader entry, `grub.cfg`) that is not what kiln derives
    /// from the system's closure.
    Boot,
    /// A file, directory or symlink outside the store, or on a boot partition, that kiln did not put there.
    Foreign,
    /// The verified store (`efi-verity`): a data block or hash block that does not match the tree, a root hash
    /// that is not the boot entries', partition GUIDs that are not the root hash's.
    Verity,
}

/// One thing wrong with the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// What it is about: a store path or a file in the image.
    pub subject: String,
    /// What is wrong.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.detail)
    }
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The image.
    pub image: PathBuf,
    /// Where its root filesystem is.
    pub root_fs: RootFs,
    /// Valid paths in the image's database.
    pub valid_paths: usize,
    /// Valid paths whose contents were hashed.
    pub paths_hashed: usize,
    /// Entries (files, directories, symlinks) of those paths.
    pub entries: u64,
    /// NAR bytes hashed.
    pub nar_bytes: u64,
    /// The toplevel the system profile points to.
    pub toplevel: Option<StorePath>,
    /// How the host store directory was compared, with `--store-dir`.
    pub host: Option<HostCheck>,
    /// The boot files checked against the closure, a line per bootloader.
    pub boot: Vec<String>,
    /// Worker threads used for hashing.
    pub threads: usize,
    /// Time taken.
    pub elapsed: Duration,
    /// Everything wrong, in the order found.
    pub problems: Vec<Problem>,
}

impl Report {
    /// The summary and, capped, the problems, as text for people.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "image          {} (root filesystem: {})", self.image.display(), self.root_fs.location);
        let _ = writeln!(
            s,
            "store          {} valid paths; {} hashed: {} entries, {} of NAR ({} threads)",
            self.valid_paths,
            self.paths_hashed,
            self.entries,
            human_bytes(self.nar_bytes),
            self.threads
        );
        if let Some(top) = &self.toplevel {
            let _ = writeln!(s, "profile        system -> {top}");
        }
        if let Some(host) = &self.host {
            let _ = writeln!(s, "host           {host}");
        }
        for line in &self.boot {
            let _ = writeln!(s, "boot           {line}");
        }
        let _ = writeln!(s, "elapsed        {:.2}s", self.elapsed.as_secs_f64());
        for p in self.problems.iter().take(LISTED_PROBLEMS) {
            let _ = writeln!(s, "problem: {p}");
        }
        if self.problems.len() > LISTED_PROBLEMS {
            let _ = writeln!(s, "… and {} more problems", self.problems.len() - LISTED_PROBLEMS);
        }
        s
    }
}

/// `kiln verify`: prints the report and fails when there are problems.
pub fn command(args: VerifyArgs) -> Result<()> {
    let req = Request { image: args.image, system: args.system, store_dir: args.store_dir, threads: 0 };
    let report = verify(&req)?;
    print!("{}", report.to_text());
    match report.problems.as_slice() {
        [] => Ok(()),
        [only] => bail!("verify: 1 problem in {}: {only}", req.image.display()),
        [first, ..] => {
            bail!(
                "verify: {} problems in {} (listed above), first: {first}",
                report.problems.len(),
                req.image.display()
            )
        }
    }
}

/// `narHash sha256:<nix32> narSize N`, hashes as Nix prints them.
fn nar_differs(nar: &NarInfo) -> String {
    format!("narHash {} narSize {}", hash_string(&nar.hash), nar.size)
}

/// Verifies an image. An error means it could not be checked at all (unreadable, not a disk image, no root
/// filesystem, no database); everything found wrong is in the report's `problems`. When the image is truncated
/// and that stops the rest of the checks, the truncation and what stopped are problems too.
pub fn verify(req: &Request) -> Result<Report> {
    let start = Instant::now();
    let name = req.image.display().to_string();
    let disk = Disk::open(&req.image)?;
    let layout = read_layout(&disk)?;
    let mut problems = Vec::new();
    let root_fs = match RootFs::find(&disk, &layout) {
        Ok(fs) => fs,
        Err(e) => {
            extent::check_partitions(&disk, &layout, &mut problems);
            return Err(match problems.first() {
                Some(p) => e.context(format!("{name}: truncated: {p}")),
                None => e,
            });
        }
    };
    extent::check(&disk, &layout, &root_fs, &mut problems);
    let truncated = !problems.is_empty();
    // A bare filesystem's reads are bounded by the image alone, whose end a read past says is missing.
    let end = if root_fs.location == Location::WholeImage { Bytes(u64::MAX) } else { root_fs.end };
    let window = disk.window(ByteRange { start: root_fs.offset, end });
    let store = req.store_dir.as_deref().map(StoreDir::new).transpose()?;
    let system = req.system.as_deref().map(|s| profile::resolve_system(s, store.as_ref())).transpose()?;
    let mut report = Report {
        image: req.image.clone(),
        root_fs: root_fs.clone(),
        valid_paths: 0,
        paths_hashed: 0,
        entries: 0,
        nar_bytes: 0,
        toplevel: None,
        host: None,
        boot: Vec::new(),
        threads: 0,
        elapsed: Duration::ZERO,
        problems: Vec::new(),
    };
    let store_window = layout.with_role(crate::readback::Role::Usr).next().map(|p| disk.window(p.range));
    let parts = Parts { disk: &disk, layout: &layout, root: &root_fs, window: &window, store: store_window };
    match check_root(req, &parts, store.as_ref(), system.as_ref(), &mut report, &mut problems) {
        Ok(()) => {}
        Err(e) if truncated => problems.push(Problem {
            kind: ProblemKind::Truncated,
            subject: name,
            detail: format!("the rest of the image cannot be checked: {e:#}"),
        }),
        Err(e) => return Err(e),
    }
    report.problems = problems;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// How `disk` is laid out. A corrupt GPT is an error naming what is wrong; a file with no filesystem at byte 0
/// and no table is an error saying what it is, when kiln knows.
fn read_layout(disk: &Disk) -> Result<Layout> {
    let looked_for = "no ext4 superblock at byte 1024, no GPT header at byte 512 or 4096, and no MBR partition table \
                      (55 AA at byte 510)";
    Layout::read(disk)?.ok_or_else(|| not_a_disk_image(disk, "verify", looked_for))
}

/// What was found of the image before its root filesystem is opened.
struct Parts<'a> {
    disk: &'a Disk,
    layout: &'a Layout,
    root: &'a RootFs,
    /// The root filesystem's partition (or the whole image).
    window: &'a Window,
    /// The store's own partition (`efi-verity`), which holds `/nix/store`.
    store: Option<Window>,
}

/// Checks the root filesystem: the database, every store path, the profile, the host store, the boot files and
/// what lies outside the store. Fills in `report`'s counts.
fn check_root(
    req: &Request,
    parts: &Parts<'_>,
    store: Option<&StoreDir>,
    system: Option<&StorePath>,
    report: &mut Report,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let name = req.image.display().to_string();
    let img = image::Image::open(parts.window, parts.store.as_ref())?;
    let valid = read_db(&img, &name, problems)?;
    report.valid_paths = valid.len();
    let present = check_store_entries(&img, &valid, problems)?;

    let mut jobs: Vec<&StorePath> = valid.keys().filter(|p| present.contains(*p)).collect();
    jobs.sort_by_key(|p| std::cmp::Reverse(valid[*p].nar.map_or(0, |n| n.size)));
    let threads = match req.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
    .clamp(1, jobs.len().max(1));
    report.threads = threads;
    report.paths_hashed = jobs.len();
    let results = hash_paths(parts.window, parts.store.as_ref(), &jobs, threads)?;
    let mut metadata_count = 0u64;
    let mut metadata = Vec::new();
    for (p, result) in jobs.iter().zip(results) {
        let mut problem = |kind, detail| problems.push(Problem { kind, subject: p.to_string(), detail });
        let check = match result {
            Ok(check) => check,
            Err(e) => {
                problem(ProblemKind::Contents, format!("cannot be read from the image: {e:#}"));
                continue;
            }
        };
        report.entries += check.entries;
        let got = check.nar.expect("a finished walk has a NAR");
        report.nar_bytes += got.size;
        if let Some(want) = valid[*p].nar
            && want != got
        {
            problem(
                ProblemKind::Contents,
                format!(
                    "contents differ from the image's database: registered {}, but the image's copy has {}",
                    nar_differs(&want),
                    nar_differs(&got)
                ),
            );
        }
        metadata_count += check.violation_count;
        metadata.extend(check.violations);
    }
    for (subject, detail) in metadata.into_iter().take(LISTED_METADATA) {
        problems.push(Problem { kind: ProblemKind::Metadata, subject, detail: format!("not canonical: {detail}") });
    }
    if metadata_count > LISTED_METADATA as u64 {
        problems.push(Problem {
            kind: ProblemKind::Metadata,
            subject: "/nix/store".into(),
            detail: format!("{} more entries with non-canonical metadata", metadata_count - LISTED_METADATA as u64),
        });
    }
    if let Some(text) = img.read(REGISTRATION)? {
        db::check_registration(&String::from_utf8_lossy(&text), &valid, problems);
    }

    let toplevel = profile::toplevel(&img, &valid, problems)?;
    if let Some(want) = system {
        check_system(want, toplevel.as_ref(), &valid, problems);
    }
    report.host = match (store, system.or(toplevel.as_ref())) {
        (Some(store), Some(root)) if valid.contains_key(root) => Some(host::compare(store, root, &valid, problems)?),
        _ => None,
    };
    if let Some(top) = &toplevel {
        let cx = boot::Context { disk: parts.disk, layout: parts.layout, root: parts.root, image: &img, valid: &valid };
        report.boot = boot::check(&cx, top, problems)?;
        let usr = parts.layout.with_role(crate::readback::Role::Usr).next();
        let usr_verity = parts.layout.with_role(crate::readback::Role::UsrVerity).next();
        if let (Some(data), Some(hash)) = (usr, usr_verity) {
            let command_lines = boot::command_lines(&cx, problems)?;
            let s = verity::Store { disk: parts.disk, data, hash, command_lines: &command_lines };
            report.boot.extend(verity::check(&s, problems)?);
        }
        let disk = parts.layout.table != Table::None;
        foreign::check(&img, top, boot::boots(parts.layout), disk, problems)?;
    }
    report.toplevel = toplevel;
    Ok(())
}

/// Reads the schema file and the database, recording what Nix would refuse.
fn read_db(img: &image::Image, name: &str, problems: &mut Vec<Problem>) -> Result<db::ValidPaths> {
    let mut problem = |subject: String, detail: String| {
        problems.push(Problem { kind: ProblemKind::Database, subject, detail });
    };
    let schema = format!("{DB_DIR}/schema");
    match img.read(&schema)? {
        Some(bytes) if bytes == crate::nixdb::SCHEMA_FILE => {}
        Some(bytes) if bytes.trim_ascii_end() == crate::nixdb::SCHEMA_FILE => {
            problem(schema, format!("{:?}: Nix rejects anything but exactly \"10\" (no newline)", image::show(&bytes)))
        }
        Some(bytes) => problem(schema, format!("{:?}, not schema version \"10\"", image::show(&bytes))),
        None => problem(schema, "missing (Nix would treat the database as corrupt)".into()),
    }
    for leftover in ["db.sqlite-wal", "db.sqlite-shm", "db.sqlite-journal"] {
        let path = format!("{DB_DIR}/{leftover}");
        if img.exists(&path)? {
            problem(path, "left beside the database (it was not closed cleanly)".into());
        }
    }
    let db_path = format!("{DB_DIR}/db.sqlite");
    let Some(bytes) = img.read(&db_path)? else {
        bail!("{name}: no Nix database at {db_path} in the root filesystem, so there is nothing to verify against");
    };
    db::read(&bytes, &format!("{name}:{db_path}"), problems)
}

/// Every entry directly under `/nix/store` must be a valid path, and every valid path must be there. Returns
/// the valid paths present.
fn check_store_entries(
    img: &image::Image,
    valid: &db::ValidPaths,
    problems: &mut Vec<Problem>,
) -> Result<std::collections::BTreeSet<StorePath>> {
    let mut present = std::collections::BTreeSet::new();
    for name in img.store_entries()? {
        let shown = format!("/nix/store/{}", image::show(&name));
        let detail = match std::str::from_utf8(&name).map(StorePath::from_base_name) {
            Ok(Ok(p)) if valid.contains_key(&p) => {
                present.insert(p);
                continue;
            }
            Ok(Ok(_)) => "in the store but not a valid path in the image's database".to_owned(),
            _ if name == b".links" => "Nix's hard-link pool: an image must not ship it (even empty)".to_owned(),
            Ok(Err(e)) => format!("in the store but not a store path ({})", e.why),
            Err(_) => "in the store but not a store path (not UTF-8)".to_owned(),
        };
        problems.push(Problem { kind: ProblemKind::Stray, subject: shown, detail });
    }
    for p in valid.keys().filter(|p| !present.contains(*p)) {
        problems.push(Problem {
            kind: ProblemKind::Missing,
            subject: p.to_string(),
            detail: "registered as valid but missing from the image's /nix/store".into(),
        });
    }
    Ok(present)
}

/// The profile must point to `want`, and the database must hold exactly its closure.
fn check_system(want: &StorePath, toplevel: Option<&StorePath>, valid: &db::ValidPaths, problems: &mut Vec<Problem>) {
    let mut problem = |subject: String, detail: String| {
        problems.push(Problem { kind: ProblemKind::Profile, subject, detail });
    };
    if let Some(top) = toplevel
        && top != want
    {
        problem("/nix/var/nix/profiles/system".into(), format!("points to {top}, but --system is {want}"));
    }
    if !valid.contains_key(want) {
        problem(want.to_string(), "the --system toplevel is not a valid path in the image's database".into());
        return;
    }
    let reachable = db::closure(valid, want);
    for p in valid.keys().filter(|p| !reachable.contains(p)) {
        problem(p.to_string(), format!("registered as valid but not in the closure of {want}"));
    }
}

/// Hashes `jobs` (store paths present in the image) on `threads` workers, each with its own reader; results in
/// the order of `jobs`.
fn hash_paths(
    window: &Window,
    store: Option<&Window>,
    jobs: &[&StorePath],
    threads: usize,
) -> Result<Vec<Result<image::PathCheck>>> {
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Result<image::PathCheck>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let next = &next;
                std::thread::Builder::new()
                    .name(format!("kiln-verify-{i}"))
                    .stack_size(WORKER_STACK)
                    .spawn_scoped(s, move || -> Result<Vec<(usize, Result<image::PathCheck>)>> {
                        let img = image::Image::open(window, store)?;
                        let mut buf = Vec::new();
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(p) = jobs.get(i) else { break };
                            out.push((i, img.check_store_path(p.base_name(), &mut buf)));
                        }
                        Ok(out)
                    })
                    .context("starting a verify worker thread")
            })
            .collect::<Result<_>>()?;
        let mut all = Vec::with_capacity(jobs.len());
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow::anyhow!("a verify worker thread panicked"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    done.sort_unstable_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MIB: usize = 1 << 20;

    fn find(img: Vec<u8>) -> Result<RootFs> {
        let len = Bytes(img.len() as u64);
        let disk = Disk::new(Arc::new(img), len, "test.img".into());
        RootFs::find(&disk, &read_layout(&disk)?)
    }

    /// What a file is, when it is no disk image: the containers and streams kiln writes are named, with what to
    /// convert them with; anything else is "not a disk image".
    #[test]
    fn says_what_a_file_that_is_no_disk_image_is() {
        struct Case {
            name: &'static str,
            head: &'static [u8],
            want: &'static str,
        }
        let cases = [
            Case {
                name: "qcow2",
                head: b"QFI\xfb\0\0\0\x03",
                want: "test.img: a qcow2 image, not a raw disk: convert it first (qemu-img convert -f qcow2 -O raw test.img disk.raw)",
            },
            Case { name: "vhdx", head: b"vhdxfile", want: "test.img: a VHDX image, not a raw disk" },
            Case { name: "vmdk", head: b"KDMV\x01\0\0\0", want: "test.img: a VMDK image, not a raw disk" },
            Case { name: "dynamic vhd", head: b"conectix", want: "test.img: a dynamic VHD image, not a raw disk" },
            Case {
                name: "zstd",
                head: &[0x28, 0xB5, 0x2F, 0xFD],
                want: "test.img: zstd-compressed, not a raw disk: decompress it first (zstd -d test.img -o disk.raw)",
            },
            Case { name: "gzip", head: &[0x1F, 0x8B, 0x08], want: "test.img: gzip-compressed, not a raw disk" },
            Case {
                name: "random",
                head: &[0x5A, 0x13, 0xC7, 0x01, 0x99],
                want: "test.img: not a disk image: no ext4 superblock at byte 1024, no GPT header at byte 512 or 4096, and no MBR partition table (55 AA at byte 510)",
            },
        ];
        for case in cases {
            let mut img: Vec<u8> = (0..MIB as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
            img[..case.head.len()].copy_from_slice(case.head);
            img[510] = 0;
            let err = format!("{:#}", find(img).unwrap_err());
            assert!(err.starts_with(case.want), "{}: {err}", case.name);
        }
        let err = format!("{:#}", find(b"tiny".to_vec()).unwrap_err());
        assert!(err.starts_with("test.img: not a disk image"), "{err}");
    }
}
