//! Plan: the resolved system and options become a [`Plan`], a value holding every decision about the image
//! before a byte is written: the partition table with every offset and GUID, the root filesystem's tree and
//! ext4 plan (every inode and block), each FAT filesystem's plan, the swap signatures, GRUB's core.img and where it
//! goes. The write stage consumes it, `--dry-run` prints it (it serialises to JSON: [`summary::ImageSummary`]),
//! and tests compare it.

pub mod disk;
mod fat;
pub mod root;
pub mod rootfs;
pub mod summary;

use anyhow::{Context, Result, bail};
use kiln_formats::disk::DiskLayout;
use kiln_formats::grub::Embedding;
use kiln_formats::image::Container;
use kiln_formats::verity::Verity;
use kiln_formats::{erofs, ext4};

pub use fat::{BootFs, BootFsKind};
pub use summary::ImageSummary;

use crate::boot::{self, Boots, Entry, grub, grub_bios};
use crate::cli::Layout;
use crate::profile::Role;
use crate::progress::{self, Phase, Progress};
use crate::resolve::Resolved;
use crate::resolve::options::Options;
use crate::seed::{Seed, format_uuid};

/// The root filesystem's label, which NixOS configurations mount by (`/dev/disk/by-label/nixos`).
pub const ROOT_LABEL: &[u8] = b"nixos";

/// Everything an image will be.
#[derive(Debug)]
pub struct Plan {
    /// The partition layout.
    pub layout: Layout,
    /// The bootloaders installed.
    pub boots: Boots,
    /// Where identities (UUIDs, GUIDs, volume ids) come from.
    pub seed: Seed,
    /// The time of what the image creates itself.
    pub timestamp: u32,
    /// The boot entries, the default one first.
    pub entries: Vec<Entry>,
    /// The index of the entry booted by default.
    pub default_entry: usize,
    /// Store paths (inventory order) hashed during this build: the copy checks they did not change since.
    pub self_hashed: Vec<bool>,
    /// The root filesystem.
    pub root: RootFs,
    /// The store on a partition of its own, read-only and verified (`efi-verity`); `None`: the store is in the
    /// root filesystem.
    pub store: Option<StoreFs>,
    /// The disk around it; `None` for a bare filesystem (`--layout none`).
    pub disk: Option<Disk>,
    /// The disk's size as the output container presents it.
    pub virtual_size: u64,
}

/// The root filesystem, planned.
#[derive(Debug)]
pub struct RootFs {
    /// Its tree: the store, the Nix database and profile, `/boot`.
    pub tree: ext4::Tree,
    /// The tree node of each inventory entry, per store path (inventory order).
    pub nodes: Vec<Vec<ext4::NodeId>>,
    /// The ext4 plan: every inode, block and extent.
    pub plan: ext4::Plan,
    /// The options it was planned with (label, UUID, hash seed, size).
    pub options: ext4::Options,
    /// Its byte offset in the image.
    pub offset: u64,
}

/// The store as a filesystem of its own with a dm-verity hash tree beside it (`efi-verity`).
#[derive(Debug)]
pub struct StoreFs {
    /// Its tree: `/nix/store` and the closure in it.
    pub tree: ext4::Tree,
    /// The tree node of each inventory entry, per store path (inventory order).
    pub nodes: Vec<Vec<ext4::NodeId>>,
    /// The EROFS plan.
    pub plan: erofs::Plan,
    /// Its byte offset in the image.
    pub offset: u64,
    /// The hash tree's shape, salt and UUID.
    pub verity: Verity,
    /// The hash partition's byte offset in the image.
    pub verity_offset: u64,
    /// The compressed files' clusters, made while planning (`--store-compression lz4` with an output).
    pub staged: Option<Staged>,
}

/// The clusters of a compressed store's files, made once while planning and kept in an unnamed temporary file
/// beside the output until the data pass copies them into place.
#[derive(Debug)]
pub struct Staged {
    /// The temporary file.
    pub file: std::fs::File,
    /// Per tree node (default for a node not stored compressed): where its clusters are in the file.
    pub files: Vec<StagedFile>,
}

/// One compressed file's clusters in the staging file, and what they were made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedFile {
    /// (byte offset in the staging file, bytes) of its clusters, in order.
    pub runs: Vec<(u64, u64)>,
    /// XXH3-128 of the file's bytes when they were compressed: the data pass, which reads the file again to
    /// check its narHash, proves with it that the clusters are of the bytes it checked.
    pub digest: u128,
    /// The verity digest of each cluster's block (the store's hash tree takes them as they are).
    pub leaves: Vec<[u8; 32]>,
}

/// What the kernel command line says until the store's root hash is known: `usrhash=` and 64 zeros, replaced
/// (same length) in every boot file once the store is written.
pub const ROOT_HASH_PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The disk around the root filesystem.
#[derive(Debug)]
pub struct Disk {
    /// The partition table, every partition's place.
    pub layout: DiskLayout,
    /// Which partition is which.
    pub numbers: disk::Numbers,
    /// The FAT32 filesystems of the ESP and the XBOOTLDR partition.
    pub boot_fs: Vec<BootFs>,
    /// Swap signatures.
    pub swaps: Vec<Swap>,
    /// GRUB's boot sector and core.img, for BIOS boots.
    pub grub: Option<Embedding>,
}

/// A swap partition's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    /// Its partition number.
    pub number: usize,
    /// Its label.
    pub label: String,
    /// Its UUID.
    pub uuid: [u8; 16],
}

/// Plans the image of `r` (whose narHashes are all known) as `opts` ask, with identities from `seed` (see
/// [`seed_of`]), for the container that will hold it.
///
/// # Errors
/// Whatever does not fit: sizes, boot files, GRUB inputs, partitions (each error says which and why).
pub fn plan(
    r: &Resolved,
    opts: &Options,
    seed: Seed,
    self_hashed: Vec<bool>,
    container: &dyn Container,
    progress: &dyn Progress,
) -> Result<Plan> {
    let layout = opts.layout.context("planning an image needs a layout")?;
    let boots = match opts.custom_partitions() {
        Some(specs) => crate::profile::boots_of(specs),
        None => Boots::of(layout)?,
    };
    let arch = crate::arch::Arch::of(&r.system.boot.system)?;
    if boots.bios && !arch.bios {
        bail!(
            "{}: this layout boots by BIOS (GRUB for i386-pc), which {} has not: use --layout efi or efixbootldr \
             (or a profile with a UEFI layout)",
            arch.system,
            arch.name()
        );
    }
    let mut entries = boot::entries(&r.system, &opts.kernel_params_for(&r.system.boot.system))?;
    if layout == Layout::EfiVerity {
        for e in &mut entries {
            if e.cmdline.split(' ').any(|p| p.starts_with("usrhash=")) {
                bail!("kernel parameters: usrhash= is set by --layout efi-verity (the store's root hash); remove it");
            }
            e.cmdline = format!("{} usrhash={ROOT_HASH_PLACEHOLDER}", e.cmdline);
        }
    }
    let parts = disk::parts(r, opts, boots, &entries)?;
    let default_entry = disk::default_entry(&entries, opts.default_specialisation.as_deref())?;
    let (root, store, disk) = progress::phase(
        progress,
        Phase::Plan,
        || {
            plan_image(
                r,
                opts,
                &Planning { layout, boots, seed: &seed, entries: &entries, default_entry, parts: &parts },
            )
        },
        |(root, _, d)| match d {
            None => format!("ext4 of {} bytes, {} free", root.plan.size_bytes(), root.plan.free_blocks * ext4::BLOCK),
            Some(d) => format!(
                "disk of {} bytes, {} partitions; root ext4 of {} bytes",
                d.layout.size().get(),
                d.layout.partitions().len(),
                root.plan.size_bytes()
            ),
        },
    )?;
    let raw_size = disk.as_ref().map_or(root.plan.size_bytes(), |d| d.layout.size().get());
    Ok(Plan {
        layout,
        boots,
        seed,
        timestamp: opts.timestamp,
        entries,
        default_entry,
        self_hashed,
        root,
        store,
        disk,
        // Disks are whole MiB already; a bare filesystem in a container that rounds gets zeros after it.
        virtual_size: container.virtual_size(raw_size),
    })
}

/// Where a build's identities come from: `--seed`, else the toplevel's path.
#[must_use]
pub fn seed_of(r: &Resolved, opts: &Options) -> Seed {
    Seed::new(opts.seed.as_deref().unwrap_or(&r.system.toplevel.to_string()))
}

/// What the plan phase works from.
struct Planning<'a> {
    layout: Layout,
    boots: Boots,
    seed: &'a Seed,
    entries: &'a [Entry],
    default_entry: usize,
    parts: &'a disk::DiskParts,
}

fn plan_image(r: &Resolved, opts: &Options, p: &Planning<'_>) -> Result<(RootFs, Option<StoreFs>, Option<Disk>)> {
    let timestamp = i64::from(opts.timestamp);
    let verity = p.layout == Layout::EfiVerity;
    let (tree, nodes) = root_tree(r, opts, p, !verity)?;
    let store = if verity { Some(store_fs(r, opts, p.seed)?) } else { None };
    let store_sizes =
        store.as_ref().map(|(_, _, plan, v, _)| disk::StoreSizes { fs: plan.size_bytes(), hash: v.hash_bytes() });
    let custom = opts.custom_partitions();
    let label = custom_label(custom, Role::Root).map_or(ROOT_LABEL, str::as_bytes);
    let mut options =
        ext4::Options::new(label, p.seed.uuid("ext4-uuid"), p.seed.bytes16("ext4-hash-seed"), opts.timestamp);
    let sizing = root::Sizing::new(opts.size, opts.extra_space, r.inventory.totals.unique_bytes)?;
    if p.layout == Layout::None {
        let plan = root::bare(&tree, &mut options, sizing)?;
        return Ok((RootFs { tree, nodes, plan, options, offset: 0 }, None, None));
    }
    let system_type = &r.system.boot.system;
    let lay = |root, size| match custom {
        Some(specs) => disk::custom_layout(specs, p.parts, system_type, p.seed, root, size),
        None => disk::layout(p.layout, p.parts, system_type, p.seed, store_sizes, root, size),
    };
    let (plan, layout, numbers) = root::on_disk(&tree, &mut options, sizing, &lay)?;
    let boot_fs = fat::plan_all(p.parts, &layout, &numbers, custom, p.seed, timestamp)?;
    let swaps = numbers
        .swaps
        .iter()
        .map(|(n, label)| Swap { number: *n, label: label.clone(), uuid: p.seed.bytes16(&format!("swap-uuid-{n}")) })
        .collect();
    let grub = match &p.parts.grub {
        Some(dir) => Some(grub_embedding(dir, &layout, numbers.root, &format_uuid(&options.uuid))?),
        None => None,
    };
    let offset = layout.byte_range(numbers.root).expect("root partition").start.get();
    let store = store.map(|(tree, nodes, plan, verity, staged)| {
        let at = |n: Option<usize>| layout.byte_range(n.expect("store partitions")).expect("planned").start.get();
        let (offset, verity_offset) = (at(numbers.store), at(numbers.store_verity));
        StoreFs { tree, nodes, plan, offset, verity, verity_offset, staged }
    });
    let root = RootFs { tree, nodes, plan, options, offset };
    Ok((root, store, Some(Disk { layout, numbers, boot_fs, swaps, grub })))
}

/// The store as an EROFS filesystem (label `store`, the canonical mtime as its build time so every store inode is
/// compact) and the shape of its hash tree, salted from the seed.
fn store_fs(r: &Resolved, opts: &Options, seed: &Seed) -> Result<StorePlanned> {
    let (tree, nodes) = rootfs::store_tree(&r.store, &r.inventory, i64::from(opts.timestamp))?;
    let options =
        erofs::Options { label: disk::STORE_LABEL.as_bytes().to_vec(), uuid: seed.uuid("erofs-uuid"), timestamp: 1 };
    let salt = seed.derive("verity-salt");
    let (packed, staged) = if opts.store_lz4 {
        // The clusters are staged beside the output (the same filesystem: copied into place in the kernel).
        let stage = match &opts.output {
            Some(out) => {
                let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
                Some(
                    tempfile::tempfile_in(dir)
                        .with_context(|| format!("{}: cannot make a staging file", dir.display()))?,
                )
            }
            None => None,
        };
        let (packed, files) = pack_store(r, &tree, &nodes, stage.as_ref(), &salt)?;
        (packed, stage.map(|file| Staged { file, files }))
    } else {
        (Vec::new(), None)
    };
    let plan = erofs::plan_packed(&tree, &options, packed).context("planning the store filesystem")?;
    let verity = Verity::new(plan.size_bytes(), &salt, seed.uuid("verity-uuid")).context("planning the hash tree")?;
    Ok((tree, nodes, plan, verity, staged))
}

/// The store filesystem as planned: its tree, the node of each inventory entry, its plan, its hash tree's shape
/// and the staged clusters of a compressed store.
type StorePlanned = (ext4::Tree, Vec<Vec<ext4::NodeId>>, erofs::Plan, Verity, Option<Staged>);

/// Bytes of clusters gathered before they are written to the staging file.
const STAGE_RUN: usize = 1 << 20;

/// Per tree node: the clusters of a file stored compressed, and where they were staged.
type Packed = (Vec<Vec<erofs::lz4::Extent>>, Vec<StagedFile>);

/// Compresses every store file LZ4 shrinks by a block (each inode once, store paths in parallel), for the plan
/// of a compressed store: per tree node, the clusters of a file stored compressed. With a `stage` file the
/// clusters are written there (the data pass copies them into place once it has read the file again, checked
/// its narHash and found the same bytes); without one (a dry run) only their places are kept.
fn pack_store(
    r: &Resolved,
    tree: &ext4::Tree,
    nodes: &[Vec<ext4::NodeId>],
    stage: Option<&std::fs::File>,
    salt: &[u8],
) -> Result<Packed> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let cursor = AtomicU64::new(0);
    let put = |out: &mut Vec<u8>, file: &mut StagedFile| -> Result<()> {
        if let Some(f) = stage
            && !out.is_empty()
        {
            let at = cursor.fetch_add(out.len() as u64, Ordering::Relaxed);
            f.write_all_at(out, at).context("writing the staging file of the compressed store")?;
            file.runs.push((at, out.len() as u64));
            file.leaves.extend(kiln_formats::verity::block_digests(salt, out));
        }
        out.clear();
        Ok(())
    };
    use rayon::prelude::*;
    // Each node's first name.
    let mut seen = vec![false; tree.len()];
    let mut work: Vec<(usize, Vec<(usize, ext4::NodeId)>)> = Vec::new();
    for (pi, p) in r.inventory.paths.iter().enumerate() {
        let mut files = Vec::new();
        for (ei, e) in p.entries.iter().enumerate() {
            let node = nodes[pi][ei];
            if let crate::inventory::Kind::File { size, .. } = e.kind
                && size > erofs::BLOCK
                && !std::mem::replace(&mut seen[node as usize], true)
            {
                files.push((ei, node));
            }
        }
        if !files.is_empty() {
            work.push((pi, files));
        }
    }
    // Largest store paths first (as the data pass and `nar::hash_closure` take them): one large library left to
    // the end would otherwise keep one thread compressing while the others wait.
    work.sort_by_cached_key(|&(pi, _)| std::cmp::Reverse(r.inventory.paths[pi].counts().bytes));
    let packed: Vec<Vec<(ext4::NodeId, Vec<erofs::lz4::Extent>, StagedFile)>> =
        work.par_iter().with_max_len(1).map(|(pi, files)| pack_path(r, *pi, files, &put)).collect::<Result<_>>()?;
    let mut per_node = vec![Vec::new(); tree.len()];
    let mut staged = vec![StagedFile::default(); tree.len()];
    for (node, extents, file) in packed.into_iter().flatten() {
        per_node[node as usize] = extents;
        staged[node as usize] = file;
    }
    Ok((per_node, staged))
}

/// Takes a compressed file's clusters gathered so far (and empties the buffer): stages them, adding where to the
/// file's runs and their blocks' verity digests to its leaves.
type Put<'a> = dyn Fn(&mut Vec<u8>, &mut StagedFile) -> Result<()> + Sync + 'a;

/// Compresses the `files` (entry, node) of store path `pi`, handing each file's clusters to `put`.
fn pack_path(
    r: &Resolved,
    pi: usize,
    files: &[(usize, ext4::NodeId)],
    put: &Put<'_>,
) -> Result<Vec<(ext4::NodeId, Vec<erofs::lz4::Extent>, StagedFile)>> {
    use std::io::Read;
    let p = &r.inventory.paths[pi];
    let root = r.store.physical(&p.path);
    let opener = crate::store::StoreFiles::new(&root)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    let mut done = Vec::with_capacity(files.len());
    for &(ei, node) in files {
        let e = &p.entries[ei];
        let shown = || crate::store::entry_path(&root, &e.rel).display().to_string();
        let crate::inventory::Kind::File { size, .. } = e.kind else { unreachable!("files only") };
        let mut file = opener.open(&e.rel).with_context(shown)?;
        let mut c = erofs::lz4::Compressor::new();
        let mut digest = xxhash_rust::xxh3::Xxh3::new();
        let mut staged = StagedFile::default();
        let mut read = 0u64;
        loop {
            let n = file.read(&mut buf).with_context(shown)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            if read > size {
                break;
            }
            digest.update(&buf[..n]);
            c.push(&buf[..n], &mut out);
            if out.len() >= STAGE_RUN {
                put(&mut out, &mut staged)?;
            }
        }
        if read != size {
            bail!("{}: changed while the image was planned: listed with {size} bytes, read {read}", shown());
        }
        let extents = c.finish(&mut out);
        if erofs::lz4::worth_it(size, extents.len()) {
            put(&mut out, &mut staged)?;
            staged.digest = digest.digest128();
            done.push((node, extents, staged));
        }
        out.clear();
    }
    Ok(done)
}

/// The root filesystem's tree: the store (unless `with_store` is false: an empty `/nix/store` to mount it on),
/// the Nix database and profile, `/boot` (with grub.cfg for BIOS).
fn root_tree(r: &Resolved, opts: &Options, p: &Planning<'_>, with_store: bool) -> Result<rootfs::StoreTree> {
    let timestamp = i64::from(opts.timestamp);
    let (mut tree, nodes) = if with_store {
        rootfs::store_tree(&r.store, &r.inventory, timestamp)?
    } else {
        (rootfs::skeleton(timestamp)?.0, Vec::new())
    };
    let state = rootfs::NixState {
        toplevel: &r.system.toplevel,
        db: crate::nixdb::database(&r.closure.paths, timestamp)?,
        registration: if opts.registration_file {
            Some(crate::nixdb::registration_text(&r.closure.paths)?)
        } else {
            None
        },
    };
    rootfs::add_nix_state(&mut tree, state, timestamp)?;
    if p.boots.uefi || p.boots.bios {
        let console = crate::profile::Grub::console(opts.base.profile.as_ref().map(|p| &p.grub));
        let cfg = if p.boots.bios {
            Some(grub::config(p.entries, p.default_entry, boot::MENU_TIMEOUT, &console)?)
        } else {
            None
        };
        rootfs::add_boot_dir(&mut tree, cfg, timestamp)?;
    }
    Ok((tree, nodes))
}

/// GRUB's boot sector and core.img for a disk whose root filesystem (partition `root`) has UUID `fs_uuid`.
fn grub_embedding(dir: &std::path::Path, layout: &DiskLayout, root: usize, fs_uuid: &str) -> Result<Embedding> {
    let package = grub_bios::GrubPackage::open(dir)?;
    let core = grub_bios::core_img(&package, layout, root, fs_uuid)?;
    let boot_img = kiln_formats::grub::GrubFiles::read(&package, "boot.img")
        .with_context(|| format!("reading {}/lib/grub/i386-pc/boot.img", dir.display()))?;
    Embedding::for_layout(&boot_img, &core, layout).context("embedding GRUB")
}

/// The label a profile's partition list gives the partition of `role`.
fn custom_label(custom: Option<&[crate::profile::PartitionSpec]>, role: Role) -> Option<&str> {
    custom?.iter().find(|p| p.role == role)?.label.as_deref()
}
