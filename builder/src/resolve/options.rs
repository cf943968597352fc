//! A build's options, resolved: the command line (clap's [`BuildArgs`], read, never changed) and the image
//! profile it names become one [`Options`] value, with every rule about what goes together checked once, before
//! any work. The command line always wins; the profile fills in the rest (as ripgrep turns its low-level
//! arguments into high-level ones).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kernel_params::Changes;
use kiln_formats::disk::SectorSize;

use crate::boot::Boots;
use crate::cli::{Bootloader, BuildArgs, Format, Layout, SizeSpec, value_name};
use crate::profile::validate::fits;
use crate::profile::{Applied, Profile};

use super::Request;
use super::output::{Request as OutputRequest, format_of};

/// Everything a build (or a dry run) is asked to do, resolved.
#[derive(Debug, Clone)]
pub struct Options {
    /// The system and closure.
    pub base: Request,
    /// The kernel parameter changes, as layers applied in order: the profile's, then the user's
    /// (`--remove-kernel-param`s, then `--kernel-param`s). Parsed once, here.
    pub kernel_params: Vec<Changes>,
    /// The profile's `[kernel-params.<arch>]` layers, by architecture name: each goes after the profile's own
    /// layer, before the user's, on that architecture.
    pub arch_kernel_params: std::collections::BTreeMap<String, Changes>,
    /// The partition layout; `None`: a dry run that plans no image.
    pub layout: Option<Layout>,
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
    /// Unified Kernel Images instead of entry files (`--uki`), and their stub (`--uki-stub`; else the closure's).
    pub uki: Option<crate::boot::systemd_boot::UkiStub>,
    /// Whether the efi-verity store is LZ4-compressed (`--store-compression lz4`).
    pub store_lz4: bool,
    /// ESP size (default 512 MiB).
    pub esp_size: Option<u64>,
    /// GRUB package directory, instead of the closure's.
    pub grub: Option<PathBuf>,
    /// The specialisation to boot by default.
    pub default_specialisation: Option<String>,
    /// The disk's logical sector size.
    pub sector_size: SectorSize,
    /// The output format and what goes beside it.
    pub emit: OutputRequest,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// The profile file `--profile` named, if it named a file (an input no output may replace).
    pub profile_file: Option<PathBuf>,
    /// The derivation output a `kiln nix-builder` build writes into: a new store path, outside the closure, so
    /// outputs inside it may lie in the store directory.
    pub nix_out: Option<PathBuf>,
}

impl Options {
    /// The kernel parameter layers for a system of type `system`, in order: the profile's, the profile's for
    /// that architecture, the user's.
    #[must_use]
    pub fn kernel_params_for(&self, system: &str) -> Vec<&Changes> {
        let name = crate::arch::Arch::of(system).map_or(system, |a| a.name());
        let (user, profile) = match self.kernel_params.split_last() {
            Some((user, profile)) => (Some(user), profile),
            None => (None, &[][..]),
        };
        profile.iter().chain(self.arch_kernel_params.get(name)).chain(user).collect()
    }

    /// Resolves a `kiln build` command line: loads the profile it names, fills in what the user did not give,
    /// and refuses what does not fit.
    ///
    /// # Errors
    /// A profile that cannot be loaded, and every combination that makes no sense (each error names the flags).
    pub fn from_args(args: &BuildArgs) -> Result<Self> {
        let profile = match &args.profile {
            Some(name) => Some((name.as_str(), Profile::load(name)?)),
            None => None,
        };
        let p = profile.as_ref().map(|(_, p)| p);
        let applied = match &profile {
            Some((name, p)) => Some(p.applied(name, args.layout.is_some())?),
            None => None,
        };
        // A profile's own partition list is the layout (a --layout given by the user replaces it).
        let layout = args
            .layout
            .or_else(|| p.and_then(|p| p.layout))
            .or_else(|| applied.as_ref().and_then(|a| a.partitions.as_ref()).map(|_| Layout::Custom));
        // A profile's bootloader is kept only if the user's layout installs it.
        let bootloader = args
            .bootloader
            .or_else(|| p.and_then(|p| p.bootloader).filter(|&b| args.layout.is_none_or(|l| fits(b, l))));
        check_fit(args, layout, bootloader)?;
        let size = args.size.or(p.and_then(|p| p.size.map(|s| s.0)));
        // A profile's extra space applies to `auto` sizes only.
        let extra_space = args.extra_space.or_else(|| {
            p.and_then(|p| p.extra_space.map(|b| b.get())).filter(|_| !matches!(size, Some(SizeSpec::Fixed(_))))
        });
        let sector_size = sector_size(args, p, layout)?;
        let emit = emit_request(args, p, applied.as_ref())?;
        check_misfits(args, layout)?;
        let user = Changes::parse(&args.kernel_params, &args.remove_kernel_params)
            .context("--kernel-param/--remove-kernel-param")?;
        let kernel_params = applied.iter().map(|a| a.kernel_params.clone()).chain([user]).collect();
        let arch_kernel_params = applied.as_ref().map(|a| a.arch_kernel_params.clone()).unwrap_or_default();
        let base = Request {
            store_dir: args.store_dir.clone(),
            system: args.system.clone(),
            system_arch: args.system_arch.clone(),
            closure: match (&args.closure_info, &args.closure_attrs) {
                (Some(dir), _) => Some(crate::closure::Given::ClosureInfo(dir.clone())),
                (_, Some(file)) => Some(crate::closure::Given::NixAttrs(file.clone())),
                _ => None,
            },
            extra_paths: args.extra_paths.clone(),
            profile: applied,
        };
        Ok(Self {
            base,
            kernel_params,
            arch_kernel_params,
            layout,
            output: if args.dry_run { None } else { args.output.clone() },
            force: args.force,
            size,
            extra_space,
            seed: args.seed.clone(),
            timestamp: timestamp()?,
            verify_hashes: !args.no_verify_hashes,
            registration_file: args.registration_file,
            uki: uki(args, layout)?,
            store_lz4: store_lz4(args, layout)?,
            esp_size: args.esp_size.or(p.and_then(|p| p.esp_size.map(|b| b.get()))),
            grub: args.grub.clone(),
            default_specialisation: args.default_specialisation.clone(),
            sector_size,
            emit,
            threads: args.threads.map_or(0, usize::from),
            profile_file: args.profile.clone().filter(|p| p.contains('/') || p.ends_with(".toml")).map(PathBuf::from),
            nix_out: None,
        })
    }

    /// The profile's custom partition list, when it is the layout.
    #[must_use]
    pub fn custom_partitions(&self) -> Option<&[crate::profile::PartitionSpec]> {
        self.base.profile.as_ref().and_then(|p| p.partitions.as_deref()).filter(|_| self.layout == Some(Layout::Custom))
    }
}

/// `--store-compression`: only for the layout with a store partition.
fn store_lz4(args: &BuildArgs, layout: Option<Layout>) -> Result<bool> {
    match args.store_compression {
        crate::cli::StoreCompression::None => Ok(false),
        crate::cli::StoreCompression::Lz4 if layout == Some(Layout::EfiVerity) => Ok(true),
        crate::cli::StoreCompression::Lz4 => bail!(
            "--store-compression lz4: only --layout efi-verity has a store filesystem of its own (EROFS) to compress"
        ),
    }
}

/// `--uki` (with its stub): only where systemd-boot boots.
fn uki(args: &BuildArgs, layout: Option<Layout>) -> Result<Option<crate::boot::systemd_boot::UkiStub>> {
    use crate::boot::systemd_boot::UkiStub;
    if !args.uki {
        return Ok(None);
    }
    if let Some(l) = layout
        && l != Layout::Custom
        && !Boots::of(l)?.uefi
    {
        bail!("--uki: --layout {} boots by BIOS only; Unified Kernel Images are for UEFI layouts", value_name(l));
    }
    Ok(Some(args.uki_stub.clone().map_or(UkiStub::Closure, UkiStub::Host)))
}

/// The disk's sector size: the user's (refused with a bare filesystem), else the profile's (dropped there).
fn sector_size(args: &BuildArgs, p: Option<&Profile>, layout: Option<Layout>) -> Result<SectorSize> {
    if layout == Some(Layout::None)
        && let Some(bytes) = args.sector_size
    {
        bail!(
            "--sector-size {bytes} does not fit --layout none: a bare filesystem has no partition table or ESP to \
             lay out in sectors (its 4 KiB blocks suit disks of either sector size)"
        );
    }
    let profile = match p.and_then(|p| p.sector_size) {
        // The profile checked its value when it was loaded.
        Some(bytes) => Some(SectorSize::try_from(bytes).context("the profile's sector-size")?),
        None => None,
    };
    Ok(match args.sector_size.or(profile) {
        Some(sector) if layout != Some(Layout::None) => sector,
        _ => SectorSize::S512,
    })
}

/// What to write: the format from `--format`, else the output's extension, else the profile's, else raw.
fn emit_request(args: &BuildArgs, p: Option<&Profile>, applied: Option<&Applied>) -> Result<OutputRequest> {
    let format = args
        .format
        .or_else(|| args.output.as_deref().and_then(format_of))
        .or(p.and_then(|p| p.format))
        .unwrap_or(Format::Raw);
    let checksum = match (args.checksum, args.no_checksum) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => p.and_then(|p| p.checksum),
    };
    let emit = OutputRequest {
        format,
        compress: args.compress.or(p.and_then(|p| p.compress)),
        bmap: args.bmap || p.and_then(|p| p.bmap) == Some(true),
        checksum,
        label: applied.and_then(|a| a.output.label.clone()),
    };
    emit.check()?;
    Ok(emit)
}

/// The layout and bootloader agree, and a dry run without a layout gets no option that describes an image.
fn check_fit(args: &BuildArgs, layout: Option<Layout>, bootloader: Option<Bootloader>) -> Result<()> {
    if let Some(layout) = layout.filter(|&l| l != Layout::Custom)
        && let Some(b) = bootloader
        && !fits(b, layout)
    {
        bail!(
            "--bootloader {} does not fit --layout {}: efi and efixbootldr boot with systemd-boot, legacy and \
             legacy+gpt with grub, hybrid with both, none with none",
            value_name(b),
            value_name(layout)
        );
    }
    if layout.is_none() && !args.dry_run {
        bail!(
            "choose a disk layout: --layout efi, efixbootldr, legacy+gpt, legacy, hybrid, or none for a bare root \
             filesystem"
        );
    }
    let image_only = [
        (args.size.is_some(), "--size"),
        (args.extra_space.is_some(), "--extra-space"),
        (args.seed.is_some(), "--seed"),
        (args.bootloader.is_some(), "--bootloader"),
        (args.esp_size.is_some(), "--esp-size"),
        (args.sector_size.is_some(), "--sector-size"),
        (args.grub.is_some(), "--grub"),
        (args.default_specialisation.is_some(), "--default-specialisation"),
    ];
    if layout.is_none()
        && let Some((_, flag)) = image_only.iter().find(|(given, _)| *given)
    {
        bail!("{flag} describes an image: give --layout");
    }
    Ok(())
}

/// Options the user gave that describe a part of the image the layout does not have: refused, so nothing on the
/// command line is silently ignored (a profile's are dropped).
fn check_misfits(args: &BuildArgs, layout: Option<Layout>) -> Result<()> {
    let Some(layout) = layout.filter(|&l| l != Layout::Custom) else { return Ok(()) };
    let boots = Boots::of(layout)?;
    let layout = value_name(layout);
    if args.esp_size.is_some() && !boots.uefi {
        bail!("--esp-size does not fit --layout {layout}, which has no ESP (efi, efixbootldr and hybrid have one)");
    }
    if let Some(dir) = &args.grub
        && !boots.bios
    {
        bail!(
            "--grub {} does not fit --layout {layout}, which does not boot by BIOS (legacy, legacy+gpt and hybrid do)",
            dir.display()
        );
    }
    if let Some(name) = &args.default_specialisation
        && !boots.uefi
        && !boots.bios
    {
        bail!("--default-specialisation {name} does not fit --layout {layout}, which installs no boot loader");
    }
    Ok(())
}

/// The time for what the image creates itself: `SOURCE_DATE_EPOCH` when set, else 1 (Nix's store time).
fn timestamp() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(1),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::profile::GrubTerminal;

    fn options(extra: &[&str]) -> Result<Options> {
        let mut argv = vec!["kiln", "build", "--system", "/nix/store/x", "--dry-run"];
        argv.extend_from_slice(extra);
        let Command::Build(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("not build") };
        Options::from_args(&args)
    }

    fn profile_file(dir: &tempfile::TempDir, text: &str) -> String {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_profile_fills_what_the_command_line_left_out() {
        let o = options(&["--profile", "amazon"]).unwrap();
        assert_eq!((o.layout, o.emit.format), (Some(Layout::Efi), Format::Ami));
        assert_eq!((o.esp_size, o.extra_space, o.size), (Some(256 << 20), Some(512 << 20), None));
        assert!(!o.emit.bmap && o.emit.checksum.is_none());
        let amazon = Profile::load("amazon").unwrap();
        assert_eq!(o.kernel_params[0], amazon.kernel_params.changes().unwrap());
        let applied = o.base.profile.as_ref().unwrap();
        assert_eq!(applied.name, "amazon");
        assert!(applied.partitions.is_none());

        // The command line wins, and what goes with a replaced value goes too: amazon's systemd-boot does not
        // fit the user's BIOS layout and is dropped (no error), its extra space does not fit a fixed size.
        let o = options(&["--profile", "amazon", "--format", "raw", "--layout", "legacy+gpt", "--size", "8G"]).unwrap();
        assert_eq!((o.layout, o.emit.format), (Some(Layout::LegacyGpt), Format::Raw));
        assert_eq!((o.size, o.extra_space, o.esp_size), (Some(SizeSpec::Fixed(8 << 30)), None, Some(256 << 20)));
        options(&["--profile", "amazon", "--layout", "hybrid", "--bootloader", "grub"]).unwrap();
        let err = options(&["--profile", "amazon", "--layout", "efi", "--bootloader", "grub"]).unwrap_err();
        assert!(err.to_string().contains("--bootloader grub does not fit --layout efi"), "{err}");
    }

    #[test]
    fn a_profiles_flags_and_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let path = profile_file(
            &dir,
            "bmap = true\nchecksum = false\nsize = \"8G\"\nsector-size = 4096\nformat = \"raw.zst\"\n\
             [[partitions]]\nrole = \"root\"\nsize = \"fill\"\n[output]\nlabel = \"l\"\n[grub]\nterminal = [\"console\"]\n",
        );
        let o = options(&["--profile", &path]).unwrap();
        assert!(o.emit.bmap);
        assert_eq!(o.emit.checksum, Some(false));
        assert_eq!(
            (o.size, o.sector_size, o.emit.format),
            (Some(SizeSpec::Fixed(8 << 30)), SectorSize::S4096, Format::RawZst)
        );
        assert_eq!(o.layout, Some(Layout::Custom), "the partition list is the layout");
        let applied = o.base.profile.as_ref().unwrap();
        assert_eq!(applied.output.label.as_deref(), Some("l"));
        assert_eq!(applied.grub.terminal, Some(vec![GrubTerminal::Console]));
        assert_eq!(o.custom_partitions().map(<[_]>::len), Some(1));
        assert_eq!(o.emit.label.as_deref(), Some("l"));
        assert_eq!(o.profile_file.as_deref(), Some(std::path::Path::new(&path)));
        let o = options(&["--profile", &path, "--checksum", "--layout", "efi"]).unwrap();
        assert_eq!(o.emit.checksum, Some(true), "--checksum wins");
        assert!(o.custom_partitions().is_none(), "--layout replaces the partition list");
    }

    #[test]
    fn a_profiles_kernel_params_come_before_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = profile_file(
            &dir,
            "extends = \"amazon\"\n[kernel-params]\nremove = [\"random.trust_cpu\"]\nadd = [\"quiet\"]\n",
        );
        let o =
            options(&["--profile", &path, "--kernel-param", "console=tty0", "--remove-kernel-param", "quiet"]).unwrap();
        assert_eq!(o.kernel_params.len(), 2);
        let base = ["init=/nix/store/x/init", "loglevel=4", "random.trust_cpu=off"];
        let cmdline = kernel_params::merge(base, &o.kernel_params).unwrap().to_string();
        assert_eq!(
            cmdline,
            "init=/nix/store/x/init loglevel=4 console=ttyS0,115200n8 nvme_core.io_timeout=4294967295 console=tty0"
        );
        let o = options(&["--kernel-param", "console=tty0", "--remove-kernel-param", "quiet"]).unwrap();
        assert_eq!(o.kernel_params, [Changes::parse(["console=tty0"], ["quiet"]).unwrap()]);
    }

    #[test]
    fn a_profiles_architecture_table_goes_between_its_own_and_the_users() {
        let o = options(&["--profile", "qemu-efi", "--kernel-param", "quiet"]).unwrap();
        let base = ["init=/nix/store/x/init"];
        let line = |system: &str| {
            let layers: Vec<Changes> = o.kernel_params_for(system).into_iter().cloned().collect();
            kernel_params::merge(base, &layers).unwrap().to_string()
        };
        assert_eq!(line("x86_64-linux"), "init=/nix/store/x/init console=ttyS0 quiet");
        assert_eq!(line("aarch64-linux"), "init=/nix/store/x/init console=ttyAMA0 quiet");
        let o = options(&["--kernel-param", "quiet"]).unwrap();
        assert_eq!(o.kernel_params_for("aarch64-linux").len(), 1, "no profile: the user's layer alone");
        let o = options(&["--profile", "azure"]).unwrap();
        let layers: Vec<Changes> = o.kernel_params_for("aarch64-linux").into_iter().cloned().collect();
        let arm = kernel_params::merge(base, &layers).unwrap().to_string();
        assert_eq!(arm, "init=/nix/store/x/init panic=1 boot.panic_on_fail console=ttyAMA0");
        let o = options(&["--profile", "amazon"]).unwrap();
        let layers: Vec<Changes> = o.kernel_params_for("aarch64-linux").into_iter().cloned().collect();
        let arm = kernel_params::merge(base, &layers).unwrap().to_string();
        assert!(arm.contains("console=ttyS0,115200n8"), "Graviton's serial port is ttyS0: {arm}");
        let o = options(&["--profile", "gce"]).unwrap();
        let layers: Vec<Changes> = o.kernel_params_for("aarch64-linux").into_iter().cloned().collect();
        let arm = kernel_params::merge(base, &layers).unwrap().to_string();
        assert_eq!(arm, "init=/nix/store/x/init panic=1 boot.panic_on_fail console=ttyAMA0");
        let layers: Vec<Changes> = o.kernel_params_for("x86_64-linux").into_iter().cloned().collect();
        let x86 = kernel_params::merge(base, &layers).unwrap().to_string();
        assert_eq!(x86, "init=/nix/store/x/init console=ttyS0 panic=1 boot.panic_on_fail");
    }
}
