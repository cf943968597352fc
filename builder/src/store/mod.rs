//! Store paths and the store directory.
//!
//! A store path has a *logical* name, always under `/nix/store` (what the booted system sees, what references
//! and boot entries contain), and a *physical* location on the build host, under the store directory given
//! with `--store-dir` (by default `/nix/store` itself, but it may be a chroot or a fixture kept anywhere).
//! [`StorePath`] is the logical one; [`StoreDir`] maps it to a physical [`PathBuf`]. The two never mix.

mod files;
pub mod nix32;

pub use files::StoreFiles;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The logical store directory, fixed for NixOS images.
pub const LOGICAL_STORE: &str = "/nix/store";

/// Characters of a store path's hash part.
pub const HASH_LEN: usize = 32;

/// Longest name part Nix accepts (the whole base name is at most 211 + 33 bytes).
const MAX_NAME_LEN: usize = 211;

/// A store path by its logical name, `/nix/store/<hash>-<name>`, validated as Nix does.
///
/// Ordered by base name, which is also the byte order of the full logical path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    base: String,
}

impl StorePath {
    /// Parses a base name `<hash>-<name>` (no directory).
    pub fn from_base_name(base: &str) -> Result<Self, InvalidStorePath> {
        let invalid = |why| InvalidStorePath { text: base.to_owned(), why };
        let bytes = base.as_bytes();
        if bytes.len() < HASH_LEN + 2 || bytes[HASH_LEN] != b'-' {
            return Err(invalid("expected <32-char hash>-<name>"));
        }
        if !bytes[..HASH_LEN].iter().all(|&b| nix32::is_digit(b)) {
            return Err(invalid("hash part is not 32 nix32 characters"));
        }
        let name = &bytes[HASH_LEN + 1..];
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("name part longer than 211 bytes"));
        }
        if name[0] == b'.' {
            return Err(invalid("name part starts with '.'"));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b);
        if !name.iter().all(|&b| allowed(b)) {
            return Err(invalid("name part has characters outside [A-Za-z0-9+-._?=]"));
        }
        Ok(Self { base: base.to_owned() })
    }

    /// Parses a logical path `/nix/store/<hash>-<name>[/more]`, returning the store path and the rest
    /// (relative, possibly empty).
    pub fn parse_logical(path: &Path) -> Result<(Self, PathBuf), InvalidStorePath> {
        let text = path.to_string_lossy();
        let not_store = || InvalidStorePath { text: text.clone().into_owned(), why: "not under /nix/store" };
        let rest = path.strip_prefix(LOGICAL_STORE).map_err(|_| not_store())?;
        let mut components = rest.components();
        let Some(Component::Normal(base)) = components.next() else {
            return Err(not_store());
        };
        let base = base.to_str().ok_or_else(|| InvalidStorePath {
            text: text.clone().into_owned(),
            why: "store path name is not valid UTF-8",
        })?;
        let store_path = Self::from_base_name(base)?;
        let rest: PathBuf = components.collect();
        if rest.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(InvalidStorePath {
                text: text.into_owned(),
                why: "path inside the store path has '..' or '.'",
            });
        }
        Ok((store_path, rest))
    }

    /// The base name, `<hash>-<name>`.
    #[must_use]
    pub fn base_name(&self) -> &str {
        &self.base
    }

    /// The 32-character hash part.
    #[must_use]
    pub fn hash_part(&self) -> &str {
        &self.base[..HASH_LEN]
    }

    /// The name part after the hash and dash.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.base[HASH_LEN + 1..]
    }

    /// The full logical path, `/nix/store/<hash>-<name>`.
    #[must_use]
    pub fn logical(&self) -> PathBuf {
        Path::new(LOGICAL_STORE).join(&self.base)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LOGICAL_STORE}/{}", self.base)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A string that is not a valid store path, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}: not a store path ({why})")]
pub struct InvalidStorePath {
    /// The offending text.
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The physical directory on the build host that holds the logical `/nix/store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDir {
    root: PathBuf,
}

impl StoreDir {
    /// A store directory at `root` (made absolute, not canonicalised: a symlinked store dir stays as given).
    pub fn new(root: &Path) -> Result<Self> {
        let root = std::path::absolute(root).with_context(|| format!("store directory {}", root.display()))?;
        let meta = std::fs::metadata(&root).with_context(|| format!("store directory {}", root.display()))?;
        if !meta.is_dir() {
            bail!("store directory {}: not a directory", root.display());
        }
        Ok(Self { root })
    }

    /// The physical directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `path` physically lives.
    #[must_use]
    pub fn physical(&self, path: &StorePath) -> PathBuf {
        self.root.join(path.base_name())
    }

    /// The host's Nix database that belongs to this store, when the store dir has the usual
    /// `<prefix>/nix/store` shape: `<prefix>/nix/var/nix/db/db.sqlite`.
    #[must_use]
    pub fn nix_db(&self) -> Option<PathBuf> {
        let nix = self.root.parent().filter(|_| self.root.ends_with("nix/store"))?;
        Some(nix.join("var/nix/db/db.sqlite"))
    }

    /// Resolves a `--system` argument to a store path that exists in this store directory.
    ///
    /// Accepts the logical path (`/nix/store/…`), the physical path (under the store directory), or a symlink
    /// to either (such as nix-build's `result`). Symlinks are followed only to find the store path; nothing
    /// outside the store directory is read.
    pub fn resolve_system(&self, arg: &Path) -> Result<StorePath> {
        let mut current = std::path::absolute(arg).unwrap_or_else(|_| arg.to_path_buf());
        for _ in 0..16 {
            let candidate = if let Ok(rest) = current.strip_prefix(&self.root) {
                Some(Path::new(LOGICAL_STORE).join(rest))
            } else if current.starts_with(LOGICAL_STORE) {
                Some(current.clone())
            } else {
                None
            };
            if let Some(logical) = candidate {
                let (store_path, rest) =
                    StorePath::parse_logical(&logical).map_err(|e| anyhow::anyhow!("system {}: {e}", arg.display()))?;
                if !rest.as_os_str().is_empty() {
                    bail!(
                        "system {}: {} is a path inside store path {store_path}, not a toplevel",
                        arg.display(),
                        logical.display()
                    );
                }
                let physical = self.physical(&store_path);
                if std::fs::symlink_metadata(&physical).is_err() {
                    bail!(
                        "system {}: {store_path} not found in store directory {}",
                        arg.display(),
                        self.root.display()
                    );
                }
                return Ok(store_path);
            }
            match std::fs::read_link(&current) {
                Ok(target) => {
                    current = match current.parent() {
                        Some(dir) if target.is_relative() => dir.join(target),
                        _ => target,
                    };
                }
                Err(_) if std::fs::symlink_metadata(&current).is_err() => {
                    bail!("system {}: no such file or directory", arg.display())
                }
                Err(_) => bail!(
                    "system {}: not a store path (expected {LOGICAL_STORE}/<32-char hash>-<name>, a path under \
                     the store directory {}, or a symlink to one)",
                    arg.display(),
                    self.root.display()
                ),
            }
        }
        bail!("system {}: too many levels of symbolic links", arg.display())
    }
}

impl StoreDir {
    /// Resolves a logical path inside the store to the physical file it names, following symlinks the way
    /// the booted system would (absolute targets are logical `/nix/store/…` paths, relative ones are relative
    /// to the link's directory). A link that leads outside `/nix/store` is an error: nothing outside the store
    /// directory is ever read.
    pub fn resolve_in_store(&self, logical: &Path) -> Result<PathBuf> {
        let mut pending: Vec<std::ffi::OsString> = Vec::new();
        let (first, rest) = StorePath::parse_logical(logical)?;
        pending.extend(rest.components().rev().map(|c| c.as_os_str().to_owned()));
        let mut here = vec![first.base_name().to_owned().into()];
        let mut hops = 0;
        loop {
            if here.is_empty() {
                // At the store directory itself, between `..` and the next store path name.
                let Some(next) = pending.pop() else {
                    bail!("{}: resolves to the store directory itself", logical.display());
                };
                match Path::new(&next).components().next() {
                    Some(Component::Normal(_)) => here.push(next),
                    Some(Component::CurDir) => {}
                    _ => bail!("{}: a symlink climbs out of the store", logical.display()),
                }
                continue;
            }
            let physical: PathBuf =
                std::iter::once(self.root.as_os_str().to_owned()).chain(here.iter().cloned()).collect();
            let meta = std::fs::symlink_metadata(&physical).with_context(|| {
                format!(
                    "{}: resolving {} in store directory {}",
                    physical.display(),
                    logical.display(),
                    self.root.display()
                )
            })?;
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    bail!("{}: too many levels of symbolic links", logical.display());
                }
                let target =
                    std::fs::read_link(&physical).with_context(|| format!("reading symlink {}", physical.display()))?;
                here.pop();
                let base: Vec<std::ffi::OsString> = if target.is_absolute() {
                    let (sp, rest) = StorePath::parse_logical(&target).map_err(|_| {
                        anyhow::anyhow!(
                            "{}: symlink {} points outside the store to {}",
                            logical.display(),
                            physical.display(),
                            target.display()
                        )
                    })?;
                    here.clear();
                    pending.extend(rest.components().rev().map(|c| c.as_os_str().to_owned()));
                    vec![sp.base_name().to_owned().into()]
                } else {
                    pending.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
                    Vec::new()
                };
                here.extend(base);
            } else if pending.is_empty() {
                return Ok(physical);
            }
            let Some(next) = pending.pop() else { continue };
            match Path::new(&next).components().next() {
                Some(Component::ParentDir) => {
                    here.pop();
                }
                Some(Component::CurDir) => {}
                _ => here.push(next),
            }
        }
    }
}

/// Where the entry `rel` (relative to its store path; empty for the store path itself) of the store path at
/// `root` physically lives: `root/rel`, or `root` itself (`join("")` would add a `/`, which names a single-file
/// store path as a directory).
#[must_use]
pub fn entry_path(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(rel) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn parses_valid_names() {
        let p = StorePath::from_base_name(&format!("{H}-hello-2.12")).unwrap();
        assert_eq!(p.hash_part(), H);
        assert_eq!(p.name(), "hello-2.12");
        assert_eq!(p.to_string(), format!("/nix/store/{H}-hello-2.12"));
        let (q, rest) = StorePath::parse_logical(Path::new(&format!("/nix/store/{H}-x/bin/sh"))).unwrap();
        assert_eq!(q.name(), "x");
        assert_eq!(rest, Path::new("bin/sh"));
    }

    #[test]
    fn rejects_invalid_names() {
        struct Case {
            name: &'static str,
            input: String,
        }
        let cases = [
            Case { name: "too short", input: "abc".into() },
            Case { name: "no dash", input: format!("{H}xhello") },
            Case { name: "empty name", input: format!("{H}-") },
            Case { name: "bad hash char", input: format!("e{}-x", &H[1..]) },
            Case { name: "dot name", input: format!("{H}-.hidden") },
            Case { name: "space", input: format!("{H}-a b") },
            Case { name: "too long", input: format!("{H}-{}", "a".repeat(212)) },
        ];
        for case in cases {
            assert!(StorePath::from_base_name(&case.input).is_err(), "{}", case.name);
        }
        assert!(StorePath::parse_logical(Path::new("/tmp/x")).is_err());
        assert!(StorePath::parse_logical(Path::new(&format!("/nix/store/{H}-x/../y"))).is_err());
    }

    #[test]
    fn resolves_system_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("nix/store");
        let base = format!("{H}-nixos-system");
        std::fs::create_dir_all(store.join(&base)).unwrap();
        let store_dir = StoreDir::new(&store).unwrap();
        assert_eq!(store_dir.nix_db().unwrap(), dir.path().join("nix/var/nix/db/db.sqlite"));
        let want = StorePath::from_base_name(&base).unwrap();
        let logical = format!("/nix/store/{base}");
        assert_eq!(store_dir.resolve_system(Path::new(&logical)).unwrap(), want);
        assert_eq!(store_dir.resolve_system(&store.join(&base)).unwrap(), want);
        let result = dir.path().join("result");
        std::os::unix::fs::symlink(&logical, &result).unwrap();
        assert_eq!(store_dir.resolve_system(&result).unwrap(), want);

        let err = store_dir.resolve_system(Path::new(&format!("/nix/store/{H}-gone"))).unwrap_err();
        assert!(err.to_string().contains("not found in store directory"), "{err}");
        let err = store_dir.resolve_system(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a store path"), "{err}");
    }

    #[test]
    fn resolves_links_inside_the_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("nix/store");
        let a = format!("{H}-a");
        let b = format!("1{}-b", &H[1..]);
        std::fs::create_dir_all(store.join(&a).join("lib")).unwrap();
        std::fs::create_dir_all(store.join(&b)).unwrap();
        std::fs::write(store.join(&a).join("lib/file"), "x").unwrap();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, store.join(&b).join(at)).unwrap();
        };
        link(&format!("/nix/store/{a}/lib/file"), "abs");
        link(&format!("../{a}/lib"), "rel");
        link("/etc/passwd", "escape");
        link("../../../etc", "climb");
        let s = StoreDir::new(&store).unwrap();
        let logical = |rest: &str| PathBuf::from(format!("/nix/store/{b}/{rest}"));
        let want = store.join(&a).join("lib/file");
        assert_eq!(s.resolve_in_store(&logical("abs")).unwrap(), want);
        assert_eq!(s.resolve_in_store(&logical("rel/file")).unwrap(), want);
        let err = s.resolve_in_store(&logical("escape")).unwrap_err();
        assert!(format!("{err:#}").contains("points outside the store"), "{err:#}");
        assert!(s.resolve_in_store(&logical("climb/passwd")).is_err());
    }
}
