//! NAR hashes: kiln's narHash and narSize of every store path of the fixtures, against Nix's own (`nix-hash`,
//! `nix-store --dump`) and against the closureInfo registrations written with Nix.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln::closure::{NarInfo, closure_info};
use kiln::inventory::PathInventory;
use kiln::nar;
use kiln::store::{StoreDir, StorePath};
use kiln_tests::{fixtures, nix, tools};

/// Store paths with more file data than this are dumped by Nix once, hash and length together (the synthetic
/// store's 5 GiB sparse file); smaller ones go through `nix-hash` and `nix-store --dump | wc -c` separately.
const BIG: u64 = 256 << 20;

/// What every Nix command here runs with (as in `kiln_tests::nix`): no `nixbld` group on this machine.
const NIX_CONFIG: &str = "build-users-group =\ngc-reserved-space = 0";

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every store path in the store directory (anything else there, such as `.links`, is skipped), inventoried.
fn inventories(store: &StoreDir) -> Vec<PathInventory> {
    let mut paths: Vec<StorePath> = std::fs::read_dir(store.root())
        .unwrap_or_else(|e| panic!("{}: {e}", store.root().display()))
        .filter_map(|e| StorePath::from_base_name(e.unwrap().file_name().to_str()?).ok())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no store paths in {}", store.root().display());
    paths.iter().map(|p| PathInventory::walk(store, p).unwrap()).collect()
}

/// `nix-store --dump PATH | nix-hash --flat --type sha256 /dev/stdin`, counting the bytes on the way through:
/// Nix's NAR hash (base16) and length from a single dump.
fn nix_dump_once(physical: &Path) -> (String, u64) {
    let mut dump = nix::nix_command("nix-store")
        .arg("--dump")
        .arg(physical)
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run nix-store --dump");
    let mut hash = Command::new(tools::require("nix-hash", "nix-bin"))
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--flat", "--type", "sha256", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run nix-hash");
    let (mut from, mut to) = (dump.stdout.take().unwrap(), hash.stdin.take().unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf).expect("reading nix-store --dump");
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).expect("writing to nix-hash");
        size += n as u64;
    }
    drop(to);
    assert!(dump.wait().unwrap().success(), "nix-store --dump {} failed", physical.display());
    let out = hash.wait_with_output().unwrap();
    assert!(out.status.success(), "nix-hash --flat failed on the dump of {}", physical.display());
    (String::from_utf8(out.stdout).unwrap().trim().to_owned(), size)
}

/// Hashes every store path with kiln (in parallel, on another thread) and with Nix, asserts they agree, and
/// returns kiln's results.
fn check_store(store_dir: &Path) -> BTreeMap<StorePath, NarInfo> {
    let store = StoreDir::new(store_dir).unwrap();
    let invs = inventories(&store);
    let (kiln, from_nix) = std::thread::scope(|s| {
        let kiln = s.spawn(|| nar::hash_closure(&store, &invs));
        let from_nix: Vec<(String, u64)> = invs
            .iter()
            .map(|inv| {
                let physical = store.physical(&inv.path);
                if inv.counts().bytes > BIG {
                    nix_dump_once(&physical)
                } else {
                    (nix::nar_hash_base16(&physical), nix::nar_size(&physical))
                }
            })
            .collect();
        (kiln.join().unwrap(), from_nix)
    });
    let kiln = kiln.unwrap_or_else(|e| panic!("hashing {}: {e:#}", store_dir.display()));
    let mut wrong = Vec::new();
    for ((inv, got), (hash, size)) in invs.iter().zip(&kiln).zip(&from_nix) {
        if hex(&got.hash) != *hash || got.size != *size {
            wrong.push(format!("{}: kiln {} {}, Nix {hash} {size}", inv.path, hex(&got.hash), got.size));
        }
    }
    assert!(wrong.is_empty(), "NAR hashes differ from Nix's:\n{}", wrong.join("\n"));
    invs.into_iter().map(|i| i.path).zip(kiln).collect()
}

/// Every path registered in `closure-info/registration` is in `hashed` with the registered narHash and narSize.
fn check_registration(closure_info_dir: &Path, hashed: &BTreeMap<StorePath, NarInfo>) -> usize {
    let registered = closure_info::read(closure_info_dir).unwrap();
    for (path, info) in &registered {
        let expected = info.nar.unwrap_or_else(|| panic!("{path}: registered without a NAR hash"));
        let got = hashed.get(path).unwrap_or_else(|| panic!("{path}: registered but not in the store"));
        nar::verify(&expected, got, path).unwrap();
    }
    registered.len()
}

#[test]
fn nix_closure_matches_nix_and_its_registration() {
    let fixture = fixtures::nix_closure();
    let hashed = check_store(&fixture.join("store-root/nix/store"));
    let registered = check_registration(&fixture.join("closure-info"), &hashed);
    assert_eq!(registered, hashed.len(), "the fixture's store holds exactly its closure");
}

#[test]
fn demo_closure_matches_nix_and_its_registration() {
    let fixture = fixtures::demo_closure();
    let hashed = check_store(&fixture.join("nix/store"));
    assert!(check_registration(&fixture.join("closure-info"), &hashed) > 0);
}

#[test]
fn synthetic_store_matches_nix() {
    let fixture = fixtures::synthetic_store();
    let hashed = check_store(&fixture.join("nix/store"));
    // The edge cases are all there: a 5 GiB sparse file, a single-file store path and a symlink store path.
    let by_name = |name: &str| hashed.iter().find(|(p, _)| p.name() == name).map(|(_, i)| *i).unwrap();
    assert!(by_name("sparse").size > 5 << 30);
    assert_eq!(hashed.len(), 12);
}

#[test]
fn a_changed_byte_fails_verification_with_both_hashes() {
    let fixture = fixtures::nix_closure();
    let copy = tempfile::tempdir().unwrap();
    tools::run_ok(Command::new("cp").arg("-a").arg(fixture.join("store-root/nix/store")).arg(copy.path()));
    let store = StoreDir::new(&copy.path().join("store")).unwrap();
    let registered = closure_info::read(&fixture.join("closure-info")).unwrap();
    let (path, info) = registered.iter().find(|(p, _)| p.name() == "hello-data").expect("hello-data in fixture");
    let file = store.physical(path).join("share/hello/numbers.txt");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&file, bytes).unwrap();

    let got = nar::nar_info(&store, &PathInventory::walk(&store, path).unwrap()).unwrap();
    let err = nar::verify(&info.nar.unwrap(), &got, path).unwrap_err().to_string();
    // The registered hash as Nix wrote it in the registration file, and the new one as Nix would print it.
    let text = std::fs::read_to_string(fixture.join("closure-info/registration")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // A record starts with the path and its hash (the path may appear earlier as another record's reference).
    let at = lines.windows(2).position(|w| w[0] == path.to_string() && w[1].starts_with("sha256:")).unwrap();
    let out = tools::run_ok(
        Command::new(tools::require("nix-hash", "nix-bin"))
            .env("NIX_CONFIG", NIX_CONFIG)
            .args(["--type", "sha256", "--base32"])
            .arg(store.physical(path)),
    );
    let changed = format!("sha256:{}", String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(nar::hash_string(&got.hash), changed);
    assert!(err.starts_with(&format!("{path}: ")), "{err}");
    for want in [lines[at + 1], &changed] {
        assert!(err.contains(want), "{err} lacks {want}");
    }
    tools::run_ok(Command::new("chmod").arg("-R").arg("u+w").arg(copy.path()));
}
