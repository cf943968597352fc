//! The host's Nix database (schema 10), opened read-only, as a closure source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{NarInfo, PathInfo, closure_info::parse_hash};
use crate::store::StorePath;

/// Opens the database read-only. WAL databases need their `-shm` file; when that cannot be created (a
/// read-only directory, an unprivileged user), fall back to SQLite's `immutable` mode.
fn open(db: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let uri = |extra: &str| format!("file:{}?mode=ro{extra}", db.display());
    let conn = Connection::open_with_flags(uri(""), flags)
        .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).map(|()| c))
        .or_else(|_| Connection::open_with_flags(uri("&immutable=1"), flags))
        .with_context(|| format!("opening Nix database {} read-only", db.display()))?;
    Ok(conn)
}

/// The closure of `root` as the database records it, or `None` when the database does not know `root`.
pub fn closure(db: &Path, root: &StorePath) -> Result<Option<BTreeMap<StorePath, PathInfo>>> {
    let conn = open(db)?;
    let ctx = || format!("querying Nix database {}", db.display());
    let root_id: Option<i64> = conn
        .query_row("SELECT id FROM ValidPaths WHERE path = ?1", [root.to_string()], |r| r.get(0))
        .optional()
        .with_context(ctx)?;
    let Some(root_id) = root_id else { return Ok(None) };
    let mut stmt = conn
        .prepare(
            "WITH RECURSIVE closure(id) AS (SELECT ?1 UNION SELECT r.reference FROM Refs r \
             JOIN closure c ON r.referrer = c.id) \
             SELECT v.id, v.path, v.hash, v.narSize, v.deriver FROM ValidPaths v JOIN closure c ON v.id = c.id",
        )
        .with_context(ctx)?;
    let rows = stmt
        .query_map([root_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .with_context(ctx)?;
    let mut by_id = BTreeMap::new();
    let mut out = BTreeMap::new();
    for row in rows {
        let (id, path, hash, size, deriver) = row.with_context(ctx)?;
        let bad = |why: String| anyhow::anyhow!("Nix database {}: path {path}: {why}", db.display());
        let (sp, _) = StorePath::parse_logical(Path::new(&path)).map_err(|e| bad(e.to_string()))?;
        let hash = parse_hash(&hash).map_err(|e| bad(format!("hash: {e}")))?;
        let nar = match size {
            Some(size) => {
                Some(NarInfo { hash, size: u64::try_from(size).map_err(|_| bad("negative narSize".into()))? })
            }
            None => None,
        };
        let deriver = deriver
            .filter(|d| !d.is_empty())
            .and_then(|d| StorePath::parse_logical(Path::new(&d)).ok().map(|(p, _)| p));
        by_id.insert(id, sp.clone());
        out.insert(sp, PathInfo { references: BTreeSet::new(), nar, deriver });
    }
    let mut refs = conn.prepare("SELECT referrer, reference FROM Refs WHERE referrer = ?1").with_context(ctx)?;
    for (id, sp) in &by_id {
        let rows = refs.query_map([id], |r| r.get::<_, i64>(1)).with_context(ctx)?;
        for reference in rows {
            let reference = reference.with_context(ctx)?;
            let target = by_id.get(&reference).with_context(|| {
                format!("Nix database {}: {sp} references path id {reference}, which is not valid", db.display())
            })?;
            out.get_mut(sp).expect("inserted above").references.insert(target.clone());
        }
    }
    Ok(Some(out))
}
