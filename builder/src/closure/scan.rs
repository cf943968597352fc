//! Finding references by scanning contents, as Nix does: a store path refers to every store path whose
//! 32-character hash part appears in its files, symlink targets or file names.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};
use kiln_formats::sparse::DataRanges;
use rayon::prelude::*;

use crate::inventory::{Kind, PathInventory};
use crate::store::{HASH_LEN, StoreDir, StoreFiles, StorePath, nix32};

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

    /// Finds every candidate hash in `s`. Like Nix's scanner: test the last byte of a 32-byte window first and
    /// jump past any byte outside the alphabet, so most input is skipped 32 bytes at a time.
    fn find_in(&self, s: &[u8], found: &mut BTreeSet<StorePath>) {
        let mut i = 0;
        'windows: while i + HASH_LEN <= s.len() {
            for j in (0..HASH_LEN).rev() {
                if !nix32::is_digit(s[i + j]) {
                    i += j + 1;
                    continue 'windows;
                }
            }
            if let Some(sp) = self.by_hash.get(&s[i..i + HASH_LEN]) {
                found.insert(sp.clone());
            }
            i += 1;
        }
    }

    /// Scans a file's data ranges (holes are zeros, which hold no hash). Each read lands after the last
    /// `HASH_LEN - 1` bytes of the previous one, so a hash split across reads is still seen whole.
    fn scan_file(
        &self,
        file: &std::fs::File,
        path: &std::path::Path,
        size: u64,
        sparse: bool,
        found: &mut BTreeSet<StorePath>,
    ) -> Result<()> {
        const READ: usize = 1 << 18;
        const KEEP: usize = HASH_LEN - 1;
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let cannot = || format!("{}: cannot read", path.display());
        let ranges: Vec<std::ops::Range<u64>> = if sparse {
            DataRanges::new(file).with_context(cannot)?.collect::<std::io::Result<_>>().with_context(cannot)?
        } else {
            std::iter::once(0..size).collect()
        };
        BUF.with_borrow_mut(|buf| -> Result<()> {
            buf.resize(KEEP + READ, 0);
            for range in ranges {
                let (mut pos, mut kept) = (range.start, 0);
                while pos < range.end {
                    let want = READ.min(usize::try_from(range.end - pos).unwrap_or(READ));
                    let n = file.read_at(&mut buf[KEEP..KEEP + want], pos).with_context(cannot)?;
                    if n == 0 {
                        break; // The file shrank; the build's own checks catch that later.
                    }
                    self.find_in(&buf[KEEP - kept..KEEP + n], found);
                    kept = KEEP.min(kept + n);
                    buf.copy_within(KEEP + n - kept..KEEP + n, KEEP - kept);
                    pos += n as u64;
                }
            }
            Ok(())
        })
    }

    /// Scans one byte string (a name, a symlink target) on its own.
    fn scan_bytes(&self, bytes: &[u8], found: &mut BTreeSet<StorePath>) {
        self.find_in(bytes, found);
    }

    /// The references of one store path (including itself, if its hash appears in it). Files are read in
    /// parallel.
    pub fn references(&self, store: &StoreDir, inv: &PathInventory) -> Result<BTreeSet<StorePath>> {
        let root = store.physical(&inv.path);
        let files = StoreFiles::new(&root)?;
        let per_entry = inv
            .entries
            .par_iter()
            .map(|e| -> Result<BTreeSet<StorePath>> {
                let mut found = BTreeSet::new();
                self.scan_bytes(e.rel.as_os_str().as_bytes(), &mut found);
                match &e.kind {
                    Kind::Symlink { target } => self.scan_bytes(target.as_os_str().as_bytes(), &mut found),
                    Kind::File { size, sparse, .. } if *size > 0 => {
                        let path = crate::store::entry_path(&root, &e.rel);
                        let file = files.open(&e.rel).with_context(|| format!("{}: cannot read", path.display()))?;
                        self.scan_file(&file, &path, *size, *sparse, &mut found)?;
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
        // A hash right after a hole, and one straddling two reads of a sparse file.
        let sparse = std::fs::File::create(pa.join("sparse")).unwrap();
        sparse.write_all_at(e.as_bytes(), (8 << 20) + (1 << 18) - 5).unwrap();
        sparse.set_len(16 << 20).unwrap();
        let store = StoreDir::new(dir.path()).unwrap();
        let cands = Candidates::list(&store).unwrap();
        let inv = PathInventory::walk(&store, &StorePath::from_base_name(a).unwrap()).unwrap();
        let refs: Vec<String> = cands.references(&store, &inv).unwrap().iter().map(|p| p.name().to_owned()).collect();
        assert_eq!(refs, ["a", "b", "c", "d", "e"]);
    }
}
