//! `kiln build --dry-run`: resolve the system and its closure, and report what an image of it would hold.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kernel_params::Changes;
use serde::Serialize;

use crate::boot;
use crate::closure::{Closure, Source};
use crate::inventory::{Inventory, Totals};
use crate::progress::{self, Phase, Progress};
use crate::store::{StoreDir, StorePath};
use crate::system::{BootEntry, System};

/// Version of the JSON report; bumped when a field changes meaning or disappears.
pub const REPORT_VERSION: u32 = 1;

/// What a dry run needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The physical store directory.
    pub store_dir: PathBuf,
    /// The `--system` argument as given.
    pub system: PathBuf,
    /// A closureInfo directory, if given.
    pub closure_info: Option<PathBuf>,
    /// Extra kernel parameters for every entry.
    pub kernel_params: Vec<String>,
    /// Kernel parameters to remove from every entry (`KEY` or `KEY=VALUE`).
    pub remove_kernel_params: Vec<String>,
    /// More store paths (and their closures) to ship and register (`--extra-path`).
    pub extra_paths: Vec<PathBuf>,
    /// What the image profile (`--profile`) gives besides flags: its kernel parameter changes come before the
    /// user's.
    pub profile: Option<crate::profile::Applied>,
}

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
    pub image: Option<crate::build::ImageSummary>,
}

/// What resolving a request finds: the system, its closure and the inventory of its files.
#[derive(Debug)]
pub struct Resolved {
    /// The store directory.
    pub store: StoreDir,
    /// The system.
    pub system: System,
    /// Its closure.
    pub closure: Closure,
    /// Every file of the closure.
    pub inventory: Inventory,
}

/// Reads the system and finds and inventories its closure.
pub fn resolve(req: &Request, progress: &dyn Progress) -> Result<Resolved> {
    let store = StoreDir::new(&req.store_dir)?;
    let system = progress::phase(
        progress,
        Phase::System,
        || -> Result<System> {
            let toplevel = store.resolve_system(&req.system)?;
            System::load(&store, &toplevel)
        },
        |s| format!("{} ({} specialisations)", s.toplevel, s.specialisations.len()),
    )?;
    let (closure, inventory) = progress::phase(
        progress,
        Phase::Closure,
        || -> Result<_> {
            let mut roots = vec![system.toplevel.clone()];
            for extra in &req.extra_paths {
                let path = store.resolve_system(extra).map_err(|e| {
                    anyhow::anyhow!("--extra-path {}: {}", extra.display(), format!("{e:#}").replace("system ", ""))
                })?;
                roots.push(path);
            }
            roots.sort();
            roots.dedup();
            Closure::find(&store, &roots, req.closure_info.as_deref())
        },
        |(c, inv)| {
            format!(
                "{} store paths, {} files, {} bytes from {}",
                inv.totals.paths, inv.totals.counts.files, inv.totals.counts.bytes, c.source
            )
        },
    )?;
    check_boot_files(&system, &closure)?;
    Ok(Resolved { store, system, closure, inventory })
}

/// Resolves and reports, with no image planned.
pub fn run(req: &Request, progress: &dyn Progress) -> Result<Report> {
    let r = resolve(req, progress)?;
    report(&r, &req.kernel_param_changes()?)
}

impl Request {
    /// The kernel parameter changes, as layers applied in order: the profile's, then the user's
    /// (`--remove-kernel-param`s, then `--kernel-param`s).
    ///
    /// # Errors
    /// The first flag value that is not exactly one parameter.
    pub fn kernel_param_changes(&self) -> Result<Vec<Changes>> {
        let user = Changes::parse(&self.kernel_params, &self.remove_kernel_params)
            .context("--kernel-param/--remove-kernel-param")?;
        Ok(self.profile.iter().map(|p| p.kernel_params.clone()).chain([user]).collect())
    }
}

fn check_boot_files(system: &System, closure: &Closure) -> Result<()> {
    for (what, file) in system.boot_store_paths() {
        if !closure.paths.contains_key(&file.store_path) {
            bail!(
                "{what} {} named by the bootspec is not in the closure of {} (from {})",
                file.logical.display(),
                system.toplevel,
                closure.source
            );
        }
    }
    Ok(())
}

/// The report of what was resolved (no image yet: see [`Report::image`]); `changes` are applied to the command
/// lines in order.
pub fn report(r: &Resolved, changes: &[Changes]) -> Result<Report> {
    let (store, system, closure, inv) = (&r.store, &r.system, &r.closure, &r.inventory);
    let resolved = boot::entries(system, &changes.iter().collect::<Vec<_>>())?;
    let boots = std::iter::once(&system.boot).chain(system.specialisations.iter().map(|s| &s.boot));
    let entries = resolved
        .into_iter()
        .zip(boots)
        .map(|(e, boot)| EntrySummary { specialisation: e.specialisation, boot: boot.clone(), command_line: e.cmdline })
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
    Ok(Report {
        version: REPORT_VERSION,
        store_dir: store.root().to_path_buf(),
        toplevel: system.toplevel.clone(),
        entries,
        closure_source: closure.source.clone(),
        totals: inv.totals,
        paths,
        image: None,
    })
}

/// Bytes as a short human string (binary units), e.g. `12.3 MiB`.
#[must_use]
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
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
            "hard links     {} groups, {} extra names; unique file data {} bytes ({})",
            t.hardlink_groups,
            t.hardlink_extra,
            t.unique_bytes,
            human_bytes(t.unique_bytes)
        );
        if let Some(image) = &self.image {
            s.push_str(&image.to_text());
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
