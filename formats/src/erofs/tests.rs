use std::sync::Arc;

use super::*;
use crate::ext4::{Meta, Source, Tree};
use crate::sink::MemSink;

fn meta(perm: u16) -> Meta {
    Meta { perm, uid: 0, gid: 0, mtime: 1 }
}

fn opts() -> Options {
    Options { label: b"nix-store".to_vec(), uuid: [7; 16], timestamp: 1 }
}

fn bytes(b: &[u8]) -> Source {
    Source::Bytes(Arc::from(b))
}

fn image(tree: &Tree, opts: &Options) -> (Plan, Vec<u8>) {
    let plan = plan(tree, opts).unwrap();
    let sink = MemSink::new(plan.size_bytes() as usize);
    plan.write(tree, &sink, 0).unwrap();
    (plan, sink.into_inner())
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The inode of nid `nid`: (format, mode, size, raw block address, bytes after it).
fn inode(img: &[u8], nid: u64) -> (u16, u16, u64, u32, &[u8]) {
    let at = 4096 + 32 * nid as usize;
    let format = le16(img, at);
    let size = if format & 1 == 0 {
        u64::from(le32(img, at + 8))
    } else {
        u64::from_le_bytes(img[at + 8..at + 16].try_into().unwrap())
    };
    let isize = if format & 1 == 0 { 32 } else { 64 };
    (format, le16(img, at + 4), size, le32(img, at + 16), &img[at + isize..])
}

#[test]
fn superblock_fields_and_checksum() {
    let t = Tree::new(meta(0o755));
    let (plan, img) = image(&t, &opts());
    let sb = &img[1024..];
    assert_eq!(le32(sb, 0), MAGIC);
    assert_eq!(sb[0x0C], 12, "4 KiB blocks");
    assert_eq!(le16(sb, 0x0E), 0, "the root is the first inode");
    assert_eq!(le32(sb, 0x24) as u64, plan.blocks());
    assert_eq!(le32(sb, 0x28), 1, "metadata from block 1");
    assert_eq!(&sb[0x30..0x40], &[7; 16]);
    assert_eq!(&sb[0x40..0x49], b"nix-store");
    let mut copy = img[1024..4096].to_vec();
    copy[4..8].fill(0);
    assert_eq!(!crc32c::crc32c(&copy), le32(sb, 4));
    assert_eq!(plan.blocks(), 2, "superblock block and one metadata block");
}

#[test]
fn small_files_dirs_and_symlinks_are_inline_and_big_ones_get_blocks() {
    let mut t = Tree::new(meta(0o755));
    let small = t.file(t.root(), b"small", meta(0o444), 5, bytes(b"hello")).unwrap();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
    let bigf = t.file(t.root(), b"big", meta(0o555), big.len() as u64, bytes(&big)).unwrap();
    let exact = vec![9u8; 8192];
    let exactf = t.file(t.root(), b"exact", meta(0o444), 8192, bytes(&exact)).unwrap();
    let link = t.symlink(t.root(), b"link", meta(0o777), b"small").unwrap();
    let empty = t.file(t.root(), b"empty", meta(0o444), 0, bytes(b"")).unwrap();
    let (plan, img) = image(&t, &opts());
    let (f, mode, size, _, after) = inode(&img, plan.nid(small));
    assert_eq!((f, mode, size, &after[..5]), (2 << 1, 0o100_444, 5, &b"hello"[..]));
    let (f, mode, size, blk, after) = inode(&img, plan.nid(bigf));
    assert_eq!((f, mode, size), (2 << 1, 0o100_555, 10_000));
    let at = blk as usize * 4096;
    assert_eq!(&img[at..at + 8192], &big[..8192]);
    assert_eq!(&after[..10_000 - 8192], &big[8192..]);
    let (f, _, size, blk, _) = inode(&img, plan.nid(exactf));
    assert_eq!((f, size), (0, 8192), "no tail: flat plain");
    assert_eq!(&img[blk as usize * 4096..][..8192], &exact[..]);
    let (f, mode, size, _, after) = inode(&img, plan.nid(link));
    assert_eq!((f, mode, size, &after[..5]), (2 << 1, 0o120_777, 5, &b"small"[..]));
    let (f, _, size, _, _) = inode(&img, plan.nid(empty));
    assert_eq!((f, size), (0, 0));
    // The root directory: 7 entries, inline.
    let (f, mode, size, _, after) = inode(&img, plan.nid(0));
    assert_eq!((f, mode), (2 << 1, 0o040_755));
    assert_eq!(size, 7 * 12 + (1 + 2 + 3 + 5 + 5 + 4 + 5) as u64);
    assert_eq!(le16(after, 8), 7 * 12, "the first name follows the 7 entries");
    assert_eq!(&after[84..87], b"...", "\".\" then \"..\"");
}

#[test]
fn links_share_an_inode_and_directories_count_their_subdirectories() {
    let mut t = Tree::new(meta(0o755));
    let d = t.mkdir(t.root(), b"d", meta(0o555)).unwrap();
    t.mkdir(d, b"e", meta(0o555)).unwrap();
    t.mkdir(d, b"f", meta(0o555)).unwrap();
    let f = t.file(d, b"x", meta(0o444), 1, bytes(b"x")).unwrap();
    t.link(t.root(), b"y", f).unwrap();
    let (plan, img) = image(&t, &opts());
    let nlink = |nid: u64| le16(&img, 4096 + 32 * nid as usize + 6);
    assert_eq!(nlink(plan.nid(d)), 4);
    assert_eq!(nlink(plan.nid(f)), 2);
    assert_eq!(nlink(plan.nid(0)), 3);
}

#[test]
fn what_compact_inodes_cannot_hold_gets_an_extended_inode() {
    let mut t = Tree::new(meta(0o755));
    let other_time = t.file(t.root(), b"t", Meta { mtime: 1_700_000_000, ..meta(0o444) }, 1, bytes(b"t")).unwrap();
    let owner = t.file(t.root(), b"o", Meta { uid: 70_000, gid: 5, ..meta(0o444) }, 1, bytes(b"o")).unwrap();
    let (plan, img) = image(&t, &opts());
    for node in [other_time, owner] {
        let at = 4096 + 32 * plan.nid(node) as usize;
        assert_eq!(le16(&img, at) & 1, 1, "extended");
        assert_eq!(at % 32, 0);
    }
    let at = 4096 + 32 * plan.nid(other_time) as usize;
    assert_eq!(u64::from_le_bytes(img[at + 32..at + 40].try_into().unwrap()), 1_700_000_000);
    assert_eq!(img[at + 64], b't', "inline data after the 64-byte inode");
    let at = 4096 + 32 * plan.nid(owner) as usize;
    assert_eq!((le32(&img, at + 0x18), le32(&img, at + 0x1C)), (70_000, 5));
}

#[test]
fn caller_files_are_located_tail_included_and_left_to_the_caller() {
    let mut t = Tree::new(meta(0o755));
    let f = t.file(t.root(), b"f", meta(0o444), 5000, Source::Caller).unwrap();
    let g = t.file(t.root(), b"g", meta(0o444), 100, Source::Caller).unwrap();
    let plan = plan(&t, &opts()).unwrap();
    let sink = MemSink::new(plan.size_bytes() as usize);
    assert!(matches!(plan.write(&t, &sink, 0), Err(Error::NotWritten { .. })));
    let sink = MemSink::new(plan.size_bytes() as usize + 512);
    plan.write_metadata(&t, &sink, 512).unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 200) as u8 + 1).collect();
    let w = plan.file_writer(f, &sink, 512).unwrap();
    assert!(!w.owns_block_slack());
    let (at, room) = w.locate(4095).unwrap();
    assert_eq!(room, 1);
    let (tail_at, tail_room) = w.locate(4096).unwrap();
    assert_eq!(tail_room, 904);
    assert!(tail_at < at, "the tail is in the metadata, before the data blocks");
    assert!(w.locate(5000).is_none());
    w.write_at(4000, &data[4000..]).unwrap();
    w.write_at(0, &data[..4000]).unwrap();
    plan.file_writer(g, &sink, 512).unwrap().write_at(0, &[3; 100]).unwrap();
    let img = sink.into_inner()[512..].to_vec();
    let (_, _, size, blk, after) = inode(&img, plan.nid(f));
    assert_eq!(size, 5000);
    assert_eq!(&img[blk as usize * 4096..][..4096], &data[..4096]);
    assert_eq!(&after[..904], &data[4096..]);
    let (_, _, _, _, after) = inode(&img, plan.nid(g));
    assert_eq!(&after[..100], &[3; 100]);
    // The same bytes as the writer makes from the files' bytes.
    let mut t2 = Tree::new(meta(0o755));
    t2.file(t2.root(), b"f", meta(0o444), 5000, bytes(&data)).unwrap();
    t2.file(t2.root(), b"g", meta(0o444), 100, bytes(&[3; 100])).unwrap();
    assert_eq!(image(&t2, &opts()).1, img);
}

#[test]
fn duplicate_names_and_long_labels_are_refused() {
    let mut t = Tree::new(meta(0o755));
    t.file(t.root(), b"a", meta(0o444), 1, bytes(b"a")).unwrap();
    t.file(t.root(), b"a", meta(0o444), 1, bytes(b"b")).unwrap();
    assert!(matches!(plan(&t, &opts()), Err(Error::DuplicateName { .. })));
    let t = Tree::new(meta(0o755));
    let long = Options { label: vec![b'x'; 17], ..opts() };
    assert!(matches!(plan(&t, &long), Err(Error::LabelTooLong(17))));
}

#[test]
fn the_same_tree_gives_the_same_bytes_whatever_the_threads() {
    let mut t = Tree::new(meta(0o755));
    for d in 0..20 {
        let dir = t.mkdir(t.root(), format!("d{d}").as_bytes(), meta(0o555)).unwrap();
        for i in 0..700 {
            let body: Vec<u8> = format!("{d}-{i}-").repeat(i % 50 + 1).into_bytes();
            t.file(dir, format!("file-{i}").as_bytes(), meta(0o444), body.len() as u64, bytes(&body)).unwrap();
        }
    }
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| image(&t, &opts()).1);
    let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(|| image(&t, &opts()).1);
    assert!(one == four);
}

mod lz4 {
    use super::super::lz4::{Compressor, Extent, WINDOW, compress, decompress, worth_it};

    fn text(len: usize) -> Vec<u8> {
        let words = [&b"alpha "[..], b"beta ", b"gamma\n", b"delta ", b"store ", b"nix "];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = Vec::new();
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % 6) as usize]);
        }
        out.truncate(len);
        out
    }

    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn clusters_do_not_depend_on_how_the_bytes_are_fed() {
        let mut data = text(700_000);
        data.extend(noise(50_000, 5));
        data.extend(vec![0u8; 600_000]);
        data.extend(text(12_345));
        let whole = compress(&data);
        for piece in [1usize, 4095, 4096, 65_537, WINDOW, WINDOW + 1, 3 * WINDOW] {
            let mut out = Vec::new();
            let mut c = Compressor::new();
            for chunk in data.chunks(piece) {
                c.push(chunk, &mut out);
            }
            let extents = c.finish(&mut out);
            assert!(extents == whole.1 && out == whole.0, "fed {piece} bytes at a time");
        }
        assert_eq!(decompress(&whole.1, &whole.0, data.len() as u64).unwrap(), data);
    }

    #[test]
    fn clusters_cover_the_file_in_order_and_plain_ones_hold_a_block() {
        let mut data = noise(10_000, 1);
        data.extend(text(100_000));
        data.extend(noise(5_000, 2));
        let (blocks, extents) = compress(&data);
        assert_eq!(blocks.len(), extents.len() * 4096);
        assert_eq!(extents[0], Extent { start: 0, plain: true });
        assert_eq!(extents[1], Extent { start: 4096, plain: true });
        assert!(extents.iter().any(|e| !e.plain));
        for (i, w) in extents.windows(2).enumerate() {
            let len = w[1].start - w[0].start;
            assert!(if w[0].plain { len == 4096 } else { len > 4096 }, "cluster {i}: {len} bytes");
        }
        let c = extents.iter().position(|e| !e.plain).unwrap();
        assert_eq!(decompress(&extents, &blocks, data.len() as u64).unwrap(), data);
        // Corrupt a compressed cluster: decompression fails or gives other bytes, never panics.
        let mut bad = blocks.clone();
        bad[c * 4096 + 4095] ^= 0xFF;
        assert!(decompress(&extents, &bad, data.len() as u64).map_or(true, |d| d != data));
    }

    #[test]
    fn small_and_incompressible_files_are_not_worth_it() {
        let (_, e) = compress(&text(4096));
        assert!(!worth_it(4096, e.len()));
        let (_, e) = compress(&text(5000));
        assert!(worth_it(5000, e.len()), "{e:?}");
        let (_, e) = compress(&noise(100_000, 3));
        assert!(e.iter().all(|e| e.plain) && !worth_it(100_000, e.len()));
        assert!(compress(&[]).1.is_empty());
    }
}
