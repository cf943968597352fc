//! systemd-boot on a FAT volume: its binaries (at `EFI/systemd/` and the removable-media path `EFI/BOOT/`, with
//! the version each says it is), `loader/loader.conf`, and every `loader/entries/*.conf` (Boot Loader
//! Specification type #1), with the files each entry names checked to exist on the volume.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result};
use kiln_formats::disk::Bytes;
use serde::Serialize;

use crate::readback::{FatIo, Window, open_fat, ser};

/// systemd-boot, found on a FAT volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemdBoot {
    /// The partition holding it (`None`: the image is the FAT volume).
    pub partition: Option<u32>,
    /// The EFI binaries present, at systemd-boot's own path and the removable-media path.
    pub binaries: Vec<EfiBinary>,
    /// `default` in `loader/loader.conf` (an entry id or glob).
    pub default: Option<String>,
    /// `timeout` in `loader/loader.conf`.
    pub timeout: Option<String>,
    /// The entries of `loader/entries/`, by file name.
    pub entries: Vec<LoaderEntry>,
}

/// An EFI binary on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EfiBinary {
    /// Path on the volume, as asked for (FAT is case-insensitive).
    pub path: String,
    /// Its size.
    #[serde(serialize_with = "ser::bytes")]
    pub size: Bytes,
    /// What it says it is in its `#### LoaderInfo: … ####` string (`systemd-boot 252.39-1~deb12u2`); `None`
    /// for another bootloader.
    pub loader: Option<String>,
}

/// One `loader/entries/*.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoaderEntry {
    /// File name in `loader/entries/`.
    pub file: String,
    /// Whether loader.conf's `default` selects it.
    pub default: bool,
    /// `title`.
    pub title: Option<String>,
    /// `version`.
    pub version: Option<String>,
    /// `sort-key`.
    pub sort_key: Option<String>,
    /// `linux`: the kernel's path on the volume.
    pub linux: Option<String>,
    /// `initrd` lines, in order.
    pub initrd: Vec<String>,
    /// `options` lines, joined by spaces: the kernel command line.
    pub options: Option<String>,
    /// Files the entry names (`linux`, `initrd`) that the volume does not hold.
    pub missing: Vec<String>,
}

/// Where firmware and systemd-boot's installer put its binary, per architecture.
const BINARIES: &[&str] = &[
    "EFI/systemd/systemd-bootx64.efi",
    "EFI/systemd/systemd-bootaa64.efi",
    "EFI/systemd/systemd-bootia32.efi",
    "EFI/BOOT/BOOTX64.EFI",
    "EFI/BOOT/BOOTAA64.EFI",
    "EFI/BOOT/BOOTIA32.EFI",
];
/// systemd-boot binaries are ~100 KiB; a file larger than this is not searched for its version.
const MAX_BINARY: u64 = 16 << 20;
const LOADER_INFO: &[u8] = b"#### LoaderInfo: ";

type Fs = fatfs::FileSystem<FatIo>;

/// The contents of the file at `path`, or `None` if there is none.
fn read_file(fs: &Fs, path: &str, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match fs.root_dir().open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut out = Vec::with_capacity(usize::try_from(len.min(limit)).unwrap_or(0));
    file.take(limit).read_to_end(&mut out)?;
    Ok(Some(out))
}

fn exists(fs: &Fs, path: &str) -> bool {
    fs.root_dir().open_file(path.trim_start_matches('/')).is_ok()
}

/// The text between `#### LoaderInfo: ` and ` ####` in a binary.
fn loader_info(binary: &[u8]) -> Option<String> {
    let start = binary.windows(LOADER_INFO.len()).position(|w| w == LOADER_INFO)? + LOADER_INFO.len();
    let rest = &binary[start..binary.len().min(start + 256)];
    let end = rest.windows(5).position(|w| w == b" ####")?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// systemd-boot on the FAT volume in `window`, if it is there: `Ok(None)` when neither systemd-boot's binary
/// nor `loader/loader.conf` is.
pub(crate) fn read(window: &Window, partition: Option<u32>) -> Result<Option<SystemdBoot>> {
    let at = window.range().start;
    let name = window.disk().name().to_owned();
    let fs = open_fat(window)?;
    let ctx = |what: &str| format!("{name}: FAT filesystem at byte {at}: reading {what}");
    let mut binaries = Vec::new();
    for path in BINARIES {
        if let Some(bytes) = read_file(&fs, path, MAX_BINARY).with_context(|| ctx(path))? {
            binaries.push(EfiBinary {
                path: (*path).to_owned(),
                size: Bytes(bytes.len() as u64),
                loader: loader_info(&bytes),
            });
        }
    }
    let conf = read_file(&fs, "loader/loader.conf", 1 << 20).with_context(|| ctx("loader/loader.conf"))?;
    let is_systemd_boot = |b: &EfiBinary| b.loader.as_deref().is_some_and(|l| l.starts_with("systemd-boot"));
    if conf.is_none() && !binaries.iter().any(is_systemd_boot) {
        return Ok(None);
    }
    let conf = conf.map(|c| key_values(&String::from_utf8_lossy(&c))).unwrap_or_default();
    let setting = |key: &str| conf.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let (default, timeout) = (setting("default"), setting("timeout"));
    let mut entries = Vec::new();
    match fs.root_dir().open_dir("loader/entries") {
        Ok(dir) => {
            let mut files = Vec::new();
            for e in dir.iter() {
                let e = e.with_context(|| ctx("loader/entries"))?;
                let file = e.file_name();
                if e.is_file() && file.to_ascii_lowercase().ends_with(".conf") {
                    files.push(file);
                }
            }
            files.sort();
            for file in files {
                let path = format!("loader/entries/{file}");
                let text = read_file(&fs, &path, 1 << 20).with_context(|| ctx(&path))?.unwrap_or_default();
                let mut entry = parse_entry(&file, &String::from_utf8_lossy(&text));
                entry.default = default.as_deref().is_some_and(|d| selects(d, &file));
                entry.missing = entry.linux.iter().chain(&entry.initrd).filter(|p| !exists(&fs, p)).cloned().collect();
                entries.push(entry);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| ctx("loader/entries")),
    }
    Ok(Some(SystemdBoot { partition, binaries, default, timeout, entries }))
}

/// `key value` lines (Boot Loader Specification and loader.conf syntax): blank lines and `#` comments skipped.
fn key_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((k, v)) => (k.to_owned(), v.trim().to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

fn parse_entry(file: &str, text: &str) -> LoaderEntry {
    let mut e = LoaderEntry {
        file: file.to_owned(),
        default: false,
        title: None,
        version: None,
        sort_key: None,
        linux: None,
        initrd: Vec::new(),
        options: None,
        missing: Vec::new(),
    };
    for (key, value) in key_values(text) {
        match key.as_str() {
            "title" => e.title = Some(value),
            "version" => e.version = Some(value),
            "sort-key" => e.sort_key = Some(value),
            "linux" => e.linux = Some(value),
            "initrd" => e.initrd.extend(value.split_ascii_whitespace().map(str::to_owned)),
            "options" => {
                e.options = Some(match e.options.take() {
                    Some(before) => format!("{before} {value}"),
                    None => value,
                })
            }
            _ => {}
        }
    }
    e
}

/// Whether loader.conf's `default` pattern selects entry file `file`: systemd-boot matches the glob against the
/// entry id, which is the file name (older versions: without `.conf`).
fn selects(pattern: &str, file: &str) -> bool {
    let stem = file.strip_suffix(".conf").unwrap_or(file);
    glob(pattern.as_bytes(), file.as_bytes()) || glob(pattern.as_bytes(), stem.as_bytes())
}

/// `*` and `?` globbing (no classes), as fnmatch without flags.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.split_first(), text.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => glob(rest, text) || (!text.is_empty() && glob(pattern, &text[1..])),
        (Some((b'?', rest)), Some((_, t))) => glob(rest, t),
        (Some((p, rest)), Some((c, t))) => p == c && glob(rest, t),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_the_boot_loader_specification_says() {
        let text = "# comment\ntitle NixOS (debug)\nsort-key nixos\nversion Generation 1 NixOS 24.11, built on \
                    1970-01-01\nlinux /EFI/nixos/k.efi\ninitrd /EFI/nixos/a.efi\ninitrd /EFI/nixos/b.efi\n\
                    options init=/nix/store/x/init console=ttyS0\noptions debug\n";
        let e = parse_entry("nixos-generation-1.conf", text);
        assert_eq!(e.title.as_deref(), Some("NixOS (debug)"));
        assert_eq!(e.version.as_deref(), Some("Generation 1 NixOS 24.11, built on 1970-01-01"));
        assert_eq!(e.sort_key.as_deref(), Some("nixos"));
        assert_eq!(e.linux.as_deref(), Some("/EFI/nixos/k.efi"));
        assert_eq!(e.initrd, ["/EFI/nixos/a.efi", "/EFI/nixos/b.efi"]);
        assert_eq!(e.options.as_deref(), Some("init=/nix/store/x/init console=ttyS0 debug"));
    }

    #[test]
    fn default_patterns() {
        struct Case {
            pattern: &'static str,
            file: &'static str,
            want: bool,
        }
        let cases = [
            Case { pattern: "nixos-generation-1.conf", file: "nixos-generation-1.conf", want: true },
            Case { pattern: "nixos-generation-1", file: "nixos-generation-1.conf", want: true },
            Case {
                pattern: "nixos-generation-1.conf",
                file: "nixos-generation-1-specialisation-debug.conf",
                want: false,
            },
            Case { pattern: "nixos-*", file: "nixos-generation-1-specialisation-debug.conf", want: true },
            Case { pattern: "nixos-generation-?.conf", file: "nixos-generation-1.conf", want: true },
            Case { pattern: "other*", file: "nixos-generation-1.conf", want: false },
        ];
        for c in cases {
            assert_eq!(selects(c.pattern, c.file), c.want, "{} vs {}", c.pattern, c.file);
        }
    }

    #[test]
    fn loader_info_is_found() {
        let mut bin = vec![0u8; 100];
        bin.extend_from_slice(b"#### LoaderInfo: systemd-boot 252.39-1~deb12u2 ####\0");
        assert_eq!(loader_info(&bin).as_deref(), Some("systemd-boot 252.39-1~deb12u2"));
        assert_eq!(loader_info(b"GRUB"), None);
    }
}
