//! Carries out a parsed command line: the glue between [`crate::cli`] and the library.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result, bail};

use clap::ValueEnum;

use crate::build;
use crate::cli::{Bootloader, BuildArgs, Cli, Command, Format, ProgressMode};
use crate::dry_run;
use crate::progress::{Progress, Silent};
use crate::render::{Bars, JsonLines, Plain, Timed};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => {
            let json = args.progress == ProgressMode::Json;
            let built = build(*args);
            if json && let Err(e) = &built {
                // Machines reading the JSON lines see the failure too (stderr still has the one-line error).
                let line =
                    serde_json::json!({ "v": dry_run::REPORT_VERSION, "type": "error", "message": format!("{e:#}") });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            }
            built
        }
        Command::Inspect(args) => crate::inspect::command(args),
        Command::Verify(args) => crate::verify::command(args),
        Command::Profiles(args) => crate::profile::command(args),
    }
}

/// Options whose values no stage implements yet: refused before any work, so nothing pretends to work.
fn reject_unsupported(args: &BuildArgs) -> Result<()> {
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|v| v.get_name().to_owned()).unwrap_or_default();
    if let Some(layout) = args.layout.filter(|&l| l != crate::cli::Layout::Custom) {
        let boots = crate::disk::Boots::of(layout)?;
        if let Some(b) = args.bootloader {
            let fits = match b {
                Bootloader::SystemdBoot => boots.uefi,
                Bootloader::Grub => boots.bios,
                Bootloader::None => !boots.uefi && !boots.bios,
            };
            if !fits {
                bail!(
                    "--bootloader {} does not fit --layout {}: efi and efixbootldr boot with systemd-boot, legacy and legacy+gpt \
                     with grub, hybrid with both, none with none",
                    name(b.to_possible_value()),
                    name(layout.to_possible_value())
                );
            }
        }
    }
    if args.layout.is_none() && !args.dry_run {
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
    if args.layout.is_none()
        && let Some((_, flag)) = image_only.iter().find(|(given, _)| *given)
    {
        bail!("{flag} describes an image: give --layout");
    }
    Ok(())
}

/// Options describing a part of the image that the chosen layout does not have: refused, so nothing given on
/// the command line is silently ignored.
fn reject_misfits(args: &BuildArgs, user: UserGiven) -> Result<()> {
    let Some(layout) = args.layout.filter(|&l| l != crate::cli::Layout::Custom) else { return Ok(()) };
    let boots = crate::disk::Boots::of(layout)?;
    if layout == crate::cli::Layout::None
        && let Some(bytes) = user.sector_size
    {
        bail!(
            "--sector-size {bytes} does not fit --layout none: a bare filesystem has no partition table or ESP to \
             lay out in sectors (its 4 KiB blocks suit disks of either sector size)"
        );
    }
    let user_esp_size = user.esp_size;
    let layout = layout.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
    if user_esp_size && !boots.uefi {
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

/// Options the user gave on the command line (before a profile filled in the rest): a profile's value that does
/// not fit the layout is dropped, the user's is refused.
#[derive(Debug, Clone, Copy)]
struct UserGiven {
    esp_size: bool,
    sector_size: Option<u32>,
}

/// The time for what the image creates itself: `SOURCE_DATE_EPOCH` when set, else 1 (Nix's store time).
fn timestamp() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(1),
    }
}

fn build(mut args: BuildArgs) -> Result<()> {
    // The output's extension names the format when --format does not (before a profile's format).
    if args.format.is_none() {
        args.format = args.output.as_deref().and_then(crate::emit::format_of);
    }
    // A profile's ESP size is dropped silently by a layout without an ESP; the user's own is refused.
    let user = UserGiven { esp_size: args.esp_size.is_some(), sector_size: args.sector_size };
    let profile = crate::profile::load_and_apply(&mut args)?;
    // A profile named as a file is an input the output must not replace.
    let profile_file = args.profile.clone().filter(|p| p.contains('/') || p.ends_with(".toml"));
    let label = profile.as_ref().and_then(|p| p.output.label.clone());
    // A profile's own partition list is the layout (a --layout given by the user has already replaced it).
    if args.layout.is_none() && profile.as_ref().is_some_and(|p| p.partitions.is_some()) {
        args.layout = Some(crate::cli::Layout::Custom);
    }
    reject_unsupported(&args)?;
    let emit = crate::emit::Request {
        format: args.format.unwrap_or(Format::Raw),
        compress: args.compress,
        bmap: args.bmap,
        checksum: if args.checksum {
            Some(true)
        } else if args.no_checksum {
            Some(false)
        } else {
            None
        },
        label,
    };
    emit.check()?;
    reject_misfits(&args, user)?;
    let threads = args.threads.map_or(0, usize::from);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kiln-worker-{i}"))
        .build()
        .context("starting worker threads")?;
    let mode = args.progress;
    let inner: Box<dyn Progress> = match mode {
        ProgressMode::Json => Box::new(JsonLines::default()),
        ProgressMode::Auto if std::io::stderr().is_terminal() => Box::new(Bars::new()),
        ProgressMode::Plain | ProgressMode::Auto => Box::new(Plain::new()),
        ProgressMode::None => Box::new(Silent),
    };
    let sink = Timed::new(inner);
    let base = dry_run::Request {
        store_dir: args.store_dir,
        system: args.system,
        closure_info: args.closure_info,
        kernel_params: args.kernel_params,
        remove_kernel_params: args.remove_kernel_params,
        extra_paths: args.extra_paths,
        profile,
    };
    let (report, written) = if let Some(layout) = args.layout {
        let req = build::BuildRequest {
            base,
            output: if args.dry_run { None } else { args.output },
            force: args.force,
            size: args.size,
            extra_space: args.extra_space,
            seed: args.seed,
            timestamp: timestamp()?,
            verify_hashes: !args.no_verify_hashes,
            registration_file: args.registration_file,
            layout,
            esp_size: args.esp_size,
            grub: args.grub,
            default_specialisation: args.default_specialisation,
            sector_size: match args.sector_size {
                // A profile's sector size means nothing to a bare filesystem (the user's is refused above).
                Some(4096) if layout != crate::cli::Layout::None => kiln_formats::disk::SectorSize::S4096,
                _ => kiln_formats::disk::SectorSize::S512,
            },
            emit,
            threads: pool.current_num_threads(),
            profile_file: profile_file.map(std::path::PathBuf::from),
        };
        pool.install(|| build::run(&req, &sink))?
    } else {
        (pool.install(|| dry_run::run(&base, &sink))?, None)
    };
    let mut out = std::io::stdout().lock();
    let v = dry_run::REPORT_VERSION;
    match (mode, written) {
        (ProgressMode::Json, None) => {
            writeln!(out, "{}", serde_json::json!({ "v": v, "type": "dry-run", "report": report }))?
        }
        (ProgressMode::Json, Some(w)) => {
            let phases: serde_json::Map<String, serde_json::Value> =
                sink.timings().iter().map(|(p, t)| (p.name().to_owned(), (t.as_millis() as u64).into())).collect();
            let line = serde_json::json!({
                "v": v, "type": "built", "output": w.output, "written": w, "phase_ms": phases, "report": report,
            });
            writeln!(out, "{line}")?
        }
        (_, None) => write!(out, "{}", report.to_text())?,
        (_, Some(w)) => {
            use crate::render::bytes;
            writeln!(out, "wrote {} ({}, {} bytes)", w.output.display(), w.format, w.file_bytes)?;
            writeln!(
                out,
                "  disk         {} bytes ({}), {} allocated",
                w.disk_bytes,
                bytes(w.disk_bytes),
                bytes(w.allocated_bytes)
            )?;
            if let Some(sum) = &w.sha256 {
                writeln!(out, "  sha256       {sum}  {}", w.image.display())?;
            }
            for f in w.files.iter().skip(1) {
                writeln!(out, "  also         {}", f.display())?;
            }
            let phases: Vec<String> =
                sink.timings().iter().map(|(p, t)| format!("{} {:.2}s", p.name(), t.as_secs_f64())).collect();
            writeln!(out, "  phases       {}", phases.join(", "))?;
        }
    }
    out.flush().context("writing to stdout")
}
