//! The writer's input: a tree of directories, files and symlinks with their metadata. Knows nothing of where
//! it came from; files are backed by host files or by bytes in memory.

use std::path::PathBuf;
use std::sync::Arc;

use super::Error;

/// Index of a node in a [`Tree`].
pub type NodeId = u32;

/// Ownership, permissions and modification time of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (`0o7777` at most).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time in seconds since the epoch; also used as access and change time.
    pub mtime: i64,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on the build host, read when the image is written.
    Host(PathBuf),
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
    /// Written by the caller through [`Plan::file_writer`](super::Plan::file_writer) (for example copied and
    /// hashed in one pass, reading files it already knows), costing no memory per file here.
    /// [`Plan::write`](super::Plan::write) fails on such a file with data, and so does
    /// [`Plan::write_files`](super::Plan::write_files) unless its `skip` claims it.
    Caller,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir { meta: Meta, entries: Vec<(Box<[u8]>, NodeId)> },
    File { meta: Meta, size: u64, source: Source },
    Symlink { meta: Meta, target: Box<[u8]> },
}

impl Node {
    pub(crate) fn meta(&self) -> &Meta {
        match self {
            Self::Dir { meta, .. } | Self::File { meta, .. } | Self::Symlink { meta, .. } => meta,
        }
    }
}

/// A directory tree to write. Node 0 is the root directory. Names are bytes (not necessarily UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub(crate) nodes: Vec<Node>,
}

/// Longest name ext4 stores.
pub const MAX_NAME: usize = 255;
/// Longest symlink target (`PATH_MAX - 1`); a target must fit in one 4 KiB block.
pub const MAX_SYMLINK: usize = 4095;

impl Tree {
    /// A tree holding only a root directory.
    #[must_use]
    pub fn new(root: Meta) -> Self {
        Self { nodes: vec![Node::Dir { meta: root, entries: Vec::new() }] }
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> NodeId {
        0
    }

    /// Number of nodes (inodes the tree needs, hard links counted once).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is only its root.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    fn push(&mut self, parent: NodeId, name: &[u8], node: Node) -> Result<NodeId, Error> {
        let id = NodeId::try_from(self.nodes.len()).map_err(|_| Error::TooManyNodes)?;
        self.attach(parent, name, id)?;
        self.nodes.push(node);
        Ok(id)
    }

    fn attach(&mut self, parent: NodeId, name: &[u8], id: NodeId) -> Result<(), Error> {
        let bad = |why: &'static str| Error::BadName { name: name.to_vec(), why };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > MAX_NAME {
            return Err(bad("longer than 255 bytes"));
        }
        if name == b"." || name == b".." {
            return Err(bad("reserved"));
        }
        if name.iter().any(|&b| b == b'/' || b == 0) {
            return Err(bad("contains '/' or NUL"));
        }
        match self.nodes.get_mut(parent as usize) {
            Some(Node::Dir { entries, .. }) => {
                entries.push((name.into(), id));
                Ok(())
            }
            _ => Err(Error::NotADirectory { node: parent }),
        }
    }

    /// Adds a directory under `parent`.
    pub fn mkdir(&mut self, parent: NodeId, name: &[u8], meta: Meta) -> Result<NodeId, Error> {
        self.push(parent, name, Node::Dir { meta, entries: Vec::new() })
    }

    /// Adds a regular file of `size` bytes under `parent`. The source must hold exactly `size` bytes when the
    /// image is written.
    pub fn file(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: Meta,
        size: u64,
        source: Source,
    ) -> Result<NodeId, Error> {
        if let Source::Bytes(b) = &source
            && b.len() as u64 != size
        {
            return Err(Error::SizeMismatch { name: name.to_vec(), size, bytes: b.len() as u64 });
        }
        self.push(parent, name, Node::File { meta, size, source })
    }

    /// Adds a symbolic link under `parent`.
    pub fn symlink(&mut self, parent: NodeId, name: &[u8], meta: Meta, target: &[u8]) -> Result<NodeId, Error> {
        if target.is_empty() || target.len() > MAX_SYMLINK || target.contains(&0) {
            return Err(Error::BadSymlink { name: name.to_vec(), len: target.len() });
        }
        self.push(parent, name, Node::Symlink { meta, target: target.into() })
    }

    /// The entry `name` of directory `parent`, if any (a linear search: for building, not for bulk lookups).
    #[must_use]
    pub fn child(&self, parent: NodeId, name: &[u8]) -> Option<NodeId> {
        match self.nodes.get(parent as usize) {
            Some(Node::Dir { entries, .. }) => entries.iter().find(|(n, _)| &n[..] == name).map(|&(_, id)| id),
            _ => None,
        }
    }

    /// What `node` is, if the tree has it.
    #[must_use]
    pub fn kind(&self, node: NodeId) -> Option<NodeKind> {
        Some(match self.nodes.get(node as usize)? {
            Node::Dir { .. } => NodeKind::Dir,
            Node::File { .. } => NodeKind::File,
            Node::Symlink { .. } => NodeKind::Symlink,
        })
    }

    /// Adds another name for an existing file or symlink (a hard link).
    pub fn link(&mut self, parent: NodeId, name: &[u8], existing: NodeId) -> Result<(), Error> {
        match self.nodes.get(existing as usize) {
            Some(Node::File { .. } | Node::Symlink { .. }) => self.attach(parent, name, existing),
            _ => Err(Error::LinkToDirectory { node: existing }),
        }
    }
}
