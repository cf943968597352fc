//! Carries out a parsed command line: the glue between [`crate::cli`] and the library.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};

use crate::build;
use crate::cli::{BuildArgs, Cli, Command, FlashArgs, ProgressMode, value_name};
use crate::output::emit::Written;
use crate::progress::{Progress, Silent};
use crate::render::{Bars, JsonLines, Plain, Timed};
use crate::report::REPORT_VERSION;
use crate::resolve::options::Options;
use crate::units::human_bytes;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => {
            let json = args.progress == ProgressMode::Json;
            let built = build(&args);
            if json && let Err(e) = &built {
                // Machines reading the JSON lines see the failure too (stderr still has the one-line error).
                let line = serde_json::json!({ "v": REPORT_VERSION, "type": "error", "message": format!("{e:#}") });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            }
            built
        }
        Command::Inspect(args) => crate::inspect::command(args),
        Command::Verify(args) => crate::verify::command(args),
        Command::Profiles(args) => crate::profile::command(args),
        Command::Flash(args) => flash(&args),
        Command::NixBuilder(args) => crate::derivation::command(&args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "kiln", &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out).context("writing the manual page")?;
            out.flush().context("writing to stdout")
        }
    }
}

/// `kiln flash`: the request from the command line, the plan or the summary on stdout.
fn flash(args: &FlashArgs) -> Result<()> {
    use crate::flash::{self, Request, SYNC_EVERY, report, source};
    let req = Request {
        source: source::Request {
            source: args.source.clone(),
            sha256: args.sha256.clone(),
            bmap: args.bmap.clone(),
            no_bmap: args.no_bmap,
        },
        target: args.target.clone(),
        force: args.force,
        allow_partition: args.allow_partition,
        zero_holes: args.zero_holes,
        verify: !args.no_verify,
        preserve_on_error: args.preserve_on_error,
        grow_root: args.grow_root,
        sync_every: args.sync_every.unwrap_or(SYNC_EVERY),
        dry_run: args.dry_run,
    };
    let json = args.progress == ProgressMode::Json;
    let sink = progress_sink(args.progress);
    let done = flash::flash(&req, &sink);
    let mut out = std::io::stdout().lock();
    match done {
        Err(e) => {
            if json {
                let line = serde_json::json!({ "v": REPORT_VERSION, "type": "error", "message": format!("{e:#}") });
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            }
            return Err(e);
        }
        Ok(f) if json => {
            let kind = if args.dry_run { "flash-plan" } else { "flashed" };
            writeln!(out, "{}", serde_json::json!({ "v": REPORT_VERSION, "type": kind, "flash": f }))?;
        }
        Ok(f) if args.dry_run => {
            write!(out, "kiln flash: dry run, nothing written\n{}", report::plan_text(&f))?;
        }
        Ok(f) => write!(out, "{}", report::summary_text(&f))?,
    }
    out.flush().context("writing to stdout")
}

/// The progress sink for a mode, timing each phase for the summary.
pub fn progress_sink(mode: ProgressMode) -> Timed {
    let inner: Box<dyn Progress> = match mode {
        ProgressMode::Json => Box::new(JsonLines::default()),
        ProgressMode::Auto if std::io::stderr().is_terminal() => Box::new(Bars::new()),
        ProgressMode::Plain | ProgressMode::Auto => Box::new(Plain::new()),
        ProgressMode::None => Box::new(Silent),
    };
    Timed::new(inner)
}

/// Runs the build pipeline for `opts` on a pool of `opts.threads` workers (0: one per core), reporting to `sink`.
///
/// # Errors
/// Whatever the build fails at.
pub fn build_in_pool(
    mut opts: Options,
    sink: &Timed,
) -> Result<(Options, crate::report::Report, Option<crate::plan::Plan>, Option<Written>)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .thread_name(|i| format!("kiln-worker-{i}"))
        .build()
        .context("starting worker threads")?;
    opts.threads = pool.current_num_threads();
    let (report, plan, written) = pool.install(|| build::run(&opts, sink))?;
    Ok((opts, report, plan, written))
}

fn build(args: &BuildArgs) -> Result<()> {
    let sink = progress_sink(args.progress);
    let (opts, report, plan, written) = build_in_pool(Options::from_args(args)?, &sink)?;
    let mut out = std::io::stdout().lock();
    match (args.progress, written) {
        (ProgressMode::Json, None) => {
            let line = serde_json::json!({
                "v": REPORT_VERSION, "type": "dry-run", "report": report,
                "plan": plan.map(|p| p.summary(opts.emit.format)),
            });
            writeln!(out, "{line}")?;
        }
        (ProgressMode::Json, Some(w)) => {
            let phases: serde_json::Map<String, serde_json::Value> =
                sink.timings().iter().map(|(p, t)| (p.name().to_owned(), (t.as_millis() as u64).into())).collect();
            let line = serde_json::json!({
                "v": REPORT_VERSION, "type": "built", "output": w.output, "written": w, "phase_ms": phases,
                "report": report,
            });
            writeln!(out, "{line}")?;
        }
        (_, None) => write!(out, "{}", report.to_text())?,
        (_, Some(w)) => summary(&mut out, &w, &report, &sink)?,
    }
    out.flush().context("writing to stdout")
}

/// The lines saying what a build wrote.
fn summary(out: &mut impl Write, w: &Written, report: &crate::report::Report, sink: &Timed) -> Result<()> {
    writeln!(out, "wrote {} ({}, {} bytes)", w.output.display(), value_name(w.format), w.file_bytes)?;
    writeln!(
        out,
        "  disk         {} bytes ({}), {} allocated",
        w.disk_bytes,
        human_bytes(w.disk_bytes),
        human_bytes(w.allocated_bytes)
    )?;
    let store = report.image.as_ref().and_then(|i| i.store.as_ref());
    if let Some(root) = store.and_then(|s| s.root_hash.as_ref()) {
        writeln!(out, "  root hash    {root}  (usrhash=, the store's dm-verity tree)")?;
    }
    if let Some(sum) = &w.sha256 {
        writeln!(out, "  sha256       {sum}  {}", w.image.display())?;
    }
    for f in w.files.iter().skip(1) {
        writeln!(out, "  also         {}", f.display())?;
    }
    let phases: Vec<String> =
        sink.timings().iter().map(|(p, t)| format!("{} {:.2}s", p.name(), t.as_secs_f64())).collect();
    writeln!(out, "  phases       {}", phases.join(", "))?;
    Ok(())
}
