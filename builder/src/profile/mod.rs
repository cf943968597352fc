//! Image profiles: declarative TOML files whose keys mirror `kiln build`'s flags (`layout`, `format`,
//! `esp-size`, `[kernel-params]`, …), built in (`images/*.toml`, embedded) or the user's own. A profile may
//! `extends` another; the chain is merged field by field, checked as a whole, and then fills in every flag the
//! command line left out (the resolve stage merges them).
//!
//! Every error names the file, and where it can the line and column of the value at fault.

mod apply;
pub mod builtin;
mod command;
mod file;
pub(crate) mod validate;
pub mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use kernel_params::{Changes, Param, Removal};
use serde::Serialize;

pub use apply::Applied;
pub use builtin::{BUILTINS, Builtin};
pub use command::command;
pub use file::Loc;
pub use value::{ByteSize, GrubTerminal, ImageSize, PartSize, PartitionSpec, Role};

use crate::cli::{Bootloader, Compression, Format, Layout};

/// A profile: one file, or a chain of them merged (then it has no `extends`). Every field is optional: what a
/// profile leaves out, the command line or kiln's defaults decide.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Profile {
    /// One line saying what the profile is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `--layout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// `--bootloader`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
    /// `--format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// `--compress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<Compression>,
    /// `--sector-size`: 512 or 4096.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sector_size: Option<u32>,
    /// `--size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<ImageSize>,
    /// `--extra-space`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_space: Option<ByteSize>,
    /// `--esp-size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub esp_size: Option<ByteSize>,
    /// `--bmap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmap: Option<bool>,
    /// `--checksum` (true) or `--no-checksum` (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<bool>,
    /// `[kernel-params]`: changes to every entry's command line, before the user's.
    #[serde(skip_serializing_if = "KernelParams::is_empty")]
    pub kernel_params: KernelParams,
    /// `[grub]`: what GRUB's grub.cfg sets up for its menu.
    #[serde(skip_serializing_if = "Grub::is_empty")]
    pub grub: Grub,
    /// `[output]`: metadata of the output.
    #[serde(skip_serializing_if = "Output::is_empty")]
    pub output: Output,
    /// `[[partitions]]`: a custom partition list, instead of a `layout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionSpec>>,
    /// Where each field was set, by its key (`layout`, `grub.terminal`, …).
    #[serde(skip)]
    origins: BTreeMap<&'static str, Loc>,
    /// The files read, the one named first, then what it extends, and so on.
    #[serde(skip)]
    files: Vec<Arc<str>>,
}

/// `[kernel-params]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelParams {
    /// Parameters to add (or to replace those of the same name, as `--kernel-param` does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// Parameters to remove: `key` removes every `key` and `key=…`, `key=value` only that one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// `[kernel-params.<arch>]`: changes made after these on that architecture only, by the architecture's name
    /// (`aarch64`); such a table holds no tables of its own.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub arch: BTreeMap<String, KernelParams>,
}

impl KernelParams {
    /// Whether it changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.arch.is_empty()
    }

    /// The changes `[kernel-params.<arch>]` makes for each architecture, by name, as layers.
    ///
    /// # Errors
    /// A value that is not exactly one parameter (a loaded profile has none).
    pub fn arch_changes(&self) -> Result<BTreeMap<String, Changes>, kernel_params::Error> {
        self.arch.iter().map(|(name, k)| Ok((name.clone(), k.changes()?))).collect()
    }

    /// As one layer of changes: removals first, then additions.
    ///
    /// # Errors
    /// A value that is not exactly one parameter (a loaded profile has none).
    pub fn changes(&self) -> Result<Changes, kernel_params::Error> {
        Changes::parse(&self.add, &self.remove)
    }
}

/// `[grub]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grub {
    /// `terminal_input` and `terminal_output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal: Option<Vec<GrubTerminal>>,
    /// The options of GRUB's `serial` command, e.g. `--unit=0 --speed=115200`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl Grub {
    /// GRUB's terminals: the default, with what a profile's `[grub]` table (if any) sets.
    #[must_use]
    pub fn console(grub: Option<&Self>) -> crate::boot::grub::GrubConsole {
        let mut c = crate::boot::grub::GrubConsole::default();
        if let Some(g) = grub {
            if let Some(t) = &g.terminal {
                c.terminals = t.iter().map(|t| t.name()).collect();
            }
            if let Some(serial) = &g.serial {
                c.serial.clone_from(serial);
            }
        }
        c
    }

    /// Whether nothing is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.terminal.is_none() && self.serial.is_none()
    }
}

/// `[output]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Output {
    /// The image's label, e.g. `label` of an AMI bundle's image-info.json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Output {
    /// Whether nothing is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.label.is_none()
    }
}

/// A profile named on the command line or by `extends`.
#[derive(Debug, Clone)]
enum Ref {
    Builtin(&'static Builtin),
    File(PathBuf),
}

/// A file when the text has a `/` or ends in `.toml`, else a built-in's name.
fn reference(text: &str, relative_to: Option<&Path>) -> Result<Ref> {
    if text.contains('/') || text.ends_with(".toml") {
        return Ok(Ref::File(relative_to.map_or_else(|| PathBuf::from(text), |dir| dir.join(text))));
    }
    builtin::find(text).map(Ref::Builtin).ok_or_else(|| {
        anyhow!(
            "no built-in profile is called {text:?} (the built-ins: {}); a profile file's name has a / or ends in .toml",
            builtin::names()
        )
    })
}

/// The bootloaders a profile's own partition list installs: systemd-boot with an ESP, GRUB with a BIOS boot
/// partition, the entries on XBOOTLDR when there is one.
#[must_use]
pub fn boots_of(specs: &[PartitionSpec]) -> crate::boot::Boots {
    let has = |role: Role| specs.iter().any(|p| p.role == role);
    crate::boot::Boots {
        uefi: has(Role::Esp),
        bios: has(Role::BiosBoot),
        xbootldr: has(Role::Esp) && has(Role::Xbootldr),
    }
}

impl Profile {
    /// Loads a built-in profile by name, or a profile file (a name with a `/` or ending in `.toml`), resolving
    /// its `extends` chain, and checks the result.
    ///
    /// # Errors
    /// An unknown built-in, an unreadable file, a syntax or type error (`file:line:column: …`), a cycle of
    /// `extends`, or values that do not go together.
    pub fn load(name_or_path: &str) -> Result<Self> {
        let first = reference(name_or_path, None).with_context(|| format!("profile {name_or_path:?}"))?;
        let mut layers = Vec::new();
        // (identity, name) of every file read so far, to find cycles.
        let mut seen: Vec<(String, Arc<str>)> = Vec::new();
        let mut next = Some((first, None::<Loc>));
        while let Some((r, from)) = next.take() {
            let at = from.as_ref().map_or_else(String::new, |l| format!("{l}: "));
            let (id, name, text, dir) = match &r {
                Ref::Builtin(b) => (format!("built-in {}", b.name), Arc::from(b.file()), b.text.to_owned(), None),
                Ref::File(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("{at}reading profile {}", path.display()))?;
                    let id = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display().to_string();
                    let dir = path.parent().map(Path::to_path_buf);
                    (id, Arc::from(path.display().to_string()), text, dir)
                }
            };
            if let Some(i) = seen.iter().position(|(seen_id, _)| *seen_id == id) {
                let cycle: Vec<&str> = seen[i..].iter().map(|(_, n)| &**n).chain([&*name]).collect();
                bail!("{at}extends makes a cycle: {}", cycle.join(" → "));
            }
            let builtin = matches!(r, Ref::Builtin(_));
            let layer = file::layer(file::Source { name: &name, text: &text, builtin })?;
            if let Some((target, loc)) = &layer.extends {
                if builtin && (target.contains('/') || target.ends_with(".toml")) {
                    bail!("{loc}: extends {target:?}: a built-in profile extends built-ins only");
                }
                let r = reference(target, if builtin { None } else { dir.as_deref() })
                    .with_context(|| format!("{loc}: extends {target:?}"))?;
                next = Some((r, Some(loc.clone())));
            }
            seen.push((id, name));
            layers.push(layer.profile);
        }
        let mut profile = Profile::default();
        for layer in layers.into_iter().rev() {
            profile = merge(profile, layer)?;
        }
        validate::check(&profile)?;
        Ok(profile)
    }

    /// The files this profile was read from: the one named first, then what each extends.
    #[must_use]
    pub fn files(&self) -> &[Arc<str>] {
        &self.files
    }

    /// Where a field was set, by its key as the file spells it (`layout`, `grub.terminal`, `partitions`, …).
    #[must_use]
    pub fn origin(&self, key: &str) -> Option<&Loc> {
        self.origins.get(key)
    }

    /// The profile as a TOML file (no `extends`: everything resolved).
    ///
    /// # Errors
    /// Never in practice: every field is plain data.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("writing the profile as TOML")
    }
}

/// A child's kernel parameters after its parent's: the parent's additions that a removal of the child matches are
/// dropped (for an architecture's table, the child's general removals count too), then the child's are added.
fn merge_kernel_params(parent: KernelParams, child: KernelParams) -> Result<KernelParams> {
    let parse = |v: &[String]| v.iter().map(|r| Removal::parse(r)).collect::<Result<Vec<_>, _>>();
    let general = parse(&child.remove)?;
    let keep = |adds: Vec<String>, removals: &[&[Removal]]| -> Result<Vec<String>> {
        let mut kept = Vec::new();
        for a in adds {
            let p = Param::parse(&a)?;
            let removed = removals.iter().flat_map(|r| r.iter()).any(|r| match r {
                Removal::Key(key) => p.key_matches(key),
                Removal::Exact(q) => p.equivalent(q),
            });
            if !removed {
                kept.push(a);
            }
        }
        Ok(kept)
    };
    let (mut parent_arch, mut child_arch) = (parent.arch, child.arch);
    let names: std::collections::BTreeSet<String> = parent_arch.keys().chain(child_arch.keys()).cloned().collect();
    let mut arch = BTreeMap::new();
    for name in names {
        let (p, c) = (parent_arch.remove(&name).unwrap_or_default(), child_arch.remove(&name).unwrap_or_default());
        let own = parse(&c.remove)?;
        let mut add = keep(p.add, &[&general, &own])?;
        add.extend(c.add);
        let mut remove = p.remove;
        remove.extend(c.remove);
        arch.insert(name, KernelParams { add, remove, arch: BTreeMap::new() });
    }
    let mut add = keep(parent.add, &[&general])?;
    add.extend(child.add);
    let mut remove = parent.remove;
    remove.extend(child.remove);
    Ok(KernelParams { add, remove, arch })
}

/// `child` over `parent`, field by field. Tables merge field-wise; kernel parameters append (the parent's
/// additions that a child's removal matches are dropped, so the child's `remove` undoes what the parent added);
/// a child's `layout` or `partitions` replaces both of the parent's, as two ways to say the same thing.
fn merge(parent: Profile, child: Profile) -> Result<Profile> {
    let mut origins = parent.origins;
    let (mut layout, mut partitions) = (parent.layout, parent.partitions);
    if child.layout.is_some() || child.partitions.is_some() {
        (layout, partitions) = (child.layout, child.partitions);
        origins.remove("layout");
        origins.remove("partitions");
    }
    origins.extend(child.origins);
    let kernel_params = merge_kernel_params(parent.kernel_params, child.kernel_params)?;
    let mut files = child.files;
    files.extend(parent.files);
    Ok(Profile {
        description: child.description.or(parent.description),
        layout,
        bootloader: child.bootloader.or(parent.bootloader),
        format: child.format.or(parent.format),
        compress: child.compress.or(parent.compress),
        sector_size: child.sector_size.or(parent.sector_size),
        size: child.size.or(parent.size),
        extra_space: child.extra_space.or(parent.extra_space),
        esp_size: child.esp_size.or(parent.esp_size),
        bmap: child.bmap.or(parent.bmap),
        checksum: child.checksum.or(parent.checksum),
        kernel_params,
        grub: Grub {
            terminal: child.grub.terminal.or(parent.grub.terminal),
            serial: child.grub.serial.or(parent.grub.serial),
        },
        output: Output { label: child.output.label.or(parent.output.label) },
        partitions,
        origins,
        files,
    })
}

#[cfg(test)]
mod tests;
