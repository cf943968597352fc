//! The NixOS system on an ext4 filesystem: the system profile's links (`nix/var/nix/profiles/system ->
//! system-<n>-link -> /nix/store/<toplevel>`), every generation link beside it, and how many valid paths the Nix
//! database registers (read from a private copy, with SQLite read-only).

use anyhow::{Context, Result, anyhow, bail};
use ext4_view::Ext4;
use serde::Serialize;

/// A NixOS system found on a filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NixOs {
    /// The partition holding it (`None`: the image is the filesystem).
    pub partition: Option<u32>,
    /// What `/nix/var/nix/profiles/system` points to (`system-1-link`).
    pub profile: Option<String>,
    /// The generation the profile points to.
    pub generation: Option<u32>,
    /// The toplevel the profile leads to: the system that boots.
    pub toplevel: Option<String>,
    /// What the toplevel's `system` file says it was built for: `x86_64-linux`, `aarch64-linux`.
    pub system: Option<String>,
    /// Every `system-<n>-link` in `/nix/var/nix/profiles`, by number.
    pub generations: Vec<Generation>,
    /// Rows of `ValidPaths` in `/nix/var/nix/db/db.sqlite`.
    pub valid_paths: Option<u64>,
}

/// One generation link of the system profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generation {
    /// Its number.
    pub number: u32,
    /// Where it points.
    pub toplevel: String,
}

const PROFILES: &str = "/nix/var/nix/profiles";
const DB: &str = "/nix/var/nix/db/db.sqlite";
/// Symlinks followed from the profile before giving up (a loop).
const MAX_LINKS: usize = 8;

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The number of `system-<n>-link`.
fn generation_of(name: &str) -> Option<u32> {
    name.strip_prefix("system-")?.strip_suffix("-link")?.parse().ok()
}

/// The NixOS system on `fs`, if it has `/nix`: `where_` names the filesystem in warnings. What cannot be read
/// (a dangling profile, a database SQLite rejects) is a warning; the rest is still reported.
pub(crate) fn read(fs: &Ext4, partition: Option<u32>, where_: &str, warnings: &mut Vec<String>) -> Option<NixOs> {
    let has = |p: &str| fs.exists(p).unwrap_or(false);
    if !has("/nix/store") && !has("/nix/var/nix") {
        return None;
    }
    let mut warn = |e: anyhow::Error| warnings.push(format!("{where_}: {e:#}"));
    let mut system = NixOs {
        partition,
        profile: None,
        generation: None,
        toplevel: None,
        system: None,
        generations: Vec::new(),
        valid_paths: None,
    };
    let profile = format!("{PROFILES}/system");
    if has(&profile) {
        match fs.read_link(profile.as_str()) {
            Ok(target) => {
                let target = show(target.as_ref());
                system.generation = generation_of(&target);
                system.profile = Some(target);
                match follow(fs, &profile) {
                    Ok(top) => {
                        system.system = system_type(fs, &top);
                        system.toplevel = Some(top);
                    }
                    Err(e) => warn(e),
                }
            }
            Err(e) => warn(anyhow!("{profile}: {e}")),
        }
    }
    match generations(fs) {
        Ok(g) => system.generations = g,
        Err(e) => warn(e),
    }
    if has(DB) {
        match valid_paths(fs) {
            Ok(n) => system.valid_paths = Some(n),
            Err(e) => warn(e),
        }
    }
    Some(system)
}

/// The `system` file of the toplevel `top`, when it holds one short line (NixOS writes `x86_64-linux` there).
fn system_type(fs: &Ext4, top: &str) -> Option<String> {
    let bytes = fs.read(format!("{top}/system").as_str()).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?.trim();
    (!text.is_empty() && text.len() <= 64 && !text.contains(char::is_whitespace)).then(|| text.to_owned())
}

/// Follows symlinks from `path` (relative targets against their directory) to a `/nix/store/…` target.
fn follow(fs: &Ext4, path: &str) -> Result<String> {
    let mut current = path.to_owned();
    for _ in 0..MAX_LINKS {
        let target = fs.read_link(current.as_str()).map_err(|e| anyhow!("{current}: {e}"))?;
        let target = show(target.as_ref());
        if target.starts_with("/nix/store/") {
            return Ok(target);
        }
        current = if target.starts_with('/') {
            target
        } else {
            let dir = current.rsplit_once('/').map_or("", |d| d.0);
            format!("{dir}/{target}")
        };
    }
    bail!("{path}: more than {MAX_LINKS} symlinks without reaching /nix/store")
}

fn generations(fs: &Ext4) -> Result<Vec<Generation>> {
    let mut out = Vec::new();
    let entries = match fs.read_dir(PROFILES) {
        Ok(entries) => entries,
        Err(ext4_view::Ext4Error::NotFound) => return Ok(out),
        Err(e) => bail!("{PROFILES}: {e}"),
    };
    for entry in entries {
        let entry = entry.map_err(|e| anyhow!("{PROFILES}: {e}"))?;
        let name = show(entry.file_name().as_ref());
        let Some(number) = generation_of(&name) else { continue };
        let path = format!("{PROFILES}/{name}");
        let target = fs.read_link(path.as_str()).map_err(|e| anyhow!("{path}: {e}"))?;
        out.push(Generation { number, toplevel: show(target.as_ref()) });
    }
    out.sort_by_key(|g| g.number);
    Ok(out)
}

fn valid_paths(fs: &Ext4) -> Result<u64> {
    let bytes = fs.read(DB).map_err(|e| anyhow!("{DB}: {e}"))?;
    let dir = tempfile::tempdir().context("creating a temporary directory for the image's Nix database")?;
    let file = dir.path().join("db.sqlite");
    std::fs::write(&file, &bytes).with_context(|| format!("copying {DB} to {}", file.display()))?;
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_URI
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // `immutable`: a private copy nobody writes, so SQLite takes no locks and leaves no journal.
    let conn = rusqlite::Connection::open_with_flags(format!("file:{}?mode=ro&immutable=1", file.display()), flags)
        .with_context(|| format!("{DB}: cannot open as SQLite"))?;
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM ValidPaths", [], |r| r.get(0))
        .with_context(|| format!("{DB}: cannot count the valid paths"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_numbers() {
        assert_eq!(generation_of("system-1-link"), Some(1));
        assert_eq!(generation_of("system-42-link"), Some(42));
        assert_eq!(generation_of("system"), None);
        assert_eq!(generation_of("system--link"), None);
        assert_eq!(generation_of("per-user"), None);
    }
}
