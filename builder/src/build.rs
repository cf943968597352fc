//! `kiln build`: resolve the system, plan the image, write it.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kiln_formats::ext4::{self, Options, Size};
use serde::Serialize;

use crate::cli::SizeSpec;
use crate::dry_run::{self, Report, Request, human_bytes};
use crate::output::AtomicOutput;
use crate::progress::{self, Phase, Progress};
use crate::rootfs;
use crate::seed::{Seed, format_uuid};

/// The root filesystem's label, which NixOS configurations mount by (`/dev/disk/by-label/nixos`).
pub const ROOT_LABEL: &[u8] = b"nixos";
/// Free space left in a root filesystem by default: 10% of the contents, at least 256 MiB.
const MIN_EXTRA: u64 = 256 << 20;

/// A build: what to resolve, what to make of it, and where to put it.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The system and closure.
    pub base: Request,
    /// Where to write; `None` for a dry run.
    pub output: Option<PathBuf>,
    /// Replace an existing output.
    pub force: bool,
    /// `--size`.
    pub size: Option<SizeSpec>,
    /// `--extra-space`.
    pub extra_space: Option<u64>,
    /// `--seed`.
    pub seed: Option<String>,
    /// Time for what the image creates itself (`SOURCE_DATE_EPOCH` or 1).
    pub timestamp: u32,
    /// Check every store path's narHash against its registration while copying it.
    pub verify_hashes: bool,
    /// Also write `/nix-path-registration`.
    pub registration_file: bool,
}

/// What the image will be.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Partition layout.
    pub layout: &'static str,
    /// Output format.
    pub format: &'static str,
    /// Image size in bytes.
    pub size_bytes: u64,
    /// The seed identities were derived from.
    pub seed: String,
    /// The root filesystem.
    pub root_fs: FsSummary,
}

/// The planned root filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct FsSummary {
    /// Filesystem type.
    pub kind: &'static str,
    /// Label.
    pub label: String,
    /// UUID.
    pub uuid: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block groups.
    pub groups: u64,
    /// Inodes in all.
    pub inodes: u64,
    /// Inodes free.
    pub free_inodes: u64,
    /// Bytes free.
    pub free_bytes: u64,
    /// Journal size in bytes.
    pub journal_bytes: u64,
    /// Descriptor blocks reserved for online growth.
    pub reserved_gdt_blocks: u64,
}

impl ImageSummary {
    /// Text lines for the dry-run report.
    #[must_use]
    pub fn to_text(&self) -> String {
        let f = &self.root_fs;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "image          layout {}, format {}, {} bytes ({}), seed {:?}",
            self.layout,
            self.format,
            self.size_bytes,
            human_bytes(self.size_bytes),
            self.seed
        );
        let _ = writeln!(
            s,
            "root fs        {} label {} uuid {}: {} groups, {} inodes ({} free), {} free ({} bytes), journal {}, {} reserved descriptor blocks",
            f.kind,
            f.label,
            f.uuid,
            f.groups,
            f.inodes,
            f.free_inodes,
            human_bytes(f.free_bytes),
            f.free_bytes,
            human_bytes(f.journal_bytes),
            f.reserved_gdt_blocks
        );
        s
    }
}

/// Runs a build (or, without an output, a dry run of one) of a bare root filesystem (`--layout none`).
pub fn run(req: &BuildRequest, progress: &dyn Progress) -> Result<(Report, Option<PathBuf>)> {
    if let Some(target) = &req.output {
        AtomicOutput::check(target, req.force)?;
    }
    let mut r = dry_run::resolve(&req.base, progress)?;
    // Paths without a registered hash (a reference scan found them) are hashed now: the database in the
    // image needs every narHash before the image is planned. The copy then checks the files still match.
    let unhashed: Vec<usize> =
        (0..r.inventory.paths.len()).filter(|&i| r.closure.paths[&r.inventory.paths[i].path].nar.is_none()).collect();
    if !unhashed.is_empty() {
        let infos = progress::phase(
            progress,
            Phase::Hash,
            || {
                let todo: Vec<_> = unhashed.iter().map(|&i| r.inventory.paths[i].clone()).collect();
                crate::nar::hash_closure(&r.store, &todo)
            },
            |infos| format!("{} store paths hashed", infos.len()),
        )?;
        for (&i, info) in unhashed.iter().zip(infos) {
            let path = r.inventory.paths[i].path.clone();
            r.closure.paths.get_mut(&path).expect("inventoried paths are in the closure").nar = Some(info);
        }
    }
    let seed = Seed::new(req.seed.as_deref().unwrap_or(&r.system.toplevel.to_string()));
    let timestamp = i64::from(req.timestamp);
    let (tree, nodes, plan, opts) = progress::phase(
        progress,
        Phase::Plan,
        || -> Result<_> {
            let (mut tree, nodes) = rootfs::store_tree(&r.store, &r.inventory, timestamp)?;
            let state = rootfs::NixState {
                toplevel: &r.system.toplevel,
                db: crate::nixdb::database(&r.closure.paths, timestamp)?,
                registration: if req.registration_file {
                    Some(crate::nixdb::registration_text(&r.closure.paths)?)
                } else {
                    None
                },
            };
            rootfs::add_nix_state(&mut tree, state, timestamp)?;
            let extra = req.extra_space.unwrap_or_else(|| MIN_EXTRA.max(r.inventory.totals.unique_bytes / 10));
            let mut opts =
                Options::new(ROOT_LABEL, seed.uuid("ext4-uuid"), seed.bytes16("ext4-hash-seed"), req.timestamp);
            opts.size = match req.size {
                None | Some(SizeSpec::Auto) => Size::Auto { extra_bytes: extra },
                Some(SizeSpec::Fixed(bytes)) => {
                    if req.extra_space.is_some() {
                        bail!(
                            "--extra-space applies to --size auto only; with --size {bytes} the free space is what remains"
                        );
                    }
                    Size::Fixed { bytes }
                }
            };
            let plan = ext4::plan(&tree, &opts).map_err(|e| match e {
                ext4::Error::TooSmall { needed, given } => anyhow::anyhow!(
                    "--size {given} is too small: the root filesystem needs at least {needed} bytes ({})",
                    human_bytes(needed)
                ),
                other => anyhow::Error::new(other).context("planning the root filesystem"),
            })?;
            Ok((tree, nodes, plan, opts))
        },
        |(_, _, plan, _)| format!("ext4 of {} bytes, {} free", plan.size_bytes(), plan.free_blocks * ext4::BLOCK),
    )?;
    let g = &plan.geometry;
    let image = ImageSummary {
        layout: "none",
        format: "raw",
        size_bytes: plan.size_bytes(),
        seed: seed.as_str().to_owned(),
        root_fs: FsSummary {
            kind: "ext4",
            label: String::from_utf8_lossy(&opts.label).into_owned(),
            uuid: format_uuid(&opts.uuid),
            size_bytes: plan.size_bytes(),
            groups: g.groups,
            inodes: g.inodes(),
            free_inodes: plan.free_inodes,
            free_bytes: plan.free_blocks * ext4::BLOCK,
            journal_bytes: (plan.journal.end - plan.journal.start) * ext4::BLOCK,
            reserved_gdt_blocks: g.reserved_gdt,
        },
    };
    let mut report = dry_run::report(&r, &req.base.kernel_params)?;
    report.image = Some(image);
    let Some(target) = &req.output else { return Ok((report, None)) };
    let written = progress::phase(
        progress,
        Phase::Write,
        || -> Result<PathBuf> {
            let out = AtomicOutput::create(target, req.force)?;
            out.file().set_len(plan.size_bytes()).with_context(|| format!("sizing {}", out.temp_path().display()))?;
            let sink = out.file();
            let (meta, data) = rayon::join(
                || plan.write_metadata(&tree, sink, 0).map_err(anyhow::Error::new),
                || copy_and_hash(&r, &nodes, &plan, sink, req.verify_hashes),
            );
            meta.with_context(|| format!("writing {}", out.temp_path().display()))?;
            let (_, copied) = data?;
            // Files outside the store (the database, its schema file, …) are the ones no store path copied.
            plan.write_files(&tree, sink, 0, &|i| copied[i].load(std::sync::atomic::Ordering::Relaxed))
                .with_context(|| format!("writing {}", out.temp_path().display()))?;
            out.commit()
        },
        |path| format!("{}", path.display()),
    )?;
    Ok((report, Some(written)))
}

/// Copies the closure's file data into the image, one store path at a time in NAR order (paths in parallel,
/// largest first), hashing what it copies from the same reads; checks each narHash against the registered one
/// when `verify` and one is registered. A file hard-linked from several paths is written once and hashed for
/// each. Returns every path's NAR hash and size, in inventory order, and which data jobs it wrote.
fn copy_and_hash(
    r: &dry_run::Resolved,
    nodes: &[Vec<ext4::NodeId>],
    plan: &ext4::Plan,
    sink: &std::fs::File,
    verify: bool,
) -> Result<(Vec<crate::closure::NarInfo>, Vec<std::sync::atomic::AtomicBool>)> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    let claimed: Vec<AtomicBool> = (0..plan.data.len()).map(|_| AtomicBool::new(false)).collect();
    let paths = &r.inventory.paths;
    let mut order: Vec<(u64, usize)> = paths.iter().enumerate().map(|(i, p)| (p.counts().bytes, i)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let mut done = order
        .par_iter()
        .with_max_len(1)
        .map(|&(_, pi)| -> Result<(usize, crate::closure::NarInfo)> {
            let p = &paths[pi];
            let mut hasher = crate::nar::NarHasher::new();
            // (entry, writer) of the file being read, when this path is the one that writes it.
            let mut current: Option<(usize, Option<ext4::FileWriter<'_>>)> = None;
            crate::nar::write_path_tee(&r.store.physical(&p.path), p, &mut hasher, |i, offset, bytes| {
                if current.as_ref().is_none_or(|(e, _)| *e != i) {
                    let node = nodes[pi][i];
                    let mine = plan.job_of(node).is_some_and(|j| !claimed[j].swap(true, Ordering::Relaxed));
                    current = Some((i, mine.then(|| plan.file_writer(node, sink, 0)).flatten()));
                }
                if let Some((_, Some(w))) = &current
                    && bytes.iter().any(|&b| b != 0)
                {
                    w.write_at(offset, bytes)?;
                }
                Ok(())
            })?;
            let got = hasher.finish().with_context(|| format!("{}: NAR serialisation", p.path))?;
            if verify && let Some(expected) = r.closure.paths[&p.path].nar {
                crate::nar::verify(&expected, &got, &p.path)?;
            }
            Ok((pi, got))
        })
        .collect::<Result<Vec<_>>>()?;
    done.sort_unstable_by_key(|&(i, _)| i);
    Ok((done.into_iter().map(|(_, info)| info).collect(), claimed))
}
