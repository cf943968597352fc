//! The same comparison through `ext4-view`, a pure-Rust reader that shares no code with e2fsprogs.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use ext4_view::{Ext4, FileType, Metadata};
use kiln::readback::Disk;
use kiln_formats::disk::{ByteRange, Bytes};

use super::compare::{Diffs, ImageEntry, check_entries, content_pairs};
use super::host::{self, Kind, join_rel};
use super::{Expect, show};

/// An `ext4_view::File` as `io::Read`.
struct ViewReader(ext4_view::File);

impl Read for ViewReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_bytes(buf).map_err(io::Error::other)
    }
}

fn kind_of(t: FileType) -> Kind {
    if t.is_regular_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_fifo() {
        Kind::Other(0o010000)
    } else if t.is_char_dev() {
        Kind::Other(0o020000)
    } else if t.is_block_dev() {
        Kind::Other(0o060000)
    } else {
        Kind::Other(0o140000)
    }
}

fn entry_of(md: &Metadata, dirent: FileType) -> ImageEntry {
    ImageEntry {
        kind: kind_of(md.file_type()),
        dirent_kind: Some(kind_of(dirent)),
        perm: u32::from(md.mode()),
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.modified().seconds(),
        mtime_nsec: md.modified().nanoseconds(),
        size: md.len(),
        ino: None,
        target: None,
    }
}

/// [`compare_tree`](super::compare_tree) through `ext4-view` 1.0 instead of debugfs: names, kinds (of
/// both the directory entry and the inode), mode bits, uid, gid, mtime (seconds and nanoseconds), sizes,
/// every byte of every name of a regular file, and symlink targets.
///
/// What it cannot check: hard-link identity and link counts (ext4-view exposes no inode numbers, so a
/// hard link broken into two equal copies passes here and is caught only by `compare_tree`); xattrs;
/// which blocks hold the data (holes read as zeros, like allocated zero blocks). It also reads every name
/// of a hard-linked file again. `Ext4` is not thread-safe; each call loads its own.
///
/// What ext4-view 1.0 refuses although ext4 allows it (reported here as differences, so keep such
/// things out of trees checked with it): any inode time before 1970 ("invalid timestamp": it takes the
/// 32-bit seconds as unsigned-only), and symlink targets with a component over 255 bytes ("invalid
/// symlink path").
pub fn ext4_view_compare(
    image: &Path,
    offset: u64,
    fs_prefix: &[u8],
    source: &Path,
    expect: Expect,
) -> Result<(), Vec<String>> {
    let mut diffs = Diffs::new(fs_prefix);
    let host = host::walk(source).map_err(|e| vec![e])?;
    // kiln's read-only reader: the filesystem's byte 0 is the image's byte `offset`; reads past the end name the
    // image, the offset and what was read.
    let disk = Disk::open(image).map_err(|e| vec![format!("{e:#}")])?;
    let window = disk.window(ByteRange { start: Bytes(offset), end: disk.len() });
    let fs = Ext4::load(Box::new(window))
        .map_err(|e| vec![format!("ext4-view cannot load {} at offset {offset}: {e}", image.display())])?;

    let root = ext4_view::PathBuf::try_from(fs_prefix)
        .map_err(|e| vec![format!("{}: not an ext4-view path: {e:?}", show(fs_prefix))])?;
    match fs.symlink_metadata(&root) {
        Ok(md) if md.is_dir() => {}
        Ok(md) => return Err(vec![format!("{} is a {:?} in the image", show(fs_prefix), md.file_type())]),
        Err(e) => return Err(vec![format!("{}: {e}", show(fs_prefix))]),
    }

    let mut image_tree = BTreeMap::new();
    let mut stack = vec![(Vec::new(), root)];
    while let Some((rel, path)) = stack.pop() {
        let entries = match fs.read_dir(&path) {
            Ok(entries) => entries,
            Err(e) => {
                diffs.add(&rel, format!("ext4-view cannot read the directory: {e}"));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    diffs.add(&rel, format!("ext4-view cannot read a directory entry: {e}"));
                    break;
                }
            };
            let name = entry.file_name();
            if name.as_ref() == b"." || name.as_ref() == b".." {
                continue;
            }
            let child = join_rel(&rel, name.as_ref());
            let (md, dirent) = match (entry.metadata(), entry.file_type()) {
                (Ok(md), Ok(t)) => (md, t),
                (Err(e), _) | (_, Err(e)) => {
                    diffs.add(&child, format!("ext4-view cannot read the inode: {e}"));
                    continue;
                }
            };
            let mut image_entry = entry_of(&md, dirent);
            match image_entry.kind {
                Kind::Dir => stack.push((child.clone(), entry.path())),
                Kind::Symlink => match fs.read_link(&entry.path()) {
                    Ok(target) => image_entry.target = Some(target.as_ref().to_vec()),
                    Err(e) => diffs.add(&child, format!("ext4-view cannot read the symlink: {e}")),
                },
                _ => {}
            }
            image_tree.insert(child, image_entry);
        }
    }
    check_entries(&host, &image_tree, expect, &mut diffs);

    for (rel, i) in content_pairs(&host, &image_tree) {
        let path = ext4_view::PathBuf::try_from(diffs.fs_path(rel)).expect("joined from valid names");
        let result = fs
            .open(&path)
            .map_err(|e| format!("ext4-view cannot open the file: {e}"))
            .and_then(|f| host::compare_content(&host::join_host(source, rel), &mut ViewReader(f), i.size));
        match result {
            Ok(None) => {}
            Ok(Some(d)) => diffs.add(rel, d),
            Err(e) => diffs.add(rel, e),
        }
    }
    diffs.finish()
}
