//! Nix-side checks: what real Nix (Debian's `nix-bin`, Nix 2.8) says about a store, a closure or a path.
//!
//! Every Nix command that opens a store database *changes* it, even a pure query: Nix switches the
//! SQLite file to WAL mode (header bytes 18–19 become 2), may create `-wal`/`-shm` files and an 8 MiB
//! `reserved` file, and `nix-store --verify` rewrites records (invalidates vanished paths, fills in
//! zero narSizes). So every helper here that takes a store root works on a copy and leaves its input
//! untouched.
//!
//! Logical store paths (`/nix/store/…`) are `&str`/`String`; physical locations are `&Path`.

use std::collections::BTreeSet;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::tools;

/// Settings for every Nix command run here: nix-bin's default `build-users-group = nixbld` names a
/// group this machine lacks (every command would warn), and `gc-reserved-space` would put an 8 MiB
/// file into each store we open.
const NIX_CONFIG: &str = "build-users-group =\ngc-reserved-space = 0";

/// The fixture script that builds a real, NixOS-shaped Nix closure (see its header for the layout).
pub const CLOSURE_FIXTURE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/nix-closure.gen.sh");

/// Lines `nix-store --verify --check-contents -v` prints on a healthy store, besides one
/// `checking contents of '<path>'` per valid path.
const VERIFY_PROGRESS: [&str; 4] =
    ["reading the Nix store...", "checking path existence...", "checking link hashes...", "checking store hashes..."];

/// The Nix command `name` (from nix-bin), with the settings every Nix command of the tests runs with.
#[must_use]
pub fn nix_command(name: &str) -> Command {
    init_default_store();
    let mut cmd = Command::new(tools::require(name, "nix-bin"));
    cmd.env("NIX_CONFIG", NIX_CONFIG);
    cmd
}

/// Creates the default store's state (`/nix/var/nix`: database, `gcroots/profiles`, …) once per process,
/// before any other Nix command runs: on a fresh machine, Nix processes started together race to create it,
/// and the loser fails ("creating symlink from '/nix/var/nix/gcroots/profiles' …: File exists").
pub fn init_default_store() {
    static INIT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        tools::run_ok(Command::new(tools::require("nix-store", "nix-bin")).env("NIX_CONFIG", NIX_CONFIG).arg("--init"));
    });
}

/// `local?root=DIR`, refusing directories whose names would change the meaning of the store URI.
fn store_uri(root: &Path) -> String {
    let root = root.to_str().expect("store root is not UTF-8");
    assert!(
        root.starts_with('/') && !root.contains(['?', '&', '#', '%', ' ', '\n']),
        "store root {root:?} must be absolute and free of URI metacharacters"
    );
    format!("local?root={root}")
}

/// Where logical store path `path` lives under `root`.
fn physical(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `cp -a src dst` (keeps modes, symlinks and hard links).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let out = tools::run(Command::new("cp").arg("-a").arg(src).arg(dst));
    ensure!(out.status.success(), "cp -a {} {} failed: {}", src.display(), dst.display(), output_text(&out));
    Ok(())
}

/// A scratch store root that is removable by a non-root user too (store directories are 0555).
#[derive(Debug)]
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Result<Self> {
        Ok(Self(tempfile::tempdir().context("cannot create a temporary directory")?))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Copies `root/nix/var/nix/db` (and, if `with_store`, `root/nix/store`) into the scratch root.
    fn copy_from(&self, root: &Path, with_store: bool) -> Result<()> {
        let db = root.join("nix/var/nix/db");
        ensure!(db.join("db.sqlite").is_file(), "{} has no Nix database (nix/var/nix/db/db.sqlite)", root.display());
        std::fs::create_dir_all(self.path().join("nix/var/nix"))?;
        copy_tree(&db, &self.path().join("nix/var/nix/db"))?;
        if with_store {
            let store = root.join("nix/store");
            ensure!(store.is_dir(), "{} has no nix/store", root.display());
            copy_tree(&store, &self.path().join("nix/store"))?;
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(self.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Builds the real-Nix closure fixture into `out` with [`CLOSURE_FIXTURE_SCRIPT`] (nothing happens
/// if `out` exists). It holds `toplevel`, `store-root/` (a chroot store), `closure-info/` (nixpkgs
/// closureInfo: `store-paths`, `registration`) and `expected/` (`requisites`, `nar-hashes`,
/// `nar-sizes`), all produced by Nix itself. Panics with the script's output if it fails.
pub fn build_closure_fixture(out: &Path) {
    init_default_store();
    tools::run_ok(Command::new("sh").arg(CLOSURE_FIXTURE_SCRIPT).arg(out));
}

/// One record of a Nix database, as `nix-store --dump-db` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbRecord {
    /// Logical store path.
    pub path: String,
    /// The narHash in lowercase base16, without the `sha256:` prefix.
    pub nar_hash_base16: String,
    /// NAR length in bytes.
    pub nar_size: u64,
    /// The deriver, if the database records one.
    pub deriver: Option<String>,
    /// References (including a self-reference), in the order Nix printed them.
    pub references: Vec<String>,
}

fn parse_dump_db(text: &str) -> Result<Vec<DbRecord>> {
    let mut lines = text.lines();
    let mut records = Vec::new();
    while let Some(path) = lines.next() {
        let mut field =
            |what: &str| lines.next().with_context(|| format!("--dump-db output ends inside {path}'s record ({what})"));
        let hash = field("hash")?.to_owned();
        let nar_size = field("narSize")?.parse().context("bad narSize")?;
        let deriver = Some(field("deriver")?).filter(|d| !d.is_empty()).map(str::to_owned);
        let count: usize = field("reference count")?.parse().context("bad reference count")?;
        let references = (0..count).map(|_| field("reference").map(str::to_owned)).collect::<Result<Vec<_>>>()?;
        let nar_hash_base16 = hash.strip_prefix("sha256:").unwrap_or(&hash).to_owned();
        ensure!(
            nar_hash_base16.len() == 64 && nar_hash_base16.bytes().all(|b| b.is_ascii_hexdigit()),
            "--dump-db printed a hash that is not base16 sha256 for {path}: {hash}"
        );
        records.push(DbRecord { path: path.to_owned(), nar_hash_base16, nar_size, deriver, references });
    }
    Ok(records)
}

fn dump_db_in_place(scratch_root: &Path) -> Result<Vec<DbRecord>> {
    let out = tools::run(nix_command("nix-store").arg("--store").arg(store_uri(scratch_root)).arg("--dump-db"));
    ensure!(out.status.success(), "nix-store --dump-db cannot read the database: {}", output_text(&out));
    parse_dump_db(&String::from_utf8(out.stdout).context("--dump-db printed non-UTF-8")?)
}

/// Every valid path of the Nix database under `store_root` (`nix/var/nix/db`), read by Nix itself
/// (`nix-store --dump-db`, on a copy of the database). Panics if Nix cannot read it.
pub fn dump_db(store_root: &Path) -> Vec<DbRecord> {
    let run = || -> Result<Vec<DbRecord>> {
        let scratch = Scratch::new()?;
        scratch.copy_from(store_root, false)?;
        dump_db_in_place(scratch.path())
    };
    run().unwrap_or_else(|e| panic!("dump_db({}): {e:#}", store_root.display()))
}

/// Verifies the Nix store of an extracted image with Nix itself.
///
/// `root` is the image's root directory, holding `nix/store` and `nix/var/nix/db/db.sqlite`. Both
/// are copied to a temporary directory (Nix rewrites the database it verifies) and there:
///
/// 1. `nix-store --dump-db` lists the valid paths (a database Nix cannot open is an error);
/// 2. every entry of `nix/store` must be a valid path (stray entries, `.links` included, are errors),
///    and every valid path's NAR length must equal its recorded narSize (`--verify` ignores both);
/// 3. `nix-store --verify --check-contents -v --store local?root=<copy>` must exit 0, print nothing
///    but its progress lines, and report `checking contents of` for *every* valid path: Nix 2.8
///    exits 0 after silently dropping a vanished path that nothing references.
///
/// Returns the sorted logical paths whose contents Nix checked, or an error listing every problem
/// found, with Nix's output. References are not checked here (Nix does not rescan them).
pub fn verify_store_copy(root: &Path) -> Result<Vec<String>> {
    let scratch = Scratch::new()?;
    scratch.copy_from(root, true)?;
    let copy = scratch.path();

    // List the store before Nix opens it: opening a store creates an empty `.links` in it.
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(copy.join("nix/store"))? {
        entries.push(entry?.file_name());
    }
    let records = dump_db_in_place(copy)?;
    ensure!(!records.is_empty(), "the Nix database under {} has no valid paths", root.display());
    let valid: BTreeSet<&str> = records.iter().map(|r| r.path.as_str()).collect();

    let mut problems = Vec::new();
    for name in entries {
        let logical = format!("/nix/store/{}", name.to_string_lossy());
        if name == ".links" {
            problems.push(format!("{logical} exists: an image must not ship Nix's hard-link pool (even empty)"));
        } else if !valid.contains(logical.as_str()) {
            problems.push(format!("{logical} is in nix/store but not a valid path"));
        }
    }
    for record in &records {
        let path = physical(copy, &record.path);
        if std::fs::symlink_metadata(&path).is_err() {
            problems.push(format!("{} is valid but missing from nix/store", record.path));
            continue;
        }
        match try_nar_size(&path) {
            Ok(size) if size == record.nar_size => {}
            Ok(size) => {
                problems.push(format!("{}: narSize {} recorded, NAR is {size} bytes", record.path, record.nar_size))
            }
            Err(e) => problems.push(format!("{}: {e:#}", record.path)),
        }
    }

    let out = tools::run(
        nix_command("nix-store").args(["--verify", "--check-contents", "-v", "--store"]).arg(store_uri(copy)),
    );
    let text = output_text(&out);
    let mut checked = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("checking contents of '") {
            checked.insert(rest.trim_end_matches('\'').to_owned());
        } else if !VERIFY_PROGRESS.contains(&line) {
            problems.push(format!("nix-store --verify: {line}"));
        }
    }
    if !out.status.success() {
        problems.push(format!("nix-store --verify exited with {}", out.status));
    }
    for path in &valid {
        if !checked.contains(*path) {
            problems.push(format!("nix-store --verify did not check the contents of {path}"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "Nix store under {} failed verification:\n  {}\n--- nix-store --verify output\n{text}",
            root.display(),
            problems.join("\n  ")
        );
    }
    Ok(checked.into_iter().collect())
}

/// The closure of logical store path `path`, sorted: `nix-store -qR`, against the host store
/// (`None`) or the database under `store_root` (queried on a copy, so it stays untouched).
pub fn requisites(store_root: Option<&Path>, path: &str) -> Vec<String> {
    let scratch;
    let mut cmd = nix_command("nix-store");
    if let Some(root) = store_root {
        scratch = Scratch::new().expect("temporary directory");
        scratch.copy_from(root, false).unwrap_or_else(|e| panic!("requisites: {e:#}"));
        cmd.arg("--store").arg(store_uri(scratch.path()));
    }
    let out = tools::run_ok(cmd.arg("-qR").arg(path));
    let mut paths: Vec<String> =
        String::from_utf8(out.stdout).expect("nix-store -qR printed non-UTF-8").lines().map(str::to_owned).collect();
    paths.sort();
    assert!(!paths.is_empty(), "nix-store -qR {path} printed nothing");
    paths
}

/// `nix-store --optimise` on the store under `store_root`, *in place* (unlike the queries here, this is meant
/// to change the store): Nix hard-links identical files through `<store>/.links`, as `auto-optimise-store`
/// leaves a store. Returns Nix's report (`… freed by hard-linking N files`).
pub fn optimise(store_root: &Path) -> String {
    let out = tools::run_ok(nix_command("nix-store").arg("--store").arg(store_uri(store_root)).arg("--optimise"));
    output_text(&out)
}

/// The NAR hash (sha256, lowercase base16, no prefix) of the file tree at `physical_path`, as
/// `nix-hash --type sha256` computes it (hexadecimal is its default; 2.8 has no `--base16` flag): the hash of its NAR serialisation, the same value
/// `nix-store -q --hash` reports for a valid store path.
pub fn nar_hash_base16(physical_path: &Path) -> String {
    let out = tools::run_ok(nix_command("nix-hash").args(["--type", "sha256"]).arg(physical_path));
    let hash = String::from_utf8(out.stdout).expect("nix-hash printed non-UTF-8").trim().to_owned();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "nix-hash printed {hash:?} for {}",
        physical_path.display()
    );
    hash
}

fn try_nar_size(physical_path: &Path) -> Result<u64> {
    let mut child = nix_command("nix-store")
        .arg("--dump")
        .arg(physical_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nix-store --dump")?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let size = io::copy(&mut stdout, &mut io::sink()).context("reading nix-store --dump")?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "nix-store --dump {} failed: {}", physical_path.display(), output_text(&out));
    Ok(size)
}

/// The NAR length in bytes of the file tree at `physical_path` (`nix-store --dump | wc -c`, streamed),
/// the value Nix records as narSize.
pub fn nar_size(physical_path: &Path) -> u64 {
    try_nar_size(physical_path).unwrap_or_else(|e| panic!("nar_size: {e:#}"))
}

/// Converts a sha256 hash in Nix's base32 (with or without a `sha256:` prefix) to lowercase base16,
/// with `nix-hash --to-base16 --type sha256`.
pub fn nix32_to_base16(s: &str) -> String {
    let bare = s.strip_prefix("sha256:").unwrap_or(s);
    let out = tools::run_ok(nix_command("nix-hash").args(["--type", "sha256", "--to-base16"]).arg(bare));
    String::from_utf8(out.stdout).expect("nix-hash printed non-UTF-8").trim().to_owned()
}

/// Options for every `nix-build` of the tests: offline (no substituters), as root without build users (Debian's
/// nix-bin has no `nixbld` group), in Nix's sandbox (the builder sees only its inputs' closure: a kiln that
/// needed anything of the host would fail here).
pub const BUILD_OPTIONS: [&str; 6] = ["--option", "sandbox", "true", "--option", "substituters", ""];

/// Copies the closure of a fixture with a physical store (`<fx>/nix/store`) and a closureInfo
/// (`<fx>/closure-info`) into the host's Nix store and registers it there with `nix-store --load-db`, as
/// nixpkgs' image builders register a closure; paths already valid are left alone. Afterwards Nix treats the
/// closure as its own: `builtins.storePath` of the toplevel works and `exportReferencesGraph` reads its
/// narHashes and references from the database. Returns the logical paths registered.
///
/// # Errors
/// A copy or `nix-store` that fails.
pub fn register_in_host_store(fx: &Path) -> Result<Vec<String>> {
    let paths: Vec<String> = std::fs::read_to_string(fx.join("closure-info/store-paths"))
        .context("reading the fixture's store-paths")?
        .lines()
        .map(str::to_owned)
        .collect();
    std::fs::create_dir_all("/nix/store").context("creating /nix/store")?;
    let valid = tools::run(nix_command("nix-store").arg("--check-validity").args(&paths));
    if valid.status.success() {
        return Ok(paths);
    }
    for p in &paths {
        let dest = Path::new(p);
        if std::fs::symlink_metadata(dest).is_err() {
            let base = dest.file_name().context("a store path has a name")?;
            copy_tree(&fx.join("nix/store").join(base), dest)?;
        }
    }
    let registration = std::fs::read(fx.join("closure-info/registration")).context("reading the registration")?;
    let mut child = nix_command("nix-store")
        .arg("--load-db")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nix-store --load-db")?;
    child.stdin.take().context("stdin")?.write_all(&registration)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "nix-store --load-db failed: {}", output_text(&out));
    let valid = tools::run(nix_command("nix-store").arg("--check-validity").args(&paths));
    ensure!(valid.status.success(), "the closure is not valid after --load-db: {}", output_text(&valid));
    Ok(paths)
}

/// `nix-build` of the expression `expr` (with [`BUILD_OPTIONS`] and `extra`), in `dir`: the output path on
/// success, else the whole build log.
///
/// # Errors
/// The build failed: the log, which holds the builder's own error.
pub fn build_expr(expr: &str, dir: &Path, extra: &[&str]) -> std::result::Result<PathBuf, String> {
    build_expr_env(expr, dir, extra, &[])
}

/// [`build_expr`] with more environment variables (such as `NIX_SSHOPTS` for remote builders).
///
/// # Errors
/// As [`build_expr`].
pub fn build_expr_env(
    expr: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::result::Result<PathBuf, String> {
    let out = tools::run(
        nix_command("nix-build")
            .current_dir(dir)
            .args(["--no-out-link", "-E", expr])
            .args(BUILD_OPTIONS)
            .args(extra)
            .envs(env.iter().copied()),
    );
    let log = output_text(&out);
    if !out.status.success() {
        return Err(log);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim();
    if !path.starts_with("/nix/store/") {
        return Err(format!("nix-build printed no output path:\n{log}"));
    }
    Ok(PathBuf::from(path))
}

/// Removes `paths` from the host store (`nix-store --delete`; they must not be referenced or rooted).
///
/// # Errors
/// When Nix refuses.
pub fn delete(paths: &[&Path]) -> Result<()> {
    let out = tools::run(nix_command("nix-store").arg("--delete").args(paths));
    ensure!(out.status.success(), "nix-store --delete failed: {}", output_text(&out));
    Ok(())
}

/// Whether Nix's host database has `path` as a valid path.
#[must_use]
pub fn is_valid(path: &Path) -> bool {
    tools::run(nix_command("nix-store").arg("--check-validity").arg(path)).status.success()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        out: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("nix-closure");
            build_closure_fixture(&out);
            Fixture { _dir: dir, out }
        }

        fn read(&self, name: &str) -> String {
            fs::read_to_string(self.out.join(name)).unwrap()
        }

        fn toplevel(&self) -> String {
            self.read("toplevel")
        }

        fn store_root(&self) -> PathBuf {
            self.out.join("store-root")
        }

        /// A writable copy of the fixture's store root, for corrupting.
        fn store_copy(&self) -> Scratch {
            let scratch = Scratch::new().unwrap();
            fs::remove_dir(scratch.path()).unwrap();
            copy_tree(&self.store_root(), scratch.path()).unwrap();
            scratch
        }

        /// `expected/<name>` as a map from path to the rest of the line.
        fn expected(&self, name: &str) -> BTreeMap<String, String> {
            self.read(&format!("expected/{name}"))
                .lines()
                .map(|l| {
                    let (p, v) = l.split_once(' ').unwrap();
                    (p.to_owned(), v.to_owned())
                })
                .collect()
        }
    }

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    /// Parses closureInfo's registration strictly: (path, nix32 hash, narSize, references).
    fn parse_registration(text: &str) -> Vec<(String, String, u64, Vec<String>)> {
        assert!(text.ends_with('\n') && !text.ends_with("\n\n"), "registration must end in one \\n");
        let mut it = text.lines();
        let mut out = Vec::new();
        while let Some(path) = it.next() {
            let hash = it.next().unwrap().to_owned();
            let size = it.next().unwrap().parse().unwrap();
            assert_eq!(it.next(), Some(""), "deriver line of {path} must be empty");
            let n: usize = it.next().unwrap().parse().unwrap();
            let refs = (0..n).map(|_| it.next().unwrap().to_owned()).collect();
            out.push((path.to_owned(), hash, size, refs));
        }
        out
    }

    #[test]
    fn fixture_shape_and_requisites_agree() {
        let fx = Fixture::new();
        let top = fx.toplevel();
        assert!(top.starts_with("/nix/store/") && top.ends_with("-nixos-system-nixtest-24.11"));
        let expected = lines(&fx.read("expected/requisites"));
        assert_eq!(lines(&fx.read("closure-info/store-paths")), expected);
        assert_eq!(requisites(None, &top), expected);
        assert_eq!(requisites(Some(&fx.store_root()), &top), expected);
        assert!(expected.len() >= 12, "{expected:?}");

        // NixOS shape, seen through the chroot store.
        let phys = physical(&fx.store_root(), &top);
        let boot: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(phys.join("boot.json")).unwrap()).unwrap();
        let v1 = &boot["org.nixos.bootspec.v1"];
        assert_eq!(v1["toplevel"], top.as_str());
        assert_eq!(v1["init"], format!("{top}/init"));
        assert_eq!(v1["system"], "x86_64-linux");
        let params: Vec<&str> = v1["kernelParams"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert_eq!(fs::read_to_string(phys.join("kernel-params")).unwrap(), params.join(" "));
        assert_eq!(fs::read_link(phys.join("kernel")).unwrap().to_str().unwrap(), v1["kernel"]);
        assert_eq!(fs::read_link(phys.join("initrd")).unwrap().to_str().unwrap(), v1["initrd"]);
        let child = fs::read_link(phys.join("specialisation/debug")).unwrap();
        let spec = &boot["org.nixos.specialisation.v1"]["debug"]["org.nixos.bootspec.v1"];
        assert_eq!(spec["toplevel"], child.to_str().unwrap());
        let systemd = fs::read_link(phys.join("systemd")).unwrap();
        let efi =
            physical(&fx.store_root(), systemd.to_str().unwrap()).join("lib/systemd/boot/efi/systemd-bootx64.efi");
        assert!(efi.is_file(), "{}", efi.display());
    }

    #[test]
    fn hashes_sizes_and_registration_agree_with_nix() {
        let fx = Fixture::new();
        let hashes = fx.expected("nar-hashes");
        let sizes = fx.expected("nar-sizes");
        let registration = parse_registration(&fx.read("closure-info/registration"));
        let db: BTreeMap<String, DbRecord> =
            dump_db(&fx.store_root()).into_iter().map(|r| (r.path.clone(), r)).collect();

        let reg_paths: Vec<String> = registration.iter().map(|r| r.0.clone()).collect();
        assert_eq!(reg_paths, lines(&fx.read("closure-info/store-paths")));
        assert_eq!(db.keys().cloned().collect::<Vec<_>>(), reg_paths);

        let mut self_refs = 0;
        for (path, hash32, size, refs) in &registration {
            let base16 = nix32_to_base16(hash32);
            assert!(hash32.starts_with("sha256:") && hash32.len() == 7 + 52, "{hash32}");
            assert_eq!(format!("sha256:{base16}"), hashes[path], "{path}");
            assert_eq!(db[path].nar_hash_base16, base16, "{path}");
            // Hash the bytes themselves: in the host store and in the chroot copy.
            assert_eq!(nar_hash_base16(Path::new(path)), base16, "{path}");
            let phys = physical(&fx.store_root(), path);
            assert_eq!(nar_hash_base16(&phys), base16, "{path}");
            let dump = tools::run_ok(
                Command::new("sh").arg("-c").arg(format!("nix-store --dump '{}' | sha256sum", phys.display())),
            );
            assert!(String::from_utf8_lossy(&dump.stdout).starts_with(&base16), "{path}");

            assert_eq!(sizes[path].parse::<u64>().unwrap(), *size);
            assert_eq!(db[path].nar_size, *size);
            assert_eq!(nar_size(&phys), *size, "{path}");

            let mut db_refs = db[path].references.clone();
            db_refs.sort();
            assert_eq!(&db_refs, refs, "{path}");
            let mut sorted = refs.clone();
            sorted.sort();
            assert_eq!(&sorted, refs, "references of {path} are sorted");
            self_refs += usize::from(refs.contains(path));
        }
        assert!(self_refs >= 2, "the fixture has self-referencing paths");
    }

    #[test]
    fn fixture_is_reproducible() {
        let a = Fixture::new();
        let b = Fixture::new();
        for name in ["toplevel", "closure-info/store-paths", "closure-info/registration"] {
            assert_eq!(a.read(name), b.read(name), "{name}");
        }
    }

    #[test]
    fn verify_accepts_the_fixture_and_leaves_it_untouched() {
        let fx = Fixture::new();
        let db = fx.store_root().join("nix/var/nix/db/db.sqlite");
        let before = fs::read(&db).unwrap();
        let checked = verify_store_copy(&fx.store_root()).unwrap();
        assert_eq!(checked, lines(&fx.read("expected/requisites")));
        assert_eq!(fs::read(&db).unwrap(), before, "the input database was modified");
    }

    #[test]
    fn verify_detects_one_corrupted_byte() {
        let fx = Fixture::new();
        let copy = fx.store_copy();
        let data = fx.read("expected/requisites");
        let hello = data.lines().find(|p| p.ends_with("-hello-data")).unwrap();
        let file = physical(copy.path(), hello).join("share/hello/numbers.txt");
        let mode = fs::metadata(&file).unwrap().permissions();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(&file).unwrap();
        bytes[1000] ^= 0x01;
        fs::write(&file, bytes).unwrap();
        fs::set_permissions(&file, mode).unwrap();

        let err = format!("{:#}", verify_store_copy(copy.path()).unwrap_err());
        assert!(err.contains(&format!("path '{hello}' was modified")), "{err}");
    }

    #[test]
    fn verify_detects_what_nix_alone_misses() {
        let fx = Fixture::new();
        let top = fx.toplevel();

        // A vanished path that nothing references: Nix drops it from the database and exits 0.
        let copy = fx.store_copy();
        let dir = physical(copy.path(), &top);
        tools::run_ok(Command::new("chmod").arg("-R").arg("u+w").arg(&dir));
        fs::remove_dir_all(&dir).unwrap();
        let err = format!("{:#}", verify_store_copy(copy.path()).unwrap_err());
        assert!(err.contains(&format!("did not check the contents of {top}")), "{err}");
        assert!(err.contains("disappeared"), "{err}");

        // A stray entry in the store.
        let copy = fx.store_copy();
        let store = copy.path().join("nix/store");
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(store.join(".links")).unwrap();
        let err = format!("{:#}", verify_store_copy(copy.path()).unwrap_err());
        assert!(err.contains("/nix/store/.links exists"), "{err}");
        let copy = fx.store_copy();
        let store = copy.path().join("nix/store");
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(store.join("0000000000000000000000000000000a-stray"), "x").unwrap();
        let err = format!("{:#}", verify_store_copy(copy.path()).unwrap_err());
        let stray = "/nix/store/0000000000000000000000000000000a-stray is in nix/store";
        assert!(err.contains(stray), "{err}");

        // A wrong narSize.
        let sqlite3 = tools::require("sqlite3", "sqlite3");
        let copy = fx.store_copy();
        tools::run_ok(
            Command::new(sqlite3)
                .arg(copy.path().join("nix/var/nix/db/db.sqlite"))
                .arg(format!("UPDATE ValidPaths SET narSize = narSize + 8 WHERE path = '{top}'")),
        );
        let err = format!("{:#}", verify_store_copy(copy.path()).unwrap_err());
        assert!(err.contains(&format!("{top}: narSize")), "{err}");
    }

    #[test]
    fn nix32_conversion() {
        // sha256("") in both encodings, as `nix-hash --type sha256 --to-base32` gives it.
        let base16 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let out = tools::run_ok(nix_command("nix-hash").args(["--type", "sha256", "--to-base32", base16]));
        let nix32 = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(nix32.len(), 52);
        assert_eq!(nix32_to_base16(&nix32), base16);
        assert_eq!(nix32_to_base16(&format!("sha256:{nix32}")), base16);
    }

    #[test]
    fn dump_db_parser() {
        let text = "/nix/store/a\n\
                    0000000000000000000000000000000000000000000000000000000000000000\n\
                    8\n\n2\n/nix/store/a\n/nix/store/b\n\
                    /nix/store/b\n\
                    1111111111111111111111111111111111111111111111111111111111111111\n\
                    16\n/nix/store/b.drv\n0\n";
        let records = parse_dump_db(text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].references, ["/nix/store/a", "/nix/store/b"]);
        assert_eq!(records[0].deriver, None);
        assert_eq!(records[1].deriver.as_deref(), Some("/nix/store/b.drv"));
        assert_eq!(records[1].nar_size, 16);
        assert!(parse_dump_db("/nix/store/a\nxyz\n").is_err());
    }
}
