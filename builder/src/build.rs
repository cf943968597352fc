//! `kiln build`: resolve the system, plan the image, write it.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kiln_formats::ext4::{self, Options, Size};
use serde::Serialize;

use crate::boot::grub;
use crate::cli::{Layout, SizeSpec};
use crate::disk;
use crate::dry_run::{self, Report, Request, human_bytes};
use crate::progress::{self, Phase, Progress};
use crate::rootfs;
use crate::seed::{Seed, format_uuid};
use kiln_formats::fat;

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
    /// Partition layout.
    pub layout: Layout,
    /// ESP size (default 512 MiB).
    pub esp_size: Option<u64>,
    /// GRUB package directory, instead of the closure's.
    pub grub: Option<PathBuf>,
    /// The specialisation to boot by default.
    pub default_specialisation: Option<String>,
    /// The disk's logical sector size.
    pub sector_size: kiln_formats::disk::SectorSize,
    /// The output format and what goes beside it.
    pub emit: crate::emit::Request,
    /// Worker threads (for formats that run their own, such as zstd's).
    pub threads: usize,
    /// The profile file `--profile` named, if it named a file (an input no output may replace).
    pub profile_file: Option<PathBuf>,
}

/// What the image will be.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Partition layout.
    pub layout: &'static str,
    /// Output format.
    pub format: &'static str,
    /// Virtual disk size in bytes.
    pub size_bytes: u64,
    /// Logical sector size of the disk in bytes.
    pub sector_size: u64,
    /// The seed identities were derived from.
    pub seed: String,
    /// Partitions (empty for `--layout none`).
    pub partitions: Vec<PartitionSummary>,
    /// Bootloaders installed.
    pub bootloaders: Vec<&'static str>,
    /// The root filesystem.
    pub root_fs: FsSummary,
}

/// One partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSummary {
    /// Number (1-based).
    pub number: usize,
    /// GPT name.
    pub name: String,
    /// Type GUID.
    pub type_guid: String,
    /// Partition GUID.
    pub guid: String,
    /// Start in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
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
    /// Byte offset in the image.
    pub offset: u64,
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
            "image          layout {}, format {}, {} bytes ({}), {}-byte sectors, seed {:?}",
            self.layout,
            self.format,
            self.size_bytes,
            human_bytes(self.size_bytes),
            self.sector_size,
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
        for p in &self.partitions {
            let _ = writeln!(
                s,
                "partition {}    {:<10} start {:>12} size {:>12} ({}) type {}",
                p.number,
                p.name,
                p.start,
                p.size,
                human_bytes(p.size),
                p.type_guid
            );
        }
        if !self.bootloaders.is_empty() {
            let _ = writeln!(s, "bootloaders    {}", self.bootloaders.join(", "));
        }
        s
    }
}

/// The disk around the root filesystem, when the layout is not `none`.
#[derive(Debug)]
struct DiskPlan {
    layout: kiln_formats::disk::DiskLayout,
    numbers: disk::Numbers,
    /// FAT32 filesystems (the ESP, the XBOOTLDR partition): tree, plan, partition number, what it is.
    fats: Vec<(fat::Tree, fat::Plan, usize, &'static str)>,
    grub: Option<kiln_formats::grub::Embedding>,
}

/// Checks every path the build will write (the output and its side files) before anything is read: each can
/// be written, and none destroys an input.
fn check_outputs(req: &BuildRequest, target: &std::path::Path) -> Result<()> {
    let mut inputs = crate::output::Inputs::new();
    inputs.dir(&req.base.store_dir, "store directory");
    // The host's Nix database, which the closure may be read from (`<prefix>/nix/var/nix/db`).
    if let Some(prefix) = req.base.store_dir.parent().and_then(std::path::Path::parent) {
        inputs.dir(&prefix.join("nix/var/nix/db"), "Nix database directory");
    }
    if let Some(ci) = &req.base.closure_info {
        inputs.dir(ci, "closure-info directory");
        // Its files may have other names (hard links) outside it.
        for name in ["registration", "store-paths"] {
            inputs.file(&ci.join(name), "closure-info file");
        }
    }
    inputs.file(&req.base.system, "system (--system)");
    for p in &req.base.extra_paths {
        inputs.file(p, "extra path (--extra-path)");
    }
    if let Some(g) = &req.grub {
        inputs.dir(g, "GRUB directory (--grub)");
    }
    if let Some(f) = &req.profile_file {
        inputs.file(f, "profile");
    }
    for (path, kind) in req.emit.paths(target) {
        crate::output::check_target(&path, req.force, kind, &inputs)?;
    }
    Ok(())
}

/// Runs a build (or, without an output, a dry run of one): a bare root filesystem (`--layout none`) or a
/// whole disk.
pub fn run(req: &BuildRequest, progress: &dyn Progress) -> Result<(Report, Option<crate::emit::Written>)> {
    req.emit.check()?;
    if let Some(target) = &req.output {
        check_outputs(req, target)?;
    }
    let custom =
        req.base.profile.as_ref().and_then(|p| p.partitions.as_deref()).filter(|_| req.layout == Layout::Custom);
    let boots = match custom {
        Some(specs) => disk::Boots::of_partitions(specs),
        None => disk::Boots::of(req.layout)?,
    };
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
                let todo: Vec<&crate::inventory::PathInventory> =
                    unhashed.iter().map(|&i| &r.inventory.paths[i]).collect();
                crate::nar::hash_closure(&r.store, &todo)
            },
            |infos| format!("{} store paths hashed", infos.len()),
        )?;
        for (&i, info) in unhashed.iter().zip(infos) {
            let path = r.inventory.paths[i].path.clone();
            r.closure.paths.get_mut(&path).expect("inventoried paths are in the closure").nar = Some(info);
        }
    }
    let mut self_hashed = vec![false; r.inventory.paths.len()];
    for &i in &unhashed {
        self_hashed[i] = true;
    }
    let seed = Seed::new(req.seed.as_deref().unwrap_or(&r.system.toplevel.to_string()));
    let container = crate::emit::container(&req.emit, &seed, req.timestamp, req.threads, req.output.as_deref())?;
    let timestamp = i64::from(req.timestamp);
    let changes = req.base.kernel_param_changes()?;
    let entries = crate::boot::entries(&r.system, &changes.iter().collect::<Vec<_>>())?;
    let parts = disk::parts(
        boots,
        &r.store,
        &r.closure,
        &r.system,
        &entries,
        custom_sizes(custom, req.esp_size),
        req.grub.as_deref(),
        req.default_specialisation.as_deref(),
        timestamp,
        req.sector_size,
    )?;
    let default = disk::default_entry(&entries, req.default_specialisation.as_deref())?;
    let (tree, nodes, plan, opts, disk_plan) = progress::phase(
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
            if boots.uefi || boots.bios {
                let console = grub::GrubConsole::from_profile(req.base.profile.as_ref().map(|p| &p.grub));
                let cfg = if boots.bios {
                    Some(grub::config(&entries, default, crate::boot::MENU_TIMEOUT, &console)?)
                } else {
                    None
                };
                rootfs::add_boot_dir(&mut tree, cfg, timestamp)?;
            }
            let root_label = custom_label(custom, crate::profile::Role::Root).map_or(ROOT_LABEL, str::as_bytes);
            let mut opts =
                Options::new(root_label, seed.uuid("ext4-uuid"), seed.bytes16("ext4-hash-seed"), req.timestamp);
            let extra = req.extra_space.unwrap_or_else(|| MIN_EXTRA.max(r.inventory.totals.unique_bytes / 10));
            let fixed = match req.size {
                None | Some(SizeSpec::Auto) => None,
                Some(SizeSpec::Fixed(bytes)) => {
                    if req.extra_space.is_some() {
                        bail!(
                            "--extra-space applies to --size auto only; with --size {bytes} the free space is what remains"
                        );
                    }
                    Some(bytes)
                }
            };
            let too_small = |needed: u64, given: u64| {
                anyhow::anyhow!(
                    "--size {given} is too small: the image needs at least {needed} bytes ({})",
                    human_bytes(needed)
                )
            };
            let plan_root = |size: Size, opts: &mut Options| {
                opts.size = size;
                ext4::plan(&tree, opts).map_err(|e| match e {
                    ext4::Error::TooSmall { needed, given } => too_small(needed, given),
                    other => anyhow::Error::new(other).context("planning the root filesystem"),
                })
            };
            if req.layout == Layout::None {
                let size = fixed.map_or(Size::Auto { extra_bytes: extra }, |bytes| Size::Fixed { bytes });
                let plan = plan_root(size, &mut opts)?;
                return Ok((tree, nodes, plan, opts, None));
            }
            // A disk: with --size the root partition fills what the others leave; without, the disk fits them.
            let system_type = &r.system.boot.system;
            let lay = |root, disk| match custom {
                Some(specs) => disk::custom_layout(specs, &parts, system_type, &seed, root, disk),
                None => disk::layout(req.layout, &parts, system_type, &seed, root, disk),
            };
            let (plan, (layout, numbers)) = match fixed {
                Some(bytes) => {
                    // The smallest disk that holds the root filesystem: the partitions up to the end of the root
                    // (the last, whole MiB), then the backup GPT. What "too small" says, so that size builds.
                    let min_disk = |opts: &Options| -> Result<u64> {
                        let root = plan_root(Size::Auto { extra_bytes: 0 }, &mut opts.clone())?.size_bytes();
                        let root = kiln_formats::disk::PartitionSize::AtLeast(kiln_formats::disk::Bytes(root));
                        let fit = kiln_formats::disk::DiskSize::Fit;
                        let (l, n) = lay(root, fit)?;
                        let end = l.byte_range(n.root).expect("root partition").end.get();
                        let sector = l.sector_size();
                        let backup = l.gpt_geometry().map_or(0, |_| {
                            kiln_formats::disk::GptGeometry::copy_sectors(sector) * sector.bytes().get()
                        });
                        Ok(end + backup)
                    };
                    let laid = lay(
                        kiln_formats::disk::PartitionSize::Fill,
                        kiln_formats::disk::DiskSize::Exactly(kiln_formats::disk::Bytes(bytes)),
                    );
                    let (layout, numbers) = match laid {
                        Ok(l) => l,
                        // Too small even for the partitions besides the root: say what the whole needs.
                        Err(e)
                            if e.chain().any(|c| {
                                matches!(
                                    c.downcast_ref::<kiln_formats::disk::Error>(),
                                    Some(kiln_formats::disk::Error::DiskTooSmall { .. })
                                )
                            }) =>
                        {
                            return Err(too_small(min_disk(&opts)?, bytes));
                        }
                        Err(e) => return Err(e.context(format!("--size {bytes}"))),
                    };
                    let range = layout.byte_range(numbers.root).expect("root partition");
                    let root_len = range.end.get() - range.start.get();
                    let plan =
                        plan_root(Size::Fixed { bytes: root_len }, &mut opts).map_err(|e| match min_disk(&opts) {
                            Ok(needed) if needed > bytes => too_small(needed, bytes),
                            _ => e,
                        })?;
                    (plan, (layout, numbers))
                }
                None => {
                    let mut plan = plan_root(Size::Auto { extra_bytes: extra }, &mut opts)?;
                    let size = kiln_formats::disk::PartitionSize::AtLeast(kiln_formats::disk::Bytes(plan.size_bytes()));
                    let (layout, numbers) = lay(size, kiln_formats::disk::DiskSize::Fit)?;
                    // A profile may make the root partition larger than the filesystem needs: fill it.
                    let range = layout.byte_range(numbers.root).expect("root partition");
                    let root_len = range.end.get() - range.start.get();
                    if root_len > plan.size_bytes() {
                        plan = plan_root(Size::Fixed { bytes: root_len }, &mut opts)?;
                    }
                    (plan, (layout, numbers))
                }
            };
            // A FAT32 filesystem for each boot partition: (tree, plan, partition number, what).
            let mut fats = Vec::new();
            for (tree, n, what, default_label, role) in [
                (&parts.esp, numbers.esp, "ESP", "ESP", crate::profile::Role::Esp),
                (&parts.xbootldr, numbers.xbootldr, "XBOOTLDR partition", "XBOOTLDR", crate::profile::Role::Xbootldr),
            ] {
                let label = custom_label(custom, role).unwrap_or(default_label);
                let (Some(tree), Some(n)) = (tree, n) else { continue };
                let range = layout.byte_range(n).expect("planned partition");
                let sector = req.sector_size.bytes().get();
                let hidden = u32::try_from(range.start.get() / sector)
                    .with_context(|| format!("the {what} starts beyond sector 2^32"))?;
                let id = seed.bytes16(if what == "ESP" { "fat-volume-id" } else { "fat-volume-id-xbootldr" });
                let volume_id = u32::from_le_bytes(id[..4].try_into().expect("4 bytes"));
                let mut fopts = fat::Options::new(range.end.get() - range.start.get(), hidden, volume_id, timestamp);
                fopts.sector_size = req.sector_size;
                label.clone_into(&mut fopts.label);
                let fplan = fat::plan(tree, &fopts).with_context(|| format!("planning the {what}"))?;
                fats.push((tree.clone(), fplan, n, what));
            }
            let grub = match &parts.grub {
                Some(dir) => {
                    let work = std::env::temp_dir();
                    let core = disk::core_img(dir, &layout, numbers.root, &format_uuid(&opts.uuid), &work)?;
                    let boot_img = std::fs::read(dir.join("lib/grub/i386-pc/boot.img"))
                        .with_context(|| format!("reading {}/lib/grub/i386-pc/boot.img", dir.display()))?;
                    Some(
                        kiln_formats::grub::Embedding::for_layout(&boot_img, &core, &layout)
                            .context("embedding GRUB")?,
                    )
                }
                None => None,
            };
            Ok((tree, nodes, plan, opts, Some(DiskPlan { layout, numbers, fats, grub })))
        },
        |(_, _, plan, _, d)| match d {
            None => format!("ext4 of {} bytes, {} free", plan.size_bytes(), plan.free_blocks * ext4::BLOCK),
            Some(d) => format!(
                "disk of {} bytes, {} partitions; root ext4 of {} bytes",
                d.layout.size().get(),
                d.layout.partitions().len(),
                plan.size_bytes()
            ),
        },
    )?;
    let g = &plan.geometry;
    let root_offset =
        disk_plan.as_ref().map_or(0, |d| d.layout.byte_range(d.numbers.root).expect("root partition").start.get());
    let image = ImageSummary {
        layout: layout_name(req.layout),
        format: crate::emit::format_name(req.emit.format),
        // Disks are whole MiB already; a bare filesystem in a container that rounds gets zeros after it.
        size_bytes: container.virtual_size(disk_plan.as_ref().map_or(plan.size_bytes(), |d| d.layout.size().get())),
        sector_size: req.sector_size.bytes().get(),
        seed: seed.as_str().to_owned(),
        partitions: disk_plan
            .as_ref()
            .map(|d| {
                (1..=d.layout.partitions().len())
                    .map(|n| {
                        let p = &d.layout.partitions()[n - 1];
                        let range = d.layout.byte_range(n).expect("partition");
                        PartitionSummary {
                            number: n,
                            name: p.name.clone(),
                            type_guid: p.type_guid.to_string(),
                            guid: p.guid.to_string(),
                            start: range.start.get(),
                            size: range.end.get() - range.start.get(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        bootloaders: [(boots.uefi, "systemd-boot"), (boots.bios, "grub")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect(),
        root_fs: FsSummary {
            kind: "ext4",
            label: String::from_utf8_lossy(&opts.label).into_owned(),
            uuid: format_uuid(&opts.uuid),
            offset: root_offset,
            size_bytes: plan.size_bytes(),
            groups: g.groups,
            inodes: g.inodes(),
            free_inodes: plan.free_inodes,
            free_bytes: plan.free_blocks * ext4::BLOCK,
            journal_bytes: (plan.journal.end - plan.journal.start) * ext4::BLOCK,
            reserved_gdt_blocks: g.reserved_gdt,
        },
    };
    let mut report = dry_run::report(&r, &req.base.kernel_param_changes()?)?;
    report.image = Some(image);
    let Some(target) = &req.output else { return Ok((report, None)) };
    let size = report.image.as_ref().expect("set above").size_bytes;
    let free_before = crate::output::free_space(target);
    let facts = crate::emit::SystemFacts {
        toplevel_name: r.system.toplevel.name().to_owned(),
        system: r.system.boot.system.clone(),
        boot_mode: crate::emit::boot_mode(boots.uefi, boots.bios),
    };
    let written =
        crate::emit::write(&req.emit, container.as_ref(), &facts, target, req.force, size, progress, |sink| {
            let shown = target.display().to_string();
            if let Some(d) = &disk_plan {
                d.layout.write(sink).with_context(|| format!("writing the partition table of {shown}"))?;
                for (tree, fplan, n, what) in &d.fats {
                    let at = d.layout.byte_range(*n).expect("planned partition").start.get();
                    fplan.write(tree, sink, at).with_context(|| format!("writing the {what} of {shown}"))?;
                }
                for (n, label) in &d.numbers.swaps {
                    let range = d.layout.byte_range(*n).expect("planned partition");
                    let uuid = seed.bytes16(&format!("swap-uuid-{n}"));
                    let page = kiln_formats::swap::header(range.end.get() - range.start.get(), uuid, label)
                        .with_context(|| format!("partition {n}"))?;
                    std::os::unix::fs::FileExt::write_all_at(sink, &page, range.start.get())
                        .with_context(|| format!("writing the swap signature of {shown}"))?;
                }
            }
            let meter = progress::Meter::new(progress, Phase::Write, r.inventory.totals.unique_bytes);
            let (meta, data) = rayon::join(
                || plan.write_metadata(&tree, sink, root_offset).map_err(anyhow::Error::new),
                || {
                    crate::copy::copy_and_hash(
                        &r,
                        &nodes,
                        &plan,
                        sink,
                        root_offset,
                        req.verify_hashes,
                        &self_hashed,
                        &meter,
                    )
                },
            );
            meta.with_context(|| format!("writing {shown}"))?;
            let (_, copied) = data?;
            // Files outside the store (the database, its schema file, …) are the ones no store path copied.
            plan.write_files(&tree, sink, root_offset, &|i| copied[i].load(std::sync::atomic::Ordering::Relaxed))
                .with_context(|| format!("writing {shown}"))?;
            if let Some(embedding) = disk_plan.as_ref().and_then(|d| d.grub.as_ref()) {
                embedding.write(sink).with_context(|| format!("installing GRUB into {shown}"))?;
                use std::os::unix::fs::FileExt;
                embedding
                    .verify(|offset, buf| sink.read_exact_at(buf, offset.get()))
                    .with_context(|| format!("reading GRUB back from {shown}"))?;
            }
            Ok(())
        })
        .map_err(|e| crate::output::explain_no_space(e, target, free_before))?;
    Ok((report, Some(written)))
}

/// The ESP and XBOOTLDR sizes: a profile's partition list gives them, else `--esp-size` (or the defaults).
fn custom_sizes(custom: Option<&[crate::profile::PartitionSpec]>, esp_size: Option<u64>) -> (Option<u64>, Option<u64>) {
    use crate::profile::{PartSize, Role};
    let size_of = |role| {
        custom?.iter().find(|p| p.role == role).and_then(|p| match p.size {
            PartSize::Bytes(b) => Some(b.0),
            PartSize::Fill => None,
        })
    };
    (size_of(Role::Esp).or(esp_size), size_of(Role::Xbootldr))
}

/// The label a profile's partition list gives the partition of `role`.
fn custom_label(custom: Option<&[crate::profile::PartitionSpec]>, role: crate::profile::Role) -> Option<&str> {
    custom?.iter().find(|p| p.role == role)?.label.as_deref()
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Efi => "efi",
        Layout::Legacy => "legacy",
        Layout::LegacyGpt => "legacy+gpt",
        Layout::Hybrid => "hybrid",
        Layout::Efixbootldr => "efixbootldr",
        Layout::None => "none",
        Layout::Custom => "custom",
    }
}
