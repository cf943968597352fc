//! Carries out a parsed command line: the glue between [`crate::cli`] and the library.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cli::{BuildArgs, Cli, Command, ProgressMode};
use crate::dry_run;
use crate::progress::{Event, Progress, Silent};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => build(args),
        Command::Inspect(_) => bail!("not supported yet: kiln inspect (reading images back comes with disk layouts)"),
        Command::Verify(_) => {
            bail!("not supported yet: kiln verify (comes with the Nix database in the image)")
        }
    }
}

/// Options whose values no stage implements yet: refused before any work, so nothing pretends to work.
fn reject_unsupported(args: &BuildArgs) -> Result<()> {
    let unsupported = |what: String| bail!("not supported yet: {what}");
    if let Some(profile) = &args.profile {
        return unsupported(format!("--profile {profile} (image profiles)"));
    }
    if let Some(format) = args.format {
        let name = clap::ValueEnum::to_possible_value(&format).map(|v| v.get_name().to_owned());
        return unsupported(format!("--format {} (output formats)", name.unwrap_or_default()));
    }
    if let Some(layout) = args.layout {
        let name = clap::ValueEnum::to_possible_value(&layout).map(|v| v.get_name().to_owned());
        return unsupported(format!("--layout {} (disk layouts)", name.unwrap_or_default()));
    }
    if let Some(bootloader) = args.bootloader {
        let name = clap::ValueEnum::to_possible_value(&bootloader).map(|v| v.get_name().to_owned());
        return unsupported(format!("--bootloader {} (bootloader installation)", name.unwrap_or_default()));
    }
    if args.size.is_some() || args.extra_space.is_some() {
        return unsupported("--size/--extra-space (image size planning)".into());
    }
    if args.seed.is_some() {
        return unsupported("--seed (nothing that uses it is written yet)".into());
    }
    if !args.dry_run {
        return unsupported(
            "writing an image: this kiln can resolve a system and its closure (--dry-run); the filesystem \
             writer, layouts and formats come next"
                .into(),
        );
    }
    Ok(())
}

fn build(args: BuildArgs) -> Result<()> {
    reject_unsupported(&args)?;
    let threads = args.threads.map_or(0, usize::from);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kiln-worker-{i}"))
        .build()
        .context("starting worker threads")?;
    let mode = match args.progress {
        ProgressMode::Auto => ProgressMode::Plain,
        other => other,
    };
    let sink: Box<dyn Progress> = match mode {
        ProgressMode::Json => Box::new(JsonLines),
        ProgressMode::Plain | ProgressMode::Auto => Box::new(Plain::new()),
        ProgressMode::None => Box::new(Silent),
    };
    let req = dry_run::Request {
        store_dir: args.store_dir,
        system: args.system,
        closure_info: args.closure_info,
        kernel_params: args.kernel_params,
    };
    let report = pool.install(|| dry_run::run(&req, sink.as_ref()))?;
    let mut out = std::io::stdout().lock();
    if mode == ProgressMode::Json {
        let line = serde_json::json!({ "v": dry_run::REPORT_VERSION, "type": "dry-run", "report": report });
        writeln!(out, "{line}")?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    out.flush().context("writing to stdout")
}

/// Plain progress lines on stderr, for logs (CI, journald).
struct Plain {
    start: Instant,
    stderr: Mutex<std::io::Stderr>,
}

impl Plain {
    fn new() -> Self {
        Self { start: Instant::now(), stderr: Mutex::new(std::io::stderr()) }
    }
}

impl Progress for Plain {
    fn event(&self, event: &Event) {
        let Ok(mut err) = self.stderr.lock() else { return };
        let t = self.start.elapsed().as_secs_f64();
        // Progress is best effort: a closed stderr must not fail the build.
        let _ = match event {
            Event::Started { phase } => writeln!(err, "[{t:7.2}s] {}: started", phase.name()),
            Event::Finished { phase, elapsed, summary } => {
                writeln!(err, "[{t:7.2}s] {}: done in {:.2}s: {summary}", phase.name(), elapsed.as_secs_f64())
            }
        };
    }
}

/// Versioned JSON lines on stdout, for machines.
struct JsonLines;

impl Progress for JsonLines {
    fn event(&self, event: &Event) {
        let v = dry_run::REPORT_VERSION;
        let line = match event {
            Event::Started { phase } => serde_json::json!({ "v": v, "type": "phase-start", "phase": phase }),
            Event::Finished { phase, elapsed, summary } => serde_json::json!({
                "v": v, "type": "phase-end", "phase": phase,
                "elapsed_ms": elapsed.as_millis() as u64, "summary": summary,
            }),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}
