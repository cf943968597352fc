//! Identical files as `nix-store --optimise` sees them: regular files with the same NAR serialisation, i.e. the
//! same contents and executable bit. `kiln build` makes each such set one inode (at most [`EXT4_LINK_MAX`]
//! names each); this finds them independently of kiln, for the checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// ext4's most names per inode (`EXT4_LINK_MAX` in the kernel).
pub const EXT4_LINK_MAX: usize = 65_000;

/// What makes two regular files identical: size, executable bit and sha256 of the contents.
pub type ContentKey = (u64, bool, [u8; 32]);

/// One regular file: its host path, size and executable (owner-x) bit.
#[derive(Debug, Clone)]
pub struct File {
    pub path: PathBuf,
    pub size: u64,
    pub executable: bool,
}

/// The content key of each of `files` that shares its size and executable bit with another (only those are
/// read); `None` for the others, which are identical to nothing.
pub fn content_keys(files: &[File]) -> Result<Vec<Option<ContentKey>>, String> {
    let mut shared: HashMap<(u64, bool), usize> = HashMap::new();
    for f in files {
        *shared.entry((f.size, f.executable)).or_default() += 1;
    }
    files
        .iter()
        .map(|f| {
            if shared[&(f.size, f.executable)] < 2 {
                return Ok(None);
            }
            let mut file = std::fs::File::open(&f.path).map_err(|e| format!("opening {}: {e}", f.path.display()))?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|e| format!("reading {}: {e}", f.path.display()))?;
            Ok(Some((f.size, f.executable, hasher.finalize().into())))
        })
        .collect()
}

/// (groups, extra names): the inodes of more than one name and the names beyond the first of each, when every
/// set of files with equal keys is linked, at most [`EXT4_LINK_MAX`] names per inode.
pub fn link_counts(keys: &[Option<ContentKey>]) -> (u64, u64) {
    let mut sets: HashMap<&ContentKey, usize> = HashMap::new();
    for key in keys.iter().flatten() {
        *sets.entry(key).or_default() += 1;
    }
    let (mut groups, mut extra) = (0, 0);
    for mut n in sets.into_values() {
        while n > 1 {
            let run = n.min(EXT4_LINK_MAX);
            groups += 1;
            extra += run as u64 - 1;
            n -= run;
        }
    }
    (groups, extra)
}

/// Every regular file under `root` (itself included when it is one), symlinks not followed.
pub fn regular_files(root: &Path) -> Result<Vec<File>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).map_err(|e| format!("lstat {}: {e}", path.display()))?;
        if md.is_dir() {
            let read = std::fs::read_dir(&path).map_err(|e| format!("reading directory {}: {e}", path.display()))?;
            for item in read {
                stack.push(item.map_err(|e| format!("reading directory {}: {e}", path.display()))?.path());
            }
        } else if md.is_file() {
            out.push(File { path, size: md.len(), executable: md.permissions().mode() & 0o100 != 0 });
        }
    }
    Ok(out)
}
