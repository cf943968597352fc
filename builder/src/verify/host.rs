//! With `--store-dir`: the image's closure of the toplevel against the host store directory it was built from.
//! When the store directory's own Nix database knows the toplevel, the two databases must agree on the closure,
//! every narHash, narSize and reference; otherwise the host's copies are hashed and compared with the image's
//! registrations.

use std::collections::BTreeSet;

use anyhow::Result;
use rayon::prelude::*;

use super::db::{ValidPaths, closure};
use super::{Problem, ProblemKind, nar_differs};
use crate::closure::hostdb;
use crate::inventory::PathInventory;
use crate::nar;
use crate::store::{StoreDir, StorePath};

/// How the host store directory was compared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HostCheck {
    /// Against the store directory's Nix database.
    Database {
        /// The database file.
        db: std::path::PathBuf,
        /// Paths compared.
        paths: usize,
    },
    /// By hashing the host's copies.
    Hashed {
        /// Paths compared.
        paths: usize,
        /// NAR bytes hashed.
        nar_bytes: u64,
    },
}

impl std::fmt::Display for HostCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Database { db, paths } => write!(f, "{paths} paths compared with the Nix database {}", db.display()),
            Self::Hashed { paths, nar_bytes } => {
                write!(f, "{paths} paths compared with the host's copies ({nar_bytes} NAR bytes hashed)")
            }
        }
    }
}

/// Compares the image's closure of `toplevel` with the host store directory `store`.
pub(crate) fn compare(
    store: &StoreDir,
    toplevel: &StorePath,
    valid: &ValidPaths,
    problems: &mut Vec<Problem>,
) -> Result<HostCheck> {
    let mut problem = |subject: &StorePath, detail: String| {
        problems.push(Problem { kind: ProblemKind::Host, subject: subject.to_string(), detail });
    };
    let image_closure = closure(valid, toplevel);
    let mut present = Vec::new();
    for p in &image_closure {
        if std::fs::symlink_metadata(store.physical(p)).is_ok() {
            present.push(*p);
        } else {
            problem(p, format!("in the image's closure of {toplevel} but missing from {}", store.root().display()));
        }
    }

    if let Some(db) = store.nix_db().filter(|db| db.is_file())
        && let Some(host) = hostdb::closure(&db, toplevel)?
    {
        let host_paths: BTreeSet<&StorePath> = host.keys().collect();
        for p in host_paths.difference(&image_closure) {
            problem(p, format!("in the host's closure of {toplevel} ({}) but not the image's", db.display()));
        }
        for p in image_closure.difference(&host_paths) {
            problem(p, format!("in the image's closure of {toplevel} but not the host's ({})", db.display()));
        }
        for (p, h) in &host {
            let Some(img) = valid.get(p) else { continue };
            if let (Some(want), Some(got)) = (h.nar, img.nar)
                && want != got
            {
                problem(
                    p,
                    format!("the host's database has {}, the image's {}", nar_differs(&want), nar_differs(&got)),
                );
            }
            if h.references != img.references {
                let show = |s: &BTreeSet<StorePath>| s.iter().map(|r| r.base_name()).collect::<Vec<_>>().join(" ");
                problem(
                    p,
                    format!("references differ: host [{}], image [{}]", show(&h.references), show(&img.references)),
                );
            }
        }
        return Ok(HostCheck::Database { db, paths: host.len() });
    }

    let hashed = present
        .par_iter()
        .map(|p| PathInventory::walk(store, p).and_then(|inv| nar::nar_info(store, &inv)))
        .collect::<Vec<_>>();
    let mut nar_bytes = 0;
    for (p, got) in present.iter().zip(hashed) {
        match (got, valid.get(*p).and_then(|r| r.nar)) {
            (Err(e), _) => problem(p, format!("cannot hash the host's copy: {e:#}")),
            (Ok(got), Some(want)) => {
                nar_bytes += got.size;
                if got != want {
                    problem(
                        p,
                        format!(
                            "the image registers {}, but the host's copy has {}",
                            nar_differs(&want),
                            nar_differs(&got)
                        ),
                    );
                }
            }
            (Ok(got), None) => nar_bytes += got.size,
        }
    }
    Ok(HostCheck::Hashed { paths: present.len(), nar_bytes })
}
