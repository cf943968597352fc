//! Files beside the source: the block map (`disk.raw.bmap` for `disk.raw` and `disk.raw.zst`, as kiln writes
//! it; `<source>.bmap` as bmaptool looks for it) and the checksum (`<source>.sha256`), read from the same
//! directory or fetched from the same URL directory.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::http;

/// Largest side file read.
const MAX_SIDE: u64 = 256 << 20;

/// The source's directory (with its trailing `/` for a URL) and file name.
fn split(source: &str, url: bool) -> (String, String) {
    if url {
        let base = source.split(['?', '#']).next().unwrap_or(source);
        let (dir, name) = base.rsplit_once('/').unwrap_or(("", base));
        (format!("{dir}/"), name.to_owned())
    } else {
        let p = Path::new(source);
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = p.parent().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
        (dir, name)
    }
}

/// Where a side file named `file` beside the source is.
fn beside(source: &str, url: bool, file: &str) -> String {
    let (dir, _) = split(source, url);
    if url {
        format!("{dir}{file}")
    } else if dir.is_empty() {
        file.to_owned()
    } else {
        Path::new(&dir).join(file).to_string_lossy().into_owned()
    }
}

/// The source's file name.
pub(super) fn file_name(source: &str, url: bool) -> String {
    split(source, url).1
}

/// Reads a side file (a path or a URL): `None` when absent.
///
/// # Errors
/// When it exists but cannot be read, or is too large.
pub(super) fn read(location: &str) -> Result<Option<Vec<u8>>> {
    if http::is_url(location) {
        return http::get_small(location, MAX_SIDE);
    }
    let file = match std::fs::File::open(location) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {location}")),
    };
    let mut bytes = Vec::new();
    file.take(MAX_SIDE + 1).read_to_end(&mut bytes).with_context(|| format!("reading {location}"))?;
    if bytes.len() as u64 > MAX_SIDE {
        bail!("{location}: larger than {MAX_SIDE} bytes, too large for what it should be");
    }
    Ok(Some(bytes))
}

/// The block map beside the source, first found of `disk.raw.bmap` (for `disk.raw.zst`) and `<source>.bmap`:
/// its location and bytes.
///
/// # Errors
/// When one exists but cannot be read.
pub(super) fn find_bmap(source: &str, url: bool) -> Result<Option<(String, Vec<u8>)>> {
    let name = file_name(source, url);
    let stem = name.strip_suffix(".zst").unwrap_or(&name);
    let mut tried = Vec::new();
    for candidate in [format!("{stem}.bmap"), format!("{name}.bmap")] {
        if name.is_empty() || tried.contains(&candidate) {
            continue;
        }
        let at = beside(source, url, &candidate);
        if let Some(bytes) = read(&at)? {
            return Ok(Some((at, bytes)));
        }
        tried.push(candidate);
    }
    Ok(None)
}

/// The `<source>.sha256` beside the source: its location and bytes.
///
/// # Errors
/// When it exists but cannot be read.
pub(super) fn find_sha256(source: &str, url: bool) -> Result<Option<(String, Vec<u8>)>> {
    let name = file_name(source, url);
    if name.is_empty() {
        return Ok(None);
    }
    let at = beside(source, url, &format!("{name}.sha256"));
    Ok(read(&at)?.map(|b| (at, b)))
}
