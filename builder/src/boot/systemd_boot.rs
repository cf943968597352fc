//! systemd-boot for UEFI, laid out as NixOS's systemd-boot builder does: the binary at `EFI/systemd/` and at
//! the removable-media path `EFI/BOOT/`, `loader/loader.conf`, one `loader/entries/*.conf` per entry, and
//! kernels and initrds copied to `EFI/nixos/<store path base name>-<file>.efi`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kiln_formats::fat::Source;

use super::{Entry, GENERATION, date};
use crate::arch::{self, Arch};
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

/// The architecture table's row for `system`'s type, for systemd-boot's file names.
fn arch_of(system: &System) -> Result<&'static Arch> {
    Arch::of(&system.boot.system).context("systemd-boot")
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

/// Where the bytes of a file on the ESP come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspSource {
    /// A file of the closure, by its logical path (`/nix/store/…`; symlinks on the way are followed).
    Store(PathBuf),
    /// Text kiln writes: `loader.conf` and the entries.
    Text(String),
}

/// The systemd-boot binary of `system` in its closure, by logical path: `<toplevel>/systemd/lib/systemd/boot/efi/
/// systemd-boot<arch>.efi`.
pub fn binary(system: &System) -> Result<PathBuf> {
    let file = arch_of(system)?.systemd_boot_file();
    Ok(system.toplevel.logical().join(format!("systemd/lib/systemd/boot/efi/{file}")))
}

/// `loader/loader.conf`: the menu timeout, the entry booted by default (`<id>.conf`), and the console mode.
#[must_use]
pub fn loader_conf(timeout: u32, default_id: &str) -> String {
    format!("timeout {timeout}\ndefault {default_id}.conf\nconsole-mode keep\n")
}

/// Whether the ESP file at `path` goes on the XBOOTLDR partition when there is one: what `nixos-rebuild` manages
/// per generation (entries, kernels, initrds), as NixOS's builder puts it with
/// `boot.loader.systemd-boot.xbootldrMountPoint`; systemd-boot itself and `loader.conf` stay on the ESP.
#[must_use]
pub fn on_xbootldr(path: &str) -> bool {
    path.starts_with("loader/entries/") || path.starts_with("EFI/nixos/")
}

/// What the ESP holds for `entries` of `system`, by FAT path, without reading anything: which closure file or
/// which text each file is. Fails when an entry names a specialisation that does not exist, or the system type
/// has no systemd-boot binary.
pub fn esp_plan(system: &System, entries: &[Entry], opts: &Options) -> Result<BTreeMap<String, EspSource>> {
    let arch = arch_of(system)?;
    let binary = binary(system)?;
    let mut files = BTreeMap::new();
    files.insert(format!("EFI/systemd/{}", arch.systemd_boot_file()), EspSource::Store(binary.clone()));
    files.insert(arch.removable_boot_path(), EspSource::Store(binary));
    for e in entries {
        files.insert(esp_path(&e.kernel), EspSource::Store(e.kernel.logical.clone()));
        if let Some(initrd) = &e.initrd {
            files.insert(esp_path(initrd), EspSource::Store(initrd.logical.clone()));
        }
        files.insert(format!("loader/entries/{}.conf", e.id), EspSource::Text(entry_conf(e, opts.build_time)));
    }
    let default = match &opts.default_specialisation {
        None => &entries[0],
        Some(name) => entries.iter().find(|e| e.specialisation.as_deref() == Some(name)).ok_or_else(|| {
            let known: Vec<_> = entries.iter().filter_map(|e| e.specialisation.as_deref()).collect();
            anyhow::anyhow!("default specialisation {name:?} does not exist (the system has: {known:?})")
        })?,
    };
    files.insert("loader/loader.conf".to_owned(), EspSource::Text(loader_conf(opts.timeout, &default.id)));
    Ok(files)
}

/// Everything the ESP holds for `entries` of `system`, with the closure's files found in `store`. Fails, naming
/// the path, when the closure has no systemd-boot binary or an entry names a specialisation that does not exist.
pub fn esp_files(store: &StoreDir, system: &System, entries: &[Entry], opts: &Options) -> Result<EspFiles> {
    let plan = esp_plan(system, entries, opts)?;
    let systemd_boot = binary(system)?;
    let arch = arch_of(system)?;
    let kernels: Vec<&Path> = entries.iter().map(|e| e.kernel.logical.as_path()).collect();
    let mut files = EspFiles::new();
    for (path, source) in plan {
        let source = match source {
            EspSource::Text(text) => bytes(text),
            EspSource::Store(logical) if logical == systemd_boot => {
                let host = store.resolve_in_store(&logical).map_err(|e| {
                    anyhow::anyhow!(
                        "the closure has no systemd-boot binary for UEFI ({}): {e:#}; an efi layout needs the \
                         systemd package the toplevel's `systemd` link points to",
                        logical.display()
                    )
                })?;
                check_machine(&host, &logical, "systemd-boot binary", arch)?;
                Source::Host(host)
            }
            EspSource::Store(logical) => {
                let host = store.resolve_in_store(&logical)?;
                if kernels.contains(&logical.as_path()) {
                    check_machine(&host, &logical, "kernel", arch)?;
                }
                Source::Host(host)
            }
        };
        files.insert(path, source);
    }
    Ok(files)
}

/// Refuses a UEFI binary (`what`, at `host`, `logical` in the closure) built for another architecture than
/// `arch`: firmware would not start it. Files that are no PE image are left to the firmware.
fn check_machine(host: &Path, logical: &Path, what: &str, arch: &Arch) -> Result<()> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(host)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .with_context(|| format!("{}: reading the {what}", host.display()))?;
    match arch::pe_machine(&head) {
        Some(m) if m != arch.pe_machine => bail!(
            "{}: the {what} is a UEFI binary for {}, but the system is {} (its bootspec's \"system\", or \
             --system-arch): the image would not boot",
            logical.display(),
            arch::pe_machine_name(m),
            arch.system
        ),
        _ => Ok(()),
    }
}

fn bytes(s: String) -> Source {
    Source::Bytes(Arc::from(s.into_bytes().into_boxed_slice()))
}
