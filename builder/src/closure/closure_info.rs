//! nixpkgs `closureInfo` directories: `store-paths` (sorted, one per line) and `registration` (the
//! `nix-store --load-db` record format).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{NarInfo, PathInfo};
use crate::store::{StorePath, nix32};

/// Reads `dir/store-paths` and `dir/registration`, checking that they agree and are closed under references.
pub fn read(dir: &Path) -> Result<BTreeMap<StorePath, PathInfo>> {
    let paths_file = dir.join("store-paths");
    let reg_file = dir.join("registration");
    let listed = std::fs::read_to_string(&paths_file)
        .with_context(|| format!("reading closure-info {}", paths_file.display()))?;
    let mut store_paths = BTreeSet::new();
    for (n, line) in listed.lines().enumerate() {
        let sp = parse_path(line, &paths_file, n + 1)?;
        store_paths.insert(sp);
    }
    let text =
        std::fs::read_to_string(&reg_file).with_context(|| format!("reading closure-info {}", reg_file.display()))?;
    let infos = parse_registration(&text, &reg_file)?;
    if let Some(missing) = store_paths.iter().find(|p| !infos.contains_key(*p)) {
        bail!("{}: {missing} is listed in store-paths but has no registration record", reg_file.display());
    }
    if let Some(extra) = infos.keys().find(|p| !store_paths.contains(*p)) {
        bail!("{}: {extra} has a registration record but is not in store-paths", paths_file.display());
    }
    for (path, info) in &infos {
        if let Some(outside) = info.references.iter().find(|r| !infos.contains_key(*r)) {
            bail!(
                "{}: {path} references {outside}, which is outside the closure (not in registration)",
                reg_file.display()
            );
        }
    }
    Ok(infos)
}

fn parse_path(line: &str, file: &Path, line_no: usize) -> Result<StorePath> {
    let (sp, rest) = StorePath::parse_logical(Path::new(line))
        .map_err(|e| anyhow::anyhow!("{} line {line_no}: {e}", file.display()))?;
    if !rest.as_os_str().is_empty() {
        bail!("{} line {line_no}: {line} is inside a store path, not a store path", file.display());
    }
    Ok(sp)
}

/// Parses registration records: path, `sha256:<nix32 or base16>` NAR hash, NAR size, deriver (may be empty),
/// reference count, then that many references.
pub fn parse_registration(text: &str, file: &Path) -> Result<BTreeMap<StorePath, PathInfo>> {
    if !text.is_empty() && !text.ends_with('\n') {
        bail!("{}: truncated (the last line has no newline)", file.display());
    }
    let mut lines = text.lines().enumerate().map(|(n, l)| (n + 1, l));
    let mut next = |what: &str, path: Option<&StorePath>| -> Result<(usize, &str)> {
        lines.next().ok_or_else(|| {
            let whose = path.map(|p| format!(" of {p}")).unwrap_or_default();
            anyhow::anyhow!("{}: truncated: expected {what}{whose}, found end of file", file.display())
        })
    };
    let mut out = BTreeMap::new();
    loop {
        let Ok((n, line)) = next("a store path", None) else { break };
        let path = parse_path(line, file, n)?;
        let (n, hash) = next("a NAR hash", Some(&path))?;
        let hash = parse_hash(hash)
            .map_err(|why| anyhow::anyhow!("{} line {n}: NAR hash of {path}: {why}, found {hash:?}", file.display()))?;
        let (n, size) = next("a NAR size", Some(&path))?;
        let size: u64 = size.parse().map_err(|_| {
            anyhow::anyhow!(
                "{} line {n}: NAR size of {path}: expected a decimal number, found {size:?}",
                file.display()
            )
        })?;
        let (n, deriver) = next("a deriver line", Some(&path))?;
        let deriver = if deriver.is_empty() { None } else { Some(parse_path(deriver, file, n)?) };
        let (n, count) = next("a reference count", Some(&path))?;
        let count: usize = count.parse().map_err(|_| {
            anyhow::anyhow!(
                "{} line {n}: reference count of {path}: expected a decimal number, found {count:?}",
                file.display()
            )
        })?;
        let mut references = BTreeSet::new();
        for i in 0..count {
            let (n, r) = next(&format!("reference {} of {count}", i + 1), Some(&path))?;
            references.insert(parse_path(r, file, n)?);
        }
        let info = PathInfo { references, nar: Some(NarInfo { hash, size }), deriver };
        if out.insert(path.clone(), info).is_some() {
            bail!("{} line {n}: {path} is registered twice", file.display());
        }
    }
    Ok(out)
}

/// Parses `sha256:<52 nix32 chars>` or `sha256:<64 hex chars>`.
pub fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let Some(digest) = text.strip_prefix("sha256:") else {
        return Err("expected sha256:<hash>".into());
    };
    match digest.len() {
        52 => nix32::decode::<32>(digest).map_err(|e| e.to_string()),
        64 => {
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16)
                    .map_err(|_| "invalid base16 digest".to_owned())?;
            }
            Ok(out)
        }
        n => Err(format!("digest has {n} characters, expected 52 (nix32) or 64 (base16)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a";
    const B: &str = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-b";
    const H: &str = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn parses_records() {
        let text = format!("{A}\n{H}\n120\n\n2\n{A}\n{B}\n{B}\n{H}\n96\n\n0\n");
        let infos = parse_registration(&text, Path::new("reg")).unwrap();
        assert_eq!(infos.len(), 2);
        let a = &infos[&StorePath::parse_logical(Path::new(A)).unwrap().0];
        assert_eq!(a.references.len(), 2);
        assert_eq!(a.nar.as_ref().unwrap().size, 120);
        assert_eq!(parse_registration("", Path::new("reg")).unwrap().len(), 0);
    }

    #[test]
    fn rejects_malformed_records() {
        struct Case {
            name: &'static str,
            text: String,
            want: &'static str,
        }
        let cases = [
            Case {
                name: "truncated mid record",
                text: format!("{A}\n{H}\n"),
                want: "truncated: expected a NAR size of",
            },
            Case {
                name: "missing reference",
                text: format!("{A}\n{H}\n1\n\n2\n{A}\n"),
                want: "expected reference 2 of 2",
            },
            Case { name: "no final newline", text: format!("{A}\n{H}\n1\n\n0"), want: "truncated (the last line" },
            Case { name: "bad hash", text: format!("{A}\nmd5:abc\n1\n\n0\n"), want: "line 2: NAR hash" },
            Case { name: "bad size", text: format!("{A}\n{H}\nbig\n\n0\n"), want: "line 3: NAR size" },
            Case { name: "bad count", text: format!("{A}\n{H}\n1\n\nx\n"), want: "line 5: reference count" },
            Case { name: "bad path", text: format!("/tmp/x\n{H}\n1\n\n0\n"), want: "line 1: /tmp/x: not a store path" },
            Case { name: "duplicate", text: format!("{A}\n{H}\n1\n\n0\n{A}\n{H}\n1\n\n0\n"), want: "registered twice" },
        ];
        for case in cases {
            let err = parse_registration(&case.text, Path::new("/ci/registration")).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(case.want) && msg.contains("/ci/registration"), "{}: {msg}", case.name);
        }
    }

    #[test]
    fn parses_both_hash_encodings() {
        let nix32 = parse_hash(H).unwrap();
        let hex = parse_hash("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        assert_eq!(nix32, hex);
        assert!(parse_hash("sha256:abc").is_err());
    }
}
