//! The ext4 checkers (`kiln_tests::ext4`) proven on the reference writer, `mkfs.ext4 -d`: its images pass
//! every checker, and every deliberate difference — in the source tree or in the image — is caught and
//! named. `mkfs.ext4 -d` keeps mode bits, owners and whole-second mtimes of everything below the root
//! (symlinks included) and hard links, so `Expect::AsSource` applies; the root directory itself stays
//! 0755 root with mtime now.

use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kiln_tests::ext4::{self, Expect, InodeInfo, Links};
use kiln_tests::tools;
use kiln_tests::trees::{self, TreeSize, set_mtime};

use crate::util::walk;

const FEATURES: &str = "metadata_csum,64bit,extent,huge_file,dir_nlink,extra_isize";
const MIB: u64 = 1 << 20;

/// The reference image of `source`: `mkfs.ext4 -d`, `size` bytes.
fn mkfs(source: &Path, image: &Path, size: u64) {
    let mkfs = tools::require("mkfs.ext4", "e2fsprogs");
    tools::run_ok(
        Command::new(mkfs)
            .args(["-q", "-F", "-b", "4096", "-I", "256", "-O", FEATURES, "-d"])
            .arg(source)
            .args(["-L", "nixos"])
            .arg(image)
            .arg(format!("{}k", size / 1024)),
    );
}

/// `e2fsck -fyD`: rebuilds every directory of more than one block as an htree. `mkfs.ext4 -d` writes only
/// linear directories, so without this the checkers would never meet a hashed one.
fn index_directories(image: &Path) {
    let out = tools::run(Command::new(tools::require("e2fsck", "e2fsprogs")).arg("-fyD").arg(image));
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "e2fsck -fyD {}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that all three checkers accept the filesystem.
fn assert_clean(image: &Path, offset: u64, prefix: &[u8], source: &Path, expect: Expect) {
    if let Err(e) = ext4::e2fsck_clean(image, offset) {
        panic!("e2fsck: {e}");
    }
    if let Err(d) = ext4::compare_tree(image, offset, prefix, source, expect, Links::AsSource) {
        panic!("compare_tree found differences:\n{}", d.join("\n"));
    }
    if let Err(d) = ext4::ext4_view_compare(image, offset, prefix, source, expect) {
        panic!("ext4_view_compare found differences:\n{}", d.join("\n"));
    }
}

/// Asserts that a comparison failed with a message containing every one of `want`.
fn assert_caught(checker: &str, result: Result<(), Vec<String>>, want: &[&str]) {
    let diffs = result.err().unwrap_or_else(|| panic!("{checker} found no difference, want {want:?}"));
    assert!(
        diffs.iter().any(|d| want.iter().all(|w| d.contains(w))),
        "{checker}: no message contains all of {want:?}:\n{}",
        diffs.join("\n")
    );
}

/// The uid and gid new files get (the process's), without libc.
fn own_ids() -> (u32, u32) {
    let dir = tempfile::tempdir().unwrap();
    let md = std::fs::metadata(dir.path()).unwrap();
    (md.uid(), md.gid())
}

#[test]
fn random_trees_pass_every_checker() {
    let mut totals = trees::TreeStats::default();
    let (mut htree_dirs, mut slow_links, mut fast_links, mut linked_files) = (0, 0, 0, 0);
    for seed in 0..20 {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        let stats = trees::random_tree(seed, &source, TreeSize::Small);
        let image = work.path().join("fs.img");
        mkfs(&source, &image, stats.fs_size_hint());
        assert_clean(&image, 0, b"/", &source, Expect::AsSource);
        index_directories(&image);
        assert_clean(&image, 0, b"/", &source, Expect::AsSource);

        let inodes = ext4::tree_inodes(&image, 0, b"/").unwrap();
        // The root, lost+found and every entry of the tree.
        assert_eq!(inodes.len() as u64, stats.entries + 2, "seed {seed}: {stats:?}");
        for info in inodes.values() {
            match info.file_type() {
                InodeInfo::S_IFDIR if info.flags & 0x1000 != 0 => htree_dirs += 1,
                InodeInfo::S_IFLNK if info.size >= 60 => slow_links += 1,
                InodeInfo::S_IFLNK => fast_links += 1,
                InodeInfo::S_IFREG if info.links > 1 => linked_files += 1,
                _ => {}
            }
        }
        totals.entries += stats.entries;
        totals.hardlinks += stats.hardlinks;
        totals.max_depth = totals.max_depth.max(stats.max_depth);
        totals.bytes += stats.bytes;
    }
    // The generator makes what it promises, so the checkers saw it.
    assert!(
        htree_dirs > 0 && slow_links > 0 && fast_links > 0 && linked_files > 0,
        "{htree_dirs} {slow_links} {fast_links} {linked_files}"
    );
    assert!(totals.hardlinks > 0 && totals.max_depth >= 3, "{totals:?}");
}

/// Names used by the edge-case tree and the mutations below.
const NON_UTF8: &[u8] = b"caf\xe9 \xff\xfe";
const AWKWARD: &[u8] = b" lead \"quoted\" back\\slash\nnew line\t<12>";
const LINKED: &[u8] = b"linked";
const FAST: &[u8] = b"fast";

/// A hand-made tree of edge cases, the same on every call (mtimes included).
fn edge_tree(root: &Path) {
    let p = |rel: &[u8]| root.join(OsStr::from_bytes(rel));
    std::fs::create_dir_all(root).unwrap();
    for dir in [&b"a"[..], b"a/b", b"sticky", b"setgid"] {
        std::fs::create_dir(p(dir)).unwrap();
    }
    // Names: not UTF-8, awkward for debugfs's parser, 255 bytes (ASCII and not).
    std::fs::write(p(NON_UTF8), b"non-utf8 name").unwrap();
    std::fs::write(p(AWKWARD), b"awkward name").unwrap();
    std::fs::write(p(&[b'n'; 255]), b"long ascii name").unwrap();
    std::fs::write(p(&[0xff; 255]), b"long binary name").unwrap();
    std::fs::write(p(b"-dash"), b"").unwrap();
    // Sizes around block edges, zeros, holes.
    for (name, len) in [(&b"empty"[..], 0), (b"one", 1), (b"4095", 4095), (b"4096", 4096), (b"4097", 4097)] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(p(name), data).unwrap();
    }
    std::fs::write(p(b"zeros"), vec![0u8; MIB as usize]).unwrap();
    let sparse = File::create(p(b"sparse")).unwrap();
    sparse.set_len(3 * MIB).unwrap();
    sparse.write_all_at(b"middle", MIB + 5).unwrap();
    let tail = File::create(p(b"leading-hole")).unwrap();
    tail.write_all_at(b"end", 2 * MIB).unwrap();
    // Hard links: three names, two directories.
    std::fs::write(p(LINKED), b"one inode, three names").unwrap();
    std::fs::hard_link(p(LINKED), p(b"a/linked-too")).unwrap();
    std::fs::hard_link(p(LINKED), p(b"a/b/linked-three")).unwrap();
    // Symlinks: either side of the 60-byte fast/slow boundary, the longest, dangling, to a directory.
    let link = |rel: &[u8], target: &[u8]| std::os::unix::fs::symlink(OsStr::from_bytes(target), p(rel)).unwrap();
    link(FAST, b"linked");
    for n in [59usize, 60, 61, 4095] {
        link(format!("link{n}").as_bytes(), &b"x/".repeat(n / 2 + 1)[..n]);
    }
    link(b"dangling", b"/nix/store/00000000000000000000000000000000-gone");
    link(b"to-dir", b"a/b");
    link(b"binary-target", b"\xff\n\"Links: 9\x01");
    // Deep: 30 short levels, and 8 levels of 255-byte names.
    let mut deep = p(b"deep");
    for _ in 0..30 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom"), b"deep").unwrap();
    let mut long = p(b"long");
    for i in 0..8u8 {
        long.push(OsStr::from_bytes(&[b'a' + i; 255]));
    }
    std::fs::create_dir_all(&long).unwrap();
    std::fs::write(long.join("bottom"), b"long").unwrap();
    // Modes: setuid, setgid, sticky, read-only.
    let chmod = |rel: &[u8], mode: u32| std::fs::set_permissions(p(rel), Permissions::from_mode(mode)).unwrap();
    std::fs::write(p(b"setuid"), b"#!/bin/sh\n").unwrap();
    chmod(b"setuid", 0o4755);
    chmod(b"one", 0o600);
    chmod(b"4096", 0o444);
    chmod(b"4097", 0o555);
    chmod(b"sticky", 0o1777);
    chmod(b"setgid", 0o2750);
    let mkfifo = tools::require("mkfifo", "coreutils");
    tools::run_ok(Command::new(mkfifo).arg(p(b"fifo")));
    if own_ids().0 == 0 {
        std::os::unix::fs::lchown(p(b"4095"), Some(4_000_000_000), Some(70_000)).unwrap();
        std::os::unix::fs::lchown(p(FAST), Some(1000), Some(100)).unwrap();
    }
    // mtimes last, deepest first: 0 and 2038 included.
    let mut all = Vec::new();
    walk(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in all.iter().enumerate() {
        let mtime = match i % 5 {
            0 => 0,
            1 => 1,
            2 => i64::from(i32::MAX),
            _ => 1_600_000_000 + i as i64,
        };
        set_mtime(path, mtime);
    }
}

#[test]
fn edge_cases_pass_every_checker() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    edge_tree(&source);
    let image = work.path().join("fs.img");
    mkfs(&source, &image, 64 * MIB);
    assert_clean(&image, 0, b"/", &source, Expect::AsSource);
    // A subtree as prefix.
    assert_clean(&image, 0, b"/a", &source.join("a"), Expect::AsSource);

    // inode_info takes any bytes: quotes, spaces, newline, not UTF-8, 255 bytes, deep.
    let inodes = ext4::tree_inodes(&image, 0, b"/").unwrap();
    let deep = [&b"/deep"[..], &b"/d".repeat(30), b"/bottom"].concat();
    let long: Vec<u8> = [
        &b"/long"[..],
        &(0..8u8).flat_map(|i| [&[b'/'][..], &[b'a' + i; 255]].concat()).collect::<Vec<u8>>(),
        b"/bottom",
    ]
    .concat();
    for path in [[b"/", NON_UTF8].concat(), [b"/", AWKWARD].concat(), [&b"/"[..], &[0xff; 255]].concat(), deep, long] {
        let info = ext4::inode_info(&image, 0, &path).unwrap();
        assert_eq!(info, inodes[&path[1..]], "{}", path.escape_ascii());
        assert_eq!(info.file_type(), InodeInfo::S_IFREG);
        assert_ne!(info.flags & 0x80000, 0, "extents flag");
    }
    let linked = ext4::inode_info(&image, 0, b"/a/b/linked-three").unwrap();
    assert_eq!((linked.links, linked.ino), (3, inodes[LINKED].ino));
    assert_eq!(ext4::inode_info(&image, 0, b"/setuid").unwrap().perm(), 0o4755);
    assert!(ext4::inode_info(&image, 0, b"/no such file").is_err());
    let missing =
        ext4::compare_tree(&image, 0, b"/no such dir", &source, Expect::AsSource, Links::AsSource).unwrap_err();
    assert!(missing[0].contains("File not found"), "{missing:?}");
    assert!(ext4::inode_info(&image, 0, b"relative").is_err());
}

#[test]
fn twenty_thousand_entries_in_one_directory() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    let big = source.join("big");
    std::fs::create_dir_all(&big).unwrap();
    // Three bytes each, none of them UTF-8: longer names make mkfs's quadratic linking slower still.
    for i in 0..20_000u32 {
        let name = [0x80 | (i >> 14) as u8, 0x80 | ((i >> 7) & 0x7f) as u8, 0x80 | (i & 0x7f) as u8];
        File::create(big.join(OsStr::from_bytes(&name))).unwrap();
    }
    set_mtime(&big, 1);
    let image = work.path().join("fs.img");
    // mkfs.ext4 -d scans the whole (linear) directory for every name it adds: ~13 s here.
    mkfs(&source, &image, 512 * MIB);
    index_directories(&image);
    let dir = ext4::inode_info(&image, 0, b"/big").unwrap();
    assert_ne!(dir.flags & 0x1000, 0, "/big is not an htree directory: {dir:?}");
    assert_clean(&image, 0, b"/", &source, Expect::AsSource);
    assert_eq!(ext4::tree_inodes(&image, 0, b"/big").unwrap().len(), 20_001);
}

#[test]
fn sparse_file_of_5_gib() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    std::fs::create_dir(&source).unwrap();
    let path = source.join("sparse");
    let file = File::create(&path).unwrap();
    file.set_len(5 << 30).unwrap();
    for at in [0, 3_000_000_000, (5 << 30) - 4] {
        file.write_all_at(b"data", at).unwrap();
    }
    drop(file);
    set_mtime(&path, 1);
    let image = work.path().join("fs.img");
    mkfs(&source, &image, 64 * MIB);
    assert_clean(&image, 0, b"/", &source, Expect::AsSource);

    // A byte written into a hole of the source (at 4 GiB) must be found, not skipped with the hole.
    File::options().write(true).open(&path).unwrap().write_all_at(b"!", 4 << 30).unwrap();
    set_mtime(&path, 1);
    let want = ["/sparse", "content differs at byte 4294967296"];
    assert_caught(
        "compare_tree",
        ext4::compare_tree(&image, 0, b"/", &source, Expect::AsSource, Links::AsSource),
        &want,
    );
    assert_caught("ext4_view_compare", ext4::ext4_view_compare(&image, 0, b"/", &source, Expect::AsSource), &want);
}

/// Nix's canonical form: an image built from a canonicalised copy passes `Expect::Canonical` against the
/// original source, and fails `Expect::AsSource` (and the other way round).
#[test]
fn canonical_form() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    trees::random_tree(100, &source, TreeSize::Small);
    edge_tree(&source.join("edge"));
    std::fs::remove_file(source.join("edge/fifo")).unwrap();
    let (uid, gid) = own_ids();
    let expect = Expect::Canonical { uid, gid, mtime: 1 };

    let canonical = work.path().join("canonical");
    tools::run_ok(Command::new(tools::require("cp", "coreutils")).arg("-a").arg(&source).arg(&canonical));
    let mut all = Vec::new();
    walk(&canonical, &mut all);
    for path in &all {
        let md = std::fs::symlink_metadata(path).unwrap();
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
        let mode = if md.is_dir() || md.mode() & 0o100 != 0 { 0o555 } else { 0o444 };
        if !md.file_type().is_symlink() {
            std::fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
        }
        set_mtime(path, 1);
    }
    let image = work.path().join("canonical.img");
    mkfs(&canonical, &image, 128 * MIB);
    assert_clean(&image, 0, b"/", &source, expect);
    assert_caught(
        "compare_tree",
        ext4::compare_tree(&image, 0, b"/", &source, Expect::AsSource, Links::AsSource),
        &["mtime 1.0"],
    );

    // A few files as they are, checked against the canonical form: each rule is applied.
    let plain = work.path().join("plain");
    std::fs::create_dir_all(plain.join("dir")).unwrap();
    for (name, mode) in [("setuid", 0o4755), ("data", 0o644), ("dir/script", 0o744), ("dir/private", 0o600)] {
        std::fs::write(plain.join(name), name).unwrap();
        std::fs::set_permissions(plain.join(name), Permissions::from_mode(mode)).unwrap();
        set_mtime(&plain.join(name), 1);
    }
    std::os::unix::fs::symlink("data", plain.join("link")).unwrap();
    set_mtime(&plain.join("link"), 5);
    set_mtime(&plain.join("dir"), 1);
    let as_source = work.path().join("as-source.img");
    mkfs(&plain, &as_source, 16 * MIB);
    let wants: [&[&str]; 5] = [
        &["/setuid: mode 4755 in the image, expected 0555"],
        &["/data: mode 0644 in the image, expected 0444"],
        &["/dir: mode 0755 in the image, expected 0555"],
        &["/dir/private: mode 0600 in the image, expected 0444"],
        &["/link: mtime 5.000000000 in the image, expected 1"],
    ];
    for want in wants {
        assert_caught("compare_tree", ext4::compare_tree(&as_source, 0, b"/", &plain, expect, Links::AsSource), want);
        assert_caught("ext4_view_compare", ext4::ext4_view_compare(&as_source, 0, b"/", &plain, expect), want);
    }
    let both = [
        ext4::compare_tree(&as_source, 0, b"/", &plain, expect, Links::AsSource),
        ext4::ext4_view_compare(&as_source, 0, b"/", &plain, expect),
    ];
    for result in both {
        // Symlink modes are 0777 on both sides; everything else differs once.
        let diffs = result.unwrap_err();
        assert_eq!(diffs.len(), 6, "{diffs:#?}");
        assert!(diffs.contains(&"/dir/script: mode 0744 in the image, expected 0555".to_owned()), "{diffs:#?}");
    }
}

/// One change to the source, the escaped path and a phrase the checkers must report, and whether
/// ext4-view can see it (it cannot see hard links).
struct Mutation {
    name: &'static str,
    apply: fn(&Path),
    want: &'static [&'static str],
    view_sees_it: bool,
}

fn keep_mtime(path: &Path, change: impl FnOnce()) {
    let mtime = std::fs::symlink_metadata(path).unwrap().mtime();
    change();
    set_mtime(path, mtime);
}

#[test]
fn differences_are_caught() {
    let work = tempfile::tempdir().unwrap();
    let reference = work.path().join("reference");
    edge_tree(&reference);
    let image = work.path().join("fs.img");
    mkfs(&reference, &image, 64 * MIB);

    let mutations = [
        Mutation {
            name: "one byte of a file",
            apply: |s| {
                let p = s.join("4095");
                keep_mtime(&p, || File::options().write(true).open(&p).unwrap().write_all_at(b"?", 4000).unwrap());
            },
            want: &["/4095: content differs at byte 4000"],
            view_sees_it: true,
        },
        Mutation {
            name: "one byte of a file with a non-UTF-8 name",
            apply: |s| {
                let p = s.join(OsStr::from_bytes(NON_UTF8));
                keep_mtime(&p, || std::fs::write(&p, b"non-utf8 nam!").unwrap());
            },
            want: &["/caf\\xe9 \\xff\\xfe: content differs at byte 12"],
            view_sees_it: true,
        },
        Mutation {
            name: "a mode",
            apply: |s| std::fs::set_permissions(s.join("one"), Permissions::from_mode(0o644)).unwrap(),
            want: &["/one: mode 0600 in the image, expected 0644"],
            view_sees_it: true,
        },
        Mutation {
            name: "the setuid bit",
            apply: |s| std::fs::set_permissions(s.join("setuid"), Permissions::from_mode(0o755)).unwrap(),
            want: &["/setuid: mode 4755 in the image, expected 0755"],
            view_sees_it: true,
        },
        Mutation {
            name: "an mtime",
            apply: |s| set_mtime(&s.join("a/b/linked-three"), 12345),
            want: &["/linked: mtime", "expected 12345"],
            view_sees_it: true,
        },
        Mutation {
            name: "a symlink target",
            apply: |s| {
                let p = s.join(OsStr::from_bytes(FAST));
                keep_mtime(&p, || {
                    std::fs::remove_file(&p).unwrap();
                    std::os::unix::fs::symlink("linkee", &p).unwrap();
                    if own_ids().0 == 0 {
                        std::os::unix::fs::lchown(&p, Some(1000), Some(100)).unwrap();
                    }
                });
            },
            want: &["/fast: symlink target \"linked\" (6 bytes) in the image, \"linkee\""],
            view_sees_it: true,
        },
        Mutation {
            name: "a slow symlink's last byte",
            apply: |s| {
                let p = s.join("link4095");
                keep_mtime(&p, || {
                    let mut t = std::fs::read_link(&p).unwrap().into_os_string().into_vec();
                    *t.last_mut().unwrap() = b'y';
                    std::fs::remove_file(&p).unwrap();
                    std::os::unix::fs::symlink(OsStr::from_bytes(&t), &p).unwrap();
                });
            },
            want: &["/link4095: symlink target"],
            view_sees_it: true,
        },
        Mutation {
            name: "a hard link broken into a copy",
            apply: |s| {
                let p = s.join("a/linked-too");
                let md = std::fs::metadata(&p).unwrap();
                keep_mtime(&s.join("a"), || {
                    std::fs::remove_file(&p).unwrap();
                    std::fs::write(&p, b"one inode, three names").unwrap();
                });
                std::fs::set_permissions(&p, md.permissions()).unwrap();
                std::os::unix::fs::lchown(&p, Some(md.uid()), Some(md.gid())).unwrap();
                set_mtime(&p, md.mtime());
            },
            want: &["/a/b/linked-three: is one inode", "with /a/linked-too in the image, but they are different files"],
            view_sees_it: false,
        },
        Mutation {
            name: "an extra file",
            apply: |s| std::fs::write(s.join("a/b/extra"), b"").unwrap(),
            want: &["/a/b/extra: regular file in the source is missing from the image"],
            view_sees_it: true,
        },
        Mutation {
            name: "a missing file",
            apply: |s| std::fs::remove_file(s.join(OsStr::from_bytes(AWKWARD))).unwrap(),
            want: &[
                "/ lead \\\"quoted\\\" back\\\\slash\\nnew line\\t<12>: regular file in the image is not in the source",
            ],
            view_sees_it: true,
        },
        Mutation {
            name: "a file turned into a directory",
            apply: |s| {
                std::fs::remove_file(s.join("empty")).unwrap();
                std::fs::create_dir(s.join("empty")).unwrap();
            },
            want: &["/empty: is a regular file in the image, a directory in the source"],
            view_sees_it: true,
        },
    ];
    for m in &mutations {
        let source = work.path().join(m.name);
        edge_tree(&source);
        (m.apply)(&source);
        let debugfs = ext4::compare_tree(&image, 0, b"/", &source, Expect::AsSource, Links::AsSource);
        assert_caught(&format!("compare_tree ({})", m.name), debugfs, m.want);
        let view = ext4::ext4_view_compare(&image, 0, b"/", &source, Expect::AsSource);
        if m.view_sees_it {
            assert_caught(&format!("ext4_view_compare ({})", m.name), view, m.want);
        } else {
            assert_eq!(view, Ok(()), "ext4-view cannot see {}", m.name);
        }
    }
    // And the unchanged tree still passes, so the mutations, not the copies, were caught.
    let same = work.path().join("same");
    edge_tree(&same);
    assert_clean(&image, 0, b"/", &same, Expect::AsSource);
}

/// Changes made to the image (with `debugfs -w`, which keeps checksums right) are caught too.
#[test]
fn image_changes_are_caught() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    edge_tree(&source);
    let reference = work.path().join("fs.img");
    mkfs(&source, &reference, 64 * MIB);
    let cases: [(&str, &[&str]); 4] = [
        ("sif /one uid 77", &["/one: owner 77:"]),
        ("sif /4096 size 4095", &["/4096: size 4095 in the image, 4096 in the source"]),
        ("sif /a/b mode 040700", &["/a/b: mode 0700 in the image, expected 0755"]),
        ("unlink /a/linked-too", &["/a/linked-too: regular file in the source is missing from the image"]),
    ];
    for (request, want) in cases {
        let image = work.path().join("changed.img");
        std::fs::copy(&reference, &image).unwrap();
        let debugfs = tools::require("debugfs", "e2fsprogs");
        let out = tools::run_ok(Command::new(debugfs).args(["-w", "-R", request]).arg(&image));
        assert!(!String::from_utf8_lossy(&out.stderr).contains(':'), "{request}: {out:?}");
        assert_caught(request, ext4::compare_tree(&image, 0, b"/", &source, Expect::AsSource, Links::AsSource), want);
        assert_caught(request, ext4::ext4_view_compare(&image, 0, b"/", &source, Expect::AsSource), want);
    }
}

/// Long run, by hand: `cargo test -p kiln-tests --test e2e large_random_trees -- --ignored`.
#[test]
#[ignore = "long run: several minutes"]
fn large_random_trees() {
    for seed in 0..3 {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        let stats = trees::random_tree(seed, &source, TreeSize::Large);
        let image = work.path().join("fs.img");
        mkfs(&source, &image, stats.fs_size_hint());
        index_directories(&image);
        assert_clean(&image, 0, b"/", &source, Expect::AsSource);
    }
}

/// The first block of group 0's inode table, from `dumpe2fs`.
fn inode_table_block(image: &Path) -> u64 {
    let out = tools::run_ok(Command::new(tools::require("dumpe2fs", "e2fsprogs")).arg(image));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with("Inode table at ")).expect("an inode table line");
    let range = line.trim_start().trim_start_matches("Inode table at ").split_whitespace().next().unwrap();
    range.split('-').next().unwrap().parse().unwrap()
}

#[test]
fn e2fsck_catches_corruption() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    trees::random_tree(3, &source, TreeSize::Small);
    let image = work.path().join("fs.img");
    mkfs(&source, &image, 64 * MIB);
    ext4::e2fsck_clean(&image, 0).unwrap();

    // One byte of the root inode (inode 2, the second 256-byte slot): its link count.
    let corrupt = work.path().join("corrupt.img");
    std::fs::copy(&image, &corrupt).unwrap();
    let at = inode_table_block(&corrupt) * 4096 + 256 + 0x1a;
    let f = File::options().read(true).write(true).open(&corrupt).unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    drop(f);
    let err = ext4::e2fsck_clean(&corrupt, 0).unwrap_err();
    assert!(err.contains("Inode 2"), "{err}");

    // Truncated by 8 MiB at the end, where there is nothing but free blocks: e2fsck alone says only
    // "Abort? no" and exits 0.
    let short = work.path().join("short.img");
    std::fs::copy(&image, &short).unwrap();
    File::options().write(true).open(&short).unwrap().set_len(56 * MIB).unwrap();
    let err = ext4::e2fsck_clean(&short, 0).unwrap_err();
    assert!(err.contains("Abort? no"), "{err}");
}

/// The filesystem at 1 MiB inside a bigger file whose other bytes are 0xAA: every checker reads it there,
/// and none finds a filesystem at 0.
#[test]
fn filesystem_at_an_offset() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    edge_tree(&source);
    let image = work.path().join("fs.img");
    mkfs(&source, &image, 64 * MIB);
    let disk = work.path().join("disk.img");
    let fs = std::fs::read(&image).unwrap();
    let out = File::create(&disk).unwrap();
    out.write_all_at(&vec![0xaa; MIB as usize], 0).unwrap();
    out.write_all_at(&fs, MIB).unwrap();
    out.write_all_at(&vec![0xaa; MIB as usize], MIB + fs.len() as u64).unwrap();
    drop(out);

    assert_clean(&disk, MIB, b"/", &source, Expect::AsSource);
    let features = ext4::features(&disk, MIB);
    for f in ["metadata_csum", "64bit", "extent", "huge_file", "dir_nlink", "extra_isize", "has_journal"] {
        assert!(features.contains(f), "{f} missing from {features:?}");
    }
    assert_eq!(ext4::superblock_field(&disk, MIB, "Block size").as_deref(), Some("4096"));
    assert_eq!(ext4::superblock_field(&disk, MIB, "Inode size").as_deref(), Some("256"));
    assert_eq!(ext4::superblock_field(&disk, MIB, "Filesystem volume name").as_deref(), Some("nixos"));
    assert_eq!(
        ext4::superblock_field(&disk, MIB, "Filesystem UUID"),
        ext4::superblock_field(&image, 0, "Filesystem UUID")
    );
    assert_eq!(ext4::inode_info(&disk, MIB, b"/linked"), ext4::inode_info(&image, 0, b"/linked"));
    assert_eq!(ext4::tree_inodes(&disk, MIB, b"/"), ext4::tree_inodes(&image, 0, b"/"));

    assert!(ext4::e2fsck_clean(&disk, 0).is_err());
    // The last 512 KiB of the filesystem cut off: e2fsck measures the whole file, offset included, and
    // says nothing; e2fsck_clean's own size check does.
    let cut = work.path().join("cut.img");
    std::fs::copy(&disk, &cut).unwrap();
    File::options().write(true).open(&cut).unwrap().set_len(MIB + fs.len() as u64 - 512 * 1024).unwrap();
    let e2fsck = tools::run(
        Command::new(tools::require("e2fsck", "e2fsprogs")).arg("-fn").arg(format!("{}?offset={MIB}", cut.display())),
    );
    assert!(e2fsck.status.success(), "e2fsck alone notices: {e2fsck:?}");
    let err = ext4::e2fsck_clean(&cut, MIB).unwrap_err();
    assert!(err.contains("extends past the end"), "{err}");
    assert!(ext4::compare_tree(&disk, 0, b"/", &source, Expect::AsSource, Links::AsSource).is_err());
    assert!(ext4::ext4_view_compare(&disk, 0, b"/", &source, Expect::AsSource).is_err());
    assert!(ext4::e2fsck_clean(&disk, MIB + 4096).is_err());
}

/// What `extract` (debugfs rdump) keeps and loses, as its documentation says.
#[test]
fn extract_keeps_what_it_documents() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    edge_tree(&source);
    let image = work.path().join("fs.img");
    mkfs(&source, &image, 64 * MIB);
    let disk = work.path().join("disk.img");
    let out = File::create(&disk).unwrap();
    out.write_all_at(&std::fs::read(&image).unwrap(), MIB).unwrap();
    drop(out);
    let dest = work.path().join("out");
    ext4::extract(&disk, MIB, &dest).unwrap();

    let mut all = Vec::new();
    walk(&source, &mut all);
    for src in &all {
        let rel = src.strip_prefix(&source).unwrap();
        let got = dest.join(rel);
        let (s, g) = (std::fs::symlink_metadata(src).unwrap(), std::fs::symlink_metadata(&got));
        let name = rel.display();
        if s.file_type().is_fifo() {
            assert!(g.is_err(), "{name}: rdump skips FIFOs");
            continue;
        }
        let g = g.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.file_type(), g.file_type(), "{name}");
        if s.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(src).unwrap(), std::fs::read_link(&got).unwrap(), "{name}");
            continue;
        }
        assert_eq!(g.mode() & 0o7777, s.mode() & 0o777, "{name}: rdump keeps rwx bits, drops setuid/setgid/sticky");
        assert_eq!((g.uid(), g.gid(), g.mtime()), (s.uid(), s.gid(), s.mtime()), "{name}");
        if s.is_file() {
            assert_eq!(std::fs::read(src).unwrap(), std::fs::read(&got).unwrap(), "{name}");
        }
    }
    // Hard links come out as separate files; holes come out written.
    let (a, b) =
        (std::fs::metadata(dest.join("linked")).unwrap(), std::fs::metadata(dest.join("a/linked-too")).unwrap());
    assert_ne!(a.ino(), b.ino());
    assert!(std::fs::metadata(dest.join("sparse")).unwrap().blocks() * 512 >= 3 * MIB);
    assert!(std::fs::symlink_metadata(dest.join("lost+found")).unwrap().is_dir());
}

/// `Links::SameContents` (what `kiln build` promises): identical files (same bytes and executable bit) must be
/// one inode, anything else must not; `Links::AsSource` (what a writer of a given tree promises) follows the
/// host's inodes instead. Each rule catches what the other allows, naming both files.
#[test]
fn link_rules_catch_what_they_promise() {
    let work = tempfile::tempdir().unwrap();
    let tree = |name: &str, link: bool| {
        let root = work.path().join(name);
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::write(root.join("a/x"), b"identical").unwrap();
        if link {
            std::fs::hard_link(root.join("a/x"), root.join("b/y")).unwrap();
        } else {
            std::fs::write(root.join("b/y"), b"identical").unwrap();
        }
        std::fs::write(root.join("b/run"), b"identical").unwrap();
        std::fs::set_permissions(root.join("b/run"), Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("b/other"), b"identicaL").unwrap();
        std::os::unix::fs::symlink("a/x", root.join("s1")).unwrap();
        std::os::unix::fs::symlink("a/x", root.join("s2")).unwrap();
        root
    };
    let (copies, linked) = (tree("copies", false), tree("linked", true));
    let (copies_img, linked_img) = (work.path().join("copies.img"), work.path().join("linked.img"));
    mkfs(&copies, &copies_img, 16 * MIB);
    mkfs(&linked, &linked_img, 16 * MIB);
    let check = |img: &Path, src: &Path, links| ext4::compare_tree(img, 0, b"/", src, Expect::AsSource, links);
    // Each image against its own tree, by host inodes.
    assert_eq!(check(&copies_img, &copies, Links::AsSource), Ok(()));
    assert_eq!(check(&linked_img, &linked, Links::AsSource), Ok(()));
    // The linked image is what SameContents wants of either tree (metadata aside: compare against `linked`).
    assert_eq!(check(&linked_img, &linked, Links::SameContents), Ok(()));
    assert_caught(
        "SameContents on copies",
        check(&copies_img, &copies, Links::SameContents),
        &["/a/x: is identical to /b/y in the source, but they are different inodes in the image"],
    );
    // A name linked to a file of other bytes, or of another executable bit, is caught.
    let (relinked, relinked_img) = (work.path().join("relinked"), work.path().join("relinked.img"));
    std::fs::create_dir_all(relinked.join("a")).unwrap();
    std::fs::write(relinked.join("a/x"), b"identical").unwrap();
    std::fs::write(relinked.join("a/y"), b"different").unwrap();
    std::fs::hard_link(relinked.join("a/x"), relinked.join("z")).unwrap();
    mkfs(&relinked, &relinked_img, 16 * MIB);
    std::fs::remove_file(relinked.join("z")).unwrap();
    std::fs::write(relinked.join("z"), b"differenT").unwrap();
    assert_caught(
        "SameContents on a link of other bytes",
        check(&relinked_img, &relinked, Links::SameContents),
        &["/a/x: is one inode (", ") with /z in the image, but they are not identical"],
    );
}
