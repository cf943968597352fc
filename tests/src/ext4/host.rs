//! The host side of a comparison: walking the source tree and streaming file bytes, skipping holes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;

/// Bytes compared at a time.
const CHUNK: usize = 1 << 20;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// The kind of a directory entry, from the file type bits of a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    /// Device, FIFO or socket: the file type bits.
    Other(u32),
}

impl Kind {
    pub(super) fn from_mode(mode: u32) -> Kind {
        match mode & 0o170000 {
            0o100000 => Kind::File,
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            other => Kind::Other(other),
        }
    }

    pub(super) fn name(self) -> String {
        match self {
            Kind::File => "regular file".into(),
            Kind::Dir => "directory".into(),
            Kind::Symlink => "symlink".into(),
            Kind::Other(0o010000) => "FIFO".into(),
            Kind::Other(0o020000) => "character device".into(),
            Kind::Other(0o060000) => "block device".into(),
            Kind::Other(0o140000) => "socket".into(),
            Kind::Other(bits) => format!("file type {bits:o}"),
        }
    }
}

/// One entry of the host tree, as `lstat` sees it.
#[derive(Debug, Clone)]
pub(super) struct HostEntry {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    /// (st_dev, st_ino): equal for hard links.
    pub id: (u64, u64),
    /// Symlink target bytes.
    pub target: Option<Vec<u8>>,
}

/// Every entry under `source` (not `source` itself), keyed by its path relative to `source` with `/`
/// between components. Symlinks are not followed.
pub(super) fn walk(source: &Path) -> Result<BTreeMap<Vec<u8>, HostEntry>, String> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let dir = join_host(source, &rel);
        let read = std::fs::read_dir(&dir).map_err(|e| format!("reading directory {}: {e}", dir.display()))?;
        for item in read {
            let item = item.map_err(|e| format!("reading directory {}: {e}", dir.display()))?;
            let child = join_rel(&rel, item.file_name().as_bytes());
            let path = item.path();
            let md = std::fs::symlink_metadata(&path).map_err(|e| format!("lstat {}: {e}", path.display()))?;
            let kind = Kind::from_mode(md.mode());
            let target = match kind {
                Kind::Symlink => Some(
                    std::fs::read_link(&path)
                        .map_err(|e| format!("readlink {}: {e}", path.display()))?
                        .into_os_string()
                        .into_vec(),
                ),
                _ => None,
            };
            if kind == Kind::Dir {
                stack.push(child.clone());
            }
            let entry = HostEntry {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                size: md.size(),
                id: (md.dev(), md.ino()),
                target,
            };
            entries.insert(child, entry);
        }
    }
    Ok(entries)
}

/// `parent/name`, or `name` at the top.
pub(super) fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = parent.to_vec();
    if !rel.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}

/// The host path of `rel` under `source`.
pub(super) fn join_host(source: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() { source.to_path_buf() } else { source.join(std::ffi::OsStr::from_bytes(rel)) }
}

/// Compares `len` bytes read from `image` with the host file at `host`. Returns `Ok(None)` when equal,
/// `Ok(Some(difference))` when not, `Err` when either side cannot be read.
///
/// Reads in 1 MiB chunks; a chunk that lies in a hole of the host file (`SEEK_DATA`) is compared with
/// zeros without reading the host, so a 5 GiB sparse file costs only the image side's reading.
pub(super) fn compare_content(host: &Path, image: &mut dyn Read, len: u64) -> Result<Option<String>, String> {
    let file = File::open(host).map_err(|e| format!("opening {}: {e}", host.display()))?;
    let mut image_buf = vec![0u8; CHUNK];
    let mut host_buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let n = usize::try_from((len - pos).min(CHUNK as u64)).expect("chunk fits usize");
        let got = read_full(image, &mut image_buf[..n]).map_err(|e| format!("reading the image at byte {pos}: {e}"))?;
        if got < n {
            return Ok(Some(format!("the image gives only {} of {len} bytes", pos + got as u64)));
        }
        let image_chunk = &image_buf[..n];
        let host_chunk: &[u8] = if host_hole(&file, pos, n as u64) {
            &ZEROS[..n]
        } else {
            file.read_exact_at(&mut host_buf[..n], pos).map_err(|e| format!("reading {}: {e}", host.display()))?;
            &host_buf[..n]
        };
        if image_chunk != host_chunk {
            let i = image_chunk.iter().zip(host_chunk).position(|(a, b)| a != b).expect("chunks differ");
            return Ok(Some(format!(
                "content differs at byte {}: image 0x{:02x}, source 0x{:02x}",
                pos + i as u64,
                image_chunk[i],
                host_chunk[i]
            )));
        }
        pos += n as u64;
    }
    Ok(None)
}

/// Whether `[pos, pos + len)` of `file` is a hole (no data before `pos + len`).
fn host_hole(file: &File, pos: u64, len: u64) -> bool {
    match rustix::fs::seek(file, SeekFrom::Data(pos)) {
        Ok(data) => data >= pos + len,
        Err(rustix::io::Errno::NXIO) => true,
        // Filesystems without SEEK_DATA: read everything.
        Err(_) => false,
    }
}

/// Reads until `buf` is full or the reader ends; returns the number of bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
