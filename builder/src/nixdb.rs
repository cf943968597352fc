//! The Nix database of the image: `nix/var/nix/db/db.sqlite` (schema version 10, exactly Nix's `schema.sql`), its
//! `schema` file, and the closureInfo-style `/nix-path-registration` text.
//!
//! The database is built in a private temporary directory with SQLite in rollback-journal mode (`DELETE`), in one
//! transaction with foreign keys on, closed and read back as bytes: a self-contained file with no `-wal`
//! or `-shm` beside it. Its bytes depend only on the closure, the registration time and the bundled SQLite version
//! (the header records the library version; it holds no time, pid or path).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

use crate::closure::{NarInfo, PathInfo};
use crate::store::{StorePath, nix32};

/// The contents of `nix/var/nix/db/schema`: the schema version, without a newline (Nix rejects `10\n`).
pub const SCHEMA_FILE: &[u8] = b"10";

/// Nix's `src/libstore/schema.sql` for schema version 10, verbatim (as Nix 2.0–2.3x embed and run it).
pub const SCHEMA_SQL: &str = r#"create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// The page size Nix's databases have (SQLite's default, set explicitly so the file does not depend on it).
const PAGE_SIZE: u32 = 4096;

/// The Nix database (schema 10) registering every path of `paths` as valid, as the bytes of a SQLite file.
///
/// Rows go in in path order, so ids are 1, 2, … by path; `hash` is `sha256:<base16>`, `narSize` the NAR length,
/// `deriver` the deriver or NULL, `ultimate`, `sigs` and `ca` NULL, `registrationTime` the given value, and `Refs`
/// holds every reference, self-references included. Every path needs its NAR hash and size, and every reference
/// must be one of `paths`.
pub fn database(paths: &BTreeMap<StorePath, PathInfo>, registration_time: i64) -> Result<Vec<u8>> {
    let nars = checked_nars(paths)?;
    let dir = crate::output::ScratchDir::new("kiln-nixdb-")?;
    let file = dir.path().join("db.sqlite");
    let ctx = || format!("building the Nix database in {}", file.display());
    let mut conn = Connection::open(&file).with_context(ctx)?;
    fill(&mut conn, paths, &nars, registration_time).with_context(ctx)?;
    conn.close().map_err(|(_, e)| e).with_context(ctx)?;
    for leftover in ["db.sqlite-journal", "db.sqlite-wal", "db.sqlite-shm"] {
        if dir.path().join(leftover).exists() {
            bail!("SQLite left {leftover} beside {} after closing it", file.display());
        }
    }
    std::fs::read(&file).with_context(|| format!("reading back the Nix database {}", file.display()))
}

/// Every path's NAR info, checking the closure can be registered (NAR known, size fits, references inside).
fn checked_nars(paths: &BTreeMap<StorePath, PathInfo>) -> Result<BTreeMap<&StorePath, NarInfo>> {
    let mut nars = BTreeMap::new();
    for (path, info) in paths {
        let Some(nar) = info.nar else {
            bail!("{path}: no NAR hash and size known, so it cannot be registered in the Nix database");
        };
        if i64::try_from(nar.size).is_err() {
            bail!("{path}: NAR size {} does not fit the Nix database's narSize (a signed 64-bit integer)", nar.size);
        }
        if let Some(outside) = info.references.iter().find(|r| !paths.contains_key(*r)) {
            bail!("{path} references {outside}, which is not in the closure being registered");
        }
        nars.insert(path, nar);
    }
    Ok(nars)
}

fn fill(
    conn: &mut Connection,
    paths: &BTreeMap<StorePath, PathInfo>,
    nars: &BTreeMap<&StorePath, NarInfo>,
    registration_time: i64,
) -> Result<()> {
    // Before the first table: the page size is fixed when the file gets its first page.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    // Rollback journal, as Nix's own `use-sqlite-wal = false` leaves it: the file alone is the whole database, and
    // header bytes 18-19 say 1 (Nix switches a database to WAL itself when it opens it).
    let mode = conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        bail!("SQLite kept journal_mode {mode}, not DELETE");
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    // The file is read back before anyone relies on it being on disk.
    conn.pragma_update(None, "synchronous", "OFF")?;

    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA_SQL)?;
    let mut ids = BTreeMap::new();
    {
        let mut insert = tx.prepare(
            "INSERT INTO ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) \
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, NULL)",
        )?;
        for (path, info) in paths {
            let nar = nars[path];
            let size = i64::try_from(nar.size).expect("checked by checked_nars");
            let deriver = info.deriver.as_ref().map(StorePath::to_string);
            insert.execute((path.to_string(), base16_hash(&nar.hash), registration_time, deriver, size))?;
            ids.insert(path, tx.last_insert_rowid());
        }
        let mut reference = tx.prepare("INSERT INTO Refs (referrer, reference) VALUES (?1, ?2)")?;
        for (path, info) in paths {
            for target in &info.references {
                reference.execute((ids[path], ids[target]))?;
            }
        }
    }
    // No VACUUM: a fresh database filled in one transaction has no free pages and no stale bytes to squeeze out,
    // and VACUUM would reorder sqlite_master (tables, then indexes, then triggers) away from Nix's own order.
    tx.commit()?;
    Ok(())
}

/// `sha256:` and the digest in lowercase base16, as the database stores NAR hashes.
fn base16_hash(hash: &[u8; 32]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        write!(out, "{b:02x}").expect("writing to a String");
    }
    out
}

/// The closureInfo `registration` text for `paths` (the `nix-store --load-db` format, as nixpkgs writes it): per
/// path, in path order, the path, `sha256:<nix32 NAR hash>`, the NAR size, an empty deriver line, the reference
/// count and the references, every line ending in `\n`. Every path needs its NAR hash and size.
pub fn registration_text(paths: &BTreeMap<StorePath, PathInfo>) -> Result<String> {
    let mut out = String::new();
    for (path, info) in paths {
        let Some(nar) = info.nar else {
            bail!("{path}: no NAR hash and size known, so it cannot be written to the registration");
        };
        writeln!(out, "{path}\nsha256:{}\n{}\n\n{}", nix32::encode(&nar.hash), nar.size, info.references.len())
            .expect("writing to a String");
        for reference in &info.references {
            writeln!(out, "{reference}").expect("writing to a String");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `sqlite_master` as Nix 2.8 leaves it after creating a store (`nix-store --init`, then `sqlite3 db.sqlite
    /// "select type, name, tbl_name, rootpage, sql from sqlite_master"`): SQLite keeps each statement's text from
    /// its name on, with `CREATE TABLE` for `create table if not exists`.
    const NIX_2_8_MASTER: &[(&str, &str, &str, i64, Option<&str>)] = &[
        (
            "table",
            "ValidPaths",
            "ValidPaths",
            2,
            Some(
                "CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies \"false\"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
)",
            ),
        ),
        ("index", "sqlite_autoindex_ValidPaths_1", "ValidPaths", 3, None),
        ("table", "sqlite_sequence", "sqlite_sequence", 4, Some("CREATE TABLE sqlite_sequence(name,seq)")),
        (
            "table",
            "Refs",
            "Refs",
            5,
            Some(
                "CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
)",
            ),
        ),
        ("index", "sqlite_autoindex_Refs_1", "Refs", 6, None),
        ("index", "IndexReferrer", "Refs", 7, Some("CREATE INDEX IndexReferrer on Refs(referrer)")),
        ("index", "IndexReference", "Refs", 8, Some("CREATE INDEX IndexReference on Refs(reference)")),
        (
            "trigger",
            "DeleteSelfRefs",
            "ValidPaths",
            0,
            Some(
                "CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end",
            ),
        ),
        (
            "table",
            "DerivationOutputs",
            "DerivationOutputs",
            9,
            Some(
                "CREATE TABLE DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually \"out\"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
)",
            ),
        ),
        ("index", "sqlite_autoindex_DerivationOutputs_1", "DerivationOutputs", 10, None),
        (
            "index",
            "IndexDerivationOutputs",
            "DerivationOutputs",
            11,
            Some("CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path)"),
        ),
    ];

    fn sp(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz-a";
    const B: &str = "1123456789abcdfghijklmnpqrsvwxyz-b";
    const C: &str = "2123456789abcdfghijklmnpqrsvwxyz-c";
    const DRV: &str = "3123456789abcdfghijklmnpqrsvwxyz-c.drv";

    /// a → {a, b}, b → {}, c → {a, c} with a deriver.
    fn closure() -> BTreeMap<StorePath, PathInfo> {
        let info = |refs: &[&str], fill: u8, size, deriver: Option<&str>| PathInfo {
            references: refs.iter().map(|r| sp(r)).collect::<BTreeSet<_>>(),
            nar: Some(NarInfo { hash: [fill; 32], size }),
            deriver: deriver.map(sp),
        };
        BTreeMap::from([
            (sp(C), info(&[A, C], 0xcc, 4096, Some(DRV))),
            (sp(A), info(&[A, B], 0xaa, 120, None)),
            (sp(B), info(&[], 0x0b, 96, None)),
        ])
    }

    /// Opens database bytes with rusqlite (through a file: that is how Nix will see them).
    fn open(bytes: &[u8]) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.sqlite");
        std::fs::write(&file, bytes).unwrap();
        let conn = Connection::open(&file).unwrap();
        (dir, conn)
    }

    #[test]
    fn schema_is_nixs() {
        let bytes = database(&BTreeMap::new(), 0).unwrap();
        let (_dir, conn) = open(&bytes);
        let mut stmt =
            conn.prepare("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master ORDER BY rowid").unwrap();
        let got: Vec<(String, String, String, i64, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let want: Vec<(String, String, String, i64, Option<String>)> = NIX_2_8_MASTER
            .iter()
            .map(|&(t, n, tbl, root, sql)| (t.into(), n.into(), tbl.into(), root, sql.map(str::to_owned)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(SCHEMA_FILE, b"10");
    }

    #[test]
    fn header_is_self_contained() {
        let bytes = database(&closure(), 1).unwrap();
        let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(&bytes[..16], b"SQLite format 3\0");
        assert_eq!(u16::from_be_bytes([bytes[16], bytes[17]]), 4096, "page size");
        assert_eq!((bytes[18], bytes[19]), (1, 1), "rollback journal (not WAL) format versions");
        assert_eq!(bytes.len() % 4096, 0);
        assert_eq!(be32(28) as usize, bytes.len() / 4096, "in-header database size");
        assert_eq!(be32(24), be32(92), "change counter and version-valid-for agree, so the size is trusted");
        assert_eq!(be32(32), 0, "no freelist pages: nothing is ever deleted");
        assert_eq!(be32(44), 4, "schema format");
        assert_eq!(be32(52), 0, "no auto-vacuum");
        assert_eq!(be32(56), 1, "UTF-8");
        assert_eq!((be32(60), be32(68)), (0, 0), "user_version and application_id unused, as in Nix");
    }

    #[test]
    fn closure_round_trips() {
        let bytes = database(&closure(), 1_700_000_000).unwrap();
        let (_dir, conn) = open(&bytes);
        type Row = (i64, String, String, i64, Option<String>, i64, Option<i64>, Option<String>, Option<String>);
        let mut stmt = conn.prepare("SELECT * FROM ValidPaths ORDER BY id").unwrap();
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let hash = |fill: &str| format!("sha256:{}", fill.repeat(32));
        let row = |id, base: &str, fill, size, deriver: Option<&str>| {
            let deriver = deriver.map(|d| format!("/nix/store/{d}"));
            (id, format!("/nix/store/{base}"), hash(fill), 1_700_000_000, deriver, size, None, None, None)
        };
        assert_eq!(rows, [row(1, A, "aa", 120, None), row(2, B, "0b", 96, None), row(3, C, "cc", 4096, Some(DRV))]);

        let mut stmt = conn.prepare("SELECT referrer, reference FROM Refs ORDER BY referrer, reference").unwrap();
        let refs: Vec<(i64, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<rusqlite::Result<_>>().unwrap();
        assert_eq!(refs, [(1, 1), (1, 2), (3, 1), (3, 3)]);

        let seq: i64 =
            conn.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'ValidPaths'", [], |r| r.get(0)).unwrap();
        assert_eq!(seq, 3);
        let outputs: i64 = conn.query_row("SELECT count(*) FROM DerivationOutputs", [], |r| r.get(0)).unwrap();
        assert_eq!(outputs, 0);
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        let fk_problems: i64 =
            conn.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
        assert_eq!(fk_problems, 0);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "delete");
    }

    #[test]
    fn deterministic() {
        let first = database(&closure(), 42).unwrap();
        for _ in 0..3 {
            assert!(database(&closure(), 42).unwrap() == first, "two builds of the same database differ");
        }
        assert!(database(&closure(), 43).unwrap() != first, "the registration time is not recorded");
    }

    #[test]
    fn rejects_what_cannot_be_registered() {
        struct Case {
            name: &'static str,
            change: fn(&mut BTreeMap<StorePath, PathInfo>),
            want: String,
        }
        let cases = [
            Case {
                name: "missing NAR",
                change: |c| c.get_mut(&sp(B)).unwrap().nar = None,
                want: format!("/nix/store/{B}: no NAR hash and size known"),
            },
            Case {
                name: "reference outside",
                change: |c| {
                    c.remove(&sp(B));
                },
                want: format!("/nix/store/{A} references /nix/store/{B}, which is not in the closure"),
            },
            Case {
                name: "huge NAR",
                change: |c| c.get_mut(&sp(A)).unwrap().nar.as_mut().unwrap().size = u64::MAX,
                want: format!("/nix/store/{A}: NAR size {}", u64::MAX),
            },
        ];
        for case in cases {
            let mut paths = closure();
            (case.change)(&mut paths);
            let err = format!("{:#}", database(&paths, 0).unwrap_err());
            assert!(err.contains(&case.want), "{}: {err}", case.name);
        }
        let mut paths = closure();
        paths.get_mut(&sp(C)).unwrap().nar = None;
        let err = format!("{:#}", registration_text(&paths).unwrap_err());
        assert!(err.contains(&format!("/nix/store/{C}: no NAR hash")), "{err}");
    }

    #[test]
    fn registration_format() {
        let text = registration_text(&closure()).unwrap();
        let h = |fill| nix32::encode(&[fill; 32]);
        let want = format!(
            "/nix/store/{A}\nsha256:{}\n120\n\n2\n/nix/store/{A}\n/nix/store/{B}\n\
             /nix/store/{B}\nsha256:{}\n96\n\n0\n\
             /nix/store/{C}\nsha256:{}\n4096\n\n2\n/nix/store/{A}\n/nix/store/{C}\n",
            h(0xaa),
            h(0x0b),
            h(0xcc)
        );
        assert_eq!(text, want);
        // And kiln's closureInfo reader reads it back (the deriver line is always empty in closureInfo).
        let mut back =
            crate::closure::closure_info::parse_registration(&text, std::path::Path::new("registration")).unwrap();
        back.get_mut(&sp(C)).unwrap().deriver = Some(sp(DRV));
        assert_eq!(back, closure());
        assert_eq!(registration_text(&BTreeMap::new()).unwrap(), "");
    }
}
