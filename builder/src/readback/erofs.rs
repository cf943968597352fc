//! Reading an uncompressed EROFS filesystem back (the store partition of `efi-verity`): written here from the
//! on-disk format (the kernel's `Documentation/filesystems/erofs.rst`), sharing no code with the writer in
//! `kiln-formats`. Flat layouts (plain and inline tails) and LZ4-compressed files with full cluster maps, which
//! is all kiln writes; anything else is an error naming the inode. Clusters are decompressed by liblz4.

use anyhow::{Context, Result, bail};
use kiln_formats::disk::Bytes;

use super::{Window, le16, le32, le64};

const MAGIC: u32 = 0xE0F5_E1E2;
const BLOCK: u64 = 4096;
const S_IFMT: u16 = 0o170_000;
const S_IFDIR: u16 = 0o040_000;
const S_IFREG: u16 = 0o100_000;
const S_IFLNK: u16 = 0o120_000;
/// Symlinks followed in one lookup before giving up (as Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// An open EROFS filesystem.
#[derive(Debug, Clone)]
pub struct Erofs {
    window: Window,
    meta: u64,
    root: u64,
    build_time: u64,
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Its node number.
    pub nid: u64,
    /// `st_mode`.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds).
    pub mtime: u64,
    /// Link count.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Inline tail (layout 2) or none (layout 0).
    inline: bool,
    /// LZ4-compressed with a full cluster map (layout 1): its clusters, read from the map once, as
    /// (first byte in the file, stored plain, block address).
    clusters: Option<Vec<(u64, bool, u64)>>,
    blkaddr: u64,
    /// Byte offset (in the filesystem) of the data after the inode.
    tail_at: u64,
}

impl Inode {
    /// Whether it is a directory.
    #[must_use]
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// Whether it is a regular file.
    #[must_use]
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// Whether it is a symbolic link.
    #[must_use]
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

impl Erofs {
    /// Opens the filesystem in `window`.
    ///
    /// # Errors
    /// No EROFS superblock, or one with another block size.
    pub fn open(window: &Window) -> Result<Self> {
        let mut sb = [0u8; 128];
        window.read("the EROFS superblock", Bytes(1024), &mut sb)?;
        if le32(&sb, 0) != MAGIC {
            bail!("{}: no EROFS superblock (magic 0xE0F5E1E2 at byte 1024)", window.disk().name());
        }
        if sb[12] != 12 {
            bail!("{}: EROFS blocks of 2^{} bytes; kiln reads 4096-byte blocks", window.disk().name(), sb[12]);
        }
        Ok(Self {
            window: window.clone(),
            meta: u64::from(le32(&sb, 0x28)) * BLOCK,
            root: u64::from(le16(&sb, 0x0E)),
            build_time: le64(&sb, 0x18),
        })
    }

    fn read(&self, what: &str, at: u64, buf: &mut [u8]) -> Result<()> {
        self.window.read(what, Bytes(at), buf)
    }

    /// The inode of node number `nid`.
    ///
    /// # Errors
    /// A read past the end, or a data layout kiln does not write.
    pub fn inode(&self, nid: u64) -> Result<Inode> {
        let at = self.meta + 32 * nid;
        let mut b = [0u8; 64];
        self.read("an EROFS inode", at, &mut b[..32])?;
        let format = le16(&b, 0);
        let layout = (format >> 1) & 7;
        if layout > 2 {
            bail!("EROFS inode {nid}: data layout {layout} (kiln reads flat layouts 0 and 2 and full cluster maps, 1)");
        }
        let extended = format & 1 == 1;
        if extended {
            self.read("an EROFS inode", at + 32, &mut b[32..])?;
        }
        let xattr = u64::from(le16(&b, 2));
        let xattr_bytes = if xattr == 0 { 0 } else { 12 + (xattr - 1) * 4 };
        let isize = if extended { 64 } else { 32 };
        let mut inode = Inode {
            nid,
            mode: le16(&b, 4),
            uid: 0,
            gid: 0,
            mtime: self.build_time,
            nlink: 0,
            size: 0,
            inline: layout == 2,
            clusters: None,
            blkaddr: u64::from(le32(&b, 0x10)),
            tail_at: at + isize + xattr_bytes,
        };
        if extended {
            inode.size = le64(&b, 8);
            inode.uid = le32(&b, 0x18);
            inode.gid = le32(&b, 0x1C);
            inode.mtime = le64(&b, 0x20);
            inode.nlink = le32(&b, 0x2C);
        } else {
            inode.nlink = u32::from(le16(&b, 6));
            inode.size = u64::from(le32(&b, 8));
            inode.uid = u32::from(le16(&b, 0x18));
            inode.gid = u32::from(le16(&b, 0x1A));
        }
        if layout == 1 {
            inode.clusters = Some(self.clusters(&inode)?);
        }
        Ok(inode)
    }

    /// The root directory's inode.
    ///
    /// # Errors
    /// As [`Erofs::inode`].
    pub fn root(&self) -> Result<Inode> {
        self.inode(self.root)
    }

    /// Reads `buf.len()` bytes of `inode`'s data from byte `offset` (within its size).
    ///
    /// # Errors
    /// A read past the end of the image.
    pub fn read_at(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        if end > inode.size {
            bail!("EROFS inode {}: read to byte {end} of a {}-byte file", inode.nid, inode.size);
        }
        if let Some(clusters) = &inode.clusters {
            return self.read_compressed(inode, clusters, offset, buf);
        }
        let blocks_part = if inode.inline { inode.size / BLOCK * BLOCK } else { inode.size };
        let mut done = 0usize;
        if offset < blocks_part {
            let n = (blocks_part - offset).min(buf.len() as u64) as usize;
            self.read("EROFS file data", inode.blkaddr * BLOCK + offset, &mut buf[..n])
                .with_context(|| format!("EROFS inode {}", inode.nid))?;
            done = n;
        }
        if done < buf.len() {
            let within = offset + done as u64 - blocks_part;
            self.read("EROFS inline data", inode.tail_at + within, &mut buf[done..])
                .with_context(|| format!("EROFS inode {}", inode.nid))?;
        }
        Ok(())
    }

    /// A compressed file's clusters from its map: (first byte in the file, stored plain, block address), in file
    /// order. Each logical cluster (4 KiB of the file) has an 8-byte index after the map header (which must say
    /// LZ4 and 4 KiB logical clusters): type 0 (plain) or 1 (LZ4) where a cluster starts in it (at
    /// `clusterofs`), type 2 where none does; a start at or past the end of the file only marks the end.
    fn clusters(&self, inode: &Inode) -> Result<Vec<(u64, bool, u64)>> {
        let map = inode.tail_at.next_multiple_of(8);
        let mut header = [0u8; 8];
        self.read("an EROFS cluster map", map, &mut header)?;
        if header[6] & 0x0F != 0 || header[7] & 0x07 != 0 || le16(&header, 4) != 0 {
            bail!(
                "EROFS inode {}: cluster map header {header:02x?} (kiln reads LZ4, 4 KiB logical clusters, no options)",
                inode.nid
            );
        }
        let count = inode.size.div_ceil(BLOCK);
        let mut indexes = vec![0u8; usize::try_from(count * 8)?];
        self.read("an EROFS cluster map", map + 16, &mut indexes)?;
        let mut out = Vec::new();
        for (l, index) in indexes.chunks_exact(8).enumerate() {
            let kind = le16(index, 0) & 3;
            let start = l as u64 * BLOCK + u64::from(le16(index, 2));
            match kind {
                0 | 1 if start < inode.size => out.push((start, kind == 0, u64::from(le32(index, 4)))),
                0..=2 => {}
                _ => bail!("EROFS inode {}: logical cluster {l} has index type {kind}", inode.nid),
            }
        }
        if out.first().map(|c| c.0) != Some(0) {
            bail!("EROFS inode {}: no cluster starts at byte 0", inode.nid);
        }
        Ok(out)
    }

    fn read_compressed(&self, inode: &Inode, clusters: &[(u64, bool, u64)], offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut block = vec![0u8; BLOCK as usize];
        for (i, &(start, plain, blkaddr)) in clusters.iter().enumerate() {
            let stop = clusters.get(i + 1).map_or(inode.size, |c| c.0);
            if stop <= offset || start >= end {
                continue;
            }
            self.read("an EROFS cluster", blkaddr * BLOCK, &mut block)
                .with_context(|| format!("EROFS inode {}", inode.nid))?;
            let len = usize::try_from(stop - start)?;
            let data = if plain {
                if len > block.len() {
                    bail!("EROFS inode {}: plain cluster {i} covers {len} bytes", inode.nid);
                }
                block[..len].to_vec()
            } else {
                let from = block.iter().position(|&b| b != 0).unwrap_or(block.len());
                let mut data = vec![0u8; len];
                let n = lzzzz::lz4::decompress(&block[from..], &mut data).map_err(|e| {
                    anyhow::anyhow!("EROFS inode {}: cluster {i} (block {blkaddr}) does not decompress: {e}", inode.nid)
                })?;
                if n != len {
                    bail!("EROFS inode {}: cluster {i} (block {blkaddr}) holds {n} bytes, not {len}", inode.nid);
                }
                data
            };
            let (a, b) = (start.max(offset), stop.min(end));
            buf[(a - offset) as usize..(b - offset) as usize]
                .copy_from_slice(&data[(a - start) as usize..(b - start) as usize]);
        }
        Ok(())
    }

    /// The whole data of `inode`.
    ///
    /// # Errors
    /// As [`Erofs::read_at`].
    pub fn read_all(&self, inode: &Inode) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(inode.size)?];
        self.read_at(inode, 0, &mut buf)?;
        Ok(buf)
    }

    /// The entries of directory `dir` (without `.` and `..`), in the order they are stored (sorted by name):
    /// name and node number.
    ///
    /// # Errors
    /// Not a directory, or a directory block whose entries point outside it.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<(Vec<u8>, u64)>> {
        if !dir.is_dir() {
            bail!("EROFS inode {}: not a directory", dir.nid);
        }
        let data = self.read_all(dir)?;
        let bad = |why: &str| anyhow::anyhow!("EROFS directory inode {}: {why}", dir.nid);
        let mut out = Vec::new();
        for block in data.chunks(BLOCK as usize) {
            if block.len() < 12 {
                return Err(bad("a directory block shorter than one entry"));
            }
            let first = usize::from(le16(block, 8));
            if first % 12 != 0 || first == 0 || first > block.len() {
                return Err(bad("a directory block whose first name offset is not after its entries"));
            }
            let count = first / 12;
            for i in 0..count {
                let nid = le64(block, i * 12);
                let start = usize::from(le16(block, i * 12 + 8));
                let end = if i + 1 < count {
                    usize::from(le16(block, (i + 1) * 12 + 8))
                } else {
                    block[start.min(block.len())..].iter().position(|&b| b == 0).map_or(block.len(), |p| start + p)
                };
                if start > end || end > block.len() {
                    return Err(bad("a name outside its block"));
                }
                let name = &block[start..end];
                if name != b"." && name != b".." {
                    out.push((name.to_vec(), nid));
                }
            }
        }
        Ok(out)
    }

    /// The inode at absolute `path` (`/`-separated), following symlinks on the way (and at the end when
    /// `follow`); `None` if nothing is there.
    ///
    /// # Errors
    /// A read error, a loop of symlinks.
    pub fn lookup(&self, path: &[u8], follow: bool) -> Result<Option<Inode>> {
        let mut todo: Vec<Vec<u8>> =
            path.split(|&b| b == b'/').filter(|c| !c.is_empty()).rev().map(<[u8]>::to_vec).collect();
        let mut stack = vec![self.root()?];
        let mut links = 0;
        while let Some(name) = todo.pop() {
            let dir = stack.last().expect("the root").clone();
            if name == b"." {
                continue;
            }
            if name == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            if !dir.is_dir() {
                return Ok(None);
            }
            let Some((_, nid)) = self.read_dir(&dir)?.into_iter().find(|(n, _)| *n == name) else { return Ok(None) };
            let inode = self.inode(nid)?;
            if inode.is_symlink() && (follow || !todo.is_empty()) {
                links += 1;
                if links > MAX_SYMLINKS {
                    bail!("{}: too many levels of symbolic links", String::from_utf8_lossy(path));
                }
                let target = self.read_all(&inode)?;
                if target.first() == Some(&b'/') {
                    stack.truncate(1);
                }
                todo.extend(target.split(|&b| b == b'/').filter(|c| !c.is_empty()).rev().map(<[u8]>::to_vec));
                continue;
            }
            stack.push(inode);
        }
        Ok(stack.pop())
    }
}
