//! The image's Nix database: kiln's `db.sqlite` for the real Nix fixture, laid out beside a copy of its store, is
//! accepted by Nix 2.8 itself (`--verify --check-contents`, `-qR`, `--dump-db`, `--references`, `--referrers`), has
//! exactly the schema Nix creates, and a wrong narHash or narSize in it fails verification.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::closure::{PathInfo, closure_info};
use kiln::nixdb;
use kiln::store::StorePath;
use kiln_tests::{fixtures, nix, tools};

/// A fixed registration time (2023-11-14), as a build with SOURCE_DATE_EPOCH would use.
const REGISTRATION_TIME: i64 = 1_700_000_000;

type Paths = BTreeMap<StorePath, PathInfo>;

/// A temporary root directory; made writable again before removal (store paths are read-only).
struct Root(tempfile::TempDir);

impl Root {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn db(&self) -> PathBuf {
        self.path().join("nix/var/nix/db/db.sqlite")
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.path()).status();
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The fixture's closure, as kiln reads its closureInfo.
fn fixture_paths(fixture: &Path) -> Paths {
    closure_info::read(&fixture.join("closure-info")).unwrap()
}

/// An image-like root: `nix/store` holding copies of the fixture's store paths of `paths`, and
/// `nix/var/nix/db/{db.sqlite,schema}` with kiln's database for them.
fn lay_out(fixture: &Path, paths: &Paths) -> Root {
    let root = Root::new();
    let store = root.path().join("nix/store");
    let db_dir = root.path().join("nix/var/nix/db");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&db_dir).unwrap();
    for path in paths.keys() {
        let src = fixture.join("store-root/nix/store").join(path.base_name());
        tools::run_ok(Command::new("cp").arg("-a").arg(&src).arg(&store));
    }
    std::fs::write(db_dir.join("db.sqlite"), nixdb::database(paths, REGISTRATION_TIME).unwrap()).unwrap();
    std::fs::write(db_dir.join("schema"), nixdb::SCHEMA_FILE).unwrap();
    root
}

/// `nix-store ARGS --store local?root=<a copy of root's database>` (Nix rewrites any database it opens): stdout.
fn nix_store_on_copy(root: &Path, args: &[&str]) -> String {
    let copy = Root::new();
    std::fs::create_dir_all(copy.path().join("nix/var/nix")).unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(root.join("nix/var/nix/db")).arg(copy.path().join("nix/var/nix")));
    let out = tools::run_ok(
        nix::nix_command("nix-store").args(args).arg("--store").arg(format!("local?root={}", copy.path().display())),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sqlite_master`, row by row, as the sqlite3 CLI reads it (read-only) from `db`.
fn sqlite_master(db: &Path) -> String {
    let out = tools::run_ok(Command::new(tools::require("sqlite3", "sqlite3")).arg("-readonly").arg(db).arg(
        "SELECT type || '|' || name || '|' || tbl_name || '|' || rootpage || '|' || quote(sql) \
         FROM sqlite_master ORDER BY rowid",
    ));
    String::from_utf8(out.stdout).unwrap()
}

/// `expected/<name>` of the fixture: `<path> <value>` per line.
fn expected(fixture: &Path, name: &str) -> BTreeMap<String, String> {
    read(&fixture.join("expected").join(name))
        .lines()
        .map(|l| {
            let (path, value) = l.split_once(' ').unwrap();
            (path.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn nix_accepts_kilns_database() {
    let fixture = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fixture);
    let paths = fixture_paths(&fixture);
    let requisites = lines(&read(&fixture.join("expected/requisites")));
    assert_eq!(paths.keys().map(ToString::to_string).collect::<Vec<_>>(), requisites);

    let root = lay_out(&fixture, &paths);
    let bytes = std::fs::read(root.db()).unwrap();
    assert!(nixdb::database(&paths, REGISTRATION_TIME).unwrap() == bytes, "two builds differ");
    let db_dir = root.path().join("nix/var/nix/db");
    let mut entries: Vec<String> =
        std::fs::read_dir(&db_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    entries.sort();
    assert_eq!(entries, ["db.sqlite", "schema"], "no -wal, -shm or -journal beside the database");
    assert_eq!((bytes[18], bytes[19]), (1, 1), "rollback-journal database, not WAL");

    // Nix checks the contents of every path against the recorded narHash; the helper adds narSize and strays.
    assert_eq!(nix::verify_store_copy(root.path()).unwrap(), requisites);
    assert_eq!(nix::requisites(Some(root.path()), &top), requisites);

    let hashes = expected(&fixture, "nar-hashes");
    let sizes = expected(&fixture, "nar-sizes");
    let records = nix::dump_db(root.path());
    assert_eq!(records.iter().map(|r| r.path.clone()).collect::<Vec<_>>(), requisites);
    for record in &records {
        let path = &record.path;
        assert_eq!(format!("sha256:{}", record.nar_hash_base16), hashes[path], "{path}");
        assert_eq!(record.nar_size.to_string(), sizes[path], "{path}");
        assert_eq!(record.deriver, None, "{path}: closureInfo knows no deriver");
        let sp = StorePath::parse_logical(Path::new(path)).unwrap().0;
        let mut refs = record.references.clone();
        refs.sort();
        assert_eq!(refs, paths[&sp].references.iter().map(ToString::to_string).collect::<Vec<_>>(), "{path}");
    }

    // References and referrers, one query each, against the registration.
    let mut referrers: BTreeMap<&StorePath, BTreeSet<String>> = BTreeMap::new();
    for (path, info) in &paths {
        for reference in &info.references {
            referrers.entry(reference).or_default().insert(path.to_string());
        }
    }
    let mut self_refs = 0;
    for (path, info) in &paths {
        let logical = path.to_string();
        let got: BTreeSet<String> =
            lines(&nix_store_on_copy(root.path(), &["-q", "--references", &logical])).into_iter().collect();
        let want: BTreeSet<String> = info.references.iter().map(ToString::to_string).collect();
        assert_eq!(got, want, "nix-store -q --references {logical}");
        let got: BTreeSet<String> =
            lines(&nix_store_on_copy(root.path(), &["-q", "--referrers", &logical])).into_iter().collect();
        assert_eq!(got, referrers.remove(path).unwrap_or_default(), "nix-store -q --referrers {logical}");
        self_refs += usize::from(info.references.contains(path));
    }
    assert!(self_refs >= 2, "the fixture has self-references, and they survive");

    // The registration kiln writes for /nix-path-registration is closureInfo's, byte for byte.
    let registration = read(&fixture.join("closure-info/registration"));
    assert_eq!(nixdb::registration_text(&paths).unwrap(), registration);
}

#[test]
fn schema_is_what_nix_creates() {
    // A store Nix 2.8 initialises itself, and kiln's database for the fixture.
    let fresh = Root::new();
    let out = tools::run(
        nix::nix_command("nix-store")
            .arg("--init")
            .arg("--store")
            .arg(format!("local?root={}", fresh.path().display())),
    );
    assert!(out.status.success(), "nix-store --init: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(fresh.path().join("nix/var/nix/db/schema")).unwrap(), nixdb::SCHEMA_FILE);
    let nix_master = sqlite_master(&fresh.db());
    assert!(nix_master.contains("CREATE TABLE ValidPaths"), "{nix_master}");

    let fixture = fixtures::nix_closure();
    let root = lay_out(&fixture, &fixture_paths(&fixture));
    assert_eq!(sqlite_master(&root.db()), nix_master);
    let check = tools::run_ok(
        Command::new(tools::require("sqlite3", "sqlite3"))
            .arg("-readonly")
            .arg(root.db())
            .arg("PRAGMA integrity_check; PRAGMA foreign_key_check; PRAGMA journal_mode;"),
    );
    assert_eq!(String::from_utf8(check.stdout).unwrap(), "ok\ndelete\n");
}

#[test]
fn a_wrong_nar_hash_or_size_fails_verification() {
    let fixture = fixtures::nix_closure();
    let top = fixtures::toplevel_of(&fixture);
    let paths = fixture_paths(&fixture);
    let hello = paths.keys().find(|p| p.name() == "hello-data").expect("hello-data in the fixture").clone();

    let mut wrong_hash = paths.clone();
    wrong_hash.get_mut(&hello).unwrap().nar.as_mut().unwrap().hash[0] ^= 1;
    let root = lay_out(&fixture, &wrong_hash);
    let err = format!("{:#}", nix::verify_store_copy(root.path()).unwrap_err());
    assert!(err.contains(&format!("path '{hello}' was modified")), "{err}");

    let mut wrong_size = paths.clone();
    let top_sp = StorePath::parse_logical(Path::new(&top)).unwrap().0;
    wrong_size.get_mut(&top_sp).unwrap().nar.as_mut().unwrap().size += 8;
    let root = lay_out(&fixture, &wrong_size);
    let err = format!("{:#}", nix::verify_store_copy(root.path()).unwrap_err());
    assert!(err.contains(&format!("{top}: narSize")), "{err}");
}
