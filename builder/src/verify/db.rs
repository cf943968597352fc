//! The image's Nix database, read from a private copy with SQLite read-only: every valid path with its
//! registered narHash, narSize and references. Rows Nix could not use are problems, not errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};

use super::{Problem, ProblemKind};
use crate::closure::NarInfo;
use crate::closure::closure_info::parse_hash;
use crate::store::StorePath;

/// What the database says about one valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    /// narHash and narSize, when both are present and well-formed.
    pub nar: Option<NarInfo>,
    /// Its references that are valid paths (self-references included).
    pub references: BTreeSet<StorePath>,
}

/// The valid paths of a database.
pub(crate) type ValidPaths = BTreeMap<StorePath, Registered>;

/// Reads the database `bytes` (the image's `db.sqlite`); `shown` names it in problems.
pub(crate) fn read(bytes: &[u8], shown: &str, problems: &mut Vec<Problem>) -> Result<ValidPaths> {
    let dir = tempfile::tempdir().context("creating a temporary directory for the image's Nix database")?;
    let file = dir.path().join("db.sqlite");
    std::fs::write(&file, bytes).with_context(|| format!("copying {shown} to {}", file.display()))?;
    let conn = open(&file).with_context(|| format!("{shown}: cannot open as SQLite"))?;
    let paths = query(&conn, shown, problems).with_context(|| format!("{shown}: cannot read the valid paths"))?;
    drop(conn);
    Ok(paths)
}

fn open(file: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // `immutable`: a private copy nobody writes, so no locks, journal or -shm files.
    Connection::open_with_flags(format!("file:{}?mode=ro&immutable=1", file.display()), flags)
}

fn query(conn: &Connection, shown: &str, problems: &mut Vec<Problem>) -> Result<ValidPaths> {
    let mut problem = |subject: &str, detail: String| {
        problems.push(Problem { kind: ProblemKind::Database, subject: subject.to_owned(), detail })
    };
    let integrity: Vec<String> =
        conn.prepare("PRAGMA integrity_check")?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if integrity != ["ok"] {
        problem(shown, format!("SQLite integrity check failed: {}", integrity.join("; ")));
    }

    let mut ids: BTreeMap<i64, StorePath> = BTreeMap::new();
    let mut paths = ValidPaths::new();
    let mut stmt = conn.prepare("SELECT id, path, hash, narSize FROM ValidPaths ORDER BY path")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<i64>>(3)?))
    })?;
    for row in rows {
        let (id, path, hash, size) = row?;
        let store_path = match StorePath::parse_logical(Path::new(&path)) {
            Ok((p, rest)) if rest.as_os_str().is_empty() => p,
            Ok(_) => {
                problem(&path, "registered as a valid path, but it is a path inside a store path".into());
                continue;
            }
            Err(e) => {
                problem(&path, format!("registered as a valid path, but {e}"));
                continue;
            }
        };
        let hash = match parse_hash(&hash) {
            Ok(h) => Some(h),
            Err(e) => {
                problem(&path, format!("registered hash {hash:?} is malformed: {e}"));
                None
            }
        };
        let size = match size.map(u64::try_from) {
            Some(Ok(s)) => Some(s),
            Some(Err(_)) => {
                problem(&path, format!("registered narSize {} is negative", size.unwrap_or_default()));
                None
            }
            None => {
                problem(&path, "no narSize registered (NULL)".into());
                None
            }
        };
        let nar = hash.zip(size).map(|(hash, size)| NarInfo { hash, size });
        ids.insert(id, store_path.clone());
        paths.insert(store_path, Registered { nar, references: BTreeSet::new() });
    }
    drop(stmt);

    let mut stmt = conn.prepare("SELECT referrer, reference FROM Refs ORDER BY referrer, reference")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (referrer, reference) = row?;
        match (ids.get(&referrer), ids.get(&reference)) {
            (Some(from), Some(to)) => {
                paths.get_mut(from).expect("ids map to paths").references.insert(to.clone());
            }
            (Some(from), None) => problem(
                &from.to_string(),
                format!("references path id {reference}, which is not a valid path: its closure is incomplete"),
            ),
            (None, _) => problem(shown, format!("Refs row ({referrer}, {reference}) has no valid referrer")),
        }
    }
    Ok(paths)
}

/// Checks `/nix-path-registration` (`text`, the closureInfo registration kiln copies there) against the
/// database: the same valid paths with the same narHash, narSize and references.
pub(crate) fn check_registration(text: &str, valid: &ValidPaths, problems: &mut Vec<Problem>) {
    const FILE: &str = "/nix-path-registration";
    let mut problem = |detail: String| {
        problems.push(Problem { kind: ProblemKind::Database, subject: FILE.to_owned(), detail });
    };
    let registered = match crate::closure::closure_info::parse_registration(text, Path::new(FILE)) {
        Ok(r) => r,
        Err(e) => {
            problem(format!("cannot be read as a registration: {e:#}"));
            return;
        }
    };
    for p in registered.keys().filter(|p| !valid.contains_key(*p)) {
        problem(format!("registers {p}, which is not a valid path in the image's database"));
    }
    for (p, reg) in valid {
        match registered.get(p) {
            None => problem(format!("does not register {p}, a valid path in the image's database")),
            Some(info) if info.nar != reg.nar || info.references != reg.references => {
                problem(format!("registers {p} with another narHash, narSize or references than the database"));
            }
            Some(_) => {}
        }
    }
}

/// The closure of `root` in `paths`: every valid path reachable through references, `root` included.
pub(crate) fn closure<'a>(paths: &'a ValidPaths, root: &'a StorePath) -> BTreeSet<&'a StorePath> {
    let mut seen = BTreeSet::from([root]);
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for r in paths.get(p).into_iter().flat_map(|reg| &reg.references) {
            if seen.insert(r) {
                todo.push(r);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::PathInfo;

    const A: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a";
    const B: &str = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-b";
    const C: &str = "/nix/store/2123456789abcdfghijklmnpqrsvwxyz-c";

    fn sp(s: &str) -> StorePath {
        StorePath::parse_logical(Path::new(s)).unwrap().0
    }

    fn info(refs: &[&str], size: u64) -> PathInfo {
        PathInfo {
            references: refs.iter().map(|r| sp(r)).collect(),
            nar: Some(NarInfo { hash: [size as u8; 32], size }),
            deriver: None,
        }
    }

    #[test]
    fn reads_what_nixdb_writes() {
        let paths = BTreeMap::from([(sp(A), info(&[A, B], 120)), (sp(B), info(&[], 96)), (sp(C), info(&[], 8))]);
        let bytes = crate::nixdb::database(&paths, 1).unwrap();
        let mut problems = Vec::new();
        let got = read(&bytes, "db.sqlite", &mut problems).unwrap();
        assert_eq!(problems, []);
        assert_eq!(got.len(), 3);
        assert_eq!(got[&sp(A)].references, BTreeSet::from([sp(A), sp(B)]));
        assert_eq!(got[&sp(B)].nar, Some(NarInfo { hash: [96; 32], size: 96 }));
        let a = sp(A);
        let reach: Vec<String> = closure(&got, &a).into_iter().map(ToString::to_string).collect();
        assert_eq!(reach, [A, B]);
    }

    #[test]
    fn malformed_rows_are_problems() {
        let paths = BTreeMap::from([(sp(A), info(&[B], 120)), (sp(B), info(&[], 96))]);
        let bytes = crate::nixdb::database(&paths, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.sqlite");
        std::fs::write(&file, bytes).unwrap();
        let conn = Connection::open(&file).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = OFF; UPDATE ValidPaths SET hash = 'md5:x', narSize = NULL WHERE path = '{B}'; \
             INSERT INTO Refs VALUES (1, 99);"
        ))
        .unwrap();
        drop(conn);
        let mut problems = Vec::new();
        let got = read(&std::fs::read(&file).unwrap(), "db.sqlite", &mut problems).unwrap();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(got[&sp(B)].nar, None);
        assert!(text.iter().any(|t| t.starts_with(B) && t.contains("hash \"md5:x\" is malformed")), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with(B) && t.contains("no narSize")), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with(A) && t.contains("path id 99")), "{text:?}");
    }

    #[test]
    fn the_registration_file_must_agree_with_the_database() {
        let paths = BTreeMap::from([(sp(A), info(&[A, B], 120)), (sp(B), info(&[], 96))]);
        let mut problems = Vec::new();
        let valid = read(&crate::nixdb::database(&paths, 1).unwrap(), "db.sqlite", &mut problems).unwrap();
        check_registration(&crate::nixdb::registration_text(&paths).unwrap(), &valid, &mut problems);
        assert_eq!(problems, []);
        let other = BTreeMap::from([(sp(A), info(&[A, B], 121)), (sp(C), info(&[], 8))]);
        check_registration(&crate::nixdb::registration_text(&other).unwrap(), &valid, &mut problems);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                format!("/nix-path-registration: registers {C}, which is not a valid path in the image's database"),
                format!(
                    "/nix-path-registration: registers {A} with another narHash, narSize or references than the database"
                ),
                format!("/nix-path-registration: does not register {B}, a valid path in the image's database"),
            ]
        );
    }
}
