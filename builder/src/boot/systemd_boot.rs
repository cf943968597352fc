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
    /// Unified Kernel Images instead of entry files (`--uki`): where the EFI stub comes from.
    pub uki: Option<UkiStub>,
}

/// Where a UKI's EFI stub comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UkiStub {
    /// The closure's systemd (`<toplevel>/systemd/lib/systemd/boot/efi/linux<arch>.efi.stub`).
    Closure,
    /// A file on the build host (`--uki-stub`).
    Host(PathBuf),
}

/// What a Unified Kernel Image is made of: the stub, the kernel and initrd by logical path, the command line
/// and the os-release text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiParts {
    /// The EFI stub: a logical path in the closure, or a host file.
    pub stub: UkiStubFile,
    /// The kernel (`.linux`).
    pub kernel: PathBuf,
    /// The initrd (`.initrd`).
    pub initrd: Option<PathBuf>,
    /// The command line (`.cmdline`).
    pub cmdline: String,
    /// The os-release text (`.osrel`).
    pub osrel: String,
}

/// The stub file of a UKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UkiStubFile {
    /// By logical path, in the closure.
    Store(PathBuf),
    /// On the build host.
    Host(PathBuf),
}

/// Where a UKI goes on the ESP: `EFI/Linux/<entry id>.efi`, where systemd-boot finds Type #2 entries.
#[must_use]
pub fn uki_path(e: &Entry) -> String {
    format!("EFI/Linux/{}.efi", e.id)
}

/// The `.osrel` of an entry's UKI: what systemd-boot shows (`PRETTY_NAME`) and sorts by.
#[must_use]
pub fn uki_osrel(e: &Entry) -> String {
    format!(
        "NAME=NixOS\nID=nixos\nPRETTY_NAME=\"{}\"\nVERSION=\"Generation {GENERATION} {}\"\nIMAGE_ID=nixos\n",
        e.title.replace('"', "'"),
        e.label.replace('"', "'")
    )
}

/// The closure's EFI stub for `system`, by logical path.
pub fn closure_stub(system: &System) -> Result<PathBuf> {
    let a = arch_of(system)?;
    Ok(system.toplevel.logical().join(format!("systemd/lib/systemd/boot/efi/linux{}.efi.stub", a.efi)))
}

/// The kernel release a Linux x86 boot image says (its setup header's version string), for `.uname`; `None`
/// for other kernels (arm64 `Image` carries none there).
#[must_use]
pub fn kernel_release(kernel: &[u8]) -> Option<String> {
    if kernel.len() < 0x210 || &kernel[0x202..0x206] != b"HdrS" {
        return None;
    }
    let at = usize::from(u16::from_le_bytes([kernel[0x20E], kernel[0x20F]])) + 0x200;
    let text = kernel.get(at..at + 256)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    std::str::from_utf8(&text[..end]).ok().map(str::to_owned)
}

/// A UKI made of `parts`, whose stub, kernel and initrd bytes are given.
pub fn build_uki(parts: &UkiParts, stub: &[u8], kernel: &[u8], initrd: Option<&[u8]>) -> Result<Vec<u8>> {
    use kiln_formats::uki::{self, section};
    let uname = kernel_release(kernel);
    let mut add: Vec<(&str, &[u8])> =
        vec![(section::OSREL, parts.osrel.as_bytes()), (section::CMDLINE, parts.cmdline.as_bytes())];
    if let Some(u) = &uname {
        add.push((section::UNAME, u.as_bytes()));
    }
    if let Some(i) = initrd {
        add.push((section::INITRD, i));
    }
    add.push((section::LINUX, kernel));
    uki::build(stub, &add).map_err(anyhow::Error::new)
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
    /// A Unified Kernel Image kiln assembles (`--uki`).
    Uki(Box<UkiParts>),
}

/// The systemd-boot binary of `system` in its closure, by logical path: `<toplevel>/systemd/lib/systemd/boot/efi/
/// systemd-boot<arch>.efi`.
pub fn binary(system: &System) -> Result<PathBuf> {
    let file = arch_of(system)?.systemd_boot_file();
    Ok(system.toplevel.logical().join(format!("systemd/lib/systemd/boot/efi/{file}")))
}

/// `loader/loader.conf`: the menu timeout, the entry booted by default (its file name: `<id>.conf`, or
/// `<id>.efi` for a UKI), and the console mode.
#[must_use]
pub fn loader_conf(timeout: u32, default_file: &str) -> String {
    format!("timeout {timeout}\ndefault {default_file}\nconsole-mode keep\n")
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
        if let Some(stub) = &opts.uki {
            let stub = match stub {
                UkiStub::Closure => UkiStubFile::Store(closure_stub(system)?),
                UkiStub::Host(p) => UkiStubFile::Host(p.clone()),
            };
            let parts = UkiParts {
                stub,
                kernel: e.kernel.logical.clone(),
                initrd: e.initrd.as_ref().map(|i| i.logical.clone()),
                cmdline: e.cmdline.clone(),
                osrel: uki_osrel(e),
            };
            files.insert(uki_path(e), EspSource::Uki(Box::new(parts)));
            continue;
        }
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
    let default_id = if opts.uki.is_some() { format!("{}.efi", default.id) } else { format!("{}.conf", default.id) };
    files.insert("loader/loader.conf".to_owned(), EspSource::Text(loader_conf(opts.timeout, &default_id)));
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
            EspSource::Uki(parts) => Source::Bytes(Arc::from(assemble_uki(store, &parts, arch)?.into_boxed_slice())),
        };
        files.insert(path, source);
    }
    Ok(files)
}

/// Reads a UKI's parts from the closure (and the host, for a host stub) and assembles it.
fn assemble_uki(store: &StoreDir, parts: &UkiParts, arch: &Arch) -> Result<Vec<u8>> {
    let read = |logical: &Path, what: &str| -> Result<Vec<u8>> {
        let host = store.resolve_in_store(logical).with_context(|| format!("the {what} of a UKI"))?;
        std::fs::read(&host).with_context(|| format!("{}: reading the {what}", host.display()))
    };
    let (stub, shown) = match &parts.stub {
        UkiStubFile::Store(logical) => (
            store
                .resolve_in_store(logical)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "--uki: the closure has no EFI stub ({}): {e:#}; give one with --uki-stub (Debian's \
                         systemd-boot-efi has /usr/lib/systemd/boot/efi/linux{}.efi.stub)",
                        logical.display(),
                        arch.efi
                    )
                })
                .and_then(|host| {
                    std::fs::read(&host).with_context(|| format!("{}: reading the EFI stub", host.display()))
                })?,
            logical.clone(),
        ),
        UkiStubFile::Host(p) => (
            std::fs::read(p).with_context(|| format!("{}: reading the EFI stub (--uki-stub)", p.display()))?,
            p.clone(),
        ),
    };
    match kiln_formats::uki::machine(&stub) {
        Ok(m) if m == arch.pe_machine => {}
        Ok(m) => bail!(
            "{}: the EFI stub is a UEFI binary for {}, but the system is {}",
            shown.display(),
            arch::pe_machine_name(m),
            arch.system
        ),
        Err(e) => bail!("{}: not an EFI stub: {e}", shown.display()),
    }
    let kernel = read(&parts.kernel, "kernel")?;
    let initrd = parts.initrd.as_deref().map(|i| read(i, "initrd")).transpose()?;
    build_uki(parts, &stub, &kernel, initrd.as_deref())
        .with_context(|| format!("assembling a UKI with {}", shown.display()))
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
