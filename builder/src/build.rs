//! `kiln build`: resolve → plan → write → output. Each stage is its own module and takes the previous one's value:
//! [`crate::resolve`] reads the system and its closure, [`crate::plan`] decides every byte's place,
//! [`crate::write`] writes them into a raw image, [`crate::output`] turns that into the file or bundle asked for,
//! atomically; [`crate::report`] says what was done.

use std::path::Path;

use anyhow::Result;

use crate::closure::Given;
use crate::output::emit::{self, Written};
use crate::output::{Inputs, check_target, explain_no_space, free_space};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::report::{self, Report};
use crate::resolve::options::Options;
use crate::resolve::{self, Resolved};

/// Runs a build, or without an output a dry run (which plans the image when a layout is given): returns the
/// report, the plan, and what was written.
///
/// # Errors
/// Whatever fails at any stage; nothing is left at the output paths then.
pub fn run(opts: &Options, progress: &dyn Progress) -> Result<(Report, Option<Plan>, Option<Written>)> {
    opts.emit.check()?;
    if let Some(target) = &opts.output {
        check_outputs(opts, target)?;
    }
    let mut r = resolve::resolve(&opts.base, progress)?;
    if opts.layout.is_none() {
        let entries = crate::boot::entries(&r.system, &opts.kernel_params_for(&r.system.boot.system))?;
        return Ok((report::report(&r, &entries), None, None));
    }
    let self_hashed = r.hash_unregistered(progress)?;
    let seed = crate::plan::seed_of(&r, opts);
    let container = emit::container(&opts.emit, &seed, opts.timestamp, opts.threads, opts.output.as_deref())?;
    let plan = crate::plan::plan(&r, opts, seed, self_hashed, container.as_ref(), progress)?;
    let mut report = report::report(&r, &plan.entries);
    report.image = Some(plan.summary(opts.emit.format));
    let Some(target) = &opts.output else { return Ok((report, Some(plan), None)) };
    let (written, root_hash) = write_output(opts, &r, &plan, container.as_ref(), target, progress)?;
    if let Some(hash) = root_hash {
        report.set_root_hash(&hash);
    }
    Ok((report, Some(plan), Some(written)))
}

/// Writes the planned image into the output container at `target`.
fn write_output(
    opts: &Options,
    r: &Resolved,
    plan: &Plan,
    container: &dyn kiln_formats::image::Container,
    target: &Path,
    progress: &dyn Progress,
) -> Result<(Written, Option<[u8; 32]>)> {
    let free_before = free_space(target);
    let facts = emit::SystemFacts {
        toplevel_name: r.system.toplevel.name().to_owned(),
        system: r.system.boot.system.clone(),
        boot_mode: emit::boot_mode(plan.boots.uefi, plan.boots.bios),
    };
    let out = emit::Output { req: &opts.emit, container, facts: &facts, target, force: opts.force };
    let shown = target.display().to_string();
    let mut root_hash = None;
    let written = emit::write(&out, plan.virtual_size, progress, |sink| {
        root_hash = crate::write::write(plan, r, opts.verify_hashes, sink, &shown, progress)?;
        Ok(())
    })
    .map_err(|e| explain_no_space(e, target, free_before))?;
    Ok((written, root_hash))
}

/// Checks every path the build will write (the output and its side files) before anything is read: each can
/// be written, and none destroys an input.
fn check_outputs(opts: &Options, target: &Path) -> Result<()> {
    let mut inputs = Inputs::new();
    let base = &opts.base;
    // A derivation's output is a new store path: the closure is all the build reads of the store directory.
    if opts.nix_out.as_ref().is_none_or(|out| !target.starts_with(out)) {
        inputs.dir(&base.store_dir, "store directory");
    }
    // The host's Nix database, which the closure may be read from (`<prefix>/nix/var/nix/db`).
    if let Some(prefix) = base.store_dir.parent().and_then(Path::parent) {
        inputs.dir(&prefix.join("nix/var/nix/db"), "Nix database directory");
    }
    match &base.closure {
        Some(Given::ClosureInfo(ci)) => {
            inputs.dir(ci, "closure-info directory");
            // Its files may have other names (hard links) outside it.
            for name in ["registration", "store-paths"] {
                inputs.file(&ci.join(name), "closure-info file");
            }
        }
        Some(Given::NixAttrs(file)) => {
            inputs.file(file, "structured-attrs file (--closure-attrs)");
        }
        None => {}
    }
    inputs.file(&base.system, "system (--system)");
    for p in &base.extra_paths {
        inputs.file(p, "extra path (--extra-path)");
    }
    if let Some(g) = &opts.grub {
        inputs.dir(g, "GRUB directory (--grub)");
    }
    if let Some(f) = &opts.profile_file {
        inputs.file(f, "profile");
    }
    for (path, kind) in emit::paths(&opts.emit, target) {
        check_target(&path, opts.force, kind, &inputs)?;
    }
    Ok(())
}
