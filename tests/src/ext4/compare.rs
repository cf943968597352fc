//! Comparing an image subtree with a host directory; the checks both readers share, and the debugfs one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::debugfs::{Debugfs, Scan};
use super::host::{self, HostEntry, Kind};
use super::{Expect, Links, show};
use crate::identical::{self, EXT4_LINK_MAX};

/// At most this many differences are listed; the rest are counted.
const MAX_MESSAGES: usize = 50;

/// One entry of the image subtree, as a reader sees it.
#[derive(Debug, Clone)]
pub(super) struct ImageEntry {
    /// From the inode's mode.
    pub kind: Kind,
    /// From the directory entry's file type, when the reader exposes it.
    pub dirent_kind: Option<Kind>,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub size: u64,
    /// Inode number, when the reader exposes it (then hard links are checked).
    pub ino: Option<u32>,
    pub target: Option<Vec<u8>>,
}

/// Differences found so far, each naming a filesystem path.
#[derive(Debug)]
pub(super) struct Diffs {
    prefix: Vec<u8>,
    messages: Vec<String>,
    more: usize,
}

impl Diffs {
    pub(super) fn new(fs_prefix: &[u8]) -> Diffs {
        Diffs { prefix: fs_prefix.to_vec(), messages: Vec::new(), more: 0 }
    }

    /// The filesystem path of `rel`.
    pub(super) fn fs_path(&self, rel: &[u8]) -> Vec<u8> {
        let mut p = self.prefix.clone();
        if !rel.is_empty() {
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(rel);
        }
        p
    }

    pub(super) fn add(&mut self, rel: &[u8], what: impl std::fmt::Display) {
        if self.messages.len() < MAX_MESSAGES {
            let msg = format!("{}: {what}", show(&self.fs_path(rel)));
            self.messages.push(msg);
        } else {
            self.more += 1;
        }
    }

    pub(super) fn finish(mut self) -> Result<(), Vec<String>> {
        if self.more > 0 {
            self.messages.push(format!("… and {} more differences", self.more));
        }
        if self.messages.is_empty() { Ok(()) } else { Err(self.messages) }
    }
}

/// Up to 120 bytes of `bytes`, escaped, for messages.
fn brief(bytes: &[u8]) -> String {
    if bytes.len() <= 120 {
        format!("{:?} ({} bytes)", show(bytes), bytes.len())
    } else {
        format!("{:?}… ({} bytes)", show(&bytes[..120]), bytes.len())
    }
}

/// Checks names, kinds, metadata, sizes and symlink targets. File bytes and hard links are the caller's: see
/// [`content_pairs`] and [`check_hard_links`].
///
/// The subtree root's own metadata is not compared (`/nix/store` is 1775 root:nixbld in NixOS, and
/// `mkfs.ext4 -d` leaves `/` at 0755 root): only that it is a directory. `lost+found` at the root of the
/// filesystem is ignored when the source has none.
pub(super) fn check_entries(
    host: &BTreeMap<Vec<u8>, HostEntry>,
    image: &BTreeMap<Vec<u8>, ImageEntry>,
    expect: Expect,
    diffs: &mut Diffs,
) {
    let fs_root = diffs.fs_path(b"") == b"/";
    // Subtrees already reported as missing, extra or of another kind: their contents are not listed.
    let mut pruned: HashSet<&[u8]> = HashSet::new();
    let parent_pruned = |pruned: &HashSet<&[u8]>, rel: &[u8]| match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => pruned.contains(&rel[..i]),
        None => false,
    };

    for (rel, h) in host {
        if parent_pruned(&pruned, rel) {
            pruned.insert(rel);
            continue;
        }
        let Some(i) = image.get(rel) else {
            diffs.add(rel, format!("{} in the source is missing from the image", h.kind.name()));
            pruned.insert(rel);
            continue;
        };
        if h.kind != i.kind {
            diffs.add(rel, format!("is a {} in the image, a {} in the source", i.kind.name(), h.kind.name()));
            pruned.insert(rel);
            continue;
        }
        if let Some(d) = i.dirent_kind
            && d != i.kind
        {
            diffs.add(rel, format!("directory entry says {}, the inode is a {}", d.name(), i.kind.name()));
        }
        check_metadata(rel, h, i, expect, diffs);
        if h.kind == Kind::File && h.size != i.size {
            diffs.add(rel, format!("size {} in the image, {} in the source", i.size, h.size));
        }
        if h.target != i.target {
            let (it, ht) = (i.target.as_deref().unwrap_or_default(), h.target.as_deref().unwrap_or_default());
            diffs.add(rel, format!("symlink target {} in the image, {} in the source", brief(it), brief(ht)));
        }
    }

    for (rel, i) in image {
        if host.contains_key(rel) {
            continue;
        }
        if parent_pruned(&pruned, rel) || (fs_root && rel == b"lost+found") {
            pruned.insert(rel);
            continue;
        }
        diffs.add(rel, format!("{} in the image is not in the source", i.kind.name()));
        pruned.insert(rel);
    }
}

fn check_metadata(rel: &[u8], h: &HostEntry, i: &ImageEntry, expect: Expect, diffs: &mut Diffs) {
    let (perm, uid, gid, mtime, nsec) = match expect {
        Expect::AsSource => (h.perm, h.uid, h.gid, h.mtime, None),
        Expect::Canonical { uid, gid, mtime } => {
            let perm = match h.kind {
                Kind::Dir => 0o555,
                Kind::Symlink => 0o777,
                _ if h.perm & 0o100 != 0 => 0o555,
                _ => 0o444,
            };
            (perm, uid, gid, mtime, Some(0))
        }
    };
    if i.perm != perm {
        diffs.add(rel, format!("mode {:04o} in the image, expected {perm:04o}", i.perm));
    }
    if (i.uid, i.gid) != (uid, gid) {
        diffs.add(rel, format!("owner {}:{} in the image, expected {uid}:{gid}", i.uid, i.gid));
    }
    if i.mtime != mtime || nsec.is_some_and(|n| n != i.mtime_nsec) {
        diffs.add(rel, format!("mtime {}.{:09} in the image, expected {mtime}", i.mtime, i.mtime_nsec));
    }
}

/// What makes names of the source one inode under a [`Links`] rule: equal identities.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Identity {
    /// (st_dev, st_ino) on the host.
    Inode(u64, u64),
    /// A regular file's size, executable bit and sha256.
    Contents(u64, bool, [u8; 32]),
    /// A name that is linked with nothing: its own path.
    Alone(Vec<u8>),
}

/// The identity of every non-directory name of `host` (found under `source`) under `links`.
fn identities<'a>(
    host: &'a BTreeMap<Vec<u8>, HostEntry>,
    source: &Path,
    links: Links,
) -> Result<BTreeMap<&'a Vec<u8>, Identity>, String> {
    let names = host.iter().filter(|(_, h)| h.kind != Kind::Dir);
    if links == Links::AsSource {
        return Ok(names.map(|(rel, h)| (rel, Identity::Inode(h.id.0, h.id.1))).collect());
    }
    let (rels, files): (Vec<&Vec<u8>>, Vec<identical::File>) = host
        .iter()
        .filter(|(_, h)| h.kind == Kind::File)
        .map(|(rel, h)| {
            let path = host::join_host(source, rel);
            (rel, identical::File { path, size: h.size, executable: h.perm & 0o100 != 0 })
        })
        .unzip();
    let keys: HashMap<&Vec<u8>, identical::ContentKey> =
        rels.into_iter().zip(identical::content_keys(&files)?).filter_map(|(rel, key)| key.map(|k| (rel, k))).collect();
    Ok(names
        .map(|(rel, _)| {
            let id = match keys.get(rel) {
                Some(&(size, executable, sha256)) => Identity::Contents(size, executable, sha256),
                None => Identity::Alone(rel.clone()),
            };
            (rel, id)
        })
        .collect())
}

/// Two non-directory names present in both trees must be one inode in the image exactly when `links` says
/// they are the same file in the source (with [`Links::SameContents`], names of identical files beyond
/// 65,000 go to further inodes, none holding more). Differences name both files.
fn check_hard_links(
    host: &BTreeMap<Vec<u8>, HostEntry>,
    image: &BTreeMap<Vec<u8>, ImageEntry>,
    source: &Path,
    links: Links,
    diffs: &mut Diffs,
) {
    let both = |rel: &Vec<u8>| host.get(rel).is_some_and(|h| h.kind != Kind::Dir) && image.contains_key(rel);
    let mut by_ino: BTreeMap<u32, Vec<&Vec<u8>>> = BTreeMap::new();
    for (rel, i) in image.iter().filter(|(rel, _)| both(rel)) {
        match i.ino {
            Some(ino) => by_ino.entry(ino).or_default().push(rel),
            None => return,
        }
    }
    let ids = match identities(host, source, links) {
        Ok(ids) => ids,
        Err(e) => return diffs.add(b"", e),
    };
    let (same, differ, cap) = match links {
        Links::AsSource => ("hard-linked with", "different files", usize::MAX),
        Links::SameContents => ("identical to", "not identical (contents, executable bit or kind)", EXT4_LINK_MAX),
    };
    let mut by_id: BTreeMap<&Identity, Vec<&Vec<u8>>> = BTreeMap::new();
    for rel in host.keys().filter(|rel| both(rel)) {
        by_id.entry(&ids[rel]).or_default().push(rel);
    }
    for (ino, names) in &by_ino {
        if let Some(other) = names.iter().find(|r| ids[**r] != ids[names[0]]) {
            let other = show(&diffs.fs_path(other));
            diffs.add(
                names[0],
                format!("is one inode ({ino}) with {other} in the image, but they are {differ} in the source"),
            );
        }
        if names.len() > cap {
            diffs.add(names[0], format!("inode {ino} has {} names in the image, more than ext4's {cap}", names.len()));
        }
    }
    for names in by_id.values() {
        let ino_of = |r: &Vec<u8>| image[r].ino;
        let mut inodes: Vec<Option<u32>> = names.iter().map(|r| ino_of(r)).collect();
        inodes.sort_unstable();
        inodes.dedup();
        if inodes.len() > names.len().div_ceil(cap) {
            let other = names.iter().find(|r| ino_of(r) != ino_of(names[0])).expect("two inodes");
            diffs.add(
                names[0],
                format!(
                    "is {same} {} in the source, but they are different inodes in the image ({} and {})",
                    show(&diffs.fs_path(other)),
                    ino_of(names[0]).unwrap_or_default(),
                    ino_of(other).unwrap_or_default()
                ),
            );
        }
    }
}

/// The regular files whose bytes must be compared: present in both as files of equal size.
pub(super) fn content_pairs<'a>(
    host: &'a BTreeMap<Vec<u8>, HostEntry>,
    image: &'a BTreeMap<Vec<u8>, ImageEntry>,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a ImageEntry)> + 'a {
    image.iter().filter(move |(rel, i)| {
        i.kind == Kind::File && host.get(*rel).is_some_and(|h| h.kind == Kind::File && h.size == i.size)
    })
}

/// Compares the filesystem subtree at `fs_prefix` (absolute, e.g. `b"/nix/store"`, or `b"/"`) of the ext4
/// filesystem at `offset` in `image` with the host directory `source`, through debugfs:
///
/// - the same names (as bytes) and kinds; the directory entry's file type agrees with the inode's;
/// - mode bits, owner and mtime as `expect` says (the subtree root's own metadata is not compared);
/// - regular files: size and every byte (streamed with `cat`, host holes skipped);
/// - symlinks: target bytes;
/// - hard links: two names are one inode in the image iff `links` says they are the same file on the host
///   (one (dev, ino), or the same contents and executable bit).
///
/// Link counts are not compared with the host (names outside `source` count there); `e2fsck_clean`
/// checks them against the directory entries. Err lists every difference (up to 50, then a count), each
/// starting with the filesystem path, escaped as in `\xff`.
pub fn compare_tree(
    image: &Path,
    offset: u64,
    fs_prefix: &[u8],
    source: &Path,
    expect: Expect,
    links: Links,
) -> Result<(), Vec<String>> {
    let mut diffs = Diffs::new(fs_prefix);
    let host = host::walk(source).map_err(|e| vec![e])?;
    let dfs = Debugfs::new(image, offset);
    let Scan { listed, infos, .. } = dfs.scan(fs_prefix).map_err(|e| vec![e])?;

    let symlinks: Vec<u32> = {
        let mut v: Vec<u32> =
            listed.iter().filter(|l| Kind::from_mode(l.mode) == Kind::Symlink).map(|l| l.ino).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let targets = dfs.symlink_targets(&symlinks).map_err(|e| vec![e])?;

    let mut image_tree = BTreeMap::new();
    for l in &listed {
        let info = infos[&l.ino];
        let kind = Kind::from_mode(info.mode);
        let entry = ImageEntry {
            kind,
            dirent_kind: Some(dirent_kind(l.dirent_type)),
            perm: info.perm(),
            uid: info.uid,
            gid: info.gid,
            mtime: info.mtime,
            mtime_nsec: info.mtime_nsec,
            size: info.size,
            ino: Some(l.ino),
            target: if kind == Kind::Symlink { targets.get(&l.ino).cloned() } else { None },
        };
        image_tree.insert(l.rel.clone(), entry);
    }
    check_entries(&host, &image_tree, expect, &mut diffs);
    check_hard_links(&host, &image_tree, source, links, &mut diffs);

    // Each inode's bytes once, compared with the source file of its first name.
    let mut first_name: HashMap<u32, &Vec<u8>> = HashMap::new();
    let mut files = Vec::new();
    for (rel, i) in content_pairs(&host, &image_tree) {
        let ino = i.ino.expect("debugfs gives inode numbers");
        if first_name.insert(ino, rel).is_none() {
            files.push((ino, i.size));
        }
    }
    let streamed = dfs.cat_files(&files, |index, reader| {
        let (ino, size) = files[index];
        let rel = first_name[&ino];
        if let Some(d) = host::compare_content(&host::join_host(source, rel), reader, size)? {
            diffs.add(rel, d);
        }
        Ok(())
    });
    if let Err(e) = streamed {
        diffs.add(b"", e);
    }
    diffs.finish()
}

/// The kind a directory entry's file type byte names.
fn dirent_kind(t: u8) -> Kind {
    match t {
        1 => Kind::File,
        2 => Kind::Dir,
        3 => Kind::Other(0o020000),
        4 => Kind::Other(0o060000),
        5 => Kind::Other(0o010000),
        6 => Kind::Other(0o140000),
        7 => Kind::Symlink,
        other => Kind::Other(u32::from(other) << 24),
    }
}
