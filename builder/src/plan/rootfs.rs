//! The root filesystem's contents: the closure laid out at `/nix/store` in Nix's canonical form (owner 0:0,
//! mtime 1, files 0444 or 0555, directories 0555, symlinks 0777), each group of identical files (the
//! inventory's link groups: same contents and executable bit) one inode with a name per file.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_formats::ext4::{Meta, NodeId, Source, Tree};

use crate::inventory::{Inventory, Kind};
use crate::store::StoreDir;

/// NixOS's `nixbld` group, which owns `/nix/store` (mode 1775) on a NixOS machine.
const NIXBLD_GID: u32 = 30000;
/// Nix's canonical modification time.
const CANONICAL_MTIME: i64 = 1;

/// Metadata of a store file in canonical form.
fn canonical(kind: &Kind) -> Meta {
    let perm = match kind {
        Kind::File { executable: true, .. } | Kind::Dir => 0o555,
        Kind::File { executable: false, .. } => 0o444,
        Kind::Symlink { .. } => 0o777,
    };
    Meta { perm, uid: 0, gid: 0, mtime: CANONICAL_MTIME }
}

/// The tree and, for each store path of the inventory and each of its entries, the tree node it became (for a
/// file of a link group, the group's one node).
pub type StoreTree = (Tree, Vec<Vec<NodeId>>);

/// Builds the tree: `/`, `/nix`, `/nix/store` and every store path of the inventory under it. Directories
/// the image adds itself get `timestamp` as their time. Store files are [`Source::Caller`]: the data pass
/// copies them (the write stage's data pass), so the tree holds no path per file.
pub fn store_tree(store: &StoreDir, inv: &Inventory, timestamp: i64) -> Result<StoreTree> {
    let (mut tree, store_node) = skeleton(timestamp)?;
    let mut linked: HashMap<u32, NodeId> = HashMap::new();
    let mut nodes = Vec::with_capacity(inv.paths.len());
    for p in &inv.paths {
        let mut path_nodes = Vec::with_capacity(p.entries.len());
        let root = store.physical(&p.path);
        let mut dirs: HashMap<&Path, NodeId> = HashMap::new();
        for e in &p.entries {
            let (parent, name) = if e.rel.as_os_str().is_empty() {
                (store_node, p.path.base_name().as_bytes())
            } else {
                let parent_rel = e.rel.parent().unwrap_or(Path::new(""));
                let parent = *dirs.get(parent_rel).expect("NAR order puts directories before their entries");
                (parent, e.rel.file_name().expect("relative path has a name").as_bytes())
            };
            let physical = || crate::store::entry_path(&root, &e.rel);
            if let Some(group) = e.link_group
                && let Some(&node) = linked.get(&group)
            {
                tree.link(parent, name, node).with_context(|| format!("{}", physical().display()))?;
                path_nodes.push(node);
                continue;
            }
            let meta = canonical(&e.kind);
            let node = match &e.kind {
                Kind::Dir => {
                    let node = tree.mkdir(parent, name, meta)?;
                    dirs.insert(e.rel.as_path(), node);
                    node
                }
                Kind::File { size, .. } => tree
                    .file(parent, name, meta, *size, Source::Caller)
                    .with_context(|| format!("{}", physical().display()))?,
                Kind::Symlink { target } => tree
                    .symlink(parent, name, meta, target.as_os_str().as_bytes())
                    .with_context(|| format!("{}", physical().display()))?,
            };
            if let Some(group) = e.link_group {
                linked.insert(group, node);
            }
            path_nodes.push(node);
        }
        nodes.push(path_nodes);
    }
    Ok((tree, nodes))
}

/// The tree every image starts from: `/`, `/nix` and an empty `/nix/store` (returned with it), their time
/// `timestamp`.
pub fn skeleton(timestamp: i64) -> Result<(Tree, NodeId)> {
    let own = |perm, gid| Meta { perm, uid: 0, gid, mtime: timestamp };
    let mut tree = Tree::new(own(0o755, 0));
    let nix = tree.mkdir(tree.root(), b"nix", own(0o755, 0))?;
    let store_node = tree.mkdir(nix, b"store", own(0o1775, NIXBLD_GID))?;
    Ok((tree, store_node))
}

/// What the Nix state directory of the image holds besides the store.
#[derive(Debug)]
pub struct NixState<'a> {
    /// The toplevel the system profile points to.
    pub toplevel: &'a crate::store::StorePath,
    /// `db.sqlite` bytes.
    pub db: Vec<u8>,
    /// `/nix-path-registration` (closureInfo registration text), when asked for.
    pub registration: Option<String>,
}

/// Adds `/nix/var/nix` (the database, its schema file, the system profile as generation 1, empty `gcroots`
/// and `profiles/per-user`), `/etc/NIXOS` as nixos-install leaves it, and optionally `/nix-path-registration`.
/// Only image paths are written: nothing names the build host.
pub fn add_nix_state(tree: &mut Tree, state: NixState<'_>, timestamp: i64) -> Result<()> {
    use std::sync::Arc;
    let own = |perm| Meta { perm, uid: 0, gid: 0, mtime: timestamp };
    let bytes = |b: Vec<u8>| (b.len() as u64, Source::Bytes(Arc::from(b.into_boxed_slice())));
    let root = tree.root();
    let nix = find_dir(tree, root, b"nix").expect("store_tree made /nix");
    let var = tree.mkdir(nix, b"var", own(0o755))?;
    let var_nix = tree.mkdir(var, b"nix", own(0o755))?;
    let db_dir = tree.mkdir(var_nix, b"db", own(0o755))?;
    let (len, src) = bytes(state.db);
    tree.file(db_dir, b"db.sqlite", own(0o644), len, src)?;
    let (len, src) = bytes(crate::nixdb::SCHEMA_FILE.to_vec());
    tree.file(db_dir, b"schema", own(0o644), len, src)?;
    tree.mkdir(var_nix, b"gcroots", own(0o755))?;
    let profiles = tree.mkdir(var_nix, b"profiles", own(0o755))?;
    tree.mkdir(profiles, b"per-user", own(0o755))?;
    let link = format!("system-{}-link", crate::boot::GENERATION);
    tree.symlink(profiles, b"system", own(0o777), link.as_bytes())?;
    tree.symlink(profiles, link.as_bytes(), own(0o777), state.toplevel.to_string().as_bytes())?;
    let etc = tree.mkdir(root, b"etc", own(0o755))?;
    tree.file(etc, b"NIXOS", own(0o644), 0, Source::Bytes(Arc::from(Vec::new().into_boxed_slice())))?;
    if let Some(text) = state.registration {
        let (len, src) = bytes(text.into_bytes());
        tree.file(root, b"nix-path-registration", own(0o644), len, src)?;
    }
    Ok(())
}

fn find_dir(tree: &Tree, parent: NodeId, name: &[u8]) -> Option<NodeId> {
    tree.child(parent, name)
}

/// Adds `/boot` (where NixOS mounts the ESP), and with a GRUB configuration, `/boot/grub/grub.cfg`.
pub fn add_boot_dir(tree: &mut Tree, grub_cfg: Option<String>, timestamp: i64) -> Result<()> {
    use std::sync::Arc;
    let own = |perm| Meta { perm, uid: 0, gid: 0, mtime: timestamp };
    let root = tree.root();
    let boot = tree.mkdir(root, b"boot", own(0o755))?;
    if let Some(cfg) = grub_cfg {
        let grub = tree.mkdir(boot, b"grub", own(0o755))?;
        let bytes = cfg.into_bytes();
        tree.file(
            grub,
            b"grub.cfg",
            own(0o644),
            bytes.len() as u64,
            Source::Bytes(Arc::from(bytes.into_boxed_slice())),
        )?;
    }
    Ok(())
}
