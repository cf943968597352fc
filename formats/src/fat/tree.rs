//! The writer's input: a tree of directories and regular files with UTF-8 names. Files are backed by host files
//! or by bytes in memory. FAT keeps no owners, permissions or per-file times, so nodes carry none.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Error;
use crate::copy;

/// Index of a node in a [`Tree`].
pub type NodeId = u32;

/// Longest name, in UTF-16 code units (what a VFAT long name holds).
pub const MAX_NAME_UNITS: usize = 255;

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on the build host, read when the image is written.
    Host(PathBuf),
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir {
        entries: Vec<NodeId>,
        /// Upper-cased name → entry, for case-insensitive lookups.
        index: HashMap<String, NodeId>,
    },
    File {
        size: u64,
        source: Source,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) parent: NodeId,
    pub(crate) name: String,
    pub(crate) kind: Kind,
}

/// A directory tree to write. Node 0 is the root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub(crate) nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// The key FAT compares names by: each character upper-cased on its own (FAT's up-case table maps characters
/// one to one, so `ß` stays `ß`).
pub(crate) fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name == "." || name == ".." {
        return Err("reserved");
    }
    if name.chars().any(|c| c < ' ' || c == '\x7f' || "\"*/:<>?\\|".contains(c)) {
        return Err("contains a control character or one of \" * / : < > ? \\ |");
    }
    if name.ends_with([' ', '.']) {
        return Err("ends with a space or a period");
    }
    if name.encode_utf16().count() > MAX_NAME_UNITS {
        return Err("longer than 255 UTF-16 code units");
    }
    Ok(())
}

impl Tree {
    /// A tree holding only a root directory.
    #[must_use]
    pub fn new() -> Self {
        let root =
            Node { parent: 0, name: String::new(), kind: Kind::Dir { entries: Vec::new(), index: HashMap::new() } };
        Self { nodes: vec![root] }
    }

    /// Gives every file held in memory the bytes `f` returns for it (`None`: unchanged), which must be as many
    /// as it had: a plan made for the tree (which depends on sizes only) stays valid. For contents known only
    /// once other partitions are written (a root hash in a boot entry). Returns how many files changed.
    ///
    /// # Panics
    /// When `f` returns another length.
    pub fn rewrite_bytes(&mut self, mut f: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> usize {
        let mut changed = 0;
        for node in &mut self.nodes {
            if let Kind::File { source: Source::Bytes(bytes), .. } = &mut node.kind
                && let Some(new) = f(bytes)
            {
                assert_eq!(new.len(), bytes.len(), "{}: rewritten contents of another length", node.name);
                *bytes = Arc::from(new.into_boxed_slice());
                changed += 1;
            }
        }
        changed
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> NodeId {
        0
    }

    /// Number of nodes, the root included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is only its root.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// The path of a node from the root, `/`-separated, without a leading slash (`""` for the root).
    #[must_use]
    pub fn path(&self, node: NodeId) -> String {
        let mut parts = Vec::new();
        let mut at = node;
        while at != 0 {
            let Some(n) = self.nodes.get(at as usize) else { break };
            parts.push(n.name.as_str());
            at = n.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// The entry of directory `parent` named `name`, compared as FAT does (ignoring case).
    #[must_use]
    pub fn lookup(&self, parent: NodeId, name: &str) -> Option<NodeId> {
        match &self.nodes.get(parent as usize)?.kind {
            Kind::Dir { index, .. } => index.get(&fold(name)).copied(),
            Kind::File { .. } => None,
        }
    }

    /// The path `name` would have under `parent`.
    fn child_path(&self, parent: NodeId, name: &str) -> String {
        let parent = self.path(parent);
        if parent.is_empty() { name.to_owned() } else { format!("{parent}/{name}") }
    }

    fn push(&mut self, parent: NodeId, name: &str, kind: Kind) -> Result<NodeId, Error> {
        let id = NodeId::try_from(self.nodes.len()).map_err(|_| Error::TooManyNodes)?;
        check_name(name).map_err(|why| Error::BadName { parent: self.path(parent), name: name.to_owned(), why })?;
        let key = fold(name);
        let existing = match self.nodes.get(parent as usize).map(|n| &n.kind) {
            Some(Kind::Dir { index, .. }) => index.get(&key).copied(),
            Some(Kind::File { .. }) => return Err(Error::NotADirectory { path: self.path(parent) }),
            None => return Err(Error::NoSuchNode { node: parent }),
        };
        if let Some(existing) = existing {
            let path = self.child_path(parent, name);
            return Err(Error::DuplicateName { path, existing: self.nodes[existing as usize].name.clone() });
        }
        if let Kind::Dir { entries, index } = &mut self.nodes[parent as usize].kind {
            entries.push(id);
            index.insert(key, id);
        }
        self.nodes.push(Node { parent, name: name.to_owned(), kind });
        Ok(id)
    }

    /// Adds a directory under `parent`.
    pub fn mkdir(&mut self, parent: NodeId, name: &str) -> Result<NodeId, Error> {
        self.push(parent, name, Kind::Dir { entries: Vec::new(), index: HashMap::new() })
    }

    /// Adds a regular file of `size` bytes under `parent`. The source must hold exactly `size` bytes when the
    /// image is written.
    pub fn file(&mut self, parent: NodeId, name: &str, size: u64, source: Source) -> Result<NodeId, Error> {
        if let Source::Bytes(b) = &source
            && b.len() as u64 != size
        {
            let path = self.child_path(parent, name);
            return Err(Error::SizeMismatch { path, size, bytes: b.len() as u64 });
        }
        if size > u64::from(u32::MAX) {
            return Err(Error::FileTooLarge { path: self.child_path(parent, name), size });
        }
        self.push(parent, name, Kind::File { size, source })
    }

    /// The directory at `path` (`/`-separated, relative to the root), created with its parents where missing.
    pub fn mkdir_all(&mut self, path: &str) -> Result<NodeId, Error> {
        let mut at = self.root();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at = match self.lookup(at, part) {
                Some(id) if matches!(self.nodes[id as usize].kind, Kind::Dir { .. }) => id,
                Some(id) => return Err(Error::NotADirectory { path: self.path(id) }),
                None => self.mkdir(at, part)?,
            };
        }
        Ok(at)
    }

    /// Adds a file at `path` (`/`-separated, relative to the root, e.g. `EFI/BOOT/BOOTX64.EFI`), creating its
    /// parent directories. The size is taken from the bytes, or from the host file's metadata now.
    pub fn add_file(&mut self, path: &str, source: Source) -> Result<NodeId, Error> {
        let path = path.trim_start_matches('/');
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = self.mkdir_all(dir)?;
        let size = match &source {
            Source::Bytes(b) => b.len() as u64,
            Source::Host(p) => {
                std::fs::metadata(p).map_err(|source| copy::Error::Read { path: p.clone(), offset: 0, source })?.len()
            }
        };
        self.file(parent, name, size, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(b: &[u8]) -> Source {
        Source::Bytes(Arc::from(b))
    }

    #[test]
    fn add_file_creates_parents_and_reuses_them() {
        let mut t = Tree::new();
        let a = t.add_file("EFI/BOOT/BOOTX64.EFI", bytes(b"x")).unwrap();
        let b = t.add_file("EFI/boot/other.efi", bytes(b"yy")).unwrap();
        assert_eq!(t.path(a), "EFI/BOOT/BOOTX64.EFI");
        assert_eq!(t.path(b), "EFI/BOOT/other.efi");
        assert_eq!(t.len(), 5);
        let c = t.add_file("/top.txt", bytes(b"")).unwrap();
        assert_eq!(t.path(c), "top.txt");
        assert!(matches!(t.add_file("EFI/", bytes(b"")), Err(Error::BadName { why: "empty", .. })));
    }

    #[test]
    fn names_are_checked() {
        struct Case<'a> {
            name: &'a str,
            ok: bool,
        }
        let long = "x".repeat(256);
        let cases = [
            Case { name: "Ünïcødé.txt", ok: true },
            Case { name: "with space", ok: true },
            Case { name: "a+b,c;d=e[f]", ok: true },
            Case { name: "", ok: false },
            Case { name: ".", ok: false },
            Case { name: "..", ok: false },
            Case { name: "trailing.", ok: false },
            Case { name: "trailing ", ok: false },
            Case { name: "a:b", ok: false },
            Case { name: "a*b", ok: false },
            Case { name: "tab\t", ok: false },
            Case { name: &long, ok: false },
        ];
        for case in cases {
            let mut t = Tree::new();
            let got = t.mkdir(t.root(), case.name);
            assert_eq!(got.is_ok(), case.ok, "{:?}: {got:?}", case.name);
        }
    }

    #[test]
    fn duplicates_ignore_case() {
        let mut t = Tree::new();
        t.add_file("loader/loader.conf", bytes(b"")).unwrap();
        let err = t.add_file("LOADER/Loader.CONF", bytes(b"")).unwrap_err();
        assert!(matches!(err, Error::DuplicateName { .. }), "{err}");
        assert!(err.to_string().contains("loader.conf"), "{err}");
    }

    #[test]
    fn files_are_not_directories() {
        let mut t = Tree::new();
        t.add_file("a", bytes(b"")).unwrap();
        let err = t.add_file("a/b", bytes(b"")).unwrap_err();
        assert!(matches!(err, Error::NotADirectory { ref path } if path == "a"), "{err}");
    }

    #[test]
    fn size_must_match_bytes() {
        let mut t = Tree::new();
        let err = t.file(0, "f", 3, bytes(b"ab")).unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { size: 3, bytes: 2, .. }), "{err}");
    }
}
