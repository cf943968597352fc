//! The expected sha256 of the source: `--sha256 HEX`, or a `sha256sum`-style file beside the source.

use anyhow::{Result, bail};

use super::bmap::sha256_hex;

/// `text` as a sha256 in lowercase hex.
///
/// # Errors
/// Unless it is 64 hex digits.
pub(super) fn normalize(text: &str, what: &str) -> Result<String> {
    let t = text.trim();
    if sha256_hex(t).is_none() {
        bail!("{what}: {t:?} is not a sha256 (64 hex digits)");
    }
    Ok(t.to_ascii_lowercase())
}

/// The sha256 a `sha256sum` file (`from`) gives for the file named `name`: the line naming it, or the only line.
///
/// # Errors
/// A malformed file, or one that names other files only.
pub(super) fn lookup(text: &[u8], name: &str, from: &str) -> Result<String> {
    let Ok(text) = std::str::from_utf8(text) else { bail!("{from}: not UTF-8 text") };
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A leading backslash marks an escaped name.
        let (escaped, line) = line.strip_prefix('\\').map_or((false, line), |l| (true, l));
        let (digest, file) = match line.split_once(' ') {
            Some((d, rest)) => (d, rest.strip_prefix([' ', '*']).unwrap_or(rest)),
            None => (line, ""),
        };
        let digest = normalize(digest, &format!("{from} line {}", i + 1))?;
        let file = if escaped {
            file.replace("\\n", "\n").replace("\\r", "\r").replace("\\\\", "\\")
        } else {
            file.to_owned()
        };
        entries.push((file, digest));
    }
    let base = |f: &str| f.rsplit('/').next().unwrap_or(f).to_owned();
    if let Some((_, d)) = entries.iter().find(|(f, _)| base(f) == name) {
        return Ok(d.clone());
    }
    match entries.as_slice() {
        [(_, d)] => Ok(d.clone()),
        [] => bail!("{from}: no checksum in it"),
        _ => bail!("{from}: no line names {name}"),
    }
}
