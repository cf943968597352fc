//! GRUB for BIOS from a GRUB package read as data: where the package is (the closure's `grub-*` store path or
//! `--grub DIR`), reading its i386-pc files without following a symlink, and core.img assembled natively with the
//! modules kiln needs. Nothing in a GRUB package is ever run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln_formats::disk::DiskLayout;
use kiln_formats::grub;

use crate::store::{StoreDir, StoreFiles};

/// The files of GRUB's `lib/grub/i386-pc` that core.img and sector 0 are made from (besides the modules, which
/// `moddep.lst` and the module list name). They are read as data: nothing in a GRUB package is ever run.
const GRUB_FILES: [&str; 5] = ["boot.img", "diskboot.img", "lzma_decompress.img", "kernel.img", "moddep.lst"];

/// The first of [`GRUB_FILES`] that `grub` lacks (as a regular file, not through a symlink).
fn missing_grub_file(grub: &Path) -> Option<&'static str> {
    let dir = grub::i386_pc_dir(grub);
    GRUB_FILES.into_iter().find(|f| !std::fs::symlink_metadata(dir.join(f)).is_ok_and(|m| m.is_file()))
}

/// The GRUB installation inputs: the package directory of the closure's GRUB.
pub fn find_grub(store: &StoreDir, closure: &crate::closure::Closure, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        if let Some(file) = missing_grub_file(dir) {
            bail!(
                "--grub {}: no lib/grub/i386-pc/{file} there (BIOS layouts read GRUB's i386-pc files: {})",
                dir.display(),
                GRUB_FILES.join(", ")
            );
        }
        return Ok(dir.to_path_buf());
    }
    closure
        .paths
        .keys()
        .filter(|p| p.name().starts_with("grub-"))
        .map(|p| store.physical(p))
        .find(|d| missing_grub_file(d).is_none())
        .with_context(|| {
            format!(
                "a BIOS layout needs GRUB for i386-pc, and the closure has none (a store path grub-* with \
                 lib/grub/i386-pc/{{{}}} and the modules); add it to the system or give --grub DIR",
                GRUB_FILES.join(",")
            )
        })
}

/// GRUB's i386-pc directory in a GRUB package (a store path of the closure, or `--grub DIR`), read as data. Each
/// file is opened beneath the package directory without following a symlink anywhere on the way
/// ([`StoreFiles`]): a closure cannot point kiln at `/etc/shadow` and have it built into core.img.
#[derive(Debug)]
pub struct GrubPackage {
    root: PathBuf,
    files: StoreFiles,
}

impl GrubPackage {
    /// The package at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        Ok(Self { root: root.to_path_buf(), files: StoreFiles::new(root)? })
    }

    fn rel(name: &str) -> PathBuf {
        Path::new("lib/grub/i386-pc").join(name)
    }
}

impl grub::GrubFiles for GrubPackage {
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        if name.contains('/') {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a plain file name"));
        }
        let mut file = self.files.open(&Self::rel(name)).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(bytes)
    }

    fn location(&self, name: &str) -> String {
        self.root.join(Self::rel(name)).display().to_string()
    }
}

/// GRUB's core.img from `grub`'s files, assembled natively (nothing from the package runs, and no file is
/// written): it finds the root filesystem by its UUID, then reads `/boot/grub/grub.cfg`.
pub fn core_img(grub: &GrubPackage, layout: &DiskLayout, root: usize, fs_uuid: &str) -> Result<Vec<u8>> {
    let early = format!("search --no-floppy --fs-uuid --set=root {fs_uuid}\nset prefix=($root)/boot/grub\n");
    let core = grub::CoreImage::new(grub::prefix(layout, root, "/boot/grub"))
        .modules(grub::LINUX_EXT_MODULES)
        .config(early)
        .build(grub)
        .context("building GRUB's core.img")?;
    Ok(core.into_image())
}
