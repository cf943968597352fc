//! The verified store of an `efi-verity` image: the hash partition's tree against the store partition's data,
//! block by block, and against the root hash every boot entry gives the kernel (`usrhash=`); the two partitions'
//! GUIDs against the root hash's halves (how systemd finds them).

use anyhow::Result;
use kiln_formats::disk::Guid;
use kiln_formats::verity::{self, Verity};

use super::{Problem, ProblemKind};
use crate::readback::{Disk, Partition};

/// The store and hash partitions, and the command lines of the boot entries: (where, command line).
pub(crate) struct Store<'a> {
    pub disk: &'a Disk,
    pub data: &'a Partition,
    pub hash: &'a Partition,
    pub command_lines: &'a [(String, String)],
}

/// Checks the store's hash tree; returns what was checked.
pub(crate) fn check(s: &Store<'_>, problems: &mut Vec<Problem>) -> Result<Option<String>> {
    let mut problem = |subject: String, detail: String| {
        problems.push(Problem { kind: ProblemKind::Verity, subject, detail });
    };
    let (data_name, hash_name) = (s.data.to_string(), s.hash.to_string());
    let hashes = s.disk.window(s.hash.range);
    let mut sb = [0u8; verity::SUPERBLOCK];
    hashes.read("the verity superblock", kiln_formats::disk::Bytes(0), &mut sb)?;
    let tree = match Verity::from_superblock(&sb) {
        Ok(v) => v,
        Err(e) => {
            problem(hash_name, format!("no hash tree kiln can check: {e}"));
            return Ok(None);
        }
    };
    // A partition shorter than the superblock says is a clear error, not a failed read somewhere in the tree.
    let (have_hash, have_data) = (s.hash.range.len().get(), s.data.range.len().get());
    let need_data = tree.data_blocks * verity::BLOCK;
    if have_hash < tree.hash_bytes() {
        problem(
            hash_name,
            format!(
                "holds {have_hash} bytes, but its superblock's tree of {} data blocks needs {}: truncated",
                tree.data_blocks,
                tree.hash_bytes()
            ),
        );
        return Ok(None);
    }
    if have_data < need_data {
        problem(
            data_name,
            format!("holds {have_data} bytes, but the hash tree on {hash_name} covers {need_data}: truncated"),
        );
        return Ok(None);
    }
    let mut roots: Vec<(String, String)> = Vec::new();
    for (subject, line) in s.command_lines {
        match line.split(' ').find_map(|p| p.strip_prefix("usrhash=")) {
            Some(h) => roots.push((subject.clone(), h.to_owned())),
            None => {
                problem(subject.clone(), "its command line has no usrhash=: the store would not be verified".into())
            }
        }
    }
    let Some((_, root_hex)) = roots.first().cloned() else {
        problem(hash_name, "no boot entry gives the root hash (usrhash=)".into());
        return Ok(None);
    };
    for (subject, h) in &roots[1..] {
        if *h != root_hex {
            problem(subject.clone(), format!("usrhash={h}, but another entry says usrhash={root_hex}"));
        }
    }
    let Some(root) = parse_hex32(&root_hex) else {
        problem(roots[0].0.clone(), format!("usrhash={root_hex} is not 64 hex digits"));
        return Ok(None);
    };
    for (part, half, which) in [(s.data, &root[..16], "first"), (s.hash, &root[16..], "last")] {
        let want = Guid::from_bytes(half.try_into().expect("16 bytes"));
        if part.guid != Some(want) {
            problem(
                part.to_string(),
                format!(
                    "partition GUID {} is not the {which} 128 bits of the root hash ({want}): systemd would not find it",
                    part.guid.map_or_else(|| "none".into(), |g| g.to_string())
                ),
            );
        }
    }
    let data = s.disk.window(s.data.range);
    let read_data = |buf: &mut [u8], at: u64| {
        data.read("the store partition", kiln_formats::disk::Bytes(at), buf).map_err(std::io::Error::other)
    };
    let read_hash = |buf: &mut [u8], at: u64| {
        hashes.read("the verity hash partition", kiln_formats::disk::Bytes(at), buf).map_err(std::io::Error::other)
    };
    match tree.check(&read_data, &read_hash, &root) {
        Ok(()) => Ok(Some(format!(
            "dm-verity: {} data blocks of {data_name} match the tree on {hash_name} and root hash {root_hex}",
            tree.data_blocks
        ))),
        Err(e @ verity::Error::DataMismatch { .. }) => {
            problem(data_name, format!("{e}: the kernel refuses to read it"));
            Ok(None)
        }
        Err(e @ verity::Error::HashMismatch { .. }) => {
            problem(
                hash_name,
                format!("{e}: the tree does not lead to the root hash {root_hex} the boot entries give"),
            );
            Ok(None)
        }
        Err(e) => {
            problem(data_name, format!("cannot be checked: {e}"));
            Ok(None)
        }
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
