//! Resolve: a build request (the system, the store, the closure source, the kernel parameter changes) becomes a
//! resolved system: its bootspec, its closure with every narHash, and the inventory of every file to copy.
//! Nothing here knows about disks; the plan stage takes it from here.

pub mod options;
pub mod output;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
use crate::closure::Closure;
use crate::inventory::Inventory;
use crate::progress::{self, Phase, Progress};
use crate::store::StoreDir;
use crate::system::System;

/// What to resolve.
#[derive(Debug, Clone)]
pub struct Request {
    /// The physical store directory.
    pub store_dir: PathBuf,
    /// The `--system` argument as given.
    pub system: PathBuf,
    /// `--system-arch`: the architecture in place of the bootspec's.
    pub system_arch: Option<String>,
    /// The closure, when the user names it (`--closure-info`, `--closure-attrs`).
    pub closure: Option<crate::closure::Given>,
    /// More store paths (and their closures) to ship and register (`--extra-path`).
    pub extra_paths: Vec<PathBuf>,
    /// What the image profile (`--profile`) gives besides flags: its kernel parameter changes come before the
    /// user's.
    pub profile: Option<crate::profile::Applied>,
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
            let mut system = System::load(&store, &toplevel)?;
            match &req.system_arch {
                Some(arch) => {
                    let arch = Arch::of(arch).context("--system-arch")?;
                    system.boot.system = arch.system.to_owned();
                    for s in &mut system.specialisations {
                        s.boot.system = arch.system.to_owned();
                    }
                }
                None => {
                    for boot in std::iter::once(&system.boot).chain(system.specialisations.iter().map(|s| &s.boot)) {
                        Arch::of(&boot.system).with_context(|| {
                            format!("{}: the bootspec's \"system\" (--system-arch overrides it)", boot.toplevel)
                        })?;
                    }
                }
            }
            Ok(system)
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
            Closure::find(&store, &roots, req.closure.as_ref())
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

impl Resolved {
    /// Hashes the store paths the closure source registered no narHash for (a reference scan found them): the
    /// image's database needs every narHash before the image is planned. Returns which paths (inventory order)
    /// were hashed here, so the copy can check they did not change since.
    ///
    /// # Errors
    /// A store path that cannot be read.
    pub fn hash_unregistered(&mut self, progress: &dyn Progress) -> Result<Vec<bool>> {
        let unhashed: Vec<usize> = (0..self.inventory.paths.len())
            .filter(|&i| self.closure.paths[&self.inventory.paths[i].path].nar.is_none())
            .collect();
        let mut self_hashed = vec![false; self.inventory.paths.len()];
        if unhashed.is_empty() {
            return Ok(self_hashed);
        }
        let infos = progress::phase(
            progress,
            Phase::Hash,
            || {
                let todo: Vec<&crate::inventory::PathInventory> =
                    unhashed.iter().map(|&i| &self.inventory.paths[i]).collect();
                crate::nar::hash_closure(&self.store, &todo)
            },
            |infos| format!("{} store paths hashed", infos.len()),
        )?;
        for (&i, info) in unhashed.iter().zip(infos) {
            let path = self.inventory.paths[i].path.clone();
            self.closure.paths.get_mut(&path).expect("inventoried paths are in the closure").nar = Some(info);
            self_hashed[i] = true;
        }
        Ok(self_hashed)
    }
}
