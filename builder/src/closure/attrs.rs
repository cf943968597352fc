//! The closure as Nix hands it to a derivation's builder: with `__structuredAttrs`, every name of
//! `exportReferencesGraph` becomes a list in the structured-attrs file (`$NIX_ATTRS_JSON_FILE`, or `.attrs.json`
//! in the build directory), one object per store path of the named paths' closure:
//!
//! ```json
//! { "closure": [ { "path": "/nix/store/…-top", "narHash": "sha256:…", "narSize": 160,
//!                  "references": [ "/nix/store/…-dep" ], "closureSize": 280 }, … ],
//!   "exportReferencesGraph": { "closure": [ "/nix/store/…-top" ] } }
//! ```
//!
//! Nix 2.8 writes `narHash` as `sha256:<nix32>`; newer releases may write an SRI hash (`sha256-<base64>`); both
//! are read. Fields kiln does not need (`closureSize`, `deriver`, signatures) are ignored.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{NarInfo, PathInfo, closure_info::parse_hash};
use crate::store::StorePath;

/// Reads every graph `exportReferencesGraph` names in the structured-attrs file `file`: their union, checked to be
/// closed under references.
///
/// # Errors
/// A file that is not JSON, has no `exportReferencesGraph`, or whose graph lacks a field or names a path outside
/// it; each error names the file and the graph entry.
pub fn read(file: &Path) -> Result<BTreeMap<StorePath, PathInfo>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the structured-attrs file {}", file.display()))?;
    parse(&text, file)
}

/// [`read`] on the file's text.
///
/// # Errors
/// As [`read`].
pub fn parse(text: &str, file: &Path) -> Result<BTreeMap<StorePath, PathInfo>> {
    let shown = file.display();
    let attrs: Value = serde_json::from_str(text).with_context(|| format!("{shown}: not valid JSON"))?;
    let Some(graphs) = attrs.get("exportReferencesGraph").and_then(Value::as_object) else {
        bail!(
            "{shown}: no exportReferencesGraph: the derivation must set `exportReferencesGraph.<name> = [ toplevel ]` \
             with `__structuredAttrs = true`"
        );
    };
    if graphs.is_empty() {
        bail!("{shown}: exportReferencesGraph names no graph");
    }
    let mut out = BTreeMap::new();
    for name in graphs.keys() {
        let Some(entries) = attrs.get(name).and_then(Value::as_array) else {
            bail!("{shown}: exportReferencesGraph names {name:?}, but the file has no list {name:?} (Nix writes one)");
        };
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("{shown}: {name}[{i}]");
            let (path, info) = entry_of(entry).with_context(|| at.clone())?;
            if let Some(old) = out.get(&path)
                && *old != info
            {
                bail!("{at}: {path} appears in two graphs with different references or hashes");
            }
            out.insert(path, info);
        }
    }
    for (path, info) in &out {
        if let Some(outside) = info.references.iter().find(|r| !out.contains_key(*r)) {
            bail!("{shown}: {path} references {outside}, which is in no graph of the file (not a closure)");
        }
    }
    Ok(out)
}

/// One graph entry: its store path and what is registered for it.
fn entry_of(entry: &Value) -> Result<(StorePath, PathInfo)> {
    let field = |name: &str| entry.get(name).ok_or_else(|| anyhow::anyhow!("no {name:?} field"));
    let store_path = |v: &Value, what: &str| -> Result<StorePath> {
        let s = v.as_str().ok_or_else(|| anyhow::anyhow!("{what} is not a string: {v}"))?;
        let (sp, rest) = StorePath::parse_logical(Path::new(s)).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        if !rest.as_os_str().is_empty() {
            bail!("{what} {s} is inside a store path, not a store path");
        }
        Ok(sp)
    };
    let path = store_path(field("path")?, "path")?;
    let hash = field("narHash")?;
    let hash = hash.as_str().ok_or_else(|| anyhow::anyhow!("narHash of {path} is not a string: {hash}"))?;
    let hash = parse_any_hash(hash).map_err(|why| anyhow::anyhow!("narHash of {path}: {why}, found {hash:?}"))?;
    let size = field("narSize")?;
    let size = size.as_u64().ok_or_else(|| anyhow::anyhow!("narSize of {path} is not a whole number: {size}"))?;
    let refs = field("references")?;
    let refs = refs.as_array().ok_or_else(|| anyhow::anyhow!("references of {path} is not a list: {refs}"))?;
    let references = refs
        .iter()
        .enumerate()
        .map(|(i, r)| store_path(r, &format!("references[{i}] of {path}")))
        .collect::<Result<_>>()?;
    let deriver = match entry.get("deriver") {
        Some(Value::String(d)) if !d.is_empty() => Some(store_path(&Value::String(d.clone()), "deriver")?),
        _ => None,
    };
    Ok((path, PathInfo { references, nar: Some(NarInfo { hash, size }), deriver }))
}

/// A SHA-256 as Nix prints it: `sha256:<nix32 or base16>`, or SRI `sha256-<base64>`.
fn parse_any_hash(text: &str) -> Result<[u8; 32], String> {
    match text.strip_prefix("sha256-") {
        Some(b64) => base64_32(b64),
        None => parse_hash(text),
    }
}

/// Decodes the 44-character, padded standard base64 of 32 bytes.
fn base64_32(s: &str) -> Result<[u8; 32], String> {
    const BAD: &str = "invalid SRI base64 digest";
    let s = s.as_bytes();
    if s.len() != 44 || s[43] != b'=' || s[42] == b'=' {
        return Err(format!("SRI digest has {} characters, expected 44 (32 bytes, padded)", s.len()));
    }
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(BAD.to_owned()),
        }
        .into())
    };
    // 43 symbols carry 258 bits: 32 bytes and two zero bits.
    let mut bits: u64 = 0;
    let mut held = 0;
    let mut out = [0u8; 32];
    let mut n = 0;
    for &c in &s[..43] {
        bits = (bits << 6) | u64::from(value(c)?);
        held += 6;
        if held >= 8 {
            held -= 8;
            out[n] = (bits >> held) as u8;
            n += 1;
            bits &= (1 << held) - 1;
        }
    }
    if bits != 0 {
        return Err(BAD.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "/nix/store/a9j0raxbia3akh5g8vcnqi2npmvz2v93-top";
    const DEP: &str = "/nix/store/dqh9lqb3abv90ziv5mf2hxrbvf2ibihw-dep";
    // What Nix 2.8 wrote for a two-path closure (`nix-build` of a probe derivation).
    const NIX28: &str = r#"{
        "closure": [
            { "closureSize": 280, "narHash": "sha256:0jhgxrl38wfj801ik5d7xhris8ri658mzvbgp2pykza7dd67snjb",
              "narSize": 160, "path": "/nix/store/a9j0raxbia3akh5g8vcnqi2npmvz2v93-top",
              "references": [ "/nix/store/dqh9lqb3abv90ziv5mf2hxrbvf2ibihw-dep" ] },
            { "closureSize": 120, "narHash": "sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h",
              "narSize": 120, "path": "/nix/store/dqh9lqb3abv90ziv5mf2hxrbvf2ibihw-dep", "references": [] }
        ],
        "exportReferencesGraph": { "closure": [ "/nix/store/a9j0raxbia3akh5g8vcnqi2npmvz2v93-top" ] },
        "outputs": { "out": "/nix/store/4ir22vw65dq7vj9gzyk1y5bq368znmnc-attrs-probe" }
    }"#;

    fn sp(s: &str) -> StorePath {
        StorePath::parse_logical(Path::new(s)).unwrap().0
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, Path::new("/build/.attrs.json")).unwrap_err())
    }

    #[test]
    fn reads_what_nix_writes() {
        let g = parse(NIX28, Path::new(".attrs.json")).unwrap();
        assert_eq!(g.len(), 2);
        let top = &g[&sp(TOP)];
        assert_eq!(top.references.iter().collect::<Vec<_>>(), [&sp(DEP)]);
        assert_eq!(top.nar.unwrap().size, 160);
        assert_eq!(
            top.nar.unwrap().hash,
            parse_hash("sha256:0jhgxrl38wfj801ik5d7xhris8ri658mzvbgp2pykza7dd67snjb").unwrap()
        );
        assert_eq!(top.deriver, None);
    }

    #[test]
    fn reads_sri_hashes() {
        let nix32 = parse_hash("sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h").unwrap();
        // The same digest in SRI form (`nix hash to-sri`).
        let b64 = {
            const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut s = String::new();
            for chunk in nix32.chunks(3) {
                let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for k in 0..=chunk.len() {
                    s.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
                }
            }
            s + "="
        };
        assert_eq!(parse_any_hash(&format!("sha256-{b64}")).unwrap(), nix32);
        assert!(parse_any_hash("sha256-abc=").unwrap_err().contains("44"));
        assert!(parse_any_hash(&format!("sha256-{}", "!".repeat(43) + "=")).unwrap_err().contains("base64"));
    }

    #[test]
    fn refuses_what_is_not_a_closure() {
        assert!(err("{").contains("/build/.attrs.json: not valid JSON"), "{}", err("{"));
        assert!(err("{}").contains("no exportReferencesGraph"), "{}", err("{}"));
        let no_list = r#"{"exportReferencesGraph": {"closure": []}}"#;
        assert!(err(no_list).contains("has no list \"closure\""), "{}", err(no_list));
        let no_path = NIX28.replace(r#""path": "/nix/store/dqh9lqb3abv90ziv5mf2hxrbvf2ibihw-dep", "#, "");
        assert!(err(&no_path).contains("closure[1]: no \"path\" field"), "{}", err(&no_path));
        let dangling = NIX28
            .replace(r#", "references": []"#, r#", "references": ["/nix/store/0000000000000000000000000000000a-x"]"#);
        assert!(err(&dangling).contains("which is in no graph"), "{}", err(&dangling));
        let bad_hash = NIX28.replace("sha256:0jhg", "md5:0jhg");
        assert!(err(&bad_hash).contains("closure[0]: narHash of"), "{}", err(&bad_hash));
        let bad_path = NIX28.replace(
            "a9j0raxbia3akh5g8vcnqi2npmvz2v93-top\",\n              \"references",
            "x\",\n              \"references",
        );
        assert_ne!(bad_path, NIX28);
        assert!(err(&bad_path).contains("closure[0]: path"), "{}", err(&bad_path));
    }
}
