//! systemd-boot for UEFI, laid out as NixOS's systemd-boot builder does: the binary at `EFI/systemd/` and at
//! the removable-media path `EFI/BOOT/`, `loader/loader.conf`, one `loader/entries/*.conf` per entry, and
//! kernels and initrds copied to `EFI/nixos/<store path base name>-<file>.efi`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use kiln_formats::fat::Source;

use super::{Entry, GENERATION, date};
use crate::store::StoreDir;
use crate::system::{StoreFile, System};

/// What goes on the ESP: FAT paths (relative, `/`-separated) and their contents.
pub type EspFiles = BTreeMap<String, Source>;

/// Options of the installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Menu timeout in seconds (`timeout` in loader.conf).
    pub timeout: u32,
    /// The specialisation booted by default (`None`: the default entry).
    pub default_specialisation: Option<String>,
    /// Time the entries say they were built (a Unix time; deterministic, not now).
    pub build_time: i64,
}

/// `x64` or `aa64` for a Nix system type.
pub fn efi_arch(system: &str) -> Result<&'static str> {
    match system {
        "x86_64-linux" => Ok("x64"),
        "aarch64-linux" => Ok("aa64"),
        other => bail!("systemd-boot: no UEFI binary name for system type {other} (x86_64-linux, aarch64-linux)"),
    }
}

/// Where NixOS's builder copies a store file on the ESP: `/EFI/nixos/<store path base name>-<file name>.efi`.
#[must_use]
pub fn esp_path(file: &StoreFile) -> String {
    let name = file.logical.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("EFI/nixos/{}-{name}.efi", file.store_path.base_name())
}

/// The text of one entry file.
#[must_use]
pub fn entry_conf(e: &Entry, build_time: i64) -> String {
    let mut s = format!(
        "title {}\nsort-key nixos\nversion Generation {GENERATION} {}, built on {}\nlinux /{}\n",
        e.title,
        e.label,
        date(build_time),
        esp_path(&e.kernel)
    );
    if let Some(initrd) = &e.initrd {
        s.push_str(&format!("initrd /{}\n", esp_path(initrd)));
    }
    s.push_str(&format!("options {}\n", e.cmdline));
    s
}

/// Everything the ESP holds for `entries` of `system`. Fails, naming the path, when the closure has no
/// systemd-boot binary or an entry names a specialisation that does not exist.
pub fn esp_files(store: &StoreDir, system: &System, entries: &[Entry], opts: &Options) -> Result<EspFiles> {
    let arch = efi_arch(&system.boot.system)?;
    let logical = system.toplevel.logical().join(format!("systemd/lib/systemd/boot/efi/systemd-boot{arch}.efi"));
    let binary = store.resolve_in_store(&logical).map_err(|e| {
        anyhow::anyhow!(
            "the closure has no systemd-boot binary for UEFI ({}): {e:#}; an efi layout needs the systemd package \
             the toplevel's `systemd` link points to",
            logical.display()
        )
    })?;
    let mut files = EspFiles::new();
    files.insert(format!("EFI/systemd/systemd-boot{arch}.efi"), Source::Host(binary.clone()));
    files.insert(format!("EFI/BOOT/BOOT{}.EFI", arch.to_uppercase()), Source::Host(binary));
    let physical = |f: &StoreFile| -> Result<PathBuf> { store.resolve_in_store(&f.logical) };
    for e in entries {
        files.insert(esp_path(&e.kernel), Source::Host(physical(&e.kernel)?));
        if let Some(initrd) = &e.initrd {
            files.insert(esp_path(initrd), Source::Host(physical(initrd)?));
        }
        files.insert(format!("loader/entries/{}.conf", e.id), bytes(entry_conf(e, opts.build_time)));
    }
    let default = match &opts.default_specialisation {
        None => &entries[0],
        Some(name) => entries.iter().find(|e| e.specialisation.as_deref() == Some(name)).ok_or_else(|| {
            let known: Vec<_> = entries.iter().filter_map(|e| e.specialisation.as_deref()).collect();
            anyhow::anyhow!("default specialisation {name:?} does not exist (the system has: {known:?})")
        })?,
    };
    files.insert(
        "loader/loader.conf".to_owned(),
        bytes(format!("timeout {}\ndefault {}.conf\nconsole-mode keep\n", opts.timeout, default.id)),
    );
    Ok(files)
}

fn bytes(s: String) -> Source {
    Source::Bytes(Arc::from(s.into_bytes().into_boxed_slice()))
}
