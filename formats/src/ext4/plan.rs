//! Planning: every inode number, block, extent, directory block and group count resolved before a byte is
//! written. Pure and deterministic: the same tree and options give the same plan.

use std::ops::Range;

use super::csum::{fs_seed, inode_seed};
use super::dir::{self, DirEntry, FT_DIR, FT_REG, FT_SYMLINK};
use super::inode::{self, InodeRec};
use super::layout::{
    Allocator, BLOCK, BLOCKS_PER_GROUP, FLEX, Geometry, KnownBlock, default_journal_blocks, has_super,
};
use super::tree::{Node, NodeId, Tree};
use super::{Error, Options, Size};

/// Inode numbers fixed by ext4.
pub const ROOT_INO: u32 = 2;
/// The resize inode (reserved descriptor blocks).
pub const RESIZE_INO: u32 = 7;
/// The journal inode.
pub const JOURNAL_INO: u32 = 8;
/// `lost+found`, the first non-reserved inode.
pub const LOST_FOUND_INO: u32 = 11;
const FIRST_FREE_INO: u32 = 12;

/// Where one file's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataJob {
    /// The file.
    pub node: NodeId,
    /// Its size in bytes.
    pub size: u64,
    /// Physical block runs in logical order, covering `size` rounded up to whole blocks.
    pub runs: Vec<Range<u64>>,
}

/// Per-group counts for the descriptor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupPlan {
    /// Block bitmap location.
    pub block_bitmap: u64,
    /// Inode bitmap location.
    pub inode_bitmap: u64,
    /// First inode table block.
    pub inode_table: u64,
    /// Free blocks in the group.
    pub free_blocks: u64,
    /// Free inodes in the group.
    pub free_inodes: u64,
    /// Directories among the group's inodes.
    pub used_dirs: u64,
    /// Inodes at the end of the table never used (no need to read them).
    pub itable_unused: u64,
}

/// A complete plan for one filesystem.
#[derive(Debug)]
pub struct Plan {
    /// Group layout.
    pub geometry: Geometry,
    pub(crate) opts: Options,
    /// Inode records, indexed by inode number − 1, up to the highest used inode.
    pub(crate) inodes: Vec<Option<InodeRec>>,
    /// Blocks whose contents are known now (extent leaves, journal superblock, resize blocks, slow symlinks).
    pub(crate) blocks: Vec<KnownBlock>,
    /// Directories, rendered when written.
    pub(crate) dirs: Vec<DirJob>,
    /// Inode number of each tree node.
    pub(crate) ino: Vec<u32>,
    /// Whether the root gets a lost+found the tree does not have.
    pub(crate) synthetic_lost_found: bool,
    /// File data to copy.
    pub data: Vec<DataJob>,
    /// Index into `data` of each node's job (`u32::MAX`: none).
    pub(crate) job_of: Vec<u32>,
    /// Per-group counts.
    pub groups: Vec<GroupPlan>,
    /// Every used block, as sorted disjoint ranges.
    pub(crate) used: Vec<Range<u64>>,
    /// Journal blocks (its first holds the journal superblock).
    pub journal: Range<u64>,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

impl Plan {
    /// The filesystem's size in bytes.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.geometry.blocks * BLOCK
    }

    /// Used blocks, sorted and disjoint (for block maps of the image).
    #[must_use]
    pub fn used_blocks(&self) -> &[Range<u64>] {
        &self.used
    }
}

/// What a tree needs, independent of the filesystem size.
struct Prepared<'t> {
    tree: &'t Tree,
    /// Inode number of each node.
    ino: Vec<u32>,
    /// Nodes in inode order (from inode 12), after the root and lost+found.
    order: Vec<NodeId>,
    /// Link count of each node.
    links: Vec<u32>,
    /// Parent directory's inode number, by node (directories only).
    parent: Vec<u32>,
    /// Shape of each directory, by node (None for non-directories).
    dirs: Vec<Option<DirShape>>,
    /// The lost+found node, when the tree has none of its own, is synthetic.
    lost_found: LostFound,
    highest_ino: u32,
}

/// How many blocks a directory needs and whether it is hashed. Directories are rendered to learn this, then
/// rendered again when written: rendering is pure, and holding every directory block until then would cost
/// 4 KiB per directory.
#[derive(Debug, Clone, Copy)]
struct DirShape {
    blocks: u64,
    indexed: bool,
}

impl DirShape {
    fn of(r: &dir::Rendered) -> Self {
        Self { blocks: r.blocks.len() as u64, indexed: r.indexed }
    }
}

enum LostFound {
    InTree(NodeId),
    Synthetic(DirShape),
}

/// A directory to render and write: `node` (None for a lost+found the tree lacks), its inode, its parent's
/// inode, and its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirJob {
    pub node: Option<NodeId>,
    pub ino: u32,
    pub parent: u32,
    pub runs: Vec<Range<u64>>,
}

/// Renders one directory's blocks. `ino` maps nodes to inode numbers; `add_lost_found` adds the synthetic
/// lost+found entry (to the root of a tree without one).
pub(crate) fn render_dir(
    tree: &Tree,
    ino: &[u32],
    node: Option<NodeId>,
    parent: u32,
    add_lost_found: bool,
    hash_seed: &[u32; 4],
    fs_seed: u32,
) -> dir::Rendered {
    let me = node.map_or(LOST_FOUND_INO, |id| ino[id as usize]);
    let mut list: Vec<DirEntry<'_>> = match node.map(|id| &tree.nodes[id as usize]) {
        Some(Node::Dir { entries, .. }) => entries
            .iter()
            .map(|(name, child)| DirEntry {
                name,
                ino: ino[*child as usize],
                file_type: file_type(&tree.nodes[*child as usize]),
            })
            .collect(),
        _ => Vec::new(),
    };
    if add_lost_found {
        list.push(DirEntry { name: b"lost+found", ino: LOST_FOUND_INO, file_type: FT_DIR });
    }
    list.sort_unstable_by(|a, b| a.name.cmp(b.name));
    dir::render(me, parent, &list, hash_seed, inode_seed(fs_seed, me, 0))
}

fn file_type(node: &Node) -> u8 {
    match node {
        Node::Dir { .. } => FT_DIR,
        Node::File { .. } => FT_REG,
        Node::Symlink { .. } => FT_SYMLINK,
    }
}

fn prepare<'t>(tree: &'t Tree, opts: &Options) -> Result<Prepared<'t>, Error> {
    let n = tree.nodes.len();
    let mut entries: Vec<Vec<(&[u8], NodeId)>> = vec![Vec::new(); n];
    for (id, node) in tree.nodes.iter().enumerate() {
        if let Node::Dir { entries: list, .. } = node {
            let mut sorted: Vec<(&[u8], NodeId)> = list.iter().map(|(name, id)| (&name[..], *id)).collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(Error::DuplicateName { name: w[0].0.to_vec() });
            }
            entries[id] = sorted;
        }
    }
    // lost+found: the tree's own if it has one (it must be a directory), else one is added.
    let lf = entries[0].iter().find(|(name, _)| *name == b"lost+found").map(|&(_, id)| id);
    if let Some(id) = lf
        && !matches!(tree.nodes[id as usize], Node::Dir { .. })
    {
        return Err(Error::BadName { name: b"lost+found".to_vec(), why: "must be a directory" });
    }
    // Inode numbers in depth-first order of sorted names (which is sorted path order).
    let mut ino = vec![0u32; n];
    let mut order = Vec::with_capacity(n);
    ino[0] = ROOT_INO;
    if let Some(id) = lf {
        ino[id as usize] = LOST_FOUND_INO;
    }
    let mut next = FIRST_FREE_INO;
    let mut stack: Vec<(NodeId, usize)> = vec![(0, 0)];
    let mut links = vec![0u32; n];
    links[0] = 2;
    while let Some((dir_id, pos)) = stack.pop() {
        let list = &entries[dir_id as usize];
        if pos == list.len() {
            continue;
        }
        stack.push((dir_id, pos + 1));
        let child = list[pos].1;
        let is_dir = matches!(tree.nodes[child as usize], Node::Dir { .. });
        if is_dir {
            links[child as usize] = 2;
            links[dir_id as usize] += 1;
        } else {
            links[child as usize] += 1;
            // ext4 caps a file's link count (a directory's says 1 past it, dir_nlink; a file's cannot).
            if links[child as usize] > super::MAX_LINKS {
                return Err(Error::TooManyLinks { node: child, links: links[child as usize] });
            }
        }
        if ino[child as usize] == 0 {
            ino[child as usize] = next;
            next = next.checked_add(1).ok_or(Error::TooManyNodes)?;
            order.push(child);
        } else if is_dir && child as usize != 0 && ino[child as usize] != LOST_FOUND_INO {
            return Err(Error::LinkToDirectory { node: child });
        }
        if is_dir {
            stack.push((child, 0));
        }
    }
    if lf.is_none() {
        links[0] += 1;
    }
    let fs_seed = fs_seed(&opts.uuid);
    let hash_seed = opts.hash_seed_words();
    // Parents: each directory has exactly one parent entry.
    let mut parent = vec![ROOT_INO; n];
    for (id, list) in entries.iter().enumerate() {
        for &(_, child) in list {
            if matches!(tree.nodes[child as usize], Node::Dir { .. }) {
                parent[child as usize] = ino[id];
            }
        }
    }
    let dirs: Vec<Option<DirShape>> = (0..n)
        .map(|id| match tree.nodes[id] {
            Node::Dir { .. } => {
                let add_lf = id == 0 && lf.is_none();
                let r = render_dir(tree, &ino, Some(id as NodeId), parent[id], add_lf, &hash_seed, fs_seed);
                Some(DirShape::of(&r))
            }
            _ => None,
        })
        .collect();
    let lost_found = match lf {
        Some(id) => LostFound::InTree(id),
        None => LostFound::Synthetic(DirShape::of(&render_dir(tree, &ino, None, ROOT_INO, false, &hash_seed, fs_seed))),
    };
    Ok(Prepared { tree, ino, order, links, parent, dirs, lost_found, highest_ino: next - 1 })
}

/// Blocks a node's contents need (data, directory or slow symlink blocks; not extent tree blocks).
fn content_blocks(p: &Prepared<'_>, id: NodeId) -> u64 {
    match &p.tree.nodes[id as usize] {
        Node::Dir { .. } => p.dirs[id as usize].map_or(0, |d| d.blocks),
        Node::File { size, .. } => size.div_ceil(BLOCK),
        Node::Symlink { target, .. } => u64::from(target.len() >= inode::FAST_SYMLINK_MAX),
    }
}

/// Plans `tree` with `opts`.
pub fn plan(tree: &Tree, opts: &Options) -> Result<Plan, Error> {
    let p = prepare(tree, opts)?;
    let content: u64 = (0..tree.nodes.len() as NodeId).map(|id| content_blocks(&p, id)).sum::<u64>()
        + match &p.lost_found {
            LostFound::Synthetic(d) => d.blocks,
            LostFound::InTree(_) => 0,
        };
    let used_inodes = u64::from(p.highest_ino);
    match opts.size {
        Size::Fixed { bytes } => {
            let blocks = bytes / BLOCK;
            layout_with(&p, opts, blocks, used_inodes).map_err(|e| match e {
                Error::OutOfSpace | Error::TooManyInodes { .. } | Error::GroupTooSmall => {
                    let needed = auto_size(&p, opts, content, used_inodes, 0).map_or(0, |plan| plan.size_bytes());
                    Error::TooSmall { needed, given: bytes }
                }
                other => other,
            })
        }
        Size::Auto { extra_bytes } => auto_size(&p, opts, content, used_inodes, extra_bytes.div_ceil(BLOCK)),
    }
}

/// The inode count for a filesystem of `blocks`: one per `inode_ratio` bytes, and never fewer than the tree
/// needs plus a margin for the running system.
fn inode_count(opts: &Options, blocks: u64, used: u64) -> u64 {
    let by_ratio = blocks * BLOCK / opts.inode_ratio.max(BLOCK);
    by_ratio.max(used + used / 10 + 256)
}

/// The smallest filesystem (a whole number of MiB) that holds the tree with `extra` free blocks.
fn auto_size(p: &Prepared<'_>, opts: &Options, content: u64, used_inodes: u64, extra: u64) -> Result<Plan, Error> {
    const STEP: u64 = 256; // 1 MiB of blocks
    // First guess: contents, a journal, and per-group overhead estimated generously.
    let mut blocks = (content + extra + 64).next_multiple_of(STEP);
    for _ in 0..64 {
        let journal = if opts.journal { default_journal_blocks(blocks) } else { 0 };
        let guess = content + extra + journal + overhead_estimate(opts, blocks, used_inodes);
        if guess > blocks {
            blocks = guess.next_multiple_of(STEP);
            continue;
        }
        match layout_with(p, opts, blocks, used_inodes) {
            Ok(plan) if plan.free_blocks >= extra => return Ok(plan),
            Ok(plan) => blocks = (blocks + extra - plan.free_blocks).next_multiple_of(STEP),
            Err(Error::OutOfSpace | Error::GroupTooSmall) => {
                blocks = (blocks + blocks / 64 + STEP).next_multiple_of(STEP)
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::OutOfSpace)
}

fn overhead_estimate(opts: &Options, blocks: u64, used_inodes: u64) -> u64 {
    let Ok(g) = Geometry::new(blocks, inode_count(opts, blocks, used_inodes), opts.resize_room) else {
        return blocks; // forces growth
    };
    let supers: u64 = (0..g.groups).filter(|&i| has_super(i)).count() as u64 * (1 + g.gdt_blocks + g.reserved_gdt);
    supers + g.groups * (2 + g.itable_blocks()) + 2
}

fn layout_with(p: &Prepared<'_>, opts: &Options, blocks: u64, used_inodes: u64) -> Result<Plan, Error> {
    if blocks < 64 {
        return Err(Error::OutOfSpace);
    }
    let geometry = Geometry::new(blocks, inode_count(opts, blocks, used_inodes), opts.resize_room)?;
    let g = &geometry;
    if u64::from(p.highest_ino) > g.inodes() {
        return Err(Error::TooManyInodes { inodes: u64::from(p.highest_ino), groups: g.groups });
    }
    // Fixed metadata: superblock regions, then each flex group's bitmaps and inode tables packed at the start
    // of its first group.
    let mut taken: Vec<Range<u64>> = Vec::new();
    let mut groups = vec![GroupPlan::default(); g.groups as usize];
    let itb = g.itable_blocks();
    for f in 0..g.groups.div_ceil(FLEX) {
        let first = f * FLEX;
        let members = FLEX.min(g.groups - first);
        for grp in first..first + members {
            let r = g.super_region(grp);
            if !r.is_empty() && grp != first {
                taken.push(r);
            }
        }
        let start = g.super_region(first).end;
        let len = 2 * members + members * itb;
        if start + len > g.group_start(first) + g.group_len(first) {
            return Err(Error::GroupTooSmall);
        }
        let head = g.super_region(first);
        taken.push(head.start..start + len);
        for (k, grp) in (first..first + members).enumerate() {
            let k = k as u64;
            let gp = &mut groups[grp as usize];
            gp.block_bitmap = start + k;
            gp.inode_bitmap = start + members + k;
            gp.inode_table = start + 2 * members + k * itb;
        }
    }
    taken.sort_by_key(|r| r.start);
    let taken = merge(taken);
    if let Some(last) = taken.last()
        && last.end > blocks
    {
        return Err(Error::GroupTooSmall);
    }
    let mut alloc = Allocator::new(taken.clone(), blocks);
    let mut allocated: Vec<Range<u64>> = Vec::new();
    let mut out_blocks: Vec<KnownBlock> = Vec::new();

    let fs_seed = fs_seed(&opts.uuid);
    let mut inodes: Vec<Option<InodeRec>> = vec![None; p.highest_ino.max(LOST_FOUND_INO) as usize];
    for reserved in 1..LOST_FOUND_INO {
        inodes[reserved as usize - 1] = Some(InodeRec::reserved());
    }

    // Journal, contiguous, right after group 0's metadata.
    let jblocks = if opts.journal { default_journal_blocks(blocks) } else { 0 };
    let journal = if jblocks > 0 { alloc.alloc_contiguous(jblocks)? } else { 0..0 };
    if jblocks > 0 {
        allocated.push(journal.clone());
        let mut rec = InodeRec::special(0o100600, opts.timestamp);
        rec.size = jblocks * BLOCK;
        let tree_blocks = inode::set_extents(
            &mut rec,
            std::slice::from_ref(&journal),
            &mut alloc,
            &mut out_blocks,
            inode_seed(fs_seed, JOURNAL_INO, 0),
        )?;
        allocated.extend(tree_blocks);
        rec.blocks_512 = (jblocks + rec.tree_blocks) * (BLOCK / 512);
        out_blocks.push((journal.start, super::journal::superblock(jblocks, &opts.uuid)));
        inodes[JOURNAL_INO as usize - 1] = Some(rec);
    }

    // The resize inode: a double-indirect block listing the reserved descriptor blocks, each of which lists
    // its backups.
    if g.reserved_gdt > 0 {
        let dind = alloc.alloc_contiguous(1)?;
        allocated.push(dind.clone());
        let (rec, blocks_out) = super::resize::resize_inode(g, dind.start, opts.timestamp);
        out_blocks.extend(blocks_out);
        inodes[RESIZE_INO as usize - 1] = Some(rec);
    }

    // Root, lost+found, then every node in inode order.
    let mut data = Vec::new();
    let mut dir_jobs = Vec::new();
    let mut place = |id: Option<NodeId>,
                     ino: u32,
                     alloc: &mut Allocator,
                     out_blocks: &mut Vec<KnownBlock>,
                     allocated: &mut Vec<Range<u64>>|
     -> Result<InodeRec, Error> {
        let seed = inode_seed(fs_seed, ino, 0);
        let (node, shape) = match id {
            Some(id) => (Some(&p.tree.nodes[id as usize]), p.dirs[id as usize]),
            None => match &p.lost_found {
                LostFound::Synthetic(d) => (None, Some(*d)),
                LostFound::InTree(_) => unreachable!("synthetic lost+found only"),
            },
        };
        let mut runs = Vec::new();
        let mut rec = match node {
            None => InodeRec::lost_found(opts.timestamp),
            Some(n) => InodeRec::for_node(n, id.map_or(2, |id| p.links[id as usize])),
        };
        match (node, shape) {
            (_, Some(d)) => {
                alloc.alloc(d.blocks, &mut runs)?;
                let parent = id.map_or(ROOT_INO, |id| p.parent[id as usize]);
                dir_jobs.push(DirJob { node: id, ino, parent, runs: runs.clone() });
                rec.size = d.blocks * BLOCK;
                if d.indexed {
                    rec.flags |= inode::INDEX_FL;
                }
            }
            (Some(Node::File { size, .. }), None) => {
                alloc.alloc(size.div_ceil(BLOCK), &mut runs)?;
                if *size > 0 {
                    data.push(DataJob { node: id.expect("tree node"), size: *size, runs: runs.clone() });
                }
            }
            (Some(Node::Symlink { target, .. }), None) => {
                if target.len() >= inode::FAST_SYMLINK_MAX {
                    alloc.alloc(1, &mut runs)?;
                    let mut b = vec![0u8; BLOCK as usize].into_boxed_slice();
                    b[..target.len()].copy_from_slice(target);
                    out_blocks.push((runs[0].start, b));
                } else {
                    rec.set_fast_symlink(target);
                    return Ok(rec);
                }
            }
            (Some(Node::Dir { .. }) | None, None) => unreachable!("directories are rendered"),
        }
        let content: u64 = runs.iter().map(|r| r.end - r.start).sum();
        allocated.extend(runs.iter().cloned());
        let tree_blocks = inode::set_extents(&mut rec, &runs, alloc, out_blocks, seed)?;
        allocated.extend(tree_blocks);
        rec.blocks_512 = (content + rec.tree_blocks) * (BLOCK / 512);
        Ok(rec)
    };
    inodes[ROOT_INO as usize - 1] = Some(place(Some(0), ROOT_INO, &mut alloc, &mut out_blocks, &mut allocated)?);
    let lf_rec = match &p.lost_found {
        LostFound::Synthetic(_) => place(None, LOST_FOUND_INO, &mut alloc, &mut out_blocks, &mut allocated)?,
        LostFound::InTree(id) => place(Some(*id), LOST_FOUND_INO, &mut alloc, &mut out_blocks, &mut allocated)?,
    };
    inodes[LOST_FOUND_INO as usize - 1] = Some(lf_rec);
    for &id in &p.order {
        let ino = p.ino[id as usize];
        if ino == LOST_FOUND_INO {
            continue;
        }
        inodes[ino as usize - 1] = Some(place(Some(id), ino, &mut alloc, &mut out_blocks, &mut allocated)?);
    }

    // Accounting.
    let mut used = taken;
    used.extend(allocated);
    used.sort_by_key(|r| r.start);
    let used = merge(used);
    let used_total: u64 = used.iter().map(|r| r.end - r.start).sum();
    let mut ri = 0;
    for (grp, gp) in groups.iter_mut().enumerate() {
        let start = g.group_start(grp as u64);
        let end = start + g.group_len(grp as u64);
        let mut in_group = 0;
        while ri < used.len() && used[ri].end <= start {
            ri += 1;
        }
        let mut k = ri;
        while k < used.len() && used[k].start < end {
            in_group += used[k].end.min(end) - used[k].start.max(start);
            k += 1;
        }
        gp.free_blocks = g.group_len(grp as u64) - in_group;
    }
    let ipg = g.inodes_per_group;
    for (grp, gp) in groups.iter_mut().enumerate() {
        let first = grp as u64 * ipg + 1;
        let last = first + ipg - 1;
        let highest = u64::from(p.highest_ino).max(u64::from(LOST_FOUND_INO));
        let used_here = if highest < first { 0 } else { highest.min(last) - first + 1 };
        gp.free_inodes = ipg - used_here;
        gp.itable_unused = ipg - used_here;
    }
    for (i, rec) in inodes.iter().enumerate() {
        if let Some(rec) = rec
            && rec.is_dir()
        {
            groups[i / ipg as usize].used_dirs += 1;
        }
    }
    out_blocks.sort_by_key(|(b, _)| *b);
    let free_inodes = g.inodes() - u64::from(p.highest_ino).max(u64::from(LOST_FOUND_INO));
    Ok(Plan {
        geometry: geometry.clone(),
        opts: opts.clone(),
        inodes,
        blocks: out_blocks,
        job_of: {
            let mut job_of = vec![u32::MAX; p.tree.nodes.len()];
            for (i, job) in data.iter().enumerate() {
                job_of[job.node as usize] = i as u32;
            }
            job_of
        },
        dirs: dir_jobs,
        ino: p.ino.clone(),
        synthetic_lost_found: matches!(p.lost_found, LostFound::Synthetic(_)),
        data,
        groups,
        used,
        journal,
        free_blocks: blocks - used_total,
        free_inodes,
    })
}

/// Merges sorted ranges that touch or overlap.
fn merge(sorted: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        if r.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

const _: () = assert!(BLOCKS_PER_GROUP == 32768);
