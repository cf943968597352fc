//! Output formats: the planned raw disk written as the file or bundle the user asked for (raw, raw.zst, qcow2,
//! VHD, VHDX, VMDK, a GCE tarball, an AMI bundle), with a bmaptool block map and `SHA256SUMS`-style checksums
//! beside it. Everything is named and checked before the first byte is written; every file is written under a
//! temporary name and renamed only when complete.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_formats::image::{self, Container, RawImage};

use super::{AtomicDir, AtomicOutput};
use crate::cli::{Compression, Format};
use crate::progress::{self, Meter, Phase, Progress};
pub use crate::resolve::output::Request;
use crate::seed::Seed;

/// Every path `req` writes at the top level for an output at `target`, the output first, each with its kind:
/// the image file (or bundle directory), its block map, its checksums.
#[must_use]
pub fn paths(req: &Request, target: &Path) -> Vec<(PathBuf, super::OutputKind)> {
    use super::OutputKind;
    if req.format == Format::Ami {
        return vec![(target.to_path_buf(), OutputKind::Dir)];
    }
    let mut paths = vec![(target.to_path_buf(), OutputKind::File)];
    if req.bmap {
        paths.push((bmap_path(target), OutputKind::File));
    }
    if req.writes_checksum() {
        paths.push((sums_path(target), OutputKind::File));
    }
    paths
}

/// The facts a bundle's metadata needs about the system.
#[derive(Debug, Clone)]
pub struct SystemFacts {
    /// The toplevel's store path name (`…-nixos-system-HOST-LABEL`).
    pub toplevel_name: String,
    /// `x86_64-linux`, …
    pub system: String,
    /// How the disk boots: `uefi`, `legacy-bios` or `uefi-preferred` (AWS's names).
    pub boot_mode: &'static str,
}

/// The container for `format`, with every identity derived from `seed` and every time from `timestamp`.
///
/// # Errors
/// If the options are out of range.
pub fn container(
    req: &Request,
    seed: &Seed,
    timestamp: u32,
    threads: usize,
    output: Option<&Path>,
) -> Result<Box<dyn Container>> {
    use image::qcow2::{Compression as Q, Qcow2};
    let guid = |what: &str| kiln_formats::disk::Guid::v4_from_bytes(seed.bytes16(what));
    Ok(match req.format {
        Format::Raw => Box::new(image::raw::Raw),
        Format::RawZst => Box::new(image::zst::RawZst::new(
            image::zst::RawZst::DEFAULT_LEVEL,
            u32::try_from(threads.max(1)).unwrap_or(u32::MAX),
        )),
        Format::Qcow2 => Box::new(match req.compress.unwrap_or(Compression::Zstd) {
            Compression::None => Qcow2::new(Q::None)?,
            // zstd level 1 in 256 KiB clusters: on a NixOS store about 2% smaller than qemu-img's level 3 in
            // 64 KiB clusters, for under half the CPU time. Every qcow2 reader takes any cluster size.
            Compression::Zstd => Qcow2::new(Q::Zstd { level: 1 })?
                .with_cluster_size(image::qcow2::ClusterSize::new(256 << 10).context("qcow2 cluster size")?),
            Compression::Zlib => Qcow2::new(Q::zlib())?,
        }),
        Format::Vhd | Format::Ami => {
            let mut vhd = image::vhd::Vhd::new(guid("vhd-unique-id"));
            vhd.timestamp = image::vhd::Vhd::timestamp_from_unix(u64::from(timestamp));
            Box::new(vhd)
        }
        Format::Vhdx => {
            Box::new(image::vhdx::Vhdx::new(guid("vhdx-disk-id"), guid("vhdx-file-write"), guid("vhdx-data-write")))
        }
        Format::Vmdk => {
            let cid = u32::from_le_bytes(seed.bytes16("vmdk-cid")[..4].try_into().expect("4 bytes"));
            // ffffffff and fffffffe are reserved.
            let mut vmdk = image::vmdk::Vmdk::new(cid.min(0xffff_fffd));
            // The descriptor names the file holding the extent: the output itself.
            if let Some(name) = output.and_then(Path::file_name) {
                vmdk.extent_name = name.to_string_lossy().into_owned();
            }
            Box::new(vmdk)
        }
        Format::Gce => Box::new(image::gce::Gce::new(u64::from(timestamp), image::gce::Gce::DEFAULT_LEVEL)),
    })
}

/// Where and how an image is written: the request, its container, the facts its metadata needs, the path.
#[derive(Clone, Copy)]
pub struct Output<'a> {
    /// What the user asked for.
    pub req: &'a Request,
    /// The container format's writer.
    pub container: &'a dyn Container,
    /// The system's facts, for bundle metadata.
    pub facts: &'a SystemFacts,
    /// The output path.
    pub target: &'a Path,
    /// Replace an existing output.
    pub force: bool,
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("req", self.req)
            .field("target", &self.target)
            .field("force", &self.force)
            .finish()
    }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    /// The output path (a file, or the bundle directory).
    pub output: PathBuf,
    /// The disk image file itself (inside the bundle for ami).
    pub image: PathBuf,
    /// The format.
    pub format: Format,
    /// The virtual disk size in bytes.
    pub disk_bytes: u64,
    /// Bytes of the disk that hold data (the rest are holes, never read).
    pub allocated_bytes: u64,
    /// The image file's size in bytes.
    pub file_bytes: u64,
    /// The image file's sha256, when checksums were written.
    pub sha256: Option<String>,
    /// Every file written, the image first.
    pub files: Vec<PathBuf>,
}

/// Writes the disk: `write_raw` fills a file of `size` bytes with the raw image (it may leave holes), then the
/// container, block map, checksums and bundle metadata are made from it, and everything is renamed into place.
///
/// # Errors
/// Whatever fails; nothing is left at the output paths then.
pub fn write(
    out: &Output<'_>,
    size: u64,
    progress: &dyn Progress,
    write_raw: impl FnOnce(&File) -> Result<()>,
) -> Result<Written> {
    let Output { req, container, facts, target, force } = *out;
    let bundle = req.format == Format::Ami;
    let dir = if bundle { Some(AtomicDir::create(target, force)?) } else { None };
    let label = req.label.clone().unwrap_or_else(|| label_of(&facts.toplevel_name));
    // The image's final path, and where it is written before the rename.
    let (image_target, image_temp_dir) = match &dir {
        Some(d) => {
            let name = format!("nixos-amazon-image-{label}-{}.vhd", facts.system);
            (target.join(&name), Some(d.path().join(&name)))
        }
        None => (target.to_path_buf(), None),
    };
    let open_image = || -> Result<AtomicOutput> {
        match &image_temp_dir {
            // Inside the temporary bundle directory, the file is written under its final name.
            Some(path) => AtomicOutput::create(path, false),
            None => AtomicOutput::create(target, force),
        }
    };
    let vsize = container.virtual_size(size);
    let write_phase = |file: &File| -> Result<()> {
        size_image(file, vsize, target)?;
        progress::phase(progress, Phase::Write, || write_raw(file), |()| format!("{vsize} bytes of disk"))
    };
    // The raw image: the output itself for raw and fixed VHD, else a scratch file beside the output.
    let (out, scratch) = if container.in_place() {
        let out = open_image()?;
        write_phase(out.file())?;
        (out, None)
    } else {
        let scratch = AtomicOutput::scratch(target, "raw.tmp")?;
        write_phase(scratch.file())?;
        (open_image()?, Some(scratch))
    };
    let raw_file = scratch.as_ref().map_or_else(|| out.file(), AtomicOutput::file);
    let raw = RawImage::from_file(raw_file).context("finding the image's data ranges")?;
    let allocated = raw.allocated_bytes();
    let bmap = if req.bmap { Some(block_map(&raw, vsize, progress)?) } else { None };
    let shown = out.temp_path().display().to_string();
    format_phase(container, &out, &raw, vsize, progress)?;
    drop(raw);
    drop(scratch);
    let file_bytes = out.file().metadata().with_context(|| format!("reading the size of {shown}"))?.len();
    let sha256 = if req.writes_checksum() || bundle {
        Some(progress::phase(
            progress,
            Phase::Checksum,
            || image::checksum::sha256_file(out.file()).with_context(|| format!("hashing {shown}")),
            |h| format!("sha256 {h}"),
        )?)
    } else {
        None
    };
    // Side files, each written atomically; the image is renamed last, so no file at its path is ever partial.
    let meta = BundleMeta { label: &label, facts, vsize, image: &image_target };
    let sides = side_files(target, dir.as_ref(), bmap, sha256.as_deref(), &meta)?;
    let mut files = vec![image_target.clone()];
    let bundle_temp = dir.as_ref().map(|d| d.path().to_path_buf());
    let mut committed = Vec::new();
    for (path, bytes) in &sides {
        let side = AtomicOutput::create(path, force || bundle)?;
        std::io::Write::write_all(&mut side.file(), bytes).with_context(|| format!("writing {}", path.display()))?;
        committed.push(side);
    }
    let done = commit_all(committed, out, dir)?;
    match &bundle_temp {
        Some(temp) => files.extend(sides.iter().map(|(p, _)| target.join(p.strip_prefix(temp).unwrap_or(p)))),
        None => files.extend(done),
    }
    Ok(Written {
        output: target.to_path_buf(),
        image: image_target,
        format: req.format,
        disk_bytes: vsize,
        allocated_bytes: allocated,
        file_bytes,
        sha256,
        files,
    })
}

/// Makes the raw image file `vsize` bytes long (sparse), naming the output when its filesystem cannot.
fn size_image(file: &File, vsize: u64, target: &Path) -> Result<()> {
    file.set_len(vsize).map_err(|e| {
        let why = if e.raw_os_error() == Some(27) {
            format!("the filesystem holding {} cannot hold a file that large", super::dir_of(target).display())
        } else {
            e.to_string()
        };
        anyhow::anyhow!(
            "output {}: cannot make a {vsize}-byte ({}) image file: {why} ({e})",
            target.display(),
            crate::units::human_bytes(vsize)
        )
    })
}

/// bmaptool's block map of the raw image.
fn block_map(raw: &RawImage<'_>, vsize: u64, progress: &dyn Progress) -> Result<String> {
    let meter = Meter::new(progress, Phase::Checksum, vsize);
    progress::phase(
        progress,
        Phase::Checksum,
        || image::bmap::generate(raw, &meter).context("computing the block map"),
        |_| "block map".to_owned(),
    )
}

/// The format phase: the container finished in place, or made from the raw image's data ranges.
fn format_phase(
    container: &dyn Container,
    out: &AtomicOutput,
    raw: &RawImage<'_>,
    vsize: u64,
    progress: &dyn Progress,
) -> Result<()> {
    let shown = out.temp_path().display().to_string();
    progress::phase(
        progress,
        Phase::Format,
        || -> Result<()> {
            if container.in_place() {
                container.finish_in_place(out.file(), vsize).with_context(|| format!("finishing {shown}"))
            } else {
                let meter = Meter::new(progress, Phase::Format, vsize);
                container.convert(raw, out.file(), &meter).with_context(|| format!("writing {shown}"))
            }
        },
        |()| format!("{} of {vsize} bytes", container.name()),
    )
}

/// What a bundle's metadata says.
struct BundleMeta<'a> {
    label: &'a str,
    facts: &'a SystemFacts,
    vsize: u64,
    /// The image's final path.
    image: &'a Path,
}

/// The side files and their bytes: the block map, a bundle's `nix-support/` metadata, the checksums.
fn side_files(
    target: &Path,
    bundle: Option<&AtomicDir>,
    bmap: Option<String>,
    sha256: Option<&str>,
    meta: &BundleMeta<'_>,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut sides = Vec::new();
    if let Some(text) = bmap {
        sides.push((bmap_path(target), text.into_bytes()));
    }
    if let Some(d) = bundle {
        let file = absolute(meta.image)?;
        let vsize = meta.vsize.to_string();
        let info = serde_json::json!({
            "label": meta.label,
            "boot_mode": meta.facts.boot_mode,
            "system": meta.facts.system,
            "logical_bytes": vsize,
            "format": "vpc",
            "file": file,
            "disks": { "root": { "logical_bytes": vsize, "file": file } },
        });
        let support = d.path().join("nix-support");
        std::fs::create_dir(&support).with_context(|| format!("creating {}", support.display()))?;
        let products = format!("file vpc {}\n", file.display());
        sides.push((support.join("image-info.json"), format!("{info:#}\n").into_bytes()));
        sides.push((support.join("hydra-build-products"), products.into_bytes()));
    }
    if let Some(sum) = sha256 {
        let mut sums = image::checksum::Sha256Sums::new();
        sums.push(&file_name(meta.image), sum)?;
        for (path, bytes) in &sides {
            if bundle.is_none_or(|d| path.parent() == Some(d.path())) {
                sums.push(&file_name(path), &sha256_hex(bytes))?;
            }
        }
        let path = bundle.map_or_else(|| sums_path(target), |d| d.path().join("SHA256SUMS"));
        sides.push((path, sums.to_string().into_bytes()));
    }
    Ok(sides)
}

/// Renames the side files into place, then the image (or the whole bundle directory at once); on failure,
/// removes the side files already renamed. Returns the paths renamed (for a single-file output).
fn commit_all(sides: Vec<AtomicOutput>, image: AtomicOutput, bundle: Option<AtomicDir>) -> Result<Vec<PathBuf>> {
    let is_bundle = bundle.is_some();
    let mut done = Vec::new();
    let result = (|| -> Result<()> {
        for side in sides {
            done.push(side.commit()?);
        }
        image.commit()?;
        if let Some(d) = bundle {
            d.commit()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        if !is_bundle {
            for p in &done {
                let _ = std::fs::remove_file(p);
            }
        }
        return Err(e);
    }
    Ok(done)
}

/// Where the block map goes: `disk.raw` → `disk.raw.bmap`, `disk.raw.zst` → `disk.raw.bmap` (where bmaptool
/// looks for it).
#[must_use]
pub fn bmap_path(target: &Path) -> PathBuf {
    let name = file_name(target);
    let stem = name.strip_suffix(".zst").unwrap_or(&name);
    target.with_file_name(format!("{stem}.bmap"))
}

/// Where the checksums of a single-file output go: `disk.qcow2` → `disk.qcow2.sha256`.
#[must_use]
pub fn sums_path(target: &Path) -> PathBuf {
    target.with_file_name(format!("{}.sha256", file_name(target)))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
    image::checksum::hex(&digest)
}

/// The label of a NixOS toplevel named `nixos-system-HOST-LABEL` (NixOS's `system.nixos.label`, which starts
/// with the release's digits); the whole name after `nixos-system-` when there is no such part.
#[must_use]
pub fn label_of(toplevel_name: &str) -> String {
    let rest = toplevel_name.split_once("-nixos-system-").map_or(toplevel_name, |(_, r)| r);
    // The first `-` followed by digits and a dot: `24.11…` after a host name that may hold dashes and digits.
    let starts_label = |i: usize| {
        let after = &rest.as_bytes()[i + 1..];
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        digits > 0 && after.get(digits) == Some(&b'.')
    };
    rest.char_indices().find(|&(i, c)| c == '-' && starts_label(i)).map_or(rest, |(i, _)| &rest[i + 1..]).to_owned()
}

/// AWS's boot mode for a disk that boots by UEFI and/or BIOS.
#[must_use]
pub fn boot_mode(uefi: bool, bios: bool) -> &'static str {
    match (uefi, bios) {
        (true, true) => "uefi-preferred",
        (false, true) => "legacy-bios",
        _ => "uefi",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_side_paths() {
        assert_eq!(label_of("71zzak9vk75pfnjkjd60vwx37nxakddq-nixos-system-demo-24.11.demo"), "24.11.demo");
        assert_eq!(label_of("x-nixos-system-my-host-2-24.05.1234.abcdef"), "24.05.1234.abcdef");
        assert_eq!(label_of("x-nixos-system-plain"), "plain");
        assert_eq!(bmap_path(Path::new("/o/disk.raw.zst")), Path::new("/o/disk.raw.bmap"));
        assert_eq!(bmap_path(Path::new("/o/disk.img")), Path::new("/o/disk.img.bmap"));
        assert_eq!(sums_path(Path::new("/o/d.qcow2")), Path::new("/o/d.qcow2.sha256"));
    }
}
