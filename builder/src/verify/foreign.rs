//! Everything on the root filesystem outside `/nix/store` must be something kiln writes. What that is comes from
//! the functions that write it ([`rootfs::skeleton`], [`rootfs::add_nix_state`], [`rootfs::add_boot_dir`]),
//! applied to an empty tree, plus the `lost+found` directory the ext4 writer adds; anything else (a file, a
//! directory, a symlink), or something of another type than kiln writes there, was not put there by kiln.

use anyhow::Result;
use ext4_view::Metadata;
use kiln_formats::ext4::{NodeId, NodeKind, Tree};

use super::image::{Image, ext4_path, show};
use super::{Problem, ProblemKind};
use crate::boot::Boots;
use crate::plan::rootfs;
use crate::store::{LOGICAL_STORE, StorePath};

/// The directory e2fsck expects and kiln's ext4 writer adds to the root.
const LOST_FOUND: &[u8] = b"lost+found";

/// The tree of what kiln writes outside the store for an image booting `toplevel` with `boots` (`disk`: the
/// image has a partition table): every optional part included (`/nix-path-registration`). `/boot` is allowed on
/// any disk, since a profile may give its ESP another type GUID than the one verify recognises it by.
fn expected(toplevel: &StorePath, boots: Boots, disk: bool) -> Result<Tree> {
    let (mut tree, _) = rootfs::skeleton(0)?;
    let state = rootfs::NixState { toplevel, db: Vec::new(), registration: Some(String::new()) };
    rootfs::add_nix_state(&mut tree, state, 0)?;
    if boots.uefi || boots.bios || disk {
        rootfs::add_boot_dir(&mut tree, boots.bios.then(String::new), 0)?;
    }
    Ok(tree)
}

fn kind_of(md: &Metadata) -> Option<NodeKind> {
    let t = md.file_type();
    if t.is_dir() {
        Some(NodeKind::Dir)
    } else if t.is_regular_file() {
        Some(NodeKind::File)
    } else if t.is_symlink() {
        Some(NodeKind::Symlink)
    } else {
        None
    }
}

fn describe(kind: Option<NodeKind>) -> &'static str {
    match kind {
        Some(NodeKind::Dir) => "a directory",
        Some(NodeKind::File) => "a regular file",
        Some(NodeKind::Symlink) => "a symlink",
        None => "a special file",
    }
}

/// Records every entry of the root filesystem outside `/nix/store` that kiln does not write for an image booting
/// `toplevel` with `boots` (`disk`: the image has a partition table).
pub(crate) fn check(
    image: &Image,
    toplevel: &StorePath,
    boots: Boots,
    disk: bool,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let tree = expected(toplevel, boots, disk)?;
    walk(image, &tree, Some(tree.root()), "", problems)
}

/// Walks directory `dir` of the image (`""` for the root), whose counterpart in `tree` is `node` (`None`: kiln
/// writes the directory but nothing in it).
fn walk(image: &Image, tree: &Tree, node: Option<NodeId>, dir: &str, problems: &mut Vec<Problem>) -> Result<()> {
    let path = if dir.is_empty() { "/" } else { dir };
    let listing = image.sorted_dir(&ext4_path(path.as_bytes())?)?;
    for (name, md) in listing {
        let child = format!("{dir}/{}", show(&name));
        if child == LOGICAL_STORE {
            continue; // Every entry there must be a valid path: checked with the database.
        }
        let got = kind_of(&md);
        let want = node.and_then(|n| tree.child(n, &name));
        let lost_found = dir.is_empty() && name == LOST_FOUND;
        let want_kind = if lost_found { Some(NodeKind::Dir) } else { want.and_then(|n| tree.kind(n)) };
        match want_kind {
            None => problems.push(Problem {
                kind: ProblemKind::Foreign,
                subject: child,
                detail: format!("{} not put there by kiln (kiln writes nothing there)", describe(got)),
            }),
            Some(w) if Some(w) != got => problems.push(Problem {
                kind: ProblemKind::Foreign,
                subject: child,
                detail: format!("{}, where kiln writes {}", describe(got), describe(Some(w))),
            }),
            Some(NodeKind::Dir) => walk(image, tree, want, &child, problems)?,
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kiln's own functions write outside the store, with and without a bootloader.
    #[test]
    fn the_expected_tree_is_what_rootfs_writes() {
        let top = StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-nixos-system").unwrap();
        let find = |tree: &Tree, path: &str| {
            path.split('/')
                .try_fold(tree.root(), |node, name| tree.child(node, name.as_bytes()))
                .and_then(|n| tree.kind(n))
        };
        let bios = Boots { uefi: false, bios: true, xbootldr: false };
        let tree = expected(&top, bios, true).unwrap();
        for (path, kind) in [
            ("nix/var/nix/db/db.sqlite", NodeKind::File),
            ("nix/var/nix/db/schema", NodeKind::File),
            ("nix/var/nix/profiles/system", NodeKind::Symlink),
            ("nix/var/nix/profiles/system-1-link", NodeKind::Symlink),
            ("nix/var/nix/gcroots", NodeKind::Dir),
            ("etc/NIXOS", NodeKind::File),
            ("nix-path-registration", NodeKind::File),
            ("boot/grub/grub.cfg", NodeKind::File),
        ] {
            assert_eq!(find(&tree, path), Some(kind), "{path}");
        }
        let bare = expected(&top, Boots { uefi: false, bios: false, xbootldr: false }, false).unwrap();
        assert_eq!(find(&bare, "boot"), None, "a bare filesystem has no /boot");
        assert_eq!(find(&bare, "etc/evil"), None);
    }
}
