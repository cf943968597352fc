//! Planning: geometry, short names, long-name entries, every cluster and every directory's bytes resolved
//! before a byte is written. Pure and deterministic: the same tree and options give the same plan, whatever
//! order the tree was built in.

use std::ops::Range;

use super::boot::{BACKUP_BOOT_SECTOR, FSINFO_SECTOR, Identity, STRUCT_LEN};
use super::dir::{self, ATTR_ARCHIVE, ATTR_DIRECTORY, Entry, Head};
use super::geometry::{self, Cluster, FIRST_CLUSTER, Geometry, choose};
use super::name::{self, ENTRY, EntryName};
use super::time::DosTime;
use super::tree::{Kind, NodeId, Tree};
use super::{Error, Options};
use crate::units::SectorSize;

/// Most entries of one directory (2 MiB of 32-byte entries).
const MAX_DIR_ENTRIES: usize = 65_536;

/// Where one file's bytes go: a contiguous run of clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    /// The file.
    pub node: NodeId,
    /// Its size in bytes.
    pub size: u32,
    /// Its first cluster.
    pub first: Cluster,
    /// Clusters it occupies.
    pub clusters: u32,
}

/// A complete plan for one FAT32 volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Layout of the volume.
    pub geometry: Geometry,
    pub(crate) identity: Identity,
    /// Directories: first cluster and contents, padded with zeros to whole clusters.
    pub(crate) dirs: Vec<(Cluster, Vec<u8>)>,
    /// Non-empty files, in allocation order.
    pub files: Vec<FileExtent>,
    /// Clusters allocated (directories and files), all of them at the start of the data area.
    pub used_clusters: u32,
}

impl Plan {
    /// The volume's size in bytes (the partition's).
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.geometry.size_bytes()
    }

    /// Clusters left free.
    #[must_use]
    pub fn free_clusters(&self) -> u32 {
        self.geometry.clusters - self.used_clusters
    }

    /// FSInfo's hint of where to look for free clusters: the last allocated cluster, as mkfs.fat, Linux and
    /// mtools read and write it (they search from the cluster after it); `0xFFFF_FFFF` (no hint) when the volume
    /// is full.
    #[must_use]
    pub fn free_hint(&self) -> u32 {
        if self.free_clusters() == 0 { u32::MAX } else { FIRST_CLUSTER + self.used_clusters - 1 }
    }

    /// The chains of the FAT, in cluster order: each directory's and non-empty file's first cluster and length.
    pub(crate) fn chains(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let dirs =
            self.dirs.iter().map(|(c, bytes)| (c.0, (bytes.len() / self.geometry.cluster_bytes() as usize) as u32));
        dirs.chain(self.files.iter().map(|f| (f.first.0, f.clusters)))
    }

    /// Bytes of each FAT that hold entries for allocated clusters (the rest of the FAT is zero).
    pub(crate) fn fat_used_bytes(&self) -> u64 {
        (u64::from(FIRST_CLUSTER) + u64::from(self.used_clusters)) * 4
    }

    /// Byte ranges, relative to the partition start, that may hold non-zero bytes after [`Plan::write`]: the
    /// boot sectors and FSInfo, the used start of each FAT, and the allocated clusters. Everything else reads
    /// as zero.
    #[must_use]
    pub fn used_ranges(&self) -> Vec<Range<u64>> {
        let g = &self.geometry;
        let structs = |sector: u32| g.sector_offset(sector)..g.sector_offset(sector) + STRUCT_LEN as u64;
        let mut out =
            vec![structs(0), structs(FSINFO_SECTOR), structs(BACKUP_BOOT_SECTOR), structs(BACKUP_BOOT_SECTOR + 1)];
        out.extend((0..geometry::FATS).map(|i| g.fat_offset(i)..g.fat_offset(i) + self.fat_used_bytes()));
        let data = g.cluster_offset(Cluster(FIRST_CLUSTER));
        out.push(data..data + u64::from(self.used_clusters) * u64::from(g.cluster_bytes()));
        out
    }
}

/// One directory of the tree, named and ordered.
struct DirInfo {
    node: NodeId,
    /// Entries sorted by name (UTF-8 byte order).
    children: Vec<NodeId>,
    /// Their names, in the same order.
    names: Vec<EntryName>,
    /// 32-byte entries the directory needs.
    slots: usize,
}

/// What a tree needs, independent of the volume's size.
struct Prepared<'t> {
    tree: &'t Tree,
    /// Directories in allocation order (root first, then depth first in name order).
    dirs: Vec<DirInfo>,
    /// Files in allocation order (depth first in name order).
    files: Vec<NodeId>,
}

fn size_of(tree: &Tree, node: NodeId) -> u64 {
    match &tree.nodes[node as usize].kind {
        Kind::File { size, .. } => *size,
        Kind::Dir { .. } => 0,
    }
}

impl Prepared<'_> {
    /// Clusters of `cluster_bytes` the tree occupies.
    fn clusters_needed(&self, cluster_bytes: u32) -> u64 {
        let c = u64::from(cluster_bytes);
        let dirs: u64 = self.dirs.iter().map(|d| ((d.slots * ENTRY) as u64).div_ceil(c).max(1)).sum();
        let files: u64 = self.files.iter().map(|&f| size_of(self.tree, f).div_ceil(c)).sum();
        dirs + files
    }
}

fn prepare(tree: &Tree, has_label: bool) -> Result<Prepared<'_>, Error> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    // Depth first, children in name order; an explicit stack keeps deep trees off the call stack.
    let mut stack = vec![tree.root()];
    while let Some(node) = stack.pop() {
        let Kind::Dir { entries, .. } = &tree.nodes[node as usize].kind else {
            files.push(node);
            continue;
        };
        let mut children = entries.clone();
        children.sort_unstable_by(|&a, &b| tree.nodes[a as usize].name.cmp(&tree.nodes[b as usize].name));
        let strs: Vec<&str> = children.iter().map(|&c| tree.nodes[c as usize].name.as_str()).collect();
        let names = name::assign(&strs);
        let head = if node == tree.root() {
            Head::Root { label: has_label.then_some([b' '; 11]) }
        } else {
            Head::Sub { own: 0, parent: 0 }
        };
        let slots = dir::slots(head, &names);
        if slots > MAX_DIR_ENTRIES {
            return Err(Error::DirectoryTooLarge { path: tree.path(node), entries: slots });
        }
        stack.extend(children.iter().rev());
        dirs.push(DirInfo { node, children, names, slots });
    }
    Ok(Prepared { tree, dirs, files })
}

/// The label as stored: space-padded, or `None` for an empty label.
fn check_label(label: &str) -> Result<Option<[u8; 11]>, Error> {
    let bad = |why: &'static str| Error::BadLabel { label: label.to_owned(), why };
    if label.is_empty() {
        return Ok(None);
    }
    if label.len() > 11 {
        return Err(bad("longer than 11 bytes"));
    }
    if label.starts_with(' ') {
        return Err(bad("starts with a space"));
    }
    if !label.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Err(bad("not printable ASCII"));
    }
    if label.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(bad("has lower-case letters (fsck.fat rejects them)"));
    }
    if label.bytes().any(|b| b"\"*+,./:;<=>?[\\]|".contains(&b)) {
        return Err(bad("has one of \" * + , . / : ; < = > ? [ \\ ] |"));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(Some(out))
}

/// The smallest partition, in bytes (a whole number of sectors), that holds `tree` with this sector size —
/// and every larger partition does too. Assumes a volume label; without one the answer can be a cluster large.
pub fn min_size(tree: &Tree, sector_size: SectorSize) -> Result<u64, Error> {
    let p = prepare(tree, true)?;
    geometry::smallest(sector_size, &|c| p.clusters_needed(c))
}

/// Plans a volume of `opts.size_bytes` holding `tree`.
pub fn plan(tree: &Tree, opts: &Options) -> Result<Plan, Error> {
    let label = check_label(&opts.label)?;
    let p = prepare(tree, label.is_some())?;
    let needed = |c: u32| p.clusters_needed(c);
    let Some(geometry) = choose(opts.size_bytes, opts.sector_size, &needed)? else {
        let minimum = geometry::smallest_fat32(opts.sector_size);
        let needed = geometry::smallest(opts.sector_size, &needed)?;
        return Err(if needed <= minimum {
            Error::TooSmallForFat32 { given: opts.size_bytes, minimum, sector: opts.sector_size }
        } else {
            Error::TooSmall { needed, given: opts.size_bytes }
        });
    };
    let identity = Identity {
        hidden_sectors: opts.hidden_sectors,
        volume_id: opts.volume_id,
        label: label.unwrap_or(*b"NO NAME    "),
    };
    Ok(layout(&p, geometry, identity, label, DosTime::from_unix(opts.timestamp)))
}

/// Allocates clusters (directories first, then files, each contiguous) and renders the directories.
fn layout(p: &Prepared<'_>, g: Geometry, identity: Identity, label: Option<[u8; 11]>, t: DosTime) -> Plan {
    let tree = p.tree;
    let cb = u64::from(g.cluster_bytes());
    let mut first = vec![0u32; tree.nodes.len()];
    let mut next = FIRST_CLUSTER;
    let mut take = |bytes: u64| {
        let n = u32::try_from(bytes.div_ceil(cb)).expect("checked against the cluster count");
        let at = next;
        next += n;
        (at, n)
    };
    let dir_clusters: Vec<u32> = p
        .dirs
        .iter()
        .map(|d| {
            let (at, n) = take(((d.slots * ENTRY) as u64).max(1));
            first[d.node as usize] = at;
            n
        })
        .collect();
    let files: Vec<FileExtent> = p
        .files
        .iter()
        .filter_map(|&node| {
            let size = u32::try_from(size_of(tree, node)).expect("checked when added");
            (size > 0).then(|| {
                let (at, clusters) = take(u64::from(size));
                first[node as usize] = at;
                FileExtent { node, size, first: Cluster(at), clusters }
            })
        })
        .collect();
    let used_clusters = next - FIRST_CLUSTER;
    debug_assert!(used_clusters <= g.clusters);
    let dirs = p
        .dirs
        .iter()
        .zip(dir_clusters)
        .map(|(d, n)| {
            let own = first[d.node as usize];
            let head = if d.node == tree.root() {
                Head::Root { label }
            } else {
                let parent = tree.nodes[d.node as usize].parent;
                // `..` names the root as cluster 0, whatever the root's cluster.
                Head::Sub { own, parent: if parent == tree.root() { 0 } else { first[parent as usize] } }
            };
            let entries: Vec<Entry<'_>> = d
                .children
                .iter()
                .zip(&d.names)
                .map(|(&c, name)| {
                    let is_dir = matches!(tree.nodes[c as usize].kind, Kind::Dir { .. });
                    Entry {
                        name,
                        attr: if is_dir { ATTR_DIRECTORY } else { ATTR_ARCHIVE },
                        first_cluster: first[c as usize],
                        size: size_of(tree, c) as u32,
                    }
                })
                .collect();
            let mut bytes = dir::render(head, &entries, t);
            bytes.resize(n as usize * cb as usize, 0);
            (Cluster(own), bytes)
        })
        .collect();
    Plan { geometry: g, identity, dirs, files, used_clusters }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tree::Source;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn bytes(n: usize) -> Source {
        Source::Bytes(Arc::from(vec![1u8; n]))
    }

    fn opts(size: u64) -> Options {
        Options::new(size, 2048, 0xC0FF_EE00, 1_700_000_000)
    }

    #[test]
    fn allocation_is_contiguous_in_path_order() {
        let mut t = Tree::new();
        // Added out of order: the plan does not depend on it.
        t.add_file("loader/loader.conf", bytes(10)).unwrap();
        t.add_file("EFI/BOOT/BOOTX64.EFI", bytes(5000)).unwrap();
        t.add_file("EFI/BOOT/empty", bytes(0)).unwrap();
        let plan = plan(&t, &opts(64 * MIB)).unwrap();
        assert_eq!(plan.geometry.cluster_bytes(), 512);
        // Root, EFI, EFI/BOOT, loader: one cluster each, from 2.
        let dirs: Vec<u32> = plan.dirs.iter().map(|(c, _)| c.0).collect();
        assert_eq!(dirs, [2, 3, 4, 5]);
        let files: Vec<(String, u32, u32)> =
            plan.files.iter().map(|f| (t.path(f.node), f.first.0, f.clusters)).collect();
        assert_eq!(files, [("EFI/BOOT/BOOTX64.EFI".to_owned(), 6, 10), ("loader/loader.conf".to_owned(), 16, 1)]);
        assert_eq!(plan.used_clusters, 15);
        assert_eq!(plan.free_hint(), 16);
        let chains: Vec<(u32, u32)> = plan.chains().collect();
        assert!(chains.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0), "{chains:?}");
    }

    #[test]
    fn same_tree_in_any_order_gives_the_same_plan() {
        let paths = ["b/x.efi", "a/y.conf", "B.TXT", "a/deep/er/file"];
        let mut t1 = Tree::new();
        let mut t2 = Tree::new();
        for p in paths {
            t1.add_file(p, bytes(700)).unwrap();
        }
        for p in paths.iter().rev() {
            t2.add_file(p, bytes(700)).unwrap();
        }
        let p1 = plan(&t1, &opts(40 * MIB)).unwrap();
        let p2 = plan(&t2, &opts(40 * MIB)).unwrap();
        assert_eq!(p1.dirs, p2.dirs);
        assert_eq!(p1.used_clusters, p2.used_clusters);
    }

    #[test]
    fn too_small_names_both_numbers() {
        let mut t = Tree::new();
        t.add_file("big", bytes(40 << 20)).unwrap();
        let needed = min_size(&t, SectorSize::S512).unwrap();
        assert!(needed > 40 * MIB && needed < 42 * MIB, "{needed}");
        let err = plan(&t, &opts(40 * MIB)).unwrap_err();
        assert!(matches!(err, Error::TooSmall { needed: n, given } if n == needed && given == 40 * MIB), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&needed.to_string()) && msg.contains(&(40 * MIB).to_string()), "{msg}");
        plan(&t, &opts(needed)).unwrap();

        let err = plan(&Tree::new(), &opts(32 * MIB)).unwrap_err();
        assert!(matches!(err, Error::TooSmallForFat32 { given, .. } if given == 32 * MIB), "{err}");
    }

    #[test]
    fn labels() {
        struct Case {
            label: &'static str,
            ok: bool,
        }
        let cases = [
            Case { label: "ESP", ok: true },
            Case { label: "NIXOS_BOOT", ok: true },
            Case { label: "", ok: true },
            Case { label: "TWELVE_BYTES", ok: false },
            Case { label: "esp", ok: false },
            Case { label: " ESP", ok: false },
            Case { label: "A.B", ok: false },
            Case { label: "ÉSP", ok: false },
        ];
        for case in cases {
            assert_eq!(check_label(case.label).is_ok(), case.ok, "{:?}", case.label);
        }
    }

    #[test]
    fn directory_entry_limit() {
        let mut t = Tree::new();
        let d = t.mkdir(0, "d").unwrap();
        // Each name takes a long-name entry and a short entry.
        for i in 0..32_768 {
            t.file(d, &format!("f{i}"), 0, bytes(0)).unwrap();
        }
        let err = plan(&t, &opts(64 * MIB)).unwrap_err();
        assert!(matches!(err, Error::DirectoryTooLarge { entries: 65_538, ref path } if path == "d"), "{err}");
    }
}
