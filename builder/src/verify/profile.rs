//! The system profile in the image (`nix/var/nix/profiles/system -> system-<n>-link -> <toplevel>`), and the
//! toplevel a `--system` argument names.

use std::path::Path;

use anyhow::{Result, bail};

use super::db::ValidPaths;
use super::image::{Image, show};
use super::{Problem, ProblemKind};
use crate::store::{LOGICAL_STORE, StoreDir, StorePath};

/// Where the profiles live in the image.
const PROFILES: &str = "/nix/var/nix/profiles";

/// Follows the system profile to its toplevel, which must be a valid path present in the store. Returns it,
/// or `None` after recording why it cannot be.
pub(crate) fn toplevel(image: &Image, valid: &ValidPaths, problems: &mut Vec<Problem>) -> Result<Option<StorePath>> {
    let profile = format!("{PROFILES}/system");
    let mut problem = |subject: &str, detail: String| {
        problems.push(Problem { kind: ProblemKind::Profile, subject: subject.to_owned(), detail });
    };
    let link = match image.read_link(&profile) {
        Ok(Some(link)) => link,
        Ok(None) => {
            problem(&profile, "missing: the image has no system profile".into());
            return Ok(None);
        }
        Err(e) => {
            problem(&profile, format!("{e:#}"));
            return Ok(None);
        }
    };
    let generation = std::str::from_utf8(&link)
        .ok()
        .and_then(|l| l.strip_prefix("system-")?.strip_suffix("-link"))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if generation.is_none() {
        problem(&profile, format!("points to {:?}, not a generation link system-<n>-link beside it", show(&link)));
        return Ok(None);
    }
    let generation_link = format!("{PROFILES}/{}", show(&link));
    let target = match image.read_link(&generation_link) {
        Ok(Some(target)) => target,
        Ok(None) => {
            problem(&generation_link, format!("missing (the target of {profile})"));
            return Ok(None);
        }
        Err(e) => {
            problem(&generation_link, format!("{e:#}"));
            return Ok(None);
        }
    };
    let shown = show(&target);
    let toplevel = match StorePath::parse_logical(Path::new(&shown)) {
        Ok((p, rest)) if rest.as_os_str().is_empty() => p,
        _ => {
            problem(&generation_link, format!("points to {shown:?}, not a store path {LOGICAL_STORE}/<hash>-<name>"));
            return Ok(None);
        }
    };
    if !valid.contains_key(&toplevel) {
        problem(&generation_link, format!("points to {toplevel}, which is not a valid path in the image's database"));
        return Ok(None);
    }
    Ok(Some(toplevel))
}

/// The store path a `--system` argument names: resolved in `store` as `kiln build --system` does, or without
/// a store directory, a logical `/nix/store/…` path or a symlink (such as `result`) leading to one.
pub(crate) fn resolve_system(arg: &Path, store: Option<&StoreDir>) -> Result<StorePath> {
    if let Some(store) = store {
        return store.resolve_system(arg);
    }
    let mut current = arg.to_path_buf();
    for _ in 0..16 {
        if current.starts_with(LOGICAL_STORE) {
            return match StorePath::parse_logical(&current) {
                Ok((p, rest)) if rest.as_os_str().is_empty() => Ok(p),
                Ok((p, _)) => bail!("system {}: a path inside store path {p}, not a toplevel", arg.display()),
                Err(e) => bail!("system {}: {e}", arg.display()),
            };
        }
        match std::fs::read_link(&current) {
            Ok(target) => {
                current = match current.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                }
            }
            Err(_) => bail!(
                "system {}: not a store path {LOGICAL_STORE}/<hash>-<name> or a symlink to one (give --store-dir \
                 to name it by its path in a store directory)",
                arg.display()
            ),
        }
    }
    bail!("system {}: too many levels of symbolic links", arg.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system";

    #[test]
    fn resolves_system_without_a_store_dir() {
        assert_eq!(resolve_system(Path::new(T), None).unwrap().to_string(), T);
        let dir = tempfile::tempdir().unwrap();
        let result = dir.path().join("result");
        std::os::unix::fs::symlink(T, &result).unwrap();
        assert_eq!(resolve_system(&result, None).unwrap().to_string(), T);
        let err = resolve_system(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("not a store path"), "{err}");
        let err = resolve_system(Path::new(&format!("{T}/bin")), None).unwrap_err().to_string();
        assert!(err.contains("not a toplevel"), "{err}");
    }
}
