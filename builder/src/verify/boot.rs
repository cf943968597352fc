//! The boot files, checked against the closure they are derived from. The image's own toplevel (the one the
//! system profile points to) says, in its `boot.json`, which kernels, initrds and inits boot it; from that, kiln's
//! own functions say what the boot partitions must hold:
//!
//! - systemd-boot (a layout with an ESP): [`systemd_boot::esp_plan`] lists every file. Kernels, initrds and the
//!   systemd-boot binaries must be byte for byte the closure's files as the root filesystem holds them; the
//!   entries and `loader.conf` must be the text [`systemd_boot::entry_conf`] and [`systemd_boot::loader_conf`]
//!   write; with an XBOOTLDR partition the entries, kernels and initrds are there instead. Any other file or
//!   directory on those FAT volumes was not put there by kiln.
//! - GRUB (a layout that boots by BIOS): `/boot/grub/grub.cfg` must be what [`grub::config`] writes.
//!
//! What the image does not record is taken from it, and only checked for consistency: the kernel command line
//! (`kiln build --kernel-param` and profiles change it; verify requires the entry's own `init=`), the entry booted
//! by default (any of the system's entries), GRUB's terminals, and the build time in the entries' `version`
//! (the ext4 superblock's creation time, which kiln sets to the same value).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use anyhow::{Context as _, Result};
use kiln_formats::disk::ByteRange;

use super::db::ValidPaths;
use super::image::{Image, show};
use super::{Problem, ProblemKind};
use crate::boot::grub::{self, GrubConsole};
use crate::boot::{self, Boots, Entry, MENU_TIMEOUT, systemd_boot};
use crate::readback::{Disk, Ext4Superblock, FatIo, Layout, Partition, Role, RootFs, Table, open_fat};
use crate::store::StorePath;
use crate::system::{BootEntry, System};

/// Where GRUB's configuration is on the root filesystem.
pub(crate) const GRUB_CFG: &str = "/boot/grub/grub.cfg";

/// The bootloaders a layout installs, as [`Boots`] decides them from the partitions kiln writes: systemd-boot
/// with an ESP, GRUB with a BIOS boot partition (or an MBR), the entries on XBOOTLDR when there is one.
pub(crate) fn boots(layout: &Layout) -> Boots {
    let has = |role| layout.with_role(role).next().is_some();
    Boots {
        uefi: has(Role::Esp),
        bios: has(Role::BiosBoot) || matches!(layout.table, Table::Dos { .. }),
        xbootldr: has(Role::Esp) && has(Role::Xbootldr),
    }
}

/// What the checks read: the image, its layout, the root filesystem and its database.
pub(crate) struct Context<'a> {
    pub disk: &'a Disk,
    pub layout: &'a Layout,
    pub root: &'a RootFs,
    pub image: &'a Image,
    pub valid: &'a ValidPaths,
}

/// Checks the boot files of `toplevel` (the profile's), recording what differs from what kiln writes. Returns
/// what was checked, a line per bootloader.
pub(crate) fn check(cx: &Context<'_>, toplevel: &StorePath, problems: &mut Vec<Problem>) -> Result<Vec<String>> {
    let boots = boots(cx.layout);
    let mut checked = Vec::new();
    if !boots.uefi && !boots.bios {
        return Ok(checked);
    }
    let boot_json = format!("{toplevel}/boot.json");
    let mut problem = |subject: &str, detail: String| {
        problems.push(Problem { kind: ProblemKind::Boot, subject: subject.to_owned(), detail });
    };
    let system = match cx.image.read(&boot_json) {
        Ok(Some(bytes)) => match System::from_boot_json(&bytes, toplevel, std::path::Path::new(&boot_json)) {
            Ok(system) => system,
            Err(e) => {
                problem(&boot_json, format!("the boot files cannot be checked: {e:#}"));
                return Ok(checked);
            }
        },
        Ok(None) => {
            problem(&boot_json, "missing: the boot files cannot be checked against the system".into());
            return Ok(checked);
        }
        Err(e) => {
            problem(&boot_json, format!("cannot be read: {e:#}"));
            return Ok(checked);
        }
    };
    for (what, file) in system.boot_store_paths() {
        if !cx.valid.contains_key(&file.store_path) {
            problem(
                &file.logical.display().to_string(),
                format!("the {what} {boot_json} names is not in a valid path of the image's database"),
            );
        }
    }
    let entries = match boot::entries(&system, &[]) {
        Ok(entries) => entries,
        Err(e) => {
            problem(&boot_json, format!("no boot entries can be made of it: {e:#}"));
            return Ok(checked);
        }
    };
    let boot_entries: Vec<&BootEntry> =
        std::iter::once(&system.boot).chain(system.specialisations.iter().map(|s| &s.boot)).collect();
    if boots.uefi {
        checked.push(check_systemd_boot(cx, boots.xbootldr, &system, entries.clone(), &boot_entries, problems)?);
    }
    if boots.bios {
        check_grub(cx, toplevel, &entries, &boot_entries, problems)?;
        checked.push(format!("GRUB: {GRUB_CFG}, {} menu entries", entries.len()));
    }
    Ok(checked)
}

/// The build time kiln wrote, as the entries' `version` says it: the root filesystem's creation time
/// (`s_mkfs_time`).
fn build_time(cx: &Context<'_>) -> Result<i64> {
    let window = cx.disk.window(ByteRange { start: cx.root.offset, end: cx.root.end });
    let sb = Ext4Superblock::read(&window)?.with_context(|| {
        format!("{}: the root filesystem's superblock lies past the end of the image", cx.disk.name())
    })?;
    Ok(i64::from(sb.mkfs_time))
}

/// Whether `cmdline` boots `boot`'s init: its `init=` parameter names it.
fn boots_init(cmdline: &str, boot: &BootEntry) -> bool {
    let want = boot.init.logical.display().to_string();
    kernel_params::Cmdline::parse(cmdline).is_ok_and(|c| c.get("init").and_then(|p| p.value()) == Some(&*want))
}

/// One FAT volume read back.
struct Volume {
    /// What problems call it: `partition 1 (ESP)`.
    name: String,
    fs: Option<fatfs::FileSystem<FatIo>>,
    /// Every file and directory (relative, `/`-separated), by its lower-case form (FAT is case-insensitive): its
    /// name as stored, and whether it is a directory.
    entries: BTreeMap<String, (String, bool)>,
}

impl Volume {
    fn open(cx: &Context<'_>, p: &Partition, problems: &mut Vec<Problem>) -> Self {
        let name = p.to_string();
        let listed = open_fat(&cx.disk.window(p.range)).and_then(|fs| {
            let entries = list(&fs).with_context(|| format!("{name}: listing its files"))?;
            Ok((fs, entries))
        });
        match listed {
            Ok((fs, entries)) => Self { name, fs: Some(fs), entries },
            Err(e) => {
                problems.push(Problem {
                    kind: ProblemKind::Boot,
                    subject: name.clone(),
                    detail: format!("its boot files cannot be checked: {e:#}"),
                });
                Self { name, fs: None, entries: BTreeMap::new() }
            }
        }
    }

    /// The contents of the file at `path`, if the volume has it.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(fs) = &self.fs else { return Ok(None) };
        match self.entries.get(&path.to_ascii_lowercase()) {
            Some((_, false)) => {}
            _ => return Ok(None),
        }
        let mut out = Vec::new();
        fs.root_dir()
            .open_file(path)
            .and_then(|mut f| f.read_to_end(&mut out))
            .with_context(|| format!("{}: reading /{path}", self.name))?;
        Ok(Some(out))
    }

    fn subject(&self, path: &str) -> String {
        format!("/{path} on {}", self.name)
    }
}

/// A Unified Kernel Image against what kiln puts in one: its kernel and initrd the closure's (as the root
/// filesystem or store partition has them), its os-release kiln's, its command line the entry's (checked by the
/// caller to boot its init).
fn check_uki(
    cx: &Context<'_>,
    got: &[u8],
    parts: &systemd_boot::UkiParts,
    subject: &str,
    problem: &mut impl FnMut(ProblemKind, String, String),
) {
    use kiln_formats::uki::section;
    let mut expect: Vec<(&str, Vec<u8>, String)> =
        vec![(section::OSREL, parts.osrel.clone().into_bytes(), "kiln's os-release".into())];
    for (name, logical) in [(section::LINUX, Some(&parts.kernel)), (section::INITRD, parts.initrd.as_ref())] {
        let Some(logical) = logical else { continue };
        let shown = logical.display().to_string();
        match cx.image.read(&shown) {
            Ok(Some(bytes)) => expect.push((name, bytes, shown)),
            Ok(None) => problem(
                ProblemKind::Boot,
                subject.to_owned(),
                format!("its {name} is {shown}, which the image does not have"),
            ),
            Err(e) => problem(ProblemKind::Boot, subject.to_owned(), format!("cannot compare its {name}: {e:#}")),
        }
    }
    for (name, want, what) in expect {
        match section(got, name) {
            Ok(Some(have)) if have == want.as_slice() => {}
            Ok(Some(have)) => problem(
                ProblemKind::Boot,
                subject.to_owned(),
                format!("its {name} section differs from {what}: {}", first_difference(have, &want)),
            ),
            Ok(None) => problem(ProblemKind::Boot, subject.to_owned(), format!("a UKI without a {name} section")),
            Err(e) => problem(ProblemKind::Boot, subject.to_owned(), format!("not a UKI kiln reads: {e}")),
        }
    }
}

/// The command lines of the ESP's boot entries (`loader/entries/*.conf` `options`, and the `.cmdline` of each
/// Unified Kernel Image under `EFI/Linux/`): (where, command line).
pub(crate) fn command_lines(cx: &Context<'_>, problems: &mut Vec<Problem>) -> Result<Vec<(String, String)>> {
    let Some(esp_part) = cx.layout.with_role(Role::Esp).next() else { return Ok(Vec::new()) };
    let esp = Volume::open(cx, esp_part, problems);
    let mut out = Vec::new();
    for (lower, (path, is_dir)) in &esp.entries {
        if *is_dir {
            continue;
        }
        let Some(bytes) = esp.read(path)? else { continue };
        if lower.starts_with("loader/entries/") && lower.ends_with(".conf") {
            let text = String::from_utf8_lossy(&bytes);
            if let Some(options) = text.lines().find_map(|l| l.strip_prefix("options ")) {
                out.push((esp.subject(path), options.to_owned()));
            }
        } else if lower.starts_with("efi/linux/")
            && lower.ends_with(".efi")
            && let Ok(Some(cmdline)) = kiln_formats::uki::section(&bytes, kiln_formats::uki::section::CMDLINE)
        {
            out.push((esp.subject(path), String::from_utf8_lossy(cmdline).trim_end_matches('\0').to_owned()));
        }
    }
    Ok(out)
}

/// Every file and directory of a FAT volume, by lower-case path.
fn list(fs: &fatfs::FileSystem<FatIo>) -> std::io::Result<BTreeMap<String, (String, bool)>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = todo.pop() {
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            out.insert(path.to_ascii_lowercase(), (path.clone(), entry.is_dir()));
            if entry.is_dir() {
                todo.push((path, entry.to_dir()));
            }
        }
    }
    Ok(out)
}

/// systemd-boot's files on the ESP (and XBOOTLDR partition) against [`systemd_boot::esp_plan`]. Returns what
/// was checked.
fn check_systemd_boot(
    cx: &Context<'_>,
    xbootldr: bool,
    system: &System,
    mut entries: Vec<Entry>,
    boot_entries: &[&BootEntry],
    problems: &mut Vec<Problem>,
) -> Result<String> {
    let esp_part = cx.layout.with_role(Role::Esp).next().expect("a layout with systemd-boot has an ESP");
    let esp = Volume::open(cx, esp_part, problems);
    let extra = match cx.layout.with_role(Role::Xbootldr).next() {
        Some(p) if xbootldr => Some(Volume::open(cx, p, problems)),
        _ => None,
    };
    let volume_of = |path: &str| match &extra {
        Some(x) if systemd_boot::on_xbootldr(path) => x,
        _ => &esp,
    };
    let mut problem = |kind, subject: String, detail: String| problems.push(Problem { kind, subject, detail });

    // Unified Kernel Images (`--uki`) when the ESP has the default entry's.
    let uki = esp.entries.contains_key(&systemd_boot::uki_path(&entries[0]).to_ascii_lowercase());
    // The command lines are what the entries say (kiln does not record the changes it made to them), as long
    // as each boots its own init.
    for (e, boot) in entries.iter_mut().zip(boot_entries) {
        let (path, options) = if uki {
            let path = systemd_boot::uki_path(e);
            let Some(bytes) = esp.read(&path)? else { continue };
            let Ok(Some(cmdline)) = kiln_formats::uki::section(&bytes, kiln_formats::uki::section::CMDLINE) else {
                continue;
            };
            (path, String::from_utf8_lossy(cmdline).into_owned())
        } else {
            let path = format!("loader/entries/{}.conf", e.id);
            let vol = volume_of(&path);
            let Some(text) = vol.read(&path)? else { continue };
            let text = String::from_utf8_lossy(&text).into_owned();
            let Some(options) = text.lines().find_map(|l| l.strip_prefix("options ")) else { continue };
            (path, options.to_owned())
        };
        let vol = volume_of(&path);
        let options = options.as_str();
        if !boots_init(options, boot) {
            problem(
                ProblemKind::Boot,
                vol.subject(&path),
                format!(
                    "its command line does not boot {}: no init={} in {options:?}",
                    boot.toplevel,
                    boot.init.logical.display()
                ),
            );
        }
        options.clone_into(&mut e.cmdline);
    }
    // loader.conf may boot any of the entries by default.
    let conf = esp.read("loader/loader.conf")?;
    let ext = if uki { "efi" } else { "conf" };
    let default = entries
        .iter()
        .find(|e| {
            conf.as_deref() == Some(systemd_boot::loader_conf(MENU_TIMEOUT, &format!("{}.{ext}", e.id)).as_bytes())
        })
        .and_then(|e| e.specialisation.clone());
    let opts = systemd_boot::Options {
        timeout: MENU_TIMEOUT,
        default_specialisation: default,
        build_time: build_time(cx)?,
        uki: uki.then_some(systemd_boot::UkiStub::Closure),
    };
    let plan = systemd_boot::esp_plan(system, &entries, &opts)
        .with_context(|| format!("planning the ESP of {}", system.toplevel))?;

    let mut expected: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 2];
    for (path, source) in &plan {
        let vol = volume_of(path);
        let which = usize::from(!std::ptr::eq(vol, &esp));
        expected[which].insert(path.to_ascii_lowercase());
        let Some(got) = vol.read(path)? else {
            if vol.fs.is_some() {
                problem(ProblemKind::Boot, vol.subject(path), "missing: kiln writes it for this system".into());
            }
            continue;
        };
        match source {
            systemd_boot::EspSource::Text(want) if got != want.as_bytes() => problem(
                ProblemKind::Boot,
                vol.subject(path),
                format!("not what kiln writes for {}: {}", system.toplevel, first_difference(&got, want.as_bytes())),
            ),
            systemd_boot::EspSource::Text(_) => {}
            systemd_boot::EspSource::Uki(parts) => {
                check_uki(cx, &got, parts, &vol.subject(path), &mut problem);
            }
            systemd_boot::EspSource::Store(logical) => {
                let shown = logical.display().to_string();
                match cx.image.read(&shown) {
                    Ok(Some(want)) if want == got => {}
                    Ok(Some(want)) => problem(
                        ProblemKind::Boot,
                        vol.subject(path),
                        format!("differs from {shown} in the root filesystem: {}", first_difference(&got, &want)),
                    ),
                    Ok(None) => problem(
                        ProblemKind::Boot,
                        vol.subject(path),
                        format!("a copy of {shown}, which the root filesystem does not have"),
                    ),
                    Err(e) => problem(ProblemKind::Boot, vol.subject(path), format!("cannot compare: {e:#}")),
                }
            }
        }
    }
    for (i, vol) in std::iter::once(&esp).chain(&extra).enumerate() {
        let want = &expected[i];
        for (lower, (path, is_dir)) in &vol.entries {
            let needed = if *is_dir {
                let prefix = format!("{lower}/");
                want.iter().any(|w| w.starts_with(&prefix))
            } else {
                want.contains(lower)
            };
            if !needed {
                let what = if *is_dir { "a directory" } else { "a file" };
                problem(
                    ProblemKind::Foreign,
                    vol.subject(path),
                    format!("{what} not put there by kiln (it is not one of the boot files of {})", system.toplevel),
                );
            }
        }
    }
    let counts: Vec<String> = std::iter::once(&esp)
        .chain(&extra)
        .zip(&expected)
        .map(|(vol, files)| format!("{} files on {}", files.len(), vol.name))
        .collect();
    Ok(format!("systemd-boot: {}, {} entries", counts.join(", "), entries.len()))
}

/// The marker standing for entry `i`'s command line when matching `grub.cfg` against what kiln writes.
fn marker(i: usize) -> String {
    format!("kiln-verify-command-line-{i:05}")
}

/// Matches `actual` line by line against `template` (what kiln writes with [`marker`]s for the command lines):
/// every line equal, except that each marker stands for any text. Returns that text per entry (as rendered in
/// the file), or `None` when they do not match.
fn match_template(template: &str, actual: &str, n: usize) -> Option<Vec<String>> {
    let (t, a): (Vec<&str>, Vec<&str>) = (template.split('\n').collect(), actual.split('\n').collect());
    if t.len() != a.len() {
        return None;
    }
    let mut found: Vec<Option<String>> = vec![None; n];
    for (t, a) in t.iter().zip(&a) {
        let Some((i, (pre, post))) = (0..n).find_map(|i| Some((i, t.split_once(&marker(i))?))) else {
            if t != a {
                return None;
            }
            continue;
        };
        if a.len() < pre.len() + post.len() || !a.starts_with(pre) || !a.ends_with(post) {
            return None;
        }
        let middle = a[pre.len()..a.len() - post.len()].to_owned();
        match &found[i] {
            Some(before) if *before != middle => return None,
            _ => found[i] = Some(middle),
        }
    }
    Some(found.into_iter().map(Option::unwrap_or_default).collect())
}

/// `/boot/grub/grub.cfg` against [`grub::config`].
fn check_grub(
    cx: &Context<'_>,
    toplevel: &StorePath,
    entries: &[Entry],
    boot_entries: &[&BootEntry],
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let mut problem = |detail: String| {
        problems.push(Problem { kind: ProblemKind::Boot, subject: GRUB_CFG.to_owned(), detail });
    };
    let actual = match cx.image.read(GRUB_CFG) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => {
            problem("missing: kiln writes it for a layout that boots by BIOS".into());
            return Ok(());
        }
        Err(e) => {
            problem(format!("cannot be read: {e:#}"));
            return Ok(());
        }
    };
    // The terminals come from the profile, which the image does not record: take them from the file.
    let mut console = GrubConsole::default();
    for line in actual.lines().map(str::trim) {
        if let Some(serial) = line.strip_prefix("serial ") {
            console.serial = grub::words(serial).join(" ");
        } else if let Some(names) = line.strip_prefix("terminal_input ") {
            console.terminals = names
                .split_ascii_whitespace()
                .filter_map(|t| ["serial", "console"].into_iter().find(|known| *known == t))
                .collect();
        }
    }
    let n = entries.len();
    let with_cmdlines = |f: &dyn Fn(usize) -> String| -> Vec<Entry> {
        entries.iter().enumerate().map(|(i, e)| Entry { cmdline: f(i), ..e.clone() }).collect()
    };
    let marked = with_cmdlines(&|i| marker(i));
    let cfg = |entries: &[Entry], default| grub::config(entries, default, MENU_TIMEOUT, &console);
    let matched = (0..n).find_map(|default| {
        let template = cfg(&marked, default).ok()?;
        Some((default, match_template(&template, &actual, n)?))
    });
    let Some((default, cmdlines)) = matched else {
        let want = match cfg(entries, 0) {
            Ok(want) => want,
            Err(e) => {
                problem(format!("kiln would not write one for {toplevel}: {e:#}"));
                return Ok(());
            }
        };
        problem(format!(
            "not what kiln writes for {toplevel}: {}",
            first_difference(actual.as_bytes(), want.as_bytes())
        ));
        return Ok(());
    };
    // Each command line as kiln renders it without changes; a changed one must still boot its own init.
    let template = cfg(&marked, default)?;
    let base = match cfg(entries, default) {
        Ok(unchanged) => match_template(&template, &unchanged, n).expect("kiln's own grub.cfg matches its template"),
        // The closure's own command line is one GRUB cannot pass: every entry must then have been changed.
        Err(_) => vec![String::new(); n],
    };
    for (i, (got, boot)) in cmdlines.iter().zip(boot_entries).enumerate() {
        let init = format!("init={}", boot.init.logical.display());
        let has_init = got.match_indices(&init).any(|(at, _)| {
            let before = got[..at].chars().next_back();
            let after = got[at + init.len()..].chars().next();
            let edge = |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || c == '"' || c == '\'');
            edge(before) && edge(after)
        });
        if got != &base[i] && !has_init {
            problem(format!(
                "menu entry {:?}: its command line does not boot {}: no {init} in {got:?}",
                entries[i].title, boot.toplevel
            ));
        }
    }
    Ok(())
}

/// Where two byte strings first differ, for messages: the line (for text) or byte offset, and both lengths.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let text = |b: &[u8]| !b.contains(&0) && std::str::from_utf8(b).is_ok();
    if text(got) && text(want) {
        let line = got[..at].iter().filter(|&&b| b == b'\n').count();
        let nth = |b: &[u8]| show(b.split(|&c| c == b'\n').nth(line).unwrap_or_default());
        return format!("line {} is {:?}, kiln writes {:?}", line + 1, nth(got), nth(want));
    }
    if got.len() == want.len() {
        format!("they differ from byte {at} on (both {} bytes)", got.len())
    } else {
        format!("{} bytes where the original has {}; they differ from byte {at} on", got.len(), want.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_any_command_line_and_nothing_else() {
        let template = format!("a\n  linux /k {}\nb {}\n", marker(0), marker(1));
        let got = match_template(&template, "a\n  linux /k init=/x quiet\nb 'y'\n", 2);
        assert_eq!(got, Some(vec!["init=/x quiet".to_owned(), "'y'".to_owned()]));
        assert_eq!(match_template(&template, "a\n  linux /other init=/x\nb y\n", 2), None);
        assert_eq!(match_template(&template, "a\n  linux /k init=/x\nb y\nextra\n", 2), None);
        assert_eq!(match_template(&template, "A\n  linux /k init=/x\nb y\n", 2), None);
    }

    #[test]
    fn differences_name_the_line_or_byte() {
        assert_eq!(first_difference(b"a\nb\nc\n", b"a\nB\nc\n"), "line 2 is \"b\", kiln writes \"B\"");
        assert_eq!(first_difference(b"\0\x01\x02", b"\0\x01\x03"), "they differ from byte 2 on (both 3 bytes)");
        assert_eq!(
            first_difference(b"\0\x01", b"\0\x01\x03"),
            "2 bytes where the original has 3; they differ from byte 2 on"
        );
    }
}
