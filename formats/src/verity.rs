//! dm-verity hash trees, as `veritysetup format` writes them (format version 1, sha256, 4 KiB data and hash
//! blocks, with cryptsetup's superblock), so that `veritysetup open`, systemd-veritysetup and the kernel's
//! `dm-verity` target take the hash device as it is.
//!
//! The hash device: block 0 holds the 512-byte superblock (`"verity\0\0"`, version 1, hash type 1, UUID,
//! `"sha256"`, block sizes, data block count, salt); the tree follows from block 1, its top level first and
//! the level that hashes the data last. Each hash block holds 128 digests of `sha256(salt ‖ block)` of the
//! level below, zero-padded; the root hash is that of the top level's single block. (The dm-verity kernel
//! documentation and cryptsetup's "DMVerity" wiki page are the spec.)

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::sink::WriteAt;

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
/// Digests per hash block.
const FANOUT: u64 = BLOCK / 32;
/// Size of the superblock (in a hash block of its own).
pub const SUPERBLOCK: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
/// The most salt the superblock holds.
pub const MAX_SALT: usize = 256;

/// What can go wrong making or checking a hash tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Data that is empty or not whole blocks.
    #[error("verity data of {0} bytes: must be a non-zero multiple of 4096")]
    DataSize(u64),
    /// A salt over 256 bytes.
    #[error("verity salt of {0} bytes (at most 256)")]
    SaltTooLong(usize),
    /// A hash device whose superblock is not one kiln reads.
    #[error("not a dm-verity superblock kiln reads: {0}")]
    Superblock(&'static str),
    /// A data block whose hash is not the one the tree holds.
    #[error("data block {block} (byte {}) does not match its hash in the verity tree", block * BLOCK)]
    DataMismatch {
        /// The data block.
        block: u64,
    },
    /// A hash block whose hash is not the one the level above holds (or, for the top block, the root hash).
    #[error("hash block {block} of the hash device does not match its hash one level up")]
    HashMismatch {
        /// The block, counted from the start of the hash device (the superblock's block is 0).
        block: u64,
    },
    /// Reading data or hashes failed.
    #[error("reading {what} at byte {offset}")]
    Read {
        /// Which device.
        what: &'static str,
        /// Byte offset in it.
        offset: u64,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the hash device failed.
    #[error("writing the verity hash tree at image offset {offset}")]
    Write {
        /// Byte offset in the sink.
        offset: u64,
        /// Why.
        source: std::io::Error,
    },
}

/// Reads `buf.len()` bytes at a byte offset, from any thread.
pub type ReadAt<'a> = dyn Fn(&mut [u8], u64) -> std::io::Result<()> + Sync + 'a;

/// A hash tree's shape and parameters, for data of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Salt hashed before each block.
    pub salt: Vec<u8>,
    /// The UUID in the superblock.
    pub uuid: [u8; 16],
    /// Per level, leaf level (hashes of data blocks) first: (first block in the hash device, blocks).
    levels: Vec<(u64, u64)>,
}

impl Verity {
    /// The tree for `data_bytes` of data.
    ///
    /// # Errors
    /// Data that is empty or not whole blocks, a salt over 256 bytes.
    pub fn new(data_bytes: u64, salt: &[u8], uuid: [u8; 16]) -> Result<Self, Error> {
        if data_bytes == 0 || !data_bytes.is_multiple_of(BLOCK) {
            return Err(Error::DataSize(data_bytes));
        }
        if salt.len() > MAX_SALT {
            return Err(Error::SaltTooLong(salt.len()));
        }
        let data_blocks = data_bytes / BLOCK;
        let mut counts = Vec::new();
        let mut below = data_blocks;
        // One block of data needs no tree: its hash is the root.
        while below > 1 {
            below = below.div_ceil(FANOUT);
            counts.push(below);
        }
        // Top level first, from block 1 (after the superblock).
        let mut next = 1;
        let mut levels = vec![(0, 0); counts.len()];
        for (i, &count) in counts.iter().enumerate().rev() {
            levels[i] = (next, count);
            next += count;
        }
        Ok(Self { data_blocks, salt: salt.to_vec(), uuid, levels })
    }

    /// Reads the parameters from a hash device's first block, for data of `data_bytes`.
    ///
    /// # Errors
    /// Not a superblock of the kind [`Verity::superblock`] writes, or one for data of another size.
    pub fn from_superblock(sb: &[u8]) -> Result<Self, Error> {
        let bad = Error::Superblock;
        if sb.len() < SUPERBLOCK || &sb[..8] != SIGNATURE {
            return Err(bad("no \"verity\" signature"));
        }
        let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
        if le32(8) != 1 || le32(12) != 1 {
            return Err(bad("version or hash type other than 1"));
        }
        if &sb[32..39] != b"sha256\0" {
            return Err(bad("hash other than sha256"));
        }
        if u64::from(le32(64)) != BLOCK || u64::from(le32(68)) != BLOCK {
            return Err(bad("block sizes other than 4096"));
        }
        let data_blocks = u64::from_le_bytes(sb[72..80].try_into().expect("8 bytes"));
        let salt_len = usize::from(u16::from_le_bytes([sb[80], sb[81]]));
        if salt_len > MAX_SALT {
            return Err(bad("salt longer than 256 bytes"));
        }
        let uuid = sb[16..32].try_into().expect("16 bytes");
        Self::new(data_blocks * BLOCK, &sb[88..88 + salt_len], uuid)
    }

    /// Bytes of the hash device: the superblock's block and the tree.
    #[must_use]
    pub fn hash_bytes(&self) -> u64 {
        (1 + self.levels.iter().map(|l| l.1).sum::<u64>()) * BLOCK
    }

    /// The root hash the tree in `hashes` (the hash device) leads to: the hash of its top block; `None` for
    /// data of one block, whose root hash is that block's (no tree).
    ///
    /// # Errors
    /// Reading the hash device.
    pub fn root_of(&self, hashes: &ReadAt<'_>) -> Result<Option<[u8; 32]>, Error> {
        let Some(&(top, _)) = self.levels.last() else { return Ok(None) };
        let mut block = vec![0u8; BLOCK as usize];
        let offset = top * BLOCK;
        hashes(&mut block, offset).map_err(|source| Error::Read { what: "verity hash device", offset, source })?;
        Ok(Some(self.hash(&block)))
    }

    /// The superblock (512 bytes).
    #[must_use]
    pub fn superblock(&self) -> [u8; SUPERBLOCK] {
        let mut sb = [0u8; SUPERBLOCK];
        sb[..8].copy_from_slice(SIGNATURE);
        sb[8..12].copy_from_slice(&1u32.to_le_bytes());
        sb[12..16].copy_from_slice(&1u32.to_le_bytes());
        sb[16..32].copy_from_slice(&self.uuid);
        sb[32..38].copy_from_slice(b"sha256");
        sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        sb[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        sb[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        sb
    }

    fn hash(&self, block: &[u8]) -> [u8; 32] {
        salted(&self.salt, block)
    }

    /// The digests of the 4 KiB blocks `blocks` holds, two at a time ([`crate::sha256x2`]): the leaves of the
    /// tree for those data blocks, for a writer that hashes the data as it writes it ([`Self::write_known`]).
    #[must_use]
    pub fn hash_blocks(&self, blocks: &[u8]) -> Vec<[u8; 32]> {
        block_digests(&self.salt, blocks)
    }

    /// Hashes of the data, a hash block's worth (128 blocks) per task, in parallel: one digest per block.
    /// Blocks `known` holds a digest for are not read; a group of them that are all known is not read at all.
    fn leaf_digests(&self, data: &ReadAt<'_>, known: &Known) -> Result<Vec<Vec<[u8; 32]>>, Error> {
        (0..self.data_blocks.div_ceil(FANOUT))
            .into_par_iter()
            .map_init(
                || vec![0u8; (FANOUT * BLOCK) as usize],
                |buf, b| {
                    let first = b * FANOUT;
                    let n = FANOUT.min(self.data_blocks - first);
                    let have: Vec<Option<[u8; 32]>> = (first..first + n).map(|i| known.get(i)).collect();
                    if have.iter().all(Option::is_some) {
                        return Ok(have.into_iter().flatten().collect());
                    }
                    let buf = &mut buf[..(n * BLOCK) as usize];
                    let offset = first * BLOCK;
                    data(buf, offset).map_err(|source| Error::Read { what: "verity data", offset, source })?;
                    if have.iter().all(Option::is_none) {
                        return Ok(self.hash_blocks(buf));
                    }
                    Ok(have
                        .into_iter()
                        .zip(buf.chunks(BLOCK as usize))
                        .map(|(h, block)| h.unwrap_or_else(|| self.hash(block)))
                        .collect())
                },
            )
            .collect()
    }

    /// Writes the superblock and the tree for `data` into `sink` at byte `base`; returns the root hash.
    ///
    /// # Errors
    /// Reading the data or writing the hash device.
    pub fn write(&self, data: &ReadAt<'_>, sink: &dyn WriteAt, base: u64) -> Result<[u8; 32], Error> {
        self.write_known(&Known::default(), data, sink, base)
    }

    /// [`Self::write`], with the digests of the data blocks in `known` taken as they are (from a writer that
    /// hashed the blocks as it wrote them, with [`Self::hash_blocks`]); only the other blocks are read.
    ///
    /// # Errors
    /// Reading the data or writing the hash device.
    pub fn write_known(
        &self,
        known: &Known,
        data: &ReadAt<'_>,
        sink: &dyn WriteAt,
        base: u64,
    ) -> Result<[u8; 32], Error> {
        let put =
            |buf: &[u8], at: u64| sink.write_all_at(buf, at).map_err(|source| Error::Write { offset: at, source });
        put(&self.superblock(), base)?;
        let mut digests = self.leaf_digests(data, known)?;
        if self.levels.is_empty() {
            return Ok(digests[0][0]);
        }
        for &(start, _) in &self.levels {
            // Each group of digests is one hash block of this level; the level above hashes those blocks.
            let above: Vec<[u8; 32]> = digests
                .par_chunks(2)
                .enumerate()
                .map(|(i, groups)| {
                    let blocks: Vec<u8> = groups.iter().flat_map(|g| hash_block(g)).collect();
                    put(&blocks, base + (start + 2 * i as u64) * BLOCK)?;
                    Ok(self.hash_blocks(&blocks))
                })
                .collect::<Result<Vec<_>, Error>>()?
                .concat();
            digests = above.chunks(FANOUT as usize).map(<[_]>::to_vec).collect();
        }
        Ok(digests[0][0])
    }

    /// Checks `data` and the tree in `hashes` (the hash device, superblock first) against `root`: the first
    /// data block or hash block that does not match is named.
    ///
    /// # Errors
    /// A mismatch, or reading either device.
    pub fn check(&self, data: &ReadAt<'_>, hashes: &ReadAt<'_>, root: &[u8; 32]) -> Result<(), Error> {
        let read_hash = |block: u64| {
            let mut buf = vec![0u8; BLOCK as usize];
            let offset = block * BLOCK;
            hashes(&mut buf, offset).map_err(|source| Error::Read { what: "verity hash device", offset, source })?;
            Ok::<_, Error>(buf)
        };
        if self.levels.is_empty() {
            let d = self.leaf_digests(data, &Known::default())?;
            return if &d[0][0] == root { Ok(()) } else { Err(Error::DataMismatch { block: 0 }) };
        }
        // Top down: each block's hash against the level above's digest (the root for the top block).
        let mut expected: Vec<[u8; 32]> = vec![*root];
        for &(start, count) in self.levels.iter().rev() {
            let blocks: Vec<Vec<u8>> =
                (start..start + count).into_par_iter().map(read_hash).collect::<Result<_, _>>()?;
            for (i, b) in blocks.iter().enumerate() {
                if self.hash(b) != expected[i] {
                    return Err(Error::HashMismatch { block: start + i as u64 });
                }
            }
            expected = blocks.iter().flat_map(|b| b.chunks(32).map(|c| c.try_into().expect("32 bytes"))).collect();
        }
        let leaves = self.leaf_digests(data, &Known::default())?;
        for (i, d) in leaves.iter().flatten().enumerate() {
            if *d != expected[i] {
                return Err(Error::DataMismatch { block: i as u64 });
            }
        }
        Ok(())
    }
}

/// The digests `sha256(salt ‖ block)` of the 4 KiB blocks `blocks` holds, two at a time ([`crate::sha256x2`]):
/// the leaves of a tree with that salt ([`Verity::hash_blocks`]), for a writer that knows the salt before the
/// tree's shape.
///
/// # Panics
/// If `blocks` is not whole blocks.
#[must_use]
pub fn block_digests(salt: &[u8], blocks: &[u8]) -> Vec<[u8; 32]> {
    let block = BLOCK as usize;
    assert!(blocks.len().is_multiple_of(block), "whole blocks");
    let mut out = Vec::with_capacity(blocks.len() / block);
    let mut pairs = blocks.chunks_exact(2 * block);
    for two in &mut pairs {
        out.extend(crate::sha256x2::prefixed(salt, &two[..block], &two[block..]));
    }
    out.extend(pairs.remainder().chunks(block).map(|b| salted(salt, b)));
    out
}

/// `sha256(salt ‖ block)`.
fn salted(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Digests of consecutive data blocks: (the first block's number, the digests).
pub type Run = (u64, Vec<[u8; 32]>);

/// Digests of data blocks already hashed, as runs of consecutive blocks.
#[derive(Debug, Default)]
pub struct Known {
    /// Sorted by first block; runs do not overlap.
    runs: Vec<Run>,
}

impl Known {
    /// The digests gathered by every writer: `runs` of consecutive blocks, each (first block, digests).
    ///
    /// # Panics
    /// If two runs overlap (a block hashed twice means two writers wrote it).
    #[must_use]
    pub fn new(mut runs: Vec<Run>) -> Self {
        runs.retain(|r| !r.1.is_empty());
        runs.sort_unstable_by_key(|r| r.0);
        for w in runs.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0, "data blocks {} and on hashed twice", w[1].0);
        }
        Self { runs }
    }

    /// The digest of data block `block`, if known.
    #[must_use]
    pub fn get(&self, block: u64) -> Option<[u8; 32]> {
        let i = self.runs.partition_point(|r| r.0 <= block).checked_sub(1)?;
        let (first, digests) = &self.runs[i];
        digests.get(usize::try_from(block - first).ok()?).copied()
    }

    /// Blocks known.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.1.len() as u64).sum()
    }

    /// Whether no block is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

fn hash_block(digests: &[[u8; 32]]) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK as usize];
    for (i, d) in digests.iter().enumerate() {
        block[i * 32..i * 32 + 32].copy_from_slice(d);
    }
    block
}

/// Lowercase hex of `bytes` (how root hashes are given on command lines).
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemSink;

    fn mem_reader(bytes: &[u8]) -> impl Fn(&mut [u8], u64) -> std::io::Result<()> + Sync + '_ {
        move |buf: &mut [u8], at: u64| {
            buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn levels_are_sized_and_stored_top_first() {
        let v = Verity::new(BLOCK * 128 * 128 + BLOCK, b"salt", [0; 16]).unwrap();
        // 16385 data blocks: 129 leaf blocks, 2 above them, 1 top.
        assert_eq!(v.levels, vec![(4, 129), (2, 2), (1, 1)]);
        assert_eq!(v.hash_bytes(), (1 + 1 + 2 + 129) * BLOCK);
        assert_eq!(Verity::new(BLOCK * 128, b"", [0; 16]).unwrap().levels, vec![(1, 1)]);
        assert!(Verity::new(BLOCK, b"", [0; 16]).unwrap().levels.is_empty());
        assert!(matches!(Verity::new(100, b"", [0; 16]), Err(Error::DataSize(100))));
        assert!(matches!(Verity::new(BLOCK, &[0; 257], [0; 16]), Err(Error::SaltTooLong(257))));
    }

    #[test]
    fn written_trees_check_and_name_the_block_that_changed() {
        let data: Vec<u8> = (0..300 * BLOCK as usize).map(|i| (i / 4096 % 251) as u8).collect();
        let v = Verity::new(data.len() as u64, &[5; 32], [9; 16]).unwrap();
        let sink = MemSink::new(v.hash_bytes() as usize);
        let root = v.write(&mem_reader(&data), &sink, 0).unwrap();
        let hashes = sink.into_inner();
        assert_eq!(v.root_of(&mem_reader(&hashes)).unwrap(), Some(root));
        assert_eq!(Verity::from_superblock(&hashes).unwrap(), v);
        v.check(&mem_reader(&data), &mem_reader(&hashes), &root).unwrap();
        let mut flipped = data.clone();
        flipped[77 * 4096 + 5] ^= 1;
        let err = v.check(&mem_reader(&flipped), &mem_reader(&hashes), &root).unwrap_err();
        assert!(matches!(err, Error::DataMismatch { block: 77 }), "{err}");
        let mut bad_tree = hashes.clone();
        bad_tree[2 * 4096 + 1] ^= 1;
        let err = v.check(&mem_reader(&data), &mem_reader(&bad_tree), &root).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { block: 2 }), "{err}");
        let err = v.check(&mem_reader(&data), &mem_reader(&hashes), &[0; 32]).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { block: 1 }), "{err}");
    }

    /// Digests handed in by a writer that hashed blocks as it wrote them give the same tree as reading every
    /// block (whole groups, parts of groups, runs across groups, in any order); the known ones are not read.
    #[test]
    fn known_digests_give_the_same_tree_and_are_not_read_again() {
        let data: Vec<u8> = (0..300 * BLOCK as usize).map(|i| (i / 4096 % 251) as u8 ^ (i % 7) as u8).collect();
        let v = Verity::new(data.len() as u64, &[5; 32], [9; 16]).unwrap();
        let full = MemSink::new(v.hash_bytes() as usize);
        let root = v.write(&mem_reader(&data), &full, 0).unwrap();
        let block = |b: u64| &data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
        let run = |from: u64, to: u64| (from, v.hash_blocks(&data[(from * BLOCK) as usize..(to * BLOCK) as usize]));
        // Blocks 0..128 (a whole group), 130..131, 140..290 (across groups), 299 (the last, odd one).
        let known = Known::new(vec![run(140, 290), run(299, 300), run(0, 128), run(130, 131)]);
        assert_eq!(known.len(), 128 + 1 + 150 + 1);
        assert_eq!(known.get(129), None);
        assert_eq!(known.get(299).unwrap(), v.hash(block(299)));
        // Known blocks read as garbage: had they been read, the tree would differ.
        let mut scrambled = data.clone();
        for b in (0..128).chain(130..131).chain(140..290).chain(299..300) {
            scrambled[(b * BLOCK) as usize] ^= 0xff;
        }
        let sink = MemSink::new(v.hash_bytes() as usize);
        assert_eq!(v.write_known(&known, &mem_reader(&scrambled), &sink, 0).unwrap(), root);
        assert_eq!(sink.into_inner(), full.into_inner());
    }
}
