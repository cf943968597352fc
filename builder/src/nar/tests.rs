//! Unit tests of the NAR serialiser.
use std::ffi::OsStr;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

fn write(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A store directory holding one store path made by `make`, and its inventory.
fn one_path(make: impl FnOnce(&Path)) -> (tempfile::TempDir, StoreDir, PathInventory) {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{H}-case");
    make(&dir.path().join(&base));
    let store = StoreDir::new(dir.path()).unwrap();
    let inv = PathInventory::walk(&store, &StorePath::from_base_name(&base).unwrap()).unwrap();
    (dir, store, inv)
}

/// A NAR spelled as its tokens, each written as `str(token)` (a file's contents are one such string too).
fn nar(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        out.extend_from_slice(&(t.len() as u64).to_le_bytes());
        out.extend_from_slice(t);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

struct Case {
    name: &'static str,
    make: fn(&Path),
    /// `nix-store --dump <path> | sha256sum` and `| wc -c` (Nix 2.8) on the same tree.
    hash: &'static str,
    size: u64,
    /// The whole stream, where it is short enough to spell out.
    bytes: Option<Vec<u8>>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "empty regular file",
            make: |p| write(p, b"", 0o644),
            hash: "77ac62e2629d8e45f624589c0c8bf99e24b3a722349bf1e79bc186008534e246",
            size: 112,
            bytes: Some(nar(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"", b")"])),
        },
        Case {
            name: "executable with padded contents",
            make: |p| write(p, b"#!/bin/sh\n", 0o755),
            hash: "6283c1668260f903d1a895c0cd6b822fa4b68762bb0b17cedef2d39d97e26554",
            size: 160,
            bytes: Some(nar(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"executable",
                b"",
                b"contents",
                b"#!/bin/sh\n",
                b")",
            ])),
        },
        Case {
            name: "contents of exactly 8 bytes (no padding)",
            make: |p| write(p, b"12345678", 0o644),
            hash: "22d63223426447e64aa20d76d506b3e062a2d242bb797536dbf3ee681be3f53c",
            size: 120,
            bytes: None,
        },
        Case {
            name: "symlink",
            make: |p| symlink("../foo", p).unwrap(),
            hash: "c472350f543de0fe996c6e6c35eacdd9d2c042dcd75dda7c93c4db3cff07a2c7",
            size: 120,
            bytes: Some(nar(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"../foo", b")"])),
        },
        Case {
            name: "empty directory",
            make: |p| std::fs::create_dir(p).unwrap(),
            hash: "a50a5ab6d992f5598edd92105059fae9acfc192981e08bd88534c2167e92526a",
            size: 96,
            bytes: Some(nar(&[b"nix-archive-1", b"(", b"type", b"directory", b")"])),
        },
        Case {
            // Sorted bytewise: Z a b sub \xc3\xa9 \xff (bytes >= 0x80 after ASCII); sub holds an executable,
            // an absolute symlink and an empty directory, so directories close at several depths.
            name: "nested directory with non-ASCII names",
            make: |p| {
                std::fs::create_dir_all(p.join("sub/z")).unwrap();
                write(&p.join("Z"), b"z", 0o644);
                write(&p.join("a"), b"a", 0o644);
                write(&p.join("b"), b"", 0o644);
                write(&p.join(OsStr::from_bytes(b"\xc3\xa9")), b"e", 0o644);
                write(&p.join(OsStr::from_bytes(b"\xff")), b"f", 0o644);
                write(&p.join("sub/x"), b"x", 0o755);
                symlink("/nix/store/x", p.join("sub/y")).unwrap();
            },
            hash: "193744113e368a65f5d37ffd761d2135d596dcecd5abf32a88afc8ada5f49667",
            size: 1808,
            bytes: None,
        },
    ]
}

#[test]
fn nar_matches_nix_store_dump() {
    for case in cases() {
        let (_dir, store, inv) = one_path(case.make);
        let info = nar_info(&store, &inv).unwrap();
        assert_eq!(hex(&info.hash), case.hash, "{}", case.name);
        assert_eq!(info.size, case.size, "{}", case.name);
        let mut writer = NarWriter::with_sink(Vec::new());
        write_path(&store.physical(&inv.path), &inv, &mut writer).unwrap();
        let (bytes, size) = writer.into_sink().unwrap();
        assert_eq!(bytes.len() as u64, size, "{}", case.name);
        assert_eq!(hex(&Sha256::digest(&bytes)), case.hash, "{}", case.name);
        if let Some(want) = case.bytes {
            assert_eq!(bytes, want, "{}", case.name);
        }
    }
}

#[test]
fn holes_hash_as_zeros() {
    let mut data = vec![0u8; (3 << 20) + 4321];
    data[..5].copy_from_slice(b"start");
    let n = data.len();
    data[n - 3..].copy_from_slice(b"end");
    let (_d1, dense_store, dense) = one_path(|p| write(p, &data, 0o644));
    let (_d2, sparse_store, sparse) = one_path(|p| {
        let mut f = File::create(p).unwrap();
        f.write_all(b"start").unwrap();
        f.seek(SeekFrom::Start(n as u64 - 3)).unwrap();
        f.write_all(b"end").unwrap();
    });
    let want = nar_info(&dense_store, &dense).unwrap();
    assert_eq!(nar_info(&sparse_store, &sparse).unwrap(), want);
    assert_eq!(want.size, 112 + n.next_multiple_of(8) as u64);
}

#[test]
fn fed_by_hand_in_uneven_chunks() {
    let (_dir, store, inv) = one_path(|p| write(p, b"#!/bin/sh\n", 0o755));
    let mut h = NarHasher::new();
    h.entry(Path::new(""), &inv.entries[0].kind).unwrap();
    h.file_chunk(b"#!/b").unwrap();
    h.file_chunk(b"").unwrap();
    h.file_chunk(b"in/sh\n").unwrap();
    h.end_file().unwrap();
    assert_eq!(h.finish().unwrap(), nar_info(&store, &inv).unwrap());
}

#[test]
fn rejects_calls_out_of_order() {
    use Op::{Chunk, Dir, End, File, Zeros};
    enum Op {
        Dir(&'static str),
        File(&'static str, u64),
        Chunk(&'static [u8]),
        Zeros(u64),
        End,
    }
    let run = |ops: &[Op]| -> Result<NarInfo, NarError> {
        let mut h = NarHasher::new();
        for op in ops {
            match *op {
                Dir(rel) => h.entry(Path::new(rel), &Kind::Dir)?,
                File(rel, size) => h.entry(Path::new(rel), &Kind::File { size, executable: false, sparse: false })?,
                Chunk(data) => h.file_chunk(data)?,
                Zeros(n) => h.file_zeros(n)?,
                End => h.end_file()?,
            }
        }
        h.finish()
    };
    let cases: &[(&str, &[Op], &str)] = &[
        ("root not first", &[Dir("a")], "a: not the next entry in NAR order (the first entry must be the store"),
        ("unsorted siblings", &[Dir(""), Dir("b"), Dir("a")], "a: not the next entry in NAR order (names must be"),
        ("duplicate name", &[Dir(""), Dir("a"), Dir("a")], "names must be unique and sorted bytewise"),
        ("parent not open", &[Dir(""), Dir("a"), Dir("b/c")], "b/c: not the next entry in NAR order (its parent"),
        ("closed dir reopened", &[Dir(""), Dir("a"), Dir("b"), Dir("a/x")], "parent directory is not open"),
        ("child of a file", &[Dir(""), File("f", 0), End, Dir("f/x")], "parent directory is not open"),
        ("after a single-file path", &[File("", 0), End, Dir("x")], "single file or symlink"),
        ("dot-dot", &[Dir(""), Dir("../x")], "not a plain relative path"),
        ("file too long", &[File("", 3), Chunk(b"ab"), Chunk(b"cd")], "regular file of 3 bytes was fed 4 bytes"),
        ("file too short", &[File("", 3), Zeros(2), End], "regular file of 3 bytes was fed 2 bytes"),
        ("entry inside a file", &[Dir(""), File("f", 1), File("g", 1)], "entry: the previous file is not ended"),
        ("chunk outside a file", &[Chunk(b"x")], "file_chunk: no regular file is open"),
        ("end outside a file", &[Dir(""), End], "end_file: no regular file is open"),
        ("nothing written", &[], "finish: no entry was written"),
        ("file not ended", &[File("", 1), Chunk(b"x")], "finish: a file is not ended"),
    ];
    for (name, ops, want) in cases {
        let err = run(ops).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
    // `nix-store --dump | sha256sum` (Nix 2.8) of that tree: a/f holding "1234" and five zero bytes, b/c empty.
    const TREE: &str = "fa15e85dd53b532e38f8cb5cc10534f13fcf5f2eb00430863960f8d3de3c004b";
    let ok = run(&[Dir(""), Dir("a"), File("a/f", 9), Chunk(b"1234"), Zeros(5), End, Dir("b"), Dir("b/c")]).unwrap();
    assert_eq!((hex(&ok.hash).as_str(), ok.size), (TREE, 800));
}

#[test]
fn a_file_changed_since_the_inventory_is_named() {
    let (_dir, store, inv) = one_path(|p| {
        std::fs::create_dir(p).unwrap();
        write(&p.join("f"), b"abc", 0o644);
    });
    let f = store.physical(&inv.path).join("f");
    write(&f, b"abcd", 0o644);
    let err = format!("{:#}", nar_info(&store, &inv).unwrap_err());
    assert!(err.contains(&format!("{}: reading its contents: changed since the inventory", f.display())), "{err}");
}

/// Hashes the store path with a tee that calls `during` once, after the first chunk is read.
fn hash_while(store: &StoreDir, inv: &PathInventory, during: impl FnOnce()) -> String {
    struct During<F: FnOnce()> {
        during: Option<F>,
        buf: Vec<u8>,
    }
    impl<F: FnOnce()> Tee for During<F> {
        fn buffer(&mut self, _: usize, _: u64, max: usize) -> Result<&mut [u8]> {
            self.buf.resize(max.min(CHUNK), 0);
            Ok(&mut self.buf)
        }
        fn filled(&mut self, _: usize) -> Result<()> {
            if let Some(f) = self.during.take() {
                f();
            }
            Ok(())
        }
    }
    let mut hasher = NarHasher::new();
    let mut tee = During { during: Some(during), buf: Vec::new() };
    let err = write_path_tee(&store.physical(&inv.path), inv, &mut hasher, &mut tee).unwrap_err();
    format!("{err:#}")
}

#[test]
fn a_file_that_grows_or_shrinks_while_being_read_is_named() {
    // Larger than one read, so a truncation after the first chunk makes the next read come up short.
    let big = vec![7u8; CHUNK + 100];
    let (_dir, store, inv) = one_path(|p| {
        std::fs::create_dir(p).unwrap();
        write(&p.join("f"), &big, 0o644);
    });
    let f = store.physical(&inv.path).join("f");
    let err = hash_while(&store, &inv, || {
        std::fs::OpenOptions::new().append(true).open(&f).unwrap().write_all(b"more").unwrap();
    });
    let want = format!(
        "{}: reading its contents: changed since the inventory: {} bytes then, more now",
        f.display(),
        big.len()
    );
    assert!(err.contains(&want), "{err}");
    write(&f, &big, 0o644);
    let err =
        hash_while(&store, &inv, || std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(10).unwrap());
    let want = format!(
        "{}: reading its contents: changed since the inventory: {} bytes then, {CHUNK} now",
        f.display(),
        big.len()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn a_file_replaced_by_a_symlink_is_never_followed() {
    let (dir, store, inv) = one_path(|p| {
        std::fs::create_dir_all(p.join("d")).unwrap();
        write(&p.join("d/f"), b"abc", 0o644);
    });
    // Same size as the file, so only the symlink itself can give it away.
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    write(&outside.join("f"), b"xyz", 0o644);
    let root = store.physical(&inv.path);
    std::fs::remove_file(root.join("d/f")).unwrap();
    symlink(outside.join("f"), root.join("d/f")).unwrap();
    let err = format!("{:#}", nar_info(&store, &inv).unwrap_err());
    assert!(
        err.contains(&format!("{}: reading its contents: a symlink is in the way", root.join("d/f").display())),
        "{err}"
    );
    // A directory on the way replaced by a symlink to a copy of it outside the store.
    std::fs::remove_file(root.join("d/f")).unwrap();
    std::fs::remove_dir(root.join("d")).unwrap();
    symlink(&outside, root.join("d")).unwrap();
    let err = format!("{:#}", nar_info(&store, &inv).unwrap_err());
    assert!(err.contains("a symlink is in the way"), "{err}");
}

#[test]
fn hashes_a_closure_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let names = [format!("{H}-small"), format!("1{}-big", &H[1..]), format!("2{}-dir", &H[1..])];
    write(&dir.path().join(&names[0]), b"x", 0o644);
    write(&dir.path().join(&names[1]), &vec![7u8; 3 << 20], 0o755);
    std::fs::create_dir(dir.path().join(&names[2])).unwrap();
    let store = StoreDir::new(dir.path()).unwrap();
    let invs: Vec<_> =
        names.iter().map(|n| PathInventory::walk(&store, &StorePath::from_base_name(n).unwrap()).unwrap()).collect();
    let all = hash_closure(&store, &invs).unwrap();
    let one_by_one: Vec<_> = invs.iter().map(|i| nar_info(&store, i).unwrap()).collect();
    assert_eq!(all, one_by_one);
    assert_eq!(all[2].size, 96);
}

#[test]
fn verify_names_the_path_and_both_hashes() {
    let sp = StorePath::from_base_name(&format!("{H}-x")).unwrap();
    let a = NarInfo { hash: [0; 32], size: 8 };
    let b = NarInfo { hash: [1; 32], size: 8 };
    verify(&a, &a, &sp).unwrap();
    let err = verify(&a, &b, &sp).unwrap_err().to_string();
    assert!(err.starts_with(&format!("/nix/store/{H}-x: ")), "{err}");
    assert!(err.contains(&hash_string(&a.hash)) && err.contains(&hash_string(&b.hash)), "{err}");
    assert!(hash_string(&a.hash).starts_with("sha256:") && hash_string(&a.hash).len() == 7 + 52);
}
