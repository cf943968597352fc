//! Building core.img with a given `grub-mkimage`: the argument list, the run, a clear error when it fails.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Error;
use crate::disk::{DiskLayout, PartitionTable};

/// One `grub-mkimage -O i386-pc` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkImage {
    /// The `grub-mkimage` to run (e.g. `<grub>/bin/grub-mkimage` from the closure).
    pub program: PathBuf,
    /// The module directory, `-d` (`<grub>/lib/grub/i386-pc`).
    pub directory: PathBuf,
    /// Where GRUB finds its modules and `grub.cfg` at boot, `-p`, e.g. `(hd0,gpt2)/boot/grub` (see [`prefix`]).
    pub prefix: String,
    /// A configuration file built into core.img and run before anything else, `-c`.
    pub config: Option<PathBuf>,
    /// Modules built into core.img, e.g. `biosdisk part_gpt ext2 normal linux`.
    pub modules: Vec<String>,
}

impl MkImage {
    /// An invocation of `program` with modules from `directory`, the given prefix, no embedded config and no
    /// modules yet.
    #[must_use]
    pub fn new(program: impl Into<PathBuf>, directory: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            directory: directory.into(),
            prefix: prefix.into(),
            config: None,
            modules: Vec::new(),
        }
    }

    /// Adds modules to build in.
    #[must_use]
    pub fn modules<I: IntoIterator<Item = S>, S: Into<String>>(mut self, modules: I) -> Self {
        self.modules.extend(modules.into_iter().map(Into::into));
        self
    }

    /// Builds in a configuration file (`-c`).
    #[must_use]
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// The arguments after the program name, writing core.img to `output`. (Not to standard output: grub-mkimage
    /// fsyncs its output and fails on a pipe with "cannot sync `stdout': Invalid argument".)
    #[must_use]
    pub fn args(&self, output: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-O".into(), "i386-pc".into(), "-d".into(), self.directory.clone().into()];
        args.extend(["-o".into(), output.as_os_str().to_owned(), "-p".into(), self.prefix.clone().into()]);
        if let Some(config) = &self.config {
            args.push("-c".into());
            args.push(config.clone().into());
        }
        args.extend(self.modules.iter().map(OsString::from));
        args
    }

    /// Runs `grub-mkimage` and returns core.img. It writes into a temporary directory that is removed after.
    ///
    /// # Errors
    ///
    /// [`Error::MkImageSpawn`] if the program cannot be started (or the temporary directory not made),
    /// [`Error::MkImageFailed`] with the command line, exit status and standard error if it fails or writes no
    /// core.img.
    pub fn run(&self) -> Result<Vec<u8>, Error> {
        let spawn = |source| Error::MkImageSpawn { program: self.program.clone(), source };
        let dir = tempfile::Builder::new().prefix("kiln-grub-mkimage-").tempdir().map_err(spawn)?;
        let output = dir.path().join("core.img");
        let args = self.args(&output);
        let out =
            Command::new(&self.program).args(&args).env("LC_ALL", "C").stdin(Stdio::null()).output().map_err(spawn)?;
        let failed = |why: String| Error::MkImageFailed {
            program: self.program.clone(),
            args: args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
            why,
        };
        if !out.status.success() {
            return Err(failed(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
        }
        match std::fs::read(&output) {
            Ok(core) if !core.is_empty() => Ok(core),
            Ok(_) => Err(failed("it wrote an empty core.img".to_owned())),
            Err(e) => Err(failed(format!("it wrote no core.img: {e}"))),
        }
    }
}

/// GRUB's name for partition `number` (from 1) of the boot disk followed by `dir`: `(hd0,gpt2)/boot/grub` on a
/// GPT disk, `(hd0,msdos1)/boot/grub` on an MBR disk.
#[must_use]
pub fn prefix(layout: &DiskLayout, number: usize, dir: &str) -> String {
    let scheme = match layout.table() {
        PartitionTable::Gpt { .. } => "gpt",
        PartitionTable::Mbr { .. } => "msdos",
    };
    format!("(hd0,{scheme}{number}){dir}")
}

/// `<grub>/lib/grub/i386-pc` for a GRUB installation (or store path) `<grub>`.
#[must_use]
pub fn i386_pc_dir(grub: &Path) -> PathBuf {
    grub.join("lib/grub/i386-pc")
}
