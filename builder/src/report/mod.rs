//! Report: what a build resolved and planned, for people (text) and machines (versioned JSON): the dry-run
//! report and the image summary. It reads the resolved system and the plan; nothing reads it back.

mod image;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::boot;
use crate::closure::Source;
use crate::inventory::Totals;
use crate::resolve::Resolved;
use crate::store::StorePath;
use crate::system::BootEntry;
use crate::units::human_bytes;

/// Version of the JSON report; bumped when a field changes meaning or disappears.
pub const REPORT_VERSION: u32 = 1;

/// One store path's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct PathSummary {
    /// The store path.
    pub path: StorePath,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// File bytes.
    pub bytes: u64,
    /// Number of references (including itself, if self-referencing).
    pub references: usize,
    /// Registered NAR size, when the closure source gave one.
    pub nar_size: Option<u64>,
}

/// One boot entry's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct EntrySummary {
    /// `None` for the default entry, else the specialisation's name.
    pub specialisation: Option<String>,
    /// What the bootspec says.
    #[serde(flatten)]
    pub boot: BootEntry,
    /// The full kernel command line the entry will get.
    pub command_line: String,
}

/// The result of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The physical store directory read.
    pub store_dir: PathBuf,
    /// The toplevel.
    pub toplevel: StorePath,
    /// The default entry, then one per specialisation (sorted by name).
    pub entries: Vec<EntrySummary>,
    /// Where the closure came from.
    pub closure_source: Source,
    /// Totals over the closure.
    pub totals: Totals,
    /// Every store path.
    pub paths: Vec<PathSummary>,
    /// The image planned, when a layout was given.
    pub image: Option<crate::plan::ImageSummary>,
}

impl Report {
    /// Fills in what the store's root hash decides once the image is written (`efi-verity`): in the image's
    /// summary and in each entry's command line.
    pub fn set_root_hash(&mut self, hash: &[u8; 32]) {
        if let Some(image) = self.image.as_mut() {
            image.set_root_hash(hash);
        }
        let placeholder = format!("usrhash={}", crate::plan::ROOT_HASH_PLACEHOLDER);
        let real = format!("usrhash={}", kiln_formats::verity::hex(hash));
        for e in &mut self.entries {
            e.command_line = e.command_line.replace(&placeholder, &real);
        }
    }
}

/// The report of what was resolved, with the boot entries as they will be (no image yet: see
/// [`Report::image`]).
#[must_use]
pub fn report(r: &Resolved, entries: &[boot::Entry]) -> Report {
    let (store, system, closure, inv) = (&r.store, &r.system, &r.closure, &r.inventory);
    let boots = std::iter::once(&system.boot).chain(system.specialisations.iter().map(|s| &s.boot));
    let entries = entries
        .iter()
        .zip(boots)
        .map(|(e, boot)| EntrySummary {
            specialisation: e.specialisation.clone(),
            boot: boot.clone(),
            command_line: e.cmdline.clone(),
        })
        .collect();
    let paths = inv
        .paths
        .iter()
        .map(|p| {
            let c = p.counts();
            let info = &closure.paths[&p.path];
            PathSummary {
                path: p.path.clone(),
                files: c.files,
                dirs: c.dirs,
                symlinks: c.symlinks,
                bytes: c.bytes,
                references: info.references.len(),
                nar_size: info.nar.map(|n| n.size),
            }
        })
        .collect();
    Report {
        version: REPORT_VERSION,
        store_dir: store.root().to_path_buf(),
        toplevel: system.toplevel.clone(),
        entries,
        closure_source: closure.source.clone(),
        totals: inv.totals,
        paths,
        image: None,
    }
}

impl Report {
    /// The report as text for people.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let shown = |p: &Path| p.display().to_string();
        let _ = writeln!(s, "system         {}", self.toplevel);
        let _ = writeln!(s, "store dir      {}", self.store_dir.display());
        for e in &self.entries {
            let _ = match &e.specialisation {
                None => writeln!(s, "entry          default: {}", e.boot.label),
                Some(name) => writeln!(s, "entry          specialisation {name}: {}", e.boot.label),
            };
            let _ = writeln!(s, "  platform     {}", e.boot.system);
            let _ = writeln!(s, "  kernel       {}", shown(&e.boot.kernel.logical));
            let initrd = e.boot.initrd.as_ref().map_or_else(|| "(none)".to_owned(), |i| shown(&i.logical));
            let _ = writeln!(s, "  initrd       {initrd}");
            let _ = writeln!(s, "  init         {}", shown(&e.boot.init.logical));
            let _ = writeln!(s, "  command line {}", e.command_line);
        }
        let specs: Vec<&str> = self.entries.iter().filter_map(|e| e.specialisation.as_deref()).collect();
        let specs = if specs.is_empty() { "(none)".to_owned() } else { specs.join(", ") };
        let _ = writeln!(s, "specialisations {specs}");
        let t = &self.totals;
        let _ = writeln!(s, "closure        {} store paths from {}", t.paths, self.closure_source);
        let _ = writeln!(
            s,
            "contents       {} files, {} directories, {} symlinks, {} bytes ({})",
            t.counts.files,
            t.counts.dirs,
            t.counts.symlinks,
            t.counts.bytes,
            human_bytes(t.counts.bytes)
        );
        let _ = writeln!(
            s,
            "hard links     identical files linked: {} groups, {} extra names; unique file data {} bytes ({})",
            t.hardlink_groups,
            t.hardlink_extra,
            t.unique_bytes,
            human_bytes(t.unique_bytes)
        );
        if let Some(image) = &self.image {
            s.push_str(&image::image_text(image));
        }
        let _ = writeln!(s, "\n{:>8} {:>6} {:>6} {:>12} {:>5}  store path", "files", "dirs", "links", "bytes", "refs");
        for p in &self.paths {
            let _ = writeln!(
                s,
                "{:>8} {:>6} {:>6} {:>12} {:>5}  {}",
                p.files, p.dirs, p.symlinks, p.bytes, p.references, p.path
            );
        }
        s
    }
}
