//! The NixOS system to image: its toplevel and what its bootspec (`boot.json`, RFC 0125) says.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bootspec::v1::BootSpecV1;
use serde::Serialize;

use crate::store::{StoreDir, StorePath};

/// A file inside a store path, by its logical name (for boot entries and references).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreFile {
    /// The store path holding the file.
    #[serde(skip)]
    pub store_path: StorePath,
    /// The full logical path, `/nix/store/<hash>-<name>/<rest>`.
    #[serde(rename = "path")]
    pub logical: PathBuf,
}

impl StoreFile {
    fn parse(field: &str, value: &Path, boot_json: &Path) -> Result<Self> {
        let (store_path, _) =
            StorePath::parse_logical(value).with_context(|| format!("{}: field {field}", boot_json.display()))?;
        Ok(Self { store_path, logical: value.to_path_buf() })
    }
}

/// One bootable generation or specialisation, as its bootspec describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootEntry {
    /// Human-readable label, e.g. `NixOS 24.11 (Linux 6.6.1)`.
    pub label: String,
    /// The toplevel this entry boots.
    pub toplevel: StorePath,
    /// The kernel image.
    pub kernel: StoreFile,
    /// The initrd, if the system has one.
    pub initrd: Option<StoreFile>,
    /// Stage-2 init, passed as `init=`.
    pub init: StoreFile,
    /// Kernel parameters from the bootspec, in order.
    pub kernel_params: Vec<String>,
    /// The Nix system type, e.g. `x86_64-linux`.
    pub system: String,
}

/// A NixOS system: the toplevel, its boot entry, and its specialisations sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct System {
    /// The toplevel store path.
    pub toplevel: StorePath,
    /// The default boot entry.
    pub boot: BootEntry,
    /// Specialisations (`specialisation/<name>`), sorted by name.
    pub specialisations: Vec<Specialisation>,
}

/// A named specialisation of a system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Specialisation {
    /// Its name, as in `specialisation/<name>`.
    pub name: String,
    /// What its own bootspec says.
    pub boot: BootEntry,
}

impl System {
    /// Reads `<toplevel>/boot.json` from the store directory.
    pub fn load(store: &StoreDir, toplevel: &StorePath) -> Result<Self> {
        let logical = toplevel.logical().join("boot.json");
        let shown = store.physical(toplevel).join("boot.json");
        if std::fs::symlink_metadata(&shown).is_err() {
            bail!(
                "{}: missing: {toplevel} has no bootspec (boot.json, NixOS 23.05 and later); is it a NixOS \
                 system toplevel?",
                shown.display()
            );
        }
        let physical = store.resolve_in_store(&logical)?;
        let bytes = std::fs::read(&physical).with_context(|| format!("reading {}", physical.display()))?;
        Self::from_boot_json(&bytes, toplevel, &shown)
    }

    /// Parses a boot.json document belonging to `toplevel`; `shown` names the file in errors.
    pub fn from_boot_json(bytes: &[u8], toplevel: &StorePath, shown: &Path) -> Result<Self> {
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("{}: invalid bootspec: {e}", shown.display()))?;
        let boot = entry(&doc, shown, "")?;
        if &boot.toplevel != toplevel {
            bail!("{}: says toplevel {} but the file belongs to {toplevel}", shown.display(), boot.toplevel);
        }
        let mut specialisations = Vec::new();
        match doc.get(SPECIALISATION_KEY) {
            None => {}
            Some(serde_json::Value::Object(map)) => {
                for (name, child) in map {
                    if name.is_empty() || name.contains('/') {
                        bail!("{}: invalid specialisation name {name:?}", shown.display());
                    }
                    let boot = entry(child, shown, &format!("{SPECIALISATION_KEY}.{name}."))?;
                    specialisations.push(Specialisation { name: name.clone(), boot });
                }
            }
            Some(_) => bail!("{}: invalid bootspec: {SPECIALISATION_KEY} is not an object", shown.display()),
        }
        specialisations.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { toplevel: toplevel.clone(), boot, specialisations })
    }

    /// Every store path the boot entries name (toplevels, kernels, initrds, inits), sorted, without duplicates.
    #[must_use]
    pub fn boot_store_paths(&self) -> Vec<(&'static str, &StoreFile)> {
        let mut out = Vec::new();
        for boot in std::iter::once(&self.boot).chain(self.specialisations.iter().map(|s| &s.boot)) {
            out.push(("kernel", &boot.kernel));
            out.push(("init", &boot.init));
            if let Some(initrd) = &boot.initrd {
                out.push(("initrd", initrd));
            }
        }
        out
    }
}

const BOOTSPEC_KEY: &str = "org.nixos.bootspec.v1";
const SPECIALISATION_KEY: &str = "org.nixos.specialisation.v1";

/// Reads the `org.nixos.bootspec.v1` object of a boot.json document (or of one of its specialisations, whose
/// key path in the document is `prefix`).
fn entry(doc: &serde_json::Value, shown: &Path, prefix: &str) -> Result<BootEntry> {
    let Some(value) = doc.get(BOOTSPEC_KEY) else {
        bail!("{}: invalid bootspec: no {prefix}{BOOTSPEC_KEY} object (kiln reads bootspec v1)", shown.display());
    };
    let spec: BootSpecV1 = serde_json::from_value(value.clone())
        .map_err(|e| anyhow::anyhow!("{}: invalid bootspec: {prefix}{BOOTSPEC_KEY}: {e}", shown.display()))?;
    let toplevel_path = &spec.toplevel.0;
    let (toplevel, rest) =
        StorePath::parse_logical(toplevel_path).with_context(|| format!("{}: field toplevel", shown.display()))?;
    if !rest.as_os_str().is_empty() {
        bail!("{}: toplevel {} is not a store path", shown.display(), toplevel_path.display());
    }
    if spec.system.is_empty() {
        bail!("{}: field system is empty", shown.display());
    }
    for param in &spec.kernel_params {
        if param.is_empty() || param.bytes().any(|b| b == b'\n' || b == 0) {
            bail!("{}: kernelParams has an invalid entry {param:?}", shown.display());
        }
    }
    Ok(BootEntry {
        label: spec.label.clone(),
        toplevel,
        kernel: StoreFile::parse("kernel", &spec.kernel, shown)?,
        initrd: spec.initrd.as_deref().map(|p| StoreFile::parse("initrd", p, shown)).transpose()?,
        init: StoreFile::parse("init", &spec.init, shown)?,
        kernel_params: spec.kernel_params.clone(),
        system: spec.system.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-x";
    const CHILD: &str = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-nixos-system-x-debug";

    fn spec(top: &str, params: &str) -> String {
        format!(
            r#"{{"init":"{top}/init","initrd":"/nix/store/2123456789abcdfghijklmnpqrsvwxyz-initrd/initrd",
            "kernel":"/nix/store/3123456789abcdfghijklmnpqrsvwxyz-linux/bzImage","kernelParams":[{params}],
            "label":"NixOS test","system":"x86_64-linux","toplevel":"{top}"}}"#
        )
    }

    fn toplevel() -> StorePath {
        StorePath::parse_logical(Path::new(TOP)).unwrap().0
    }

    #[test]
    fn reads_bootspec_with_specialisations() {
        let doc = format!(
            r#"{{"org.nixos.bootspec.v1": {main}, "org.nixos.specialisation.v1": {{"debug": {{"org.nixos.bootspec.v1": {child}, "org.nixos.specialisation.v1": {{}}}}}}, "org.example.ext": 1}}"#,
            main = spec(TOP, r#""console=ttyS0","quiet""#),
            child = spec(CHILD, r#""debug""#),
        );
        let sys = System::from_boot_json(doc.as_bytes(), &toplevel(), Path::new("boot.json")).unwrap();
        assert_eq!(sys.boot.kernel_params, ["console=ttyS0", "quiet"]);
        assert_eq!(sys.boot.kernel.logical, Path::new("/nix/store/3123456789abcdfghijklmnpqrsvwxyz-linux/bzImage"));
        assert_eq!(sys.specialisations.len(), 1);
        assert_eq!(sys.specialisations[0].name, "debug");
        assert_eq!(sys.specialisations[0].boot.toplevel.to_string(), CHILD);
        assert_eq!(sys.boot_store_paths().len(), 6);
    }

    #[test]
    fn rejects_bad_bootspecs() {
        struct Case {
            name: &'static str,
            doc: String,
            want: &'static str,
        }
        let cases = [
            Case { name: "not json", doc: "{".into(), want: "invalid bootspec" },
            Case { name: "no v1 key", doc: "{}".into(), want: "no org.nixos.bootspec.v1 object" },
            Case {
                name: "missing field",
                doc: r#"{"org.nixos.bootspec.v1": {"label": "x"}}"#.into(),
                want: "missing field `kernel`",
            },
            Case {
                name: "wrong toplevel",
                doc: format!(r#"{{"org.nixos.bootspec.v1": {}}}"#, spec(CHILD, "")),
                want: "says toplevel",
            },
            Case {
                name: "kernel outside store",
                doc: format!(
                    r#"{{"org.nixos.bootspec.v1": {}}}"#,
                    spec(TOP, "").replace("/nix/store/3123456789abcdfghijklmnpqrsvwxyz-linux/bzImage", "/boot/vmlinuz")
                ),
                want: "not a store path",
            },
            Case {
                name: "newline in param",
                doc: format!(r#"{{"org.nixos.bootspec.v1": {}}}"#, spec(TOP, r#""a\nb""#)),
                want: "invalid entry",
            },
        ];
        for case in cases {
            let err = System::from_boot_json(case.doc.as_bytes(), &toplevel(), Path::new("/x/boot.json")).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(case.want) && msg.contains("/x/boot.json"), "{}: {msg}", case.name);
        }
    }
}
