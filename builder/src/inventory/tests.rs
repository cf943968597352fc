//! The inventory's tests: NAR order, content groups, the link cap, determinism across thread counts.

use super::*;

const A: &str = "0123456789abcdfghijklmnpqrsvwxyz-a";
const B: &str = "1123456789abcdfghijklmnpqrsvwxyz-b";
const C: &str = "2123456789abcdfghijklmnpqrsvwxyz-c";

/// Writes `files` (`<store path base name>/<rel>`, contents, executable) under `dir`, a store directory.
fn write_files(dir: &Path, files: &[(&str, &[u8], bool)]) {
    use std::os::unix::fs::PermissionsExt;
    for &(name, contents, executable) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        let mode = if executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Walks every store path in `dir`.
fn inventory(dir: &Path) -> Inventory {
    let store = StoreDir::new(dir).unwrap();
    let paths: Vec<StorePath> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| StorePath::from_base_name(e.unwrap().file_name().to_str().unwrap()).unwrap())
        .collect();
    Inventory::walk(&store, &paths).unwrap()
}

/// (store path base name / rel, link group) of every entry, in closure order.
fn groups(inv: &Inventory) -> Vec<(String, Option<u32>)> {
    inv.paths
        .iter()
        .flat_map(|p| {
            p.entries.iter().map(|e| (p.path.base_name().to_owned() + "/" + e.rel.to_str().unwrap(), e.link_group))
        })
        .collect()
}

fn group_of(inv: &Inventory, name: &str) -> Option<u32> {
    let all = groups(inv);
    all.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not in {all:?}")).1
}

/// Host hard links are linked in the image: one inode on the host is trivially the same contents.
#[test]
fn walks_in_nar_order_with_hard_links() {
    let dir = tempfile::tempdir().unwrap();
    let a = "0123456789abcdfghijklmnpqrsvwxyz-a";
    let b = "1123456789abcdfghijklmnpqrsvwxyz-b";
    let pa = dir.path().join(a);
    std::fs::create_dir_all(pa.join("dir")).unwrap();
    std::fs::write(pa.join("Z"), "zz").unwrap();
    std::fs::write(pa.join("dir/x"), "xxx").unwrap();
    std::fs::hard_link(pa.join("dir/x"), pa.join("y")).unwrap();
    std::os::unix::fs::symlink("dir/x", pa.join("link")).unwrap();
    std::fs::hard_link(pa.join("Z"), dir.path().join(b)).unwrap();
    let store = StoreDir::new(dir.path()).unwrap();
    let sp = |s: &str| StorePath::from_base_name(s).unwrap();
    let paths = [sp(a), sp(b)];
    let inv = Inventory::walk(&store, &paths).unwrap();
    let rels: Vec<_> = inv.paths[0].entries.iter().map(|e| e.rel.to_str().unwrap().to_owned()).collect();
    assert_eq!(rels, ["", "Z", "dir", "dir/x", "link", "y"]);
    let t = inv.totals;
    assert_eq!((t.paths, t.counts.files, t.counts.dirs, t.counts.symlinks), (2, 4, 2, 1));
    assert_eq!(t.counts.bytes, 2 + 3 + 3 + 2);
    assert_eq!((t.hardlink_groups, t.hardlink_extra, t.unique_bytes), (2, 2, 5));
    let groups: Vec<_> = inv.paths.iter().flat_map(|p| p.entries.iter().map(|e| e.link_group)).collect();
    assert_eq!(groups, [None, Some(0), None, Some(1), None, Some(1), Some(0)]);
}

/// Identical files in different store paths (and in one) are one group whatever the host has; a file of the
/// same size with other bytes, symlinks with the same target and directories are never linked.
#[test]
fn identical_contents_are_one_group_across_store_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (format!("{A}/x"), format!("{B}/sub/x-again"), format!("{C}/y"));
    let (other, third) = (format!("{C}/other"), format!("{A}/z"));
    write_files(dir.path(), &[(&a, b"same bytes", false), (&b, b"same bytes", false), (&c, b"same bytes", false)]);
    write_files(dir.path(), &[(&other, b"same_bytes", false), (&third, b"same bytes", false)]);
    for p in [A, B] {
        std::os::unix::fs::symlink("target", dir.path().join(p).join("link")).unwrap();
    }
    std::fs::create_dir(dir.path().join(C).join("empty-dir")).unwrap();
    std::fs::create_dir(dir.path().join(A).join("empty-dir")).unwrap();
    let inv = inventory(dir.path());
    let g = group_of(&inv, &a);
    assert!(g.is_some());
    for name in [&b, &c, &third] {
        assert_eq!(group_of(&inv, name), g, "{name}");
    }
    assert_eq!(group_of(&inv, &other), None);
    for name in [format!("{A}/link"), format!("{B}/link"), format!("{A}/empty-dir"), format!("{C}/empty-dir")] {
        assert_eq!(group_of(&inv, &name), None, "{name}");
    }
    let t = inv.totals;
    assert_eq!((t.hardlink_groups, t.hardlink_extra), (1, 3));
    assert_eq!(t.unique_bytes, 20, "one copy of `same bytes` and `same_bytes`");
}

/// Files larger than the prefix hashed first: the same size and first bytes are not enough to be linked (the
/// rest is compared too), and a file whose first bytes differ is kept apart without being read whole.
#[test]
fn large_files_are_linked_only_when_all_their_bytes_match() {
    let dir = tempfile::tempdir().unwrap();
    let base: Vec<u8> = (0..3 * PREFIX as u32 + 5).map(|i| (i * 7 % 251) as u8).collect();
    let mut late = base.clone();
    *late.last_mut().unwrap() ^= 1;
    let mut early = base.clone();
    early[10] ^= 1;
    let mut at_prefix = base.clone();
    at_prefix[PREFIX as usize] ^= 1;
    let names = ["same-1", "same-2", "late", "early", "at-prefix"].map(|n| format!("{A}/{n}"));
    let contents = [&base, &base, &late, &early, &at_prefix];
    let files: Vec<(&str, &[u8], bool)> =
        names.iter().zip(contents).map(|(n, c)| (n.as_str(), c.as_slice(), false)).collect();
    write_files(dir.path(), &files);
    let inv = inventory(dir.path());
    let g = group_of(&inv, &names[0]);
    assert!(g.is_some());
    assert_eq!(group_of(&inv, &names[1]), g);
    for name in &names[2..] {
        assert_eq!(group_of(&inv, name), None, "{name}");
    }
    assert_eq!((inv.totals.hardlink_groups, inv.totals.hardlink_extra), (1, 1));
}

/// The same bytes with another executable bit are another NAR serialisation: not linked. Empty files are
/// linked (per executable bit) like any others.
#[test]
fn the_executable_bit_separates_groups_and_empty_files_are_linked() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, &[u8], bool)> = vec![
        (format!("{A}/plain"), b"#!/bin/sh\n", false),
        (format!("{A}/run"), b"#!/bin/sh\n", true),
        (format!("{B}/plain"), b"#!/bin/sh\n", false),
        (format!("{B}/run"), b"#!/bin/sh\n", true),
        (format!("{A}/empty"), b"", false),
        (format!("{B}/__init__.py"), b"", false),
        (format!("{C}/empty-x"), b"", true),
        (format!("{C}/only-x"), b"only", true),
        (format!("{C}/only"), b"only", false),
    ];
    let refs: Vec<(&str, &[u8], bool)> = files.iter().map(|(n, c, x)| (n.as_str(), *c, *x)).collect();
    write_files(dir.path(), &refs);
    let inv = inventory(dir.path());
    let g = |n: &str| group_of(&inv, n);
    let (plain, run, empty) = (g(&files[0].0), g(&files[1].0), g(&files[4].0));
    assert!(plain.is_some() && run.is_some() && empty.is_some());
    assert_ne!(plain, run);
    assert_eq!(g(&files[2].0), plain);
    assert_eq!(g(&files[3].0), run);
    assert_eq!(g(&files[5].0), empty);
    for lone in [&files[6].0, &files[7].0, &files[8].0] {
        assert_eq!(g(lone), None, "{lone}");
    }
    assert_eq!((inv.totals.hardlink_groups, inv.totals.hardlink_extra), (3, 3));
}

/// A store with host hard links between identical files and a copy without any give the same inventory.
#[test]
fn host_hard_links_do_not_change_the_groups() {
    let (linked, copied) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let files = [
        (format!("{A}/one"), &b"one"[..]),
        (format!("{A}/d/one-again"), b"one"),
        (format!("{B}/one"), b"one"),
        (format!("{B}/two"), b"two"),
        (format!("{C}/two"), b"two"),
    ];
    for (name, contents) in &files {
        write_files(copied.path(), &[(name, contents, false)]);
    }
    write_files(linked.path(), &[(&files[0].0, b"one", false), (&files[3].0, b"two", false)]);
    for (from, to) in [(0, 1), (0, 2), (3, 4)] {
        let to = linked.path().join(&files[to].0);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::hard_link(linked.path().join(&files[from].0), to).unwrap();
    }
    let (a, b) = (inventory(linked.path()), inventory(copied.path()));
    assert_eq!(groups(&a), groups(&b));
    assert_eq!(a.totals, b.totals);
    assert_eq!((a.totals.hardlink_groups, a.totals.hardlink_extra, a.totals.unique_bytes), (2, 3, 6));
}

/// A group holds at most `cap` names: more identical files form consecutive groups, and a last run of one
/// is no group. With ext4's own cap: 65,001 empty files are one group of 65,000 and one file on its own.
#[test]
fn groups_are_split_at_the_link_cap() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..7).map(|i| format!("{A}/f{i}")).collect();
    for n in &names {
        write_files(dir.path(), &[(n, b"x", false)]);
    }
    write_files(dir.path(), &[(&format!("{B}/g0"), b"y", false), (&format!("{B}/g1"), b"y", false)]);
    let store = StoreDir::new(dir.path()).unwrap();
    let paths = [A, B].map(|p| PathInventory::walk(&store, &StorePath::from_base_name(p).unwrap()).unwrap()).to_vec();
    let inv = Inventory::from_paths_capped(&store, paths, 3).unwrap();
    let got: Vec<Option<u32>> = groups(&inv).into_iter().map(|(_, g)| g).collect();
    // The store path itself, f0..f6 (runs of 3, 3, 1), then B, g0, g1.
    assert_eq!(got, [None, Some(0), Some(0), Some(0), Some(1), Some(1), Some(1), None, None, Some(2), Some(2)]);
    assert_eq!((inv.totals.hardlink_groups, inv.totals.hardlink_extra), (3, 5));

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(C);
    std::fs::create_dir(&root).unwrap();
    for i in 0..=MAX_LINKS {
        std::fs::File::create(root.join(format!("{i:05}"))).unwrap();
    }
    let inv = inventory(dir.path());
    let got: Vec<Option<u32>> = inv.paths[0].entries.iter().map(|e| e.link_group).collect();
    assert_eq!(got[0], None);
    assert!(got[1..=MAX_LINKS].iter().all(|&g| g == Some(0)));
    assert_eq!(got[MAX_LINKS + 1], None);
    assert_eq!((inv.totals.hardlink_groups, inv.totals.hardlink_extra), (1, MAX_LINKS as u64 - 1));
}

/// Groups are numbered in closure order, whatever the thread count.
#[test]
fn numbering_is_the_same_with_one_thread_or_four() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (pi, p) in [C, A, B].iter().enumerate() {
        for i in 0..60 {
            // Contents repeat across paths with a period that differs per path.
            let contents = format!("contents {}", (i * (pi + 1)) % 17).into_bytes();
            files.push((format!("{p}/d{}/f{i}", i % 5), contents, i % 7 == 0));
        }
    }
    let refs: Vec<(&str, &[u8], bool)> = files.iter().map(|(n, c, x)| (n.as_str(), c.as_slice(), *x)).collect();
    write_files(dir.path(), &refs);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| inventory(dir.path()))
    };
    let one = run(1);
    assert!(one.totals.hardlink_groups > 10, "{:?}", one.totals);
    for _ in 0..3 {
        assert_eq!(run(4), one);
    }
    // First appearance in closure order numbers the groups 0, 1, 2, …
    let mut next = 0;
    for (_, g) in groups(&one) {
        if let Some(g) = g {
            assert!(g <= next, "group {g} before group {next}");
            next = next.max(g + 1);
        }
    }
}

/// A file that cannot be read as the inventory listed it is named with its physical path.
#[test]
fn a_file_that_changed_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (format!("{A}/x"), format!("{B}/y"));
    write_files(dir.path(), &[(&x, b"abc", false), (&y, b"abd", false)]);
    let store = StoreDir::new(dir.path()).unwrap();
    let paths = [A, B].map(|p| PathInventory::walk(&store, &StorePath::from_base_name(p).unwrap()).unwrap()).to_vec();
    let victim = dir.path().join(&y);
    std::fs::write(&victim, "longer").unwrap();
    let err = format!("{:#}", Inventory::from_paths(&store, paths).unwrap_err());
    let want = format!(
        "{}: reading its contents to find identical files: changed since the inventory: 3 bytes then",
        victim.display()
    );
    assert!(err.starts_with(&want), "{err}");
}

/// A file replaced by a symlink after the listing is not read through (it could point anywhere): the error
/// names the file.
#[test]
fn a_file_replaced_by_a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (format!("{A}/x"), format!("{B}/sub/y"));
    write_files(dir.path(), &[(&x, b"abc", false), (&y, b"abc", false)]);
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "abc").unwrap();
    let store = StoreDir::new(dir.path()).unwrap();
    let paths = [A, B].map(|p| PathInventory::walk(&store, &StorePath::from_base_name(p).unwrap()).unwrap()).to_vec();
    let victim = dir.path().join(&y);
    std::fs::remove_file(&victim).unwrap();
    std::os::unix::fs::symlink(outside.path(), &victim).unwrap();
    let err = format!("{:#}", Inventory::from_paths(&store, paths).unwrap_err());
    assert!(err.starts_with(&format!("{}: reading its contents to find identical files", victim.display())), "{err}");
    assert!(err.contains("symlink"), "{err}");
}

/// The deepest and longest paths `kiln verify` can read back are accepted; one component or byte more is
/// refused, naming the store path and the limit.
#[test]
fn refuses_paths_verify_could_not_resolve() {
    let sp = StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-deep").unwrap();
    let prefix = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-deep".len();
    let levels = |n: usize| PathBuf::from(vec!["d"; n].join("/"));
    check_depth(&sp, &levels(997), 997).unwrap();
    let err = check_depth(&sp, &levels(998), 998).unwrap_err().to_string();
    assert!(err.starts_with(&format!("store path {sp}: /nix/store/")), "{err}");
    assert!(err.contains("(998 levels below its store path) is 2044 bytes and 1001 path components long"), "{err}");
    assert!(err.contains("more than 4096 bytes or 1000 components (a store path nested at most 997"), "{err}");
    // 4096 bytes in all: the store path, then names of 255 bytes and one shorter one.
    let name = "n".repeat(255);
    let mut rel = PathBuf::new();
    let mut depth = 0;
    while prefix + rel.as_os_str().len() + 1 + 256 <= MAX_PATH_BYTES {
        rel.push(&name);
        depth += 1;
    }
    let last = MAX_PATH_BYTES - prefix - rel.as_os_str().len() - 2;
    rel.push("x".repeat(last));
    check_depth(&sp, &rel, depth + 1).unwrap();
    rel.set_file_name("x".repeat(last + 1));
    let err = check_depth(&sp, &rel, depth + 1).unwrap_err().to_string();
    assert!(err.contains("is 4097 bytes"), "{err}");
}

#[test]
fn rejects_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let a = "0123456789abcdfghijklmnpqrsvwxyz-a";
    std::fs::create_dir(dir.path().join(a)).unwrap();
    let fifo = dir.path().join(a).join("pipe");
    let ok = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success();
    assert!(ok, "mkfifo failed");
    let store = StoreDir::new(dir.path()).unwrap();
    let err = PathInventory::walk(&store, &StorePath::from_base_name(a).unwrap()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pipe: unsupported file type fifo"), "{msg}");
}
