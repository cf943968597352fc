//! Writing an output file atomically: into a temporary file beside the target, renamed over it only when
//! complete. If anything fails (or the value is dropped without committing), the temporary file is removed
//! and nothing is left at the target path. On SIGINT, SIGTERM or SIGHUP every live temporary is removed
//! before the process exits (see [`remove_temporaries_on_signals`]); after SIGKILL a temporary may remain,
//! but never a file at the target path.

pub mod emit;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// Temporary files and directories alive now, removed by the signal handler.
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn temporaries() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forgets `path` (committed, or removed already).
pub(crate) fn unregister_temporary(path: &Path) {
    temporaries().retain(|p| p != path);
}

/// Starts a thread that, on SIGINT, SIGTERM or SIGHUP, removes every registered temporary and exits with
/// 128 + the signal number, as a shell reports a death by that signal.
///
/// # Errors
/// If the handlers cannot be installed.
pub fn remove_temporaries_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Holding the lock while removing keeps new temporaries from appearing meanwhile.
                let temps = temporaries();
                for p in temps.iter() {
                    let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
                }
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                eprintln!("kiln: interrupted by {name}; removed {} temporary file(s)", temps.len());
                std::process::exit(128 + signal);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// A private directory under `$TMPDIR` for intermediate files: a random name, created exclusively with mode
/// 0700 (nothing planted there beforehand is used or followed), registered with the signal handler, and removed
/// with its contents when dropped.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates one whose name starts with `prefix`.
    ///
    /// # Errors
    /// If the directory cannot be created.
    pub fn new(prefix: &str) -> Result<Self> {
        let base = std::env::temp_dir();
        // Created and registered under the signal handler's lock, as AtomicOutput's file.
        let mut temps = temporaries();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&base)
            .with_context(|| format!("creating a private temporary directory in {}", base.display()))?
            .keep();
        temps.push(dir.clone());
        Ok(Self(dir))
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        unregister_temporary(&self.0);
    }
}

/// The directory `target` goes into.
pub(crate) fn dir_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Bytes an unprivileged writer may still use on the filesystem that will hold `target`, when it can be
/// measured (for error messages: an image's data may not fit).
#[must_use]
pub fn free_space(target: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir_of(target)).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// When `err` comes from a full filesystem (`ENOSPC`) or an exhausted quota (`EDQUOT`) under it, an error
/// that says so first and names the output, with the space that was free when writing began
/// (`free_before`, from [`free_space`]) and where the write failed; any other error unchanged.
#[must_use]
pub fn explain_no_space(err: anyhow::Error, target: &Path, free_before: Option<u64>) -> anyhow::Error {
    let Some(io) = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .filter(|io| matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    else {
        return err;
    };
    let what =
        if io.kind() == std::io::ErrorKind::StorageFull { "no space left on device" } else { "disk quota exceeded" };
    // Where it failed: the contexts above the I/O error (each says only its own part; the I/O error is its
    // source, not part of its text).
    let place: Vec<String> =
        err.chain().take_while(|e| e.downcast_ref::<std::io::Error>().is_none()).map(ToString::to_string).collect();
    let free = free_before.map_or_else(String::new, |n| {
        format!(" ({} free in {} when writing began)", crate::units::human_bytes(n), dir_of(target).display())
    });
    anyhow::anyhow!(
        "output {}: {what}{free}: the image does not fit; stopped at: {}",
        target.display(),
        place.join(": ")
    )
}

/// What a build reads, which no output may replace or be written into: directories (the store directory, the
/// closure-info directory, …) and single files (a profile, …), each with what it is, for the error.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    dirs: Vec<(PathBuf, &'static str)>,
    files: Vec<(PathBuf, &'static str)>,
}

impl Inputs {
    /// No inputs yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an input directory: no output may be written inside it, be it, or hold it.
    pub fn dir(&mut self, path: &Path, what: &'static str) -> &mut Self {
        self.dirs.push((path.to_path_buf(), what));
        self
    }

    /// Adds an input file (a directory is taken whole): no output may be it (by path, or by device and inode).
    pub fn file(&mut self, path: &Path, what: &'static str) -> &mut Self {
        if path.is_dir() {
            self.dirs.push((path.to_path_buf(), what));
        } else {
            self.files.push((path.to_path_buf(), what));
        }
        self
    }
}

/// Whether an output is one file, or a directory of files (a bundle, replaced whole with `--force`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A single file.
    File,
    /// A directory the build makes.
    Dir,
}

/// Creates a file in `dir` and removes it again: an unnamed one (`O_TMPFILE`), so that nothing is left even
/// when the process is killed in between; on a filesystem without that, a named one.
fn probe(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o600)) {
        Ok(_) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR => {
            tempfile::Builder::new().prefix(".kiln-probe-").tempfile_in(dir).map(drop)
        }
        Err(e) => Err(e.into()),
    }
}

/// `path` made absolute without following a last component that is a symlink (which an output replaces):
/// the canonical directory it is in, joined with its name.
fn resolved(path: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(dir_of(path)).ok()?;
    Some(dir.join(path.file_name()?))
}

/// Checks, before anything is read, that kiln can write `target` (and the side files beside it) and that
/// doing so destroys none of `inputs`: the name is a file name (no trailing slash), its directory exists and
/// takes new files (tried by creating and removing one), an existing target is replaced only with `force` and
/// is never a directory for a file output, and the output neither lies inside an input directory, nor is an
/// input file (same device and inode), nor holds an input.
///
/// # Errors
/// The first of these that fails, naming the output and, where one is concerned, the input.
pub fn check_target(target: &Path, force: bool, kind: OutputKind, inputs: &Inputs) -> Result<()> {
    let shown = target.display();
    if target.as_os_str().as_encoded_bytes().ends_with(b"/") {
        bail!("output {shown}: ends with a slash; give the file name to write (such as {shown}disk.img)");
    }
    AtomicOutput::place(target, force)?;
    let dir = dir_of(target);
    let existing = std::fs::symlink_metadata(target).ok();
    if kind == OutputKind::File && existing.as_ref().is_some_and(std::fs::Metadata::is_dir) {
        bail!("output {shown} is a directory; kiln writes a file there (remove it, or give a file name)");
    }
    // Whether the directory takes new files (permissions, a read-only or full filesystem), tried for real.
    probe(&dir).with_context(|| format!("output {shown}: cannot create files in {}", dir.display()))?;
    let Some(out) = resolved(target) else { return Ok(()) };
    for (input, what) in &inputs.dirs {
        let Ok(input) = std::fs::canonicalize(input) else { continue };
        if out.starts_with(&input) {
            bail!("output {shown} is inside the {what} {}, which the build reads: write it elsewhere", input.display());
        }
        if kind == OutputKind::Dir && input.starts_with(&out) {
            bail!("output {shown} holds the {what} {}, which the build reads: write it elsewhere", input.display());
        }
    }
    for (input, what) in &inputs.files {
        let same_path = std::fs::canonicalize(input).is_ok_and(|i| i == out);
        let same_inode = match (&existing, std::fs::metadata(input)) {
            (Some(o), Ok(i)) => {
                use std::os::unix::fs::MetadataExt;
                (o.dev(), o.ino()) == (i.dev(), i.ino())
            }
            _ => false,
        };
        if same_path || same_inode {
            bail!("output {shown} is the {what} {}, which the build reads: write it elsewhere", input.display());
        }
    }
    Ok(())
}

/// A temporary output file that becomes `target` on [`AtomicOutput::commit`].
#[derive(Debug)]
pub struct AtomicOutput {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicOutput {
    fn place(target: &Path, force: bool) -> Result<(PathBuf, String)> {
        let name = target
            .file_name()
            .with_context(|| format!("output {}: not a file name", target.display()))?
            .to_string_lossy()
            .into_owned();
        let dir = dir_of(target);
        if !dir.is_dir() {
            bail!("output {}: directory {} does not exist", target.display(), dir.display());
        }
        if !force && std::fs::symlink_metadata(target).is_ok() {
            bail!("output {} exists (use --force to replace it)", target.display());
        }
        Ok((dir, name))
    }

    /// Creates the temporary file beside `target`. Refuses an existing target unless `force`.
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        Self::create_with_suffix(target, force, "tmp")
    }

    /// A scratch file beside `target` (`.NAME.kiln-PID.SUFFIX`), removed when dropped: an intermediate that is
    /// never committed, such as the raw image a qcow2 is made from.
    pub fn scratch(target: &Path, suffix: &str) -> Result<Self> {
        Self::create_with_suffix(target, true, suffix)
    }

    fn create_with_suffix(target: &Path, force: bool, suffix: &str) -> Result<Self> {
        let (dir, name) = Self::place(target, force)?;
        let temp = dir.join(format!(".{name}.kiln-{}.{suffix}", std::process::id()));
        // Created and registered under the lock the signal handler holds while it removes and exits: a signal
        // between the two would otherwise leave the file behind.
        let mut temps = temporaries();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        temps.push(temp.clone());
        drop(temps);
        Ok(Self { target: target.to_path_buf(), temp, file: Some(file) })
    }

    /// The open temporary file.
    #[must_use]
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open until committed")
    }

    /// The temporary file's path.
    #[must_use]
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes the file to disk and renames it to the target.
    pub fn commit(mut self) -> Result<PathBuf> {
        let file = self.file.take().expect("open until committed");
        file.sync_all().with_context(|| format!("flushing {}", self.temp.display()))?;
        drop(file);
        let renamed = std::fs::rename(&self.temp, &self.target)
            .with_context(|| format!("renaming {} to {}", self.temp.display(), self.target.display()));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        unregister_temporary(&self.temp);
        renamed?;
        Ok(self.target.clone())
    }
}

/// A temporary directory that becomes `target` on [`AtomicDir::commit`] (a bundle such as an AMI's); removed
/// with everything in it if dropped first.
#[derive(Debug)]
pub struct AtomicDir {
    target: PathBuf,
    temp: Option<PathBuf>,
    force: bool,
}

impl AtomicDir {
    /// Creates the temporary directory beside `target`. Refuses an existing target unless `force`.
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        let (dir, name) = AtomicOutput::place(target, force)?;
        let temp = dir.join(format!(".{name}.kiln-{}.tmp", std::process::id()));
        // Created and registered under the signal handler's lock, as AtomicOutput's file.
        let mut temps = temporaries();
        std::fs::create_dir(&temp).with_context(|| format!("creating {}", temp.display()))?;
        temps.push(temp.clone());
        drop(temps);
        Ok(Self { target: target.to_path_buf(), temp: Some(temp), force })
    }

    /// The temporary directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.temp.as_deref().expect("present until committed")
    }

    /// The final path.
    #[must_use]
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the directory to the target (moving an existing target aside first with `--force`, and
    /// removing it after).
    pub fn commit(mut self) -> Result<PathBuf> {
        let temp = self.temp.take().expect("present until committed");
        let old = self.target.with_file_name(format!(
            ".{}.kiln-{}.old",
            self.target.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let replaced = self.force && std::fs::symlink_metadata(&self.target).is_ok();
        if replaced {
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("moving the old {} aside", self.target.display()))?;
        }
        let renamed = std::fs::rename(&temp, &self.target)
            .with_context(|| format!("renaming {} to {}", temp.display(), self.target.display()));
        unregister_temporary(&temp);
        if renamed.is_err() {
            let _ = std::fs::remove_dir_all(&temp);
            if replaced {
                let _ = std::fs::rename(&old, &self.target);
            }
        } else if replaced {
            let _ = if old.is_dir() { std::fs::remove_dir_all(&old) } else { std::fs::remove_file(&old) };
        }
        renamed?;
        Ok(self.target.clone())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_dir_all(&temp);
            unregister_temporary(&temp);
        }
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
            unregister_temporary(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commits_or_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.img");
        {
            let out = AtomicOutput::create(&target, false).unwrap();
            out.file().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "dropped output leaves nothing");
        let out = AtomicOutput::create(&target, false).unwrap();
        out.file().write_all(b"done").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"done");
        let err = AtomicOutput::create(&target, false).unwrap_err();
        assert!(err.to_string().contains("exists (use --force"), "{err}");
        assert!(AtomicOutput::create(&target, true).is_ok());
        let err = AtomicOutput::create(&dir.path().join("no/such/out.img"), false).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn a_full_device_is_named_with_the_output() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing file data at image offset 4096")]
        struct Wrapped {
            source: std::io::Error,
        }
        let target = Path::new("/out/disk.img");
        let full = anyhow::Error::new(Wrapped { source: std::io::Error::from_raw_os_error(28) })
            .context("writing the ESP of /out/.disk.img.kiln-1.tmp");
        let err = explain_no_space(full, target, Some(3 << 20)).to_string();
        assert_eq!(
            err,
            "output /out/disk.img: no space left on device (3.0 MiB free in /out when writing began): the image does \
             not fit; stopped at: writing the ESP of /out/.disk.img.kiln-1.tmp: writing file data at image offset 4096"
        );
        let quota = anyhow::Error::new(std::io::Error::from_raw_os_error(122)).context("writing x");
        let err = explain_no_space(quota, target, None).to_string();
        assert_eq!(err, "output /out/disk.img: disk quota exceeded: the image does not fit; stopped at: writing x");
        let other = anyhow::Error::new(std::io::Error::from_raw_os_error(5)).context("writing x");
        assert_eq!(
            format!("{:#}", explain_no_space(other, target, None)),
            "writing x: Input/output error (os error 5)"
        );
    }
}
