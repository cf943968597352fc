//! Smoke test: a small tree through plan and write, checked by e2fsck (from e2fsprogs).

use std::process::Command;
use std::sync::Arc;

use kiln_formats::ext4::{Meta, Options, Size, Source, Tree, plan};

use crate::common::{run, tool};

fn meta(perm: u16) -> Meta {
    Meta { perm, uid: 0, gid: 0, mtime: 1 }
}

fn e2fsck(path: &std::path::Path) -> (bool, String) {
    let out = run(Command::new(tool("e2fsck", "e2fsprogs")).arg("-fn").arg(path));
    (out.ok, out.text)
}

#[test]
fn small_tree_is_clean() {
    let mut t = Tree::new(meta(0o755));
    let nix = t.mkdir(t.root(), b"nix", meta(0o755)).unwrap();
    let store = t.mkdir(nix, b"store", meta(0o1775)).unwrap();
    let p = t.mkdir(store, b"0123456789abcdfghijklmnpqrsvwxyz-hello", meta(0o555)).unwrap();
    let f = t.file(p, b"hello.txt", meta(0o444), 6, Source::Bytes(Arc::from(&b"hello\n"[..]))).unwrap();
    t.link(p, b"again.txt", f).unwrap();
    t.symlink(p, b"fast", meta(0o777), b"hello.txt").unwrap();
    t.symlink(p, b"slow", meta(0o777), &[b'x'; 100]).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    t.file(p, b"big", meta(0o555), big.len() as u64, Source::Bytes(Arc::from(big))).unwrap();
    let many = t.mkdir(p, b"many", meta(0o555)).unwrap();
    for i in 0..3000 {
        t.file(many, format!("entry-{i:05}").as_bytes(), meta(0o444), 0, Source::Bytes(Arc::from(&b""[..]))).unwrap();
    }
    let mut opts = Options::new(b"nixos", [7; 16], [9; 16], 1);
    opts.size = Size::Auto { extra_bytes: 16 << 20 };
    let plan = plan(&t, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    let file = std::fs::File::create(&img).unwrap();
    file.set_len(plan.size_bytes()).unwrap();
    plan.write(&t, &file, 0).unwrap();
    drop(file);
    let (ok, out) = e2fsck(&img);
    assert!(ok, "{out}");
}
