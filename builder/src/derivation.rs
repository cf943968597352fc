//! `kiln nix-builder`: kiln as the builder of a Nix derivation (`nix/make-image.nix`). Nix runs it with
//! `__structuredAttrs`, so everything comes from the structured-attrs file Nix writes into the build directory
//! (`$NIX_ATTRS_JSON_FILE`, or `.attrs.json` there on Nix releases that set no variable):
//!
//! - `outputs.out`: the store path to create;
//! - `toplevel`: the system (its closure is the `exportReferencesGraph` list, read as `--closure-attrs`);
//! - `profile`, `format`, `layout`, `imageName`: strings or null; `extraArgs`: more `kiln build` arguments.
//!
//! `$out` receives the image (`<imageName>.<extension>`, with the block map and checksum the options ask for)
//! and `nix-support/hydra-build-products` and `hydra-release-name`; an `ami` build makes `$out` the bundle
//! itself, laid out as nixpkgs' amazon image (`nix-support/image-info.json`). The build runs no shell and needs
//! nothing from the builder's host: a statically linked kiln is the whole build environment.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser as _;
use serde_json::Value;

use crate::cli::{Cli, Command, Format, NixBuilderArgs, ProgressMode, value_name};
use crate::output::emit::{Written, label_of};
use crate::resolve::options::Options;
use crate::store::StoreDir;
use crate::system::System;

/// What the derivation asks for, read from its structured attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The structured-attrs file.
    pub attrs: PathBuf,
    /// `outputs.out`.
    pub out: PathBuf,
    /// `toplevel`.
    pub toplevel: PathBuf,
    /// `profile`, `format`, `layout`: `kiln build` flags when set.
    pub profile: Option<String>,
    /// `format`.
    pub format: Option<String>,
    /// `layout`.
    pub layout: Option<String>,
    /// `imageName`: the image's file name without its extension.
    pub image_name: Option<String>,
    /// `extraArgs`.
    pub extra_args: Vec<String>,
}

/// Where Nix put the structured-attrs file: `$NIX_ATTRS_JSON_FILE`, else `.attrs.json` in `$NIX_BUILD_TOP` or
/// the current directory. Nix 2.8 sets the variable to the file's path *outside* the sandbox (the build directory
/// is `/build` inside it), so a variable naming no file falls through to the others.
///
/// # Errors
/// When there is none: kiln is not running as a builder of a derivation with `__structuredAttrs = true`.
pub fn attrs_file() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(f) = std::env::var_os("NIX_ATTRS_JSON_FILE") {
        tried.push(PathBuf::from(f));
    }
    if let Some(top) = std::env::var_os("NIX_BUILD_TOP") {
        tried.push(Path::new(&top).join(".attrs.json"));
    }
    tried.push(PathBuf::from(".attrs.json"));
    if let Some(f) = tried.iter().find(|f| f.is_file()) {
        return Ok(f.clone());
    }
    let shown: Vec<String> = tried.iter().map(|f| f.display().to_string()).collect();
    bail!(
        "no structured-attrs file (tried {}). `kiln nix-builder` is the builder of a derivation with \
         `__structuredAttrs = true` (nix/make-image.nix makes one); outside Nix, use `kiln build`, or give the \
         file with --attrs",
        shown.join(", ")
    )
}

impl Request {
    /// Reads the derivation's attributes from `attrs`.
    ///
    /// # Errors
    /// A file that is not JSON, or lacks `outputs.out` or `toplevel`, or has an attribute of the wrong type; each
    /// error names the file and the attribute.
    pub fn read(attrs: &Path) -> Result<Self> {
        let shown = attrs.display();
        let text =
            std::fs::read_to_string(attrs).with_context(|| format!("reading the structured-attrs file {shown}"))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{shown}: not valid JSON"))?;
        let string = |name: &str| -> Result<Option<String>> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => bail!("{shown}: attribute {name} must be a string or null, found {other}"),
            }
        };
        let out = v
            .get("outputs")
            .and_then(|o| o.get("out"))
            .and_then(Value::as_str)
            .with_context(|| format!("{shown}: no outputs.out (the derivation must have an `out` output)"))?;
        let toplevel = string("toplevel")?.with_context(|| {
            format!("{shown}: no attribute toplevel (the NixOS system to image: config.system.build.toplevel)")
        })?;
        let extra_args = match v.get("extraArgs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .with_context(|| format!("{shown}: attribute extraArgs must be a list of strings"))?,
            Some(other) => bail!("{shown}: attribute extraArgs must be a list of strings, found {other}"),
        };
        let image_name = string("imageName")?;
        if let Some(n) = &image_name
            && (n.is_empty() || n.contains('/') || n.starts_with('.'))
        {
            bail!("{shown}: imageName {n:?} must be a plain file name (no `/`, not starting with a dot)");
        }
        Ok(Self {
            attrs: attrs.to_path_buf(),
            out: out.into(),
            toplevel: toplevel.into(),
            profile: string("profile")?,
            format: string("format")?,
            layout: string("layout")?,
            image_name,
            extra_args,
        })
    }

    /// The `kiln build` command line this request means, writing to `output`.
    fn build_args(&self, output: &Path) -> Vec<String> {
        let mut args: Vec<String> = ["kiln", "build", "--system"].map(str::to_owned).into();
        args.push(self.toplevel.display().to_string());
        args.extend(["--closure-attrs".to_owned(), self.attrs.display().to_string()]);
        args.extend(["--output".to_owned(), output.display().to_string()]);
        for (flag, value) in [("--profile", &self.profile), ("--format", &self.format), ("--layout", &self.layout)] {
            if let Some(v) = value {
                args.extend([flag.to_owned(), v.clone()]);
            }
        }
        // Nix's share of the builder's cores, unless the derivation says otherwise.
        let cores = std::env::var("NIX_BUILD_CORES").ok().and_then(|c| c.parse::<u16>().ok()).filter(|&c| c > 0);
        if let Some(c) = cores
            && !self.extra_args.iter().any(|a| a == "--threads" || a.starts_with("--threads="))
        {
            args.extend(["--threads".to_owned(), c.to_string()]);
        }
        args.extend(["--progress".to_owned(), "plain".to_owned()]);
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The file extension nixpkgs' image builders give a format (`ami` is a directory, the bundle).
#[must_use]
pub fn extension(format: Format) -> Option<&'static str> {
    Some(match format {
        Format::Raw => "img",
        Format::RawZst => "img.zst",
        Format::Qcow2 => "qcow2",
        Format::Vhd => "vhd",
        Format::Vhdx => "vhdx",
        Format::Vmdk => "vmdk",
        Format::Gce => "raw.tar.gz",
        Format::Ami => return None,
    })
}

/// `kiln nix-builder`.
///
/// # Errors
/// Whatever the build refuses or fails at; Nix then fails the derivation and registers nothing.
pub fn command(args: &NixBuilderArgs) -> Result<()> {
    let attrs = match &args.attrs {
        Some(f) => f.clone(),
        None => attrs_file()?,
    };
    let req = Request::read(&attrs)?;
    // The options with a stand-in output name (no extension, so the format comes from the flags or profile).
    let stand_in = req.out.join("image");
    let cli = Cli::try_parse_from(req.build_args(&stand_in)).map_err(|e| {
        anyhow::anyhow!("{}: the options (profile, format, layout, extraArgs) are not valid: {e}", attrs.display())
    })?;
    let Command::Build(build_args) = cli.command else { unreachable!("the arguments start with `build`") };
    if build_args.dry_run {
        bail!("{}: extraArgs has --dry-run; a derivation must write its image", attrs.display());
    }
    let mut opts = Options::from_args(&build_args)?;
    let format = opts.emit.format;
    // The image's name without extension (`None` for an ami bundle, which names its disk itself) and path.
    let (name, target) = match extension(format) {
        Some(ext) => {
            let name = match &req.image_name {
                Some(n) => n.clone(),
                None => default_name(&opts, &req.toplevel)?,
            };
            std::fs::create_dir(&req.out).with_context(|| format!("creating the output {}", req.out.display()))?;
            let target = req.out.join(format!("{name}.{ext}"));
            (Some(name), target)
        }
        None => (None, req.out.clone()),
    };
    opts.output = Some(target.clone());
    opts.nix_out = Some(req.out.clone());
    let sink = crate::run::progress_sink(ProgressMode::Plain);
    let (_, _, _, written) = crate::run::build_in_pool(opts, &sink)?;
    let written = written.context("the build wrote no image")?;
    // Hydra's release name: the image's, or for a bundle its disk's (`nixos-amazon-image-…`, without `.vhd`).
    let release =
        name.unwrap_or_else(|| written.image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    support_files(&req.out, &written, &release)?;
    let mut out = std::io::stderr().lock();
    for f in &written.files {
        writeln!(out, "kiln: wrote {}", f.display())?;
    }
    Ok(())
}

/// nixpkgs' name for an image: `nixos-image-<label>-<system>`, the label from the toplevel's name and the system
/// the image is for (the bootspec's, or `--system-arch`).
fn default_name(opts: &Options, toplevel: &Path) -> Result<String> {
    let store = StoreDir::new(&opts.base.store_dir)?;
    let top = store.resolve_system(toplevel)?;
    let system = match &opts.base.system_arch {
        Some(a) => crate::arch::Arch::of(a).context("--system-arch")?.system.to_owned(),
        None => System::load(&store, &top)?.boot.system,
    };
    Ok(format!("nixos-image-{}-{system}", label_of(top.name())))
}

/// `$out/nix-support`: `hydra-build-products` (one `file <subtype> <absolute path>` line per file written, as
/// Hydra's queue runner reads them) and `hydra-release-name`. An ami bundle wrote its own products list; the
/// release name is added to it.
fn support_files(out: &Path, w: &Written, release: &str) -> Result<()> {
    let support = out.join("nix-support");
    std::fs::create_dir_all(&support).with_context(|| format!("creating {}", support.display()))?;
    if w.format != Format::Ami {
        let mut products = String::new();
        for f in &w.files {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let subtype = if *f == w.image {
                format!("{}-image", value_name(w.format))
            } else if name.ends_with(".bmap") {
                "bmap".to_owned()
            } else if name.ends_with(".sha256") {
                "sha256".to_owned()
            } else {
                "file".to_owned()
            };
            products.push_str(&format!("file {subtype} {}\n", f.display()));
        }
        write_file(&support.join("hydra-build-products"), products.as_bytes())?;
    }
    write_file(&support.join("hydra-release-name"), format!("{release}\n").as_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<Request> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".attrs.json");
        std::fs::write(&f, json).unwrap();
        Request::read(&f).map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    #[test]
    fn reads_the_derivations_attributes() {
        let r = request(
            r#"{"outputs": {"out": "/nix/store/4ir22vw65dq7vj9gzyk1y5bq368znmnc-img"},
                "toplevel": "/nix/store/a9j0raxbia3akh5g8vcnqi2npmvz2v93-nixos-system-web1-24.11",
                "profile": "qemu-efi", "format": null, "extraArgs": ["--kernel-param", "quiet"]}"#,
        )
        .unwrap();
        assert_eq!(r.profile.as_deref(), Some("qemu-efi"));
        assert_eq!((r.format.as_deref(), r.layout.as_deref(), r.image_name.as_deref()), (None, None, None));
        let args = r.build_args(Path::new("/nix/store/4ir22vw65dq7vj9gzyk1y5bq368znmnc-img/image"));
        let cli = Cli::try_parse_from(&args).unwrap();
        let Command::Build(b) = cli.command else { panic!() };
        assert_eq!(b.profile.as_deref(), Some("qemu-efi"));
        assert_eq!(b.kernel_params, ["quiet"]);
        assert_eq!(b.closure_attrs.as_deref(), Some(r.attrs.as_path()));
    }

    #[test]
    fn refuses_attributes_that_are_missing_or_wrong() {
        let err = |j: &str| format!("{:#}", request(j).unwrap_err());
        assert!(err("[").contains("not valid JSON"));
        assert!(err(r#"{"toplevel": "/nix/store/x"}"#).contains("no outputs.out"));
        assert!(err(r#"{"outputs": {"out": "/nix/store/o"}}"#).contains("no attribute toplevel"));
        let typed = r#"{"outputs": {"out": "/o"}, "toplevel": "/t", "profile": 3}"#;
        assert!(err(typed).contains("attribute profile must be a string or null, found 3"), "{}", err(typed));
        let extra = r#"{"outputs": {"out": "/o"}, "toplevel": "/t", "extraArgs": [1]}"#;
        assert!(err(extra).contains("extraArgs must be a list of strings"));
        let name = r#"{"outputs": {"out": "/o"}, "toplevel": "/t", "imageName": "../x"}"#;
        assert!(err(name).contains("must be a plain file name"));
    }

    #[test]
    fn names_files_as_nixpkgs_does() {
        assert_eq!(extension(Format::Raw), Some("img"));
        assert_eq!(extension(Format::Gce), Some("raw.tar.gz"));
        assert_eq!(extension(Format::Ami), None);
    }
}
