//! Finding the closure of a system: from a closureInfo directory or the structured-attrs file Nix gives a
//! derivation's builder, else the host Nix database, else by scanning file contents for references.

pub mod attrs;
pub mod closure_info;
pub mod hostdb;
pub mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};
use rayon::prelude::*;
use serde::Serialize;

use crate::inventory::{Inventory, PathInventory};
use crate::store::{StoreDir, StorePath};

/// A NAR hash and size, as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarInfo {
    /// SHA-256 of the NAR serialisation.
    pub hash: [u8; 32],
    /// Length of the NAR serialisation in bytes.
    pub size: u64,
}

/// What is known of one store path of the closure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathInfo {
    /// Store paths it refers to (may include itself).
    pub references: BTreeSet<StorePath>,
    /// Its NAR hash and size, when a registration or database gave them (scans compute them later).
    pub nar: Option<NarInfo>,
    /// The derivation that built it, when known.
    pub deriver: Option<StorePath>,
}

/// Where the closure came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// A nixpkgs closureInfo directory.
    ClosureInfo {
        /// The directory.
        dir: PathBuf,
    },
    /// The host's Nix database.
    NixDb {
        /// The database file.
        db: PathBuf,
    },
    /// The `exportReferencesGraph` lists of a structured-attrs file (`.attrs.json`), as Nix writes it for a
    /// derivation's builder.
    NixAttrs {
        /// The file.
        file: PathBuf,
    },
    /// Scanning file contents for store path hashes.
    Scan,
}

/// A closure the user names, instead of the host database or a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given {
    /// A nixpkgs closureInfo directory (`--closure-info`).
    ClosureInfo(PathBuf),
    /// A structured-attrs file (`--closure-attrs`).
    NixAttrs(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClosureInfo { dir } => write!(f, "closure-info {}", dir.display()),
            Self::NixDb { db } => write!(f, "Nix database {}", db.display()),
            Self::NixAttrs { file } => write!(f, "structured attrs {}", file.display()),
            Self::Scan => f.write_str("reference scan of file contents"),
        }
    }
}

/// The closure: every store path reachable from the roots, with what is known about each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// Where it came from.
    pub source: Source,
    /// Store paths, sorted.
    pub paths: BTreeMap<StorePath, PathInfo>,
}

impl Closure {
    /// Finds the closure of `roots` (the system's toplevel first, then any extra paths) and inventories it.
    ///
    /// A `given` closure is the source; otherwise the store directory's Nix database if it exists and knows
    /// `root`; otherwise a parallel scan of file contents, starting at `root`.
    pub fn find(store: &StoreDir, roots: &[StorePath], given: Option<&Given>) -> Result<(Self, Inventory)> {
        let (source, paths) = if let Some(Given::ClosureInfo(dir)) = given {
            (Source::ClosureInfo { dir: dir.clone() }, closure_info::read(dir)?)
        } else if let Some(Given::NixAttrs(file)) = given {
            (Source::NixAttrs { file: file.clone() }, attrs::read(file)?)
        } else if let Some(found) = Self::from_db(store, roots)? {
            found
        } else {
            return Self::scan(store, roots);
        };
        if let Some(missing) = roots.iter().find(|r| !paths.contains_key(*r)) {
            bail!("{missing} is not in the closure from {source}");
        }
        if let Some(missing) = paths.keys().find(|p| std::fs::symlink_metadata(store.physical(p)).is_err()) {
            bail!(
                "{missing}: in the closure (from {source}) but missing from store directory {}",
                store.root().display()
            );
        }
        let inventory = Inventory::walk(store, paths.keys().collect::<Vec<_>>())?;
        Ok((Self { source, paths }, inventory))
    }

    /// The union of the roots' closures from the store directory's Nix database, if it knows every root.
    fn from_db(store: &StoreDir, roots: &[StorePath]) -> Result<Option<(Source, BTreeMap<StorePath, PathInfo>)>> {
        let Some(db) = store.nix_db().filter(|db| db.is_file()) else { return Ok(None) };
        let mut all = BTreeMap::new();
        for root in roots {
            match hostdb::closure(&db, root)? {
                Some(paths) => all.extend(paths),
                None => return Ok(None),
            }
        }
        Ok(Some((Source::NixDb { db }, all)))
    }

    /// Breadth-first: inventory and scan every newly found path of a level in parallel.
    fn scan(store: &StoreDir, roots: &[StorePath]) -> Result<(Self, Inventory)> {
        let candidates = scan::Candidates::list(store)?;
        let mut paths = BTreeMap::new();
        let mut inventories = Vec::new();
        let mut level: Vec<StorePath> = roots.to_vec();
        level.dedup();
        let mut seen: BTreeSet<StorePath> = level.iter().cloned().collect();
        while !level.is_empty() {
            let results = level
                .par_iter()
                .map(|p| -> Result<(PathInventory, BTreeSet<StorePath>)> {
                    let inv = PathInventory::walk(store, p)?;
                    let refs = candidates.references(store, &inv)?;
                    Ok((inv, refs))
                })
                .collect::<Result<Vec<_>>>()?;
            level = Vec::new();
            for (inv, references) in results {
                level.extend(references.iter().filter(|r| seen.insert((*r).clone())).cloned());
                paths.insert(inv.path.clone(), PathInfo { references, nar: None, deriver: None });
                inventories.push(inv);
            }
        }
        Ok((Self { source: Source::Scan, paths }, Inventory::from_paths(store, inventories)?))
    }
}
