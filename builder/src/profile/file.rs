//! One profile file as written: parsed with the position of every value, and checked on its own (what needs no
//! other file: value syntax, kernel parameters, the partition list). Errors start with `file:line:column`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use kernel_params::{Param, Removal};
use kiln_formats::disk::Guid;
use serde::Deserialize;
use toml::Spanned;

use super::value::{ByteSize, GrubTerminal, ImageSize, PartSize, PartitionSpec, Role};
use super::{Grub, KernelParams, Output, Profile};
use crate::cli::{Bootloader, Compression, Format, Layout, SizeSpec};

/// A position in a profile file, printed `file:line:column` (both 1-based; the column counts characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The file as errors name it: `images/amazon.toml` for a built-in, else the path as given.
    pub file: Arc<str>,
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A profile file's text and the name errors give it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    pub name: &'a Arc<str>,
    pub text: &'a str,
    pub builtin: bool,
}

impl Source<'_> {
    /// The position of byte `offset`.
    pub fn loc(&self, offset: usize) -> Loc {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Loc {
            file: self.name.clone(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    fn at(&self, span: &Range<usize>) -> Loc {
        self.loc(span.start)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    description: Option<Spanned<String>>,
    extends: Option<Spanned<String>>,
    layout: Option<Spanned<Layout>>,
    bootloader: Option<Spanned<Bootloader>>,
    format: Option<Spanned<Format>>,
    compress: Option<Spanned<Compression>>,
    sector_size: Option<Spanned<u32>>,
    size: Option<Spanned<ImageSize>>,
    extra_space: Option<Spanned<ByteSize>>,
    esp_size: Option<Spanned<ByteSize>>,
    bmap: Option<Spanned<bool>>,
    checksum: Option<Spanned<bool>>,
    kernel_params: Option<RawKernelParams>,
    grub: Option<RawGrub>,
    output: Option<RawOutput>,
    partitions: Option<Spanned<Vec<Spanned<RawPartition>>>>,
}

/// `[kernel-params]`; any other key is an architecture's table.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawKernelParams {
    #[serde(default)]
    add: Vec<Spanned<String>>,
    #[serde(default)]
    remove: Vec<Spanned<String>>,
    #[serde(flatten)]
    arch: BTreeMap<String, RawArchKernelParams>,
}

/// `[kernel-params.<arch>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchKernelParams {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGrub {
    terminal: Option<Spanned<Vec<GrubTerminal>>>,
    serial: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOutput {
    label: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPartition {
    role: Role,
    size: Spanned<PartSize>,
    name: Option<Spanned<String>>,
    label: Option<Spanned<String>>,
    type_guid: Option<Spanned<String>>,
}

/// One file, parsed and checked: the fields it sets (a [`Profile`] holding only those, with where each was set)
/// and what it extends.
#[derive(Debug)]
pub(super) struct Layer {
    pub profile: Profile,
    pub extends: Option<(String, Loc)>,
}

/// Records where each field was set.
struct Origins<'s> {
    src: Source<'s>,
    map: BTreeMap<&'static str, Loc>,
}

impl Origins<'_> {
    fn take<T>(&mut self, key: &'static str, value: Option<Spanned<T>>) -> Option<(T, Loc)> {
        value.map(|v| {
            let loc = self.src.at(&v.span());
            self.map.insert(key, loc.clone());
            (v.into_inner(), loc)
        })
    }
}

fn value<T>(v: Option<(T, Loc)>) -> Option<T> {
    v.map(|(v, _)| v)
}

/// Parses and checks one file.
pub(super) fn layer(src: Source<'_>) -> Result<Layer> {
    let raw: RawFile = toml::from_str(src.text).map_err(|e| match e.span() {
        Some(span) => anyhow!("{}: {}", src.at(&span), e.message().trim_end()),
        None => anyhow!("{}: {}", src.name, e.message().trim_end()),
    })?;
    let mut o = Origins { src, map: BTreeMap::new() };
    let description = match o.take("description", raw.description) {
        Some((d, loc)) => {
            let text = d.trim();
            if text.is_empty() || text.contains('\n') {
                bail!("{loc}: description: one line of text");
            }
            Some(text.to_owned())
        }
        None if src.builtin => bail!("{}: a built-in profile needs a description", src.name),
        None => None,
    };
    let extends = raw.extends.map(|e| (e.get_ref().clone(), src.at(&e.span())));
    let layout = o.take("layout", raw.layout);
    let sector_size = o.take("sector-size", raw.sector_size);
    if let Some((n, loc)) = &sector_size
        && let Err(e) = kiln_formats::disk::SectorSize::try_from(*n)
    {
        bail!("{loc}: sector-size {e}");
    }
    let size = o.take("size", raw.size);
    let extra_space = o.take("extra-space", raw.extra_space);
    if let (Some((ImageSize(SizeSpec::Fixed(n)), size_at)), Some((_, at))) = (&size, &extra_space) {
        bail!(
            "{at}: extra-space applies to size \"auto\" only; with size {} ({size_at}) the free space is what \
             remains",
            ByteSize(*n)
        );
    }
    let kernel_params = match raw.kernel_params {
        None => KernelParams::default(),
        Some(k) => kernel_params(&mut o, k)?,
    };
    let grub = match raw.grub {
        None => Grub::default(),
        Some(g) => grub(&mut o, g)?,
    };
    let output = match raw.output.and_then(|out| o.take("output.label", out.label)) {
        None => Output::default(),
        Some((label, loc)) => {
            check_output_label(&label).map_err(|e| anyhow!("{loc}: output.label {label:?}: {e}"))?;
            Output { label: Some(label) }
        }
    };
    let partitions = match o.take("partitions", raw.partitions) {
        None => None,
        Some((list, at)) => {
            if let Some((_, layout_at)) = &layout {
                bail!("{at}: partitions and layout ({layout_at}) are exclusive: a partition list replaces the layout");
            }
            Some(partitions(src, &at, list)?)
        }
    };
    let profile = Profile {
        description,
        layout: value(layout),
        bootloader: value(o.take("bootloader", raw.bootloader)),
        format: value(o.take("format", raw.format)),
        compress: value(o.take("compress", raw.compress)),
        sector_size: value(sector_size),
        size: value(size),
        extra_space: value(extra_space),
        esp_size: value(o.take("esp-size", raw.esp_size)),
        bmap: value(o.take("bmap", raw.bmap)),
        checksum: value(o.take("checksum", raw.checksum)),
        kernel_params,
        grub,
        output,
        partitions,
        origins: o.map,
        files: vec![src.name.clone()],
    };
    Ok(Layer { profile, extends })
}

fn kernel_params(o: &mut Origins<'_>, k: RawKernelParams) -> Result<KernelParams> {
    let src = o.src;
    for p in &k.add {
        Param::parse(p.get_ref())
            .map_err(|e| anyhow!("{}: kernel-params.add {:?}: {e}", src.at(&p.span()), p.get_ref()))?;
    }
    for p in &k.remove {
        Removal::parse(p.get_ref())
            .map_err(|e| anyhow!("{}: kernel-params.remove {:?}: {e}", src.at(&p.span()), p.get_ref()))?;
    }
    if let Some(first) = k.remove.first().or(k.add.first()) {
        o.map.insert("kernel-params", src.at(&first.span()));
    }
    let mut arch = BTreeMap::new();
    for (name, a) in k.arch {
        let row = crate::arch::Arch::of(&name).map_err(|e| {
            anyhow!("{}: [kernel-params.{name}]: not an architecture: {e} (or add/remove was misspelt)", src.name)
        })?;
        if row.name() != name {
            bail!("{}: [kernel-params.{name}]: name the architecture as {:?}", src.name, row.name());
        }
        for p in &a.add {
            Param::parse(p).map_err(|e| anyhow!("{}: kernel-params.{name}.add {p:?}: {e}", src.name))?;
        }
        for p in &a.remove {
            Removal::parse(p).map_err(|e| anyhow!("{}: kernel-params.{name}.remove {p:?}: {e}", src.name))?;
        }
        arch.insert(name, KernelParams { add: a.add, remove: a.remove, arch: BTreeMap::new() });
    }
    let strings = |v: Vec<Spanned<String>>| v.into_iter().map(Spanned::into_inner).collect();
    Ok(KernelParams { add: strings(k.add), remove: strings(k.remove), arch })
}

fn grub(o: &mut Origins<'_>, g: RawGrub) -> Result<Grub> {
    let terminal = o.take("grub.terminal", g.terminal);
    if let Some((t, loc)) = &terminal {
        if t.is_empty() {
            bail!("{loc}: grub.terminal: give \"serial\", \"console\" or both");
        }
        if t.len() == 2 && t[0] == t[1] {
            bail!("{loc}: grub.terminal: {:?} twice", t[0].name());
        }
    }
    let serial = o.take("grub.serial", g.serial);
    if let Some((s, loc)) = &serial {
        check_serial(s).map_err(|e| anyhow!("{loc}: grub.serial {s:?}: {e}"))?;
    }
    Ok(Grub { terminal: value(terminal), serial: value(serial) })
}

/// GRUB's `serial` command options go into grub.cfg as they are: words of option characters only, so nothing
/// else (another command, a quote, a variable) can get in.
fn check_serial(s: &str) -> Result<(), String> {
    if s.split_whitespace().next().is_none() {
        return Err("give the serial command's options, e.g. \"--unit=0 --speed=115200\"".to_owned());
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "-=,._:".contains(c);
    match s.chars().find(|&c| !ok(c) && c != ' ') {
        Some(c) => Err(format!("{c:?} is not allowed: options are words such as --unit=0 --speed=115200")),
        None => Ok(()),
    }
}

fn check_output_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 255 {
        return Err("a label is 1 to 255 bytes".to_owned());
    }
    match label.chars().find(|&c| c.is_control() || c == '/') {
        Some(c) => Err(format!("{c:?} is not allowed in a label")),
        None => Ok(()),
    }
}

/// Checks a partition list on its own: sizes, `fill` last, one root, at most one of each boot partition, names
/// and labels that fit where they go.
fn partitions(src: Source<'_>, at: &Loc, raw: Vec<Spanned<RawPartition>>) -> Result<Vec<PartitionSpec>> {
    if raw.is_empty() {
        bail!("{at}: partitions: give at least the root partition");
    }
    let count = raw.len();
    let mut out: Vec<PartitionSpec> = Vec::with_capacity(count);
    let mut seen: Vec<(Role, Loc)> = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let loc = src.at(&p.span());
        let p = p.into_inner();
        let role = p.role;
        let what = format!("partition {} ({})", i + 1, role.name());
        let size_at = src.at(&p.size.span());
        let size = p.size.into_inner();
        match size {
            PartSize::Fill if i + 1 < count => bail!("{size_at}: {what}: size \"fill\" is for the last partition only"),
            PartSize::Bytes(b) if b.get() == 0 || !b.get().is_multiple_of(4096) => {
                bail!("{size_at}: {what}: size {b}: a partition's size is a positive multiple of 4 KiB")
            }
            _ => {}
        }
        if matches!(role, Role::Esp | Role::Xbootldr | Role::BiosBoot | Role::Root)
            && let Some((_, first)) = seen.iter().find(|(r, _)| *r == role)
        {
            bail!("{loc}: {what}: a second {} partition (the first is at {first})", role.name());
        }
        if role == Role::Empty
            && let Some(key) =
                [(p.name.is_some(), "name"), (p.label.is_some(), "label"), (p.type_guid.is_some(), "type-guid")]
                    .iter()
                    .find_map(|(given, key)| given.then_some(*key))
        {
            bail!("{loc}: {what}: an empty partition is unallocated space: it has no {key}");
        }
        let name = match p.name {
            Some(n) if n.get_ref().encode_utf16().count() > 36 || n.get_ref().contains('\0') => {
                bail!(
                    "{}: {what}: name {:?}: a GPT partition name is at most 36 UTF-16 units",
                    src.at(&n.span()),
                    n.get_ref()
                )
            }
            n => n.map(Spanned::into_inner),
        };
        let label = match p.label {
            Some(l) => {
                let at = src.at(&l.span());
                let l = l.into_inner();
                check_label(role, &l).map_err(|e| anyhow!("{at}: {what}: label {l:?}: {e}"))?;
                Some(l)
            }
            None => None,
        };
        let type_guid = match p.type_guid {
            Some(g) => {
                let at = src.at(&g.span());
                match Guid::parse(g.get_ref()) {
                    Some(guid) if !guid.is_nil() => Some(guid),
                    Some(_) => bail!("{at}: {what}: type-guid: all zeros marks an unused entry (use role \"empty\")"),
                    None => bail!(
                        "{at}: {what}: type-guid {:?} is not a GUID (XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)",
                        g.get_ref()
                    ),
                }
            }
            None => None,
        };
        seen.push((role, loc));
        out.push(PartitionSpec { role, size, name, label, type_guid });
    }
    if !seen.iter().any(|(r, _)| *r == Role::Root) {
        bail!("{at}: partitions: no root partition (a partition with role = \"root\")");
    }
    if let Some((_, loc)) = seen.iter().find(|(r, _)| *r == Role::Xbootldr)
        && !seen.iter().any(|(r, _)| *r == Role::Esp)
    {
        bail!("{loc}: an xbootldr partition goes with an esp partition, and there is none");
    }
    Ok(out)
}

/// FAT labels (ESP, XBOOTLDR) are at most 11 ASCII bytes; ext4 and swap labels at most 16 bytes.
fn check_label(role: Role, label: &str) -> Result<(), String> {
    if !role.takes_label() {
        return Err(format!("a {} partition has no filesystem to label", role.name()));
    }
    if label.is_empty() {
        return Err("empty".to_owned());
    }
    if matches!(role, Role::Esp | Role::Xbootldr) {
        let bad = |c: char| !c.is_ascii_graphic() && c != ' ' || "\"*+,./:;<=>?[\\]|".contains(c);
        if label.len() > 11 || label.chars().any(bad) {
            return Err("a FAT label is at most 11 ASCII characters, none of \"*+,./:;<=>?[\\]|".to_owned());
        }
    } else if label.len() > 16 || label.contains('\0') {
        return Err("an ext4 or swap label is at most 16 bytes".to_owned());
    }
    Ok(())
}
