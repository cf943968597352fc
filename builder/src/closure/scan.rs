//! Finding references by scanning contents, as Nix does: a store path refers to every store path whose
//! 32-character hash part appears in its files, symlink targets or file names.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::inventory::{Kind, PathInventory};
use crate::store::{HASH_LEN, StoreDir, StorePath, nix32};

/// The store paths a scan may find: every valid store path name in the store directory, by hash part.
#[derive(Debug)]
pub struct Candidates {
    by_hash: HashMap<Box<[u8]>, StorePath>,
}

impl Candidates {
    /// Lists the store directory.
    pub fn list(store: &StoreDir) -> Result<Self> {
        let mut by_hash = HashMap::new();
        let rd = std::fs::read_dir(store.root())
            .with_context(|| format!("listing store directory {}", store.root().display()))?;
        for entry in rd {
            let entry = entry.with_context(|| format!("listing store directory {}", store.root().display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            // `.links`, lock files, `.drv` files and anything else not a store path name are not candidates.
            if let Ok(sp) = StorePath::from_base_name(&name) {
                by_hash.insert(sp.hash_part().as_bytes().into(), sp);
            }
        }
        Ok(Self { by_hash })
    }

    /// Scans `chunk`, which continues a byte stream whose trailing run of nix32 digits (at most 31 of them)
    /// is in `carry`; leaves the new trailing run in `carry`.
    fn find_in(&self, carry: &mut Vec<u8>, chunk: &[u8], found: &mut BTreeSet<StorePath>) {
        let mut run = carry.len();
        for (i, &b) in chunk.iter().enumerate() {
            if !nix32::is_digit(b) {
                run = 0;
                continue;
            }
            run += 1;
            if run < HASH_LEN {
                continue;
            }
            let end = i + 1;
            let hit = if end >= HASH_LEN {
                self.by_hash.get(&chunk[end - HASH_LEN..end])
            } else {
                let mut key = [0u8; HASH_LEN];
                let from_carry = HASH_LEN - end;
                key[..from_carry].copy_from_slice(&carry[carry.len() - from_carry..]);
                key[from_carry..].copy_from_slice(&chunk[..end]);
                self.by_hash.get(&key[..])
            };
            if let Some(sp) = hit {
                found.insert(sp.clone());
            }
        }
        let keep = run.min(HASH_LEN - 1);
        if keep <= chunk.len() {
            carry.clear();
            carry.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            let old = carry.len();
            carry.drain(..old - (keep - chunk.len()));
            carry.extend_from_slice(chunk);
        }
    }

    /// Scans one byte string (a name, a symlink target) on its own.
    fn scan_bytes(&self, bytes: &[u8], found: &mut BTreeSet<StorePath>) {
        self.find_in(&mut Vec::new(), bytes, found);
    }

    /// The references of one store path (including itself, if its hash appears in it). Files are read in
    /// parallel.
    pub fn references(&self, store: &StoreDir, inv: &PathInventory) -> Result<BTreeSet<StorePath>> {
        let root = store.physical(&inv.path);
        let per_entry = inv
            .entries
            .par_iter()
            .map(|e| -> Result<BTreeSet<StorePath>> {
                let mut found = BTreeSet::new();
                self.scan_bytes(e.rel.as_os_str().as_bytes(), &mut found);
                match &e.kind {
                    Kind::Symlink { target } => self.scan_bytes(target.as_os_str().as_bytes(), &mut found),
                    Kind::File { size, .. } if *size > 0 => {
                        let path = if e.rel.as_os_str().is_empty() { root.clone() } else { root.join(&e.rel) };
                        let mut file =
                            std::fs::File::open(&path).with_context(|| format!("{}: cannot read", path.display()))?;
                        let mut buf = vec![0u8; 1 << 18];
                        let mut carry = Vec::with_capacity(HASH_LEN);
                        loop {
                            let n = file.read(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
                            if n == 0 {
                                break;
                            }
                            self.find_in(&mut carry, &buf[..n], &mut found);
                        }
                    }
                    _ => {}
                }
                Ok(found)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(per_entry.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hashes_across_reads_and_in_links_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = "0123456789abcdfghijklmnpqrsvwxyz-a";
        let b = "1123456789abcdfghijklmnpqrsvwxyz-b";
        let c = "2123456789abcdfghijklmnpqrsvwxyz-c";
        let d = "3123456789abcdfghijklmnpqrsvwxyz-d";
        let e = "4123456789abcdfghijklmnpqrsvwxyz-e";
        for p in [a, b, c, d, e] {
            std::fs::create_dir(dir.path().join(p)).unwrap();
        }
        let pa = dir.path().join(a);
        // b's hash straddles the 256 KiB read boundary; c is in a symlink; d in a file name; a mentions itself.
        let mut big = vec![b'.'; (1 << 18) - 10];
        big.extend_from_slice(format!("/nix/store/{b}/bin and /nix/store/{a}").as_bytes());
        std::fs::write(pa.join("big"), &big).unwrap();
        std::os::unix::fs::symlink(format!("/nix/store/{c}/lib"), pa.join("link")).unwrap();
        std::fs::write(pa.join(format!("{}.conf", &d[..32])), "").unwrap();
        // A 31-char prefix of e's hash is not a reference.
        std::fs::write(pa.join("near"), &e[..31]).unwrap();
        // Chunk boundaries: every split of a hash across two chunks is found.
        let cands_for_split = {
            let store = StoreDir::new(dir.path()).unwrap();
            Candidates::list(&store).unwrap()
        };
        for split in 0..=HASH_LEN + 2 {
            let text = format!("xx{}yy", &e[..32]);
            let (l, r) = text.as_bytes().split_at(split.min(text.len()));
            let (mut carry, mut found) = (Vec::new(), BTreeSet::new());
            cands_for_split.find_in(&mut carry, l, &mut found);
            cands_for_split.find_in(&mut carry, r, &mut found);
            assert_eq!(found.len(), 1, "split at {split}");
        }
        let store = StoreDir::new(dir.path()).unwrap();
        let cands = Candidates::list(&store).unwrap();
        let inv = PathInventory::walk(&store, &StorePath::from_base_name(a).unwrap()).unwrap();
        let refs: Vec<String> = cands.references(&store, &inv).unwrap().iter().map(|p| p.name().to_owned()).collect();
        assert_eq!(refs, ["a", "b", "c", "d"]);
    }
}
